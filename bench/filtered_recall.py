"""Recall of a broad filter, and what it reads, by how many more partitions it probes.

    .venv/bin/python bench/filtered_recall.py [--rows 1000000] [--queries 300]

A filter that keeps more than ``filter_exact_max_rows`` rows of a segment is searched by
probing more partitions than an unfiltered query and scanning only their kept rows
(``query.vector_search``). How many more: ``nprobe × (rows / kept) ** growth``. Growth 1
(the rule before this benchmark) scans about as many kept rows as an unfiltered query
scans rows; the service's 0.35 scans fewer. Both (or ``--growths``) run here, in the same command, on the same
segment and queries: the MiniLM-like set of ``bench/dataset.py`` (``--rows``), attributes
``year`` (uniform 2000-2023) and ``tenant`` (t0-t29), independent of the vectors, int8
vectors, one segment on a local-directory store, in process. Per filter and growth:
recall@10 against the exact top 10 of the rows the filter keeps, ranged GETs of partitions and
bytes read per cold query (a fresh reader), warm p50. Unfiltered recall at the default
nprobe is the reference. Writes ``bench/results/<time>-filtered-recall-<rows>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402
from counting import CountingStore, describe_requests  # noqa: E402

from api.service import Service  # noqa: E402
from query import vector_search  # noqa: E402
from storage import CachedStore, open_raw_store  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

NS = "filtered"
FILTERS = {
    "year >= 2013 (46%)": {"year": {"$gte": 2013}},
    "year >= 2020 (17%)": {"year": {"$gte": 2020}},
    "tenant in 2 of 30 (6.7%)": {"tenant": {"$in": ["t3", "t17"]}},
    "year = 2005 and tenant != t0 (4%)": {"$and": [{"year": 2005}, {"tenant": {"$ne": "t0"}}]},
}
GROWTHS = (1.0, 0.35)  # the rule before this benchmark, and the service's


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def attributes(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(2000, 2024, rows), rng.integers(0, 30, rows)


def kept(filt: dict, years: np.ndarray, tenants: np.ndarray) -> np.ndarray:
    """The rows ``filt`` keeps (the four filters above, in numpy)."""
    if "$and" in filt:
        return kept(filt["$and"][0], years, tenants) & kept(filt["$and"][1], years, tenants)
    if "year" in filt:
        cond = filt["year"]
        return years >= cond["$gte"] if isinstance(cond, dict) else years == cond
    cond = filt["tenant"]
    if "$ne" in cond:
        return tenants != int(cond["$ne"][1:])
    return np.isin(tenants, [int(t[1:]) for t in cond["$in"]])


def ingest(svc: Service, data: ds_mod.Dataset, years, tenants) -> None:
    import pyarrow as pa

    svc.create_namespace(NS, embedder="none", dimensions=data.base.shape[1], metric="cosine", vector_dtype="int8")
    step = 10_000  # max_batch_docs
    for lo in range(0, data.rows, step):
        hi = min(data.rows, lo + step)
        vectors = np.ascontiguousarray(data.base[lo:hi], np.float32)
        attrs = [json.dumps({"year": int(y), "tenant": f"t{t}"}) for y, t in zip(years[lo:hi], tenants[lo:hi])]
        svc.upsert_table(NS, pa.table({
            "id": [ds_mod.doc_id(i) for i in range(lo, hi)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            "attributes": attrs,
        }))
    svc.index(NS)


def exact_top(data: ds_mod.Dataset, queries: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask)
    found = ds_mod.exact_top_k(np.ascontiguousarray(data.base[rows], np.float32), queries, ds_mod.K)
    return rows[found]


def measure(settings: Settings, queries: np.ndarray, filt: dict | None, gt: np.ndarray, growth: float) -> dict:
    vector_search.PROBE_GROWTH = growth
    found, latencies = [], []
    svc = Service(settings)
    try:
        for q in queries:  # the first pass reads; the second is measured warm
            svc.query(NS, vector=q, top_k=ds_mod.K, filter=filt, consistency="eventual")
        for q in queries:
            t = time.perf_counter()
            hits = svc.query(NS, vector=q, top_k=ds_mod.K, filter=filt, consistency="eventual").hits
            latencies.append(time.perf_counter() - t)
            found.append([int(h.id[1:]) for h in hits])
    finally:
        svc.close()
    cold = []
    for q in queries[:5]:
        counting = CountingStore(open_raw_store(settings))
        fresh = Service(settings, store=CachedStore(counting, settings.cache_bytes))
        fresh.query(NS, vector=q, top_k=ds_mod.K, filter=filt, consistency="eventual")
        seen = describe_requests(counting.take())
        cold.append({"bytes": seen["bytes"],
                     "vector_reads": sum(1 for r in seen["trace"] if r["key"].endswith("vectors.bin"))})
        fresh.close()
    return {
        "recall_at_10": round(ds_mod.recall_at_k(found, gt), 4),
        "warm_p50_ms": round(1000 * float(np.median(latencies)), 3),
        "cold_mb": round(float(np.median([c["bytes"] for c in cold])) / 1e6, 3),
        "cold_vector_reads": float(np.median([c["vector_reads"] for c in cold])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--growths", default=",".join(map(str, GROWTHS)),
                        help="the growths to compare, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    growths = [float(g) for g in args.growths.split(",")]
    data = ds_mod.load(args.rows, args.seed)
    queries = np.ascontiguousarray(data.queries[: args.queries], np.float32)
    years, tenants = attributes(args.rows, args.seed)
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": args.rows,
                    "queries": len(queries), "filters": {}}
    with tempfile.TemporaryDirectory(prefix="filtered-recall-") as tmp:
        settings = Settings(store_uri=f"file://{tmp}/store", preload_embedder="", auto_index=False)
        svc = Service(settings)
        started = time.perf_counter()
        ingest(svc, data, years, tenants)
        svc.close()
        log(f"ingested and indexed {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        gt_all = exact_top(data, queries, np.ones(args.rows, bool))
        result["unfiltered"] = measure(settings, queries, None, gt_all, 1.0)
        log(f"unfiltered: {result['unfiltered']}")
        for name, filt in FILTERS.items():
            mask = kept(filt, years, tenants)
            gt = exact_top(data, queries, mask)
            result["filters"][name] = {"kept": int(mask.sum())}
            for growth in growths:
                result["filters"][name][f"growth {growth}"] = measure(settings, queries, filt, gt, growth)
                log(f"{name}, growth {growth}: {result['filters'][name][f'growth {growth}']}")
    lines = ["| filter | kept rows | growth | recall@10 | vectors.bin GETs cold | MB cold | warm p50 ms |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    u = result["unfiltered"]
    lines.append(f"| none | {args.rows:,} | - | {u['recall_at_10']} | {u['cold_vector_reads']:g} | {u['cold_mb']} | "
                 f"{u['warm_p50_ms']} |")
    for name, by in result["filters"].items():
        for growth in growths:
            m = by[f"growth {growth}"]
            lines.append(f"| {name} | {by['kept']:,} | {growth} | {m['recall_at_10']} | {m['cold_vector_reads']:g} | "
                         f"{m['cold_mb']} | {m['warm_p50_ms']} |")
    print("\n".join(lines))
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-filtered-recall-{args.rows}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
