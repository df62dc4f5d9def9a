"""A broad filter on a namespace's ``cluster_by`` keys, read by the rows' groups beside
the column path, on one namespace in one process (issue 12).

    .venv/bin/python bench/text_scale.py --endpoint HOST:PORT --keep text1m --skip-lancedb --ingest-passes 0
    .venv/bin/python bench/broad_groups.py --endpoint HOST:PORT --prefix text1m [--rounds 5]

The namespace is the one ``text_scale.py --keep PREFIX`` built (``cluster_by`` tenant and
year, int8, 1 % deleted), and the query is its ``vector + {"year": {"$gte": 2013}}`` kind:
a third of the rows, too many to search exactly. "groups" is the service as it is: the
probed partitions' rows' groups read from ``clusters.bin`` beside the partitions. "columns"
is the same service reading the namespace's directory as a segment written before
``clusters.bin`` held the rows' groups, so the filter reads its ``year`` column. Per round,
each path on a fresh worker (empty cache): the cold query (ms, MB, requests, sequential
round trips) and ``--warm`` more; the order alternates by round. Then warmed workers (the
warm hint, then ``--warm`` queries) of each path, alternated. Prints medians and the
ratios groups / columns, and whether both paths answered the same. Writes
``bench/results/<time>-broad-groups.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import docs_on_demand as corpus  # noqa: E402
import text_scale  # noqa: E402

from storage import open_raw_store  # noqa: E402
from vectordb import clusters  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

KIND = "vector+year"
PATHS = ("groups", "columns")
_AS_WRITTEN = clusters.ClusterDirectory.from_body


def _as_older(cls, body: bytes) -> clusters.ClusterDirectory:
    return dataclasses.replace(_AS_WRITTEN.__func__(cls, body), group_of_row=False)


def use(path: str) -> None:
    """Directories read from now on: as written ("groups"), or as an older segment's."""
    clusters.ClusterDirectory.from_body = _AS_WRITTEN if path == "groups" else classmethod(_as_older)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="the S3 endpoint text_scale.py --keep wrote to")
    parser.add_argument("--prefix", required=True, help="the --keep prefix of that run")
    parser.add_argument("--rounds", type=int, default=5, help="cold workers of each path, alternated")
    parser.add_argument("--warm", type=int, default=30, help="queries after each cold one, and per warmed worker")
    parser.add_argument("--warmed", type=int, default=3, help="warmed workers of each path, alternated")
    parser.add_argument("--chunks", type=int, default=1_000_000, help="the chunks text_scale.py built")
    args = parser.parse_args(argv)
    import duckdb  # noqa: F401  (a worker imports these at start: not part of a first query)
    import faiss  # noqa: F401

    over = text_scale.s3_settings(args.endpoint, args.prefix)
    store = open_raw_store(Settings(**over))
    run = text_scale.our_kinds(args.chunks, text_scale.query_texts(args.warm))[KIND]
    cache = Settings().cache_bytes
    for path in PATHS:  # what a process pays once, on each path
        use(path)
        corpus.cold_then_warm(store, text_scale.NS, run, 0, cache_bytes=cache, **over)
    cold: dict[str, list[dict]] = {p: [] for p in PATHS}
    answers: dict[str, list] = {}
    for r in range(args.rounds):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            use(path)
            out, got = corpus.cold_then_warm(store, text_scale.NS, run, args.warm, cache_bytes=cache, **over)
            cold[path].append(out)
            answers.setdefault(path, got)
    warmed: dict[str, list[float]] = {p: [] for p in PATHS}
    for r in range(args.warmed):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            use(path)
            out, _, _ = corpus.warmed_then_queried(store, text_scale.NS, {KIND: run}, args.warm, cache_bytes=cache, **over)
            warmed[path].append(out[KIND]["warmed_p50_ms"])
            # The worker's 1.5 GB go now: a warmed worker beside the last one's leftovers
            # answered 3x slower (RSS 1.4 -> 2.7 -> 3.9 GB over three workers).
            del out
            gc.collect()
    use("groups")

    def median(path: str, key: str) -> float:
        return statistics.median(o[key] for o in cold[path])

    report = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "prefix": args.prefix, "kind": KIND,
              "cold": cold, "warmed_p50_ms": warmed, "answers_equal": answers["groups"] == answers["columns"]}
    lines = ["| path | cold ms median (each) | MB | requests | round trips | unwarmed p50 ms | warmed p50 ms (each) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in PATHS:
        lines.append(f"| {path} | {median(path, 'cold_ms'):.1f} ({[o['cold_ms'] for o in cold[path]]}) | "
                     f"{median(path, 'cold_mb'):.2f} | {median(path, 'requests'):g} | {median(path, 'round_trips'):g} | "
                     f"{median(path, 'warm_p50_ms'):.2f} | {statistics.median(warmed[path]):.2f} ({warmed[path]}) |")
    report["groups_over_columns"] = {
        "cold_ms": round(median("groups", "cold_ms") / median("columns", "cold_ms"), 3),
        "cold_mb": round(median("groups", "cold_mb") / median("columns", "cold_mb"), 3),
        "warmed_p50_ms": round(statistics.median(warmed["groups"]) / statistics.median(warmed["columns"]), 3),
    }
    print("\n".join(lines))
    print(f"groups / columns: {report['groups_over_columns']}; answers equal: {report['answers_equal']}")
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-broad-groups.json"
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
