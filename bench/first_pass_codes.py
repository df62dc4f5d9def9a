"""How few bytes a cold query's first pass could read: recall@10 of an IVF scan over codes
of 8, 4 and 2 bits a component (each partition's own min-max scalar quantizer, as the int8
segments store) and over product-quantizer codes of 48 and 96 bytes a row (one codebook,
8-bit subquantizers), alone and with the best R of the first pass re-scored from the 8-bit
codes (a rerank that would read R rows by range), beside the int8 scan itself.

Issue 13 asks a cold query at 10M vectors for <= 80 ms. Its partitions are read in one
round of ranged GETs whose time is their bytes (``bench/range_reads.py``: ~1 GB/s on this
machine's S3 server, ~0.6 ms a small GET): a first pass over 4-bit codes reads half the
bytes of the int8 partitions, a 2-bit one a quarter, and the rerank then costs a round
trip of R small GETs. This measures what that costs in recall, on the benchmark's data,
so that a format change is chosen from numbers. No object store: numpy over the cached
data set (``bench/dataset.py``), k-means by FAISS.

    .venv/bin/python bench/first_pass_codes.py [--rows 1000000] [--nlist 1000] [--queries 300]

Prints, per nprobe, the rows scanned, recall@10 of each scan, and for each first pass and
R the recall and how many distinct partitions hold its R rows; writes
``bench/results/<time>-first-pass-codes.json``. The baseline (int8) runs in the same command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import dataset as ds_mod  # noqa: E402

LEVELS = {"8-bit": 255, "4-bit": 15, "2-bit": 3}
# Product quantizers of the vectors themselves (one codebook for all partitions, trained on
# a sample): subquantizers of 8 bits, so a row's code is this many bytes.
PQ_BYTES = (48, 96)
RERANKS = (20, 50, 100, 200)


def product_quantized(base: np.ndarray, sample: np.ndarray, m: int) -> np.ndarray:
    """``base`` as a product quantizer of ``m`` 8-bit codes a row decodes it (the scan of
    its codes by a table of the query's dot products with each centroid scores the same)."""
    import faiss

    pq = faiss.ProductQuantizer(base.shape[1], m, 8)
    pq.train(np.ascontiguousarray(sample[:50_000]))
    out = np.empty_like(base)
    for at in range(0, len(base), 100_000):
        out[at : at + 100_000] = pq.decode(pq.compute_codes(base[at : at + 100_000]))
    return out


def quantized(base: np.ndarray, order: np.ndarray, starts: np.ndarray, levels: int) -> np.ndarray:
    """``base`` as each partition's min-max quantizer with ``levels`` steps decodes it."""
    out = np.empty_like(base)
    for p in range(len(starts) - 1):
        rows = order[starts[p] : starts[p + 1]]
        if not len(rows):
            continue
        v = base[rows]
        low = v.min(axis=0)
        step = np.maximum((v.max(axis=0) - low) / levels, 1e-12)
        out[rows] = low + np.round((v - low) / step) * step
    return out


def recall(found: list[np.ndarray], gt: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(g[:10].tolist())) / 10 for f, g in zip(found, gt)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nlist", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--nprobe", default="8,12,16,24")
    args = parser.parse_args()
    import faiss

    started = time.time()
    data = ds_mod.load(args.rows, queries=args.queries)
    base = np.ascontiguousarray(data.base, np.float32)
    queries = np.ascontiguousarray(data.queries, np.float32)
    gt = np.asarray(data.gt)
    rng = np.random.default_rng(0)
    sample = base[rng.choice(len(base), min(len(base), 100 * args.nlist), replace=False)]
    kmeans = faiss.Kmeans(base.shape[1], args.nlist, niter=12, seed=1)
    kmeans.train(sample)
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(kmeans.centroids)
    _, assigned = flat.search(base, 1)
    assigned = assigned[:, 0]
    order = np.argsort(assigned, kind="stable")
    starts = np.searchsorted(assigned[order], np.arange(args.nlist + 1))
    decoded = {name: quantized(base, order, starts, levels) for name, levels in LEVELS.items()}
    code_bytes = {name: bits / 8 for name, bits in (("8-bit", 8), ("4-bit", 4), ("2-bit", 2))}
    for m in PQ_BYTES:
        decoded[f"PQ{m}"] = product_quantized(base, sample, m)
        code_bytes[f"PQ{m}"] = m / base.shape[1]
    nprobes = [int(n) for n in args.nprobe.split(",")]
    _, probes = flat.search(queries, max(nprobes))
    results = []
    for nprobe in nprobes:
        found: dict[str, list] = {}
        parts: dict[str, list] = {}
        scanned = []
        for qi, q in enumerate(queries):
            rows = np.concatenate([order[starts[p] : starts[p + 1]] for p in probes[qi, :nprobe]])
            scanned.append(len(rows))
            for name, vectors in decoded.items():
                ranked = rows[np.argsort(-(vectors[rows] @ q), kind="stable")]
                found.setdefault(name, []).append(ranked[:10])
                if name == "8-bit":
                    continue
                for r in RERANKS:
                    picked = ranked[:r]
                    again = picked[np.argsort(-(decoded["8-bit"][picked] @ q), kind="stable")]
                    found.setdefault(f"{name} + rerank {r}", []).append(again[:10])
                    parts.setdefault(f"{name} + rerank {r}", []).append(len(set(assigned[picked].tolist())))
        row = {"nprobe": nprobe, "rows_scanned": round(float(np.mean(scanned))),
               "recall": {name: round(recall(f, gt), 4) for name, f in found.items()},
               "rerank_partitions": {name: round(float(np.mean(p)), 1) for name, p in parts.items()}}
        base_recall = row["recall"]["8-bit"]
        print(f"nprobe {nprobe}: {row['rows_scanned']} rows scanned; recall@10 8-bit (the baseline) {base_recall}")
        for name, value in row["recall"].items():
            if name == "8-bit":
                continue
            first_pass = name.split(" ")[0]
            extra = f", its {name.rsplit(' ', 1)[1]} rows in {row['rerank_partitions'][name]} partitions" if "rerank" in name else ""
            print(f"  {name:20s} recall {value:.4f} ({value / base_recall:.3f}x the baseline), first-pass bytes "
                  f"{code_bytes[first_pass]:.3f}x{extra}")
        results.append(row)
    out = {"started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
           "rows": args.rows, "nlist": args.nlist, "queries": args.queries, "seconds": round(time.time() - started, 1),
           "results": results}
    path = BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-first-pass-codes.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
