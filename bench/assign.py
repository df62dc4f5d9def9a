"""Assigning rows to IVF centroids: exact (every centroid) vs two levels (``vectordb.ivf.Assigner``).

    python bench/assign.py [--rows 1000000] [--nlist 10000] [--nprobe 100] [--seed 42]

A 10M-row build has 10,000 partitions, and assigning its rows to them was ~7 of its 16
minutes on 2 cores. This trains ``--nlist`` centroids the way such a build does (spherical
k-means on the rows ``vectordb.ivf.training_rows`` picks within the default 2 GiB build
memory), assigns the first ``--rows`` rows of the synthetic MiniLM-like set both ways, and
prints, in one run: the time of each (and the ratio), the share of rows whose partition
differs, and recall@10 of an IVF search (``--nprobe`` nearest partitions, exact scores within
them) over the rows as each assigned them, against the exact top-10 of those rows.
Writes ``bench/results/<time>-assign-<rows>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402

from vectordb import ivf  # noqa: E402
from vectordb.segment_writer import sample_cap  # noqa: E402

CHUNK = 100_000
METRIC = "cosine"


def timed_labels(base: np.ndarray, assign) -> tuple[np.ndarray, float]:
    labels = np.zeros(len(base), np.int64)
    started = time.perf_counter()
    for lo in range(0, len(base), CHUNK):
        labels[lo : lo + CHUNK] = assign(np.ascontiguousarray(base[lo : lo + CHUNK], np.float32))
    return labels, time.perf_counter() - started


def ivf_recall(base: np.ndarray, labels: np.ndarray, probes: np.ndarray, queries: np.ndarray, gt: np.ndarray) -> float:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    found = []
    for q, parts in zip(queries, probes):
        rows = np.sort(np.concatenate([order[bounds[p] : bounds[p + 1]] for p in parts]))
        scores = np.asarray(base[rows], np.float32) @ q
        found.append(rows[np.argsort(-scores, kind="stable")[: ds_mod.K]].tolist())
    return ds_mod.recall_at_k(found, gt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nlist", type=int, default=10_000)
    parser.add_argument("--nprobe", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    ds_mod.prepare(args.rows, args.seed, print, sanity=False)
    data = ds_mod.load(args.rows, args.seed, args.queries)
    base, queries, gt = data.base, np.asarray(data.queries, np.float32), data.gt

    started = time.perf_counter()
    picked = ivf.training_rows(args.rows, args.nlist, max_rows=sample_cap(base.shape[1], 2 * 1024**3))
    sample = np.asarray(base[picked] if picked is not None else base, np.float32)
    centroids = ivf.train_centroids(sample, args.nlist, METRIC)
    train_s = time.perf_counter() - started
    print(f"trained {args.nlist:,} centroids on {len(sample):,} rows in {train_s:.1f} s")

    started = time.perf_counter()
    assigner = ivf.Assigner(centroids, METRIC)
    setup_s = time.perf_counter() - started
    if assigner.groups is None:
        raise SystemExit(f"--nlist {args.nlist} is below ivf.TWO_LEVEL_MIN_CENTROIDS: both ways are exact")
    two, two_s = timed_labels(base, assigner)
    exact, exact_s = timed_labels(base, lambda x: ivf.assign(x, centroids, METRIC))
    differ = float(np.mean(two != exact))

    probes = ivf.probe(centroids, queries, args.nprobe, METRIC)
    recall_exact = ivf_recall(base, exact, probes, queries, gt)
    recall_two = ivf_recall(base, two, probes, queries, gt)
    sizes = np.bincount(two, minlength=args.nlist)

    result = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "rows": args.rows,
        "nlist": args.nlist, "nprobe": args.nprobe, "train_rows": len(sample), "train_s": round(train_s, 1),
        "groups": len(assigner.groups), "groups_searched": ivf._GROUPS_SEARCHED,
        "two_level_setup_s": round(setup_s, 2), "exact_s": round(exact_s, 1), "two_level_s": round(two_s, 1),
        "time_ratio_two_level_over_exact": round(two_s / exact_s, 3), "rows_differing": round(differ, 4),
        "recall_at_10_exact": round(recall_exact, 4), "recall_at_10_two_level": round(recall_two, 4),
        "largest_partition_two_level": int(sizes.max()),
    }
    print(f"\n| {args.rows:,} rows, {args.nlist:,} centroids | exact | two levels ({len(assigner.groups)} groups, "
          f"{ivf._GROUPS_SEARCHED} searched) |")
    print("| --- | --- | --- |")
    print(f"| assignment time | {exact_s:.1f} s | {two_s:.1f} s (+{setup_s:.2f} s setup): ratio {two_s / exact_s:.3f} |")
    print(f"| rows in another partition than exact | - | {differ:.2%} |")
    print(f"| IVF recall@10 at nprobe {args.nprobe} | {recall_exact:.4f} | {recall_two:.4f} |")
    out = ROOT / "bench" / "results" / f"{datetime.now():%Y%m%d-%H%M%S}-assign-{args.rows}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
