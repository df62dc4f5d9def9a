"""Cold queries on a namespace kept in the store, by this tree's code and by another's.

``bench/run.py --keep-store --endpoint HOST:PORT`` leaves its namespace in the store; this
asks it cold queries again, each from a fresh in-process Service with an empty cache (as
run.py's "connect -> first answer" does), so that a change to the read path is measured
without building 10M rows again. ``--baseline-tree DIR`` (a checkout of the commit before
the change, with the same ``.venv``) answers the same queries, alternated run by run, in a
process of its own: the ratio between the two is of one command, on one store, at one
time. ``--profile`` prints where this tree's last cold query spent its time (cProfile of
the calling thread: what it waits on, and the work it does after the reads).

    .venv/bin/python bench/cold_query.py --store-uri s3://vdbbench/ours-XXXX \\
        [--endpoint 127.0.0.1:8433] [--rows 10000000] [--realistic] [--runs 15] \\
        [--baseline-tree /tmp/base] [--profile]

Prints per tree the median connect -> answer, requests, bytes and recall@10 of the cold
answers (against the data set's exact top-10; ``--rows``: the namespace's rows;
``--realistic``: of the rows a ``run.py --realistic`` ingest left live), and the ratio;
writes ``bench/results/<time>-cold-query.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def worker(args) -> int:
    """Answers "run I" lines on stdin with one JSON line each: the I-th query, cold, by
    the code of ``args.tree`` (this script's helpers, dataset and counting, from here)."""
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, args.tree)
    import cProfile
    import io
    import pstats

    import dataset as ds_mod
    from counting import CountingStore, describe_requests

    from api.service import Service
    from storage import CachedStore, open_raw_store
    from vectordb import ivf
    from vectordb.settings import Settings
    from vectordb.testing import ACCESS_KEY, SECRET_KEY

    settings = Settings(store_uri=args.store_uri, s3_endpoint=args.endpoint, s3_access_key=ACCESS_KEY,
                        s3_secret_key=SECRET_KEY, cache_bytes=args.cache_bytes, auto_index=False)
    ivf._faiss()  # as run.py: "connect -> first answer" in a process that has imported FAISS
    import ours

    data = ds_mod.load(args.rows, queries=args.runs)
    if args.realistic:
        data = ours.realistic_truth(data, args.batch, lambda message: None)
    import vectordb

    print(json.dumps({"ready": True, "code": vectordb.__file__}), flush=True)
    for line in sys.stdin:
        i = int(line.split()[1])
        profile = cProfile.Profile() if line.split()[-1] == "profile" else None
        t0 = time.perf_counter()
        counting = CountingStore(open_raw_store(settings))
        service = Service(settings, store=CachedStore(counting, settings.cache_bytes))
        t1 = time.perf_counter()
        counting.take()
        if profile:
            profile.enable()
        hits = service.query(args.namespace, vector=data.queries[i], top_k=ds_mod.K, consistency="eventual").hits
        if profile:
            profile.disable()
        t2 = time.perf_counter()
        described = describe_requests(counting.take())
        service.close()
        found = [ours.row_of(h.id) for h in hits]
        out = {"connect_first_ms": round((t2 - t0) * 1000, 2), "connect_ms": round((t1 - t0) * 1000, 2),
               "requests": described["requests"], "bytes": described["bytes"],
               "round_trips": described["round_trips"],
               "last_byte_ms": round(max((t["end_ms"] for t in described["trace"]), default=0.0), 2),
               "recall": len(set(found) & set(data.gt[i][:10].tolist())) / 10}
        if profile:
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(35)
            out["profile"] = text.getvalue()
        print(json.dumps(out), flush=True)
    return 0


def start(tree: Path, args) -> subprocess.Popen:
    python = tree / ".venv" / "bin" / "python"
    command = [str(python if python.exists() else sys.executable), str(Path(__file__).resolve()), "--worker",
               "--tree", str(tree),
               "--store-uri", args.store_uri, "--endpoint", args.endpoint, "--namespace", args.namespace,
               "--rows", str(args.rows), "--runs", str(args.runs), "--cache-bytes", str(args.cache_bytes),
               "--batch", str(args.batch)] + (["--realistic"] if args.realistic else [])
    proc = subprocess.Popen(command, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline() or "{}")
    if not ready.get("ready"):
        raise SystemExit(f"the worker of {tree} did not start")
    if not Path(ready["code"]).resolve().is_relative_to(tree):
        raise SystemExit(f"the worker of {tree} imported {ready['code']}, another tree's code")
    return proc


def ask(proc: subprocess.Popen, i: int, profile: bool) -> dict:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"run {i}{' profile' if profile else ''}\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("a worker died")
    return json.loads(line)


def tree_commit(tree: Path) -> str:
    import ours  # bench/ is on the path: this script runs from it

    return ours.tree_commit(tree)


def summary(runs: list[dict]) -> dict:
    def median(key):
        return round(statistics.median(r[key] for r in runs), 1)

    return {"connect_first_ms": median("connect_first_ms"), "last_byte_ms": median("last_byte_ms"),
            "requests": median("requests"), "mb": round(statistics.median(r["bytes"] for r in runs) / 1e6, 1),
            "round_trips": median("round_trips"), "recall_at_10": round(statistics.mean(r["recall"] for r in runs), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-uri", required=True, help="s3://bucket/prefix that run.py --keep-store printed")
    parser.add_argument("--endpoint", default="127.0.0.1:8433")
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--rows", type=int, default=10_000_000, help="the namespace's rows (for recall@10)")
    parser.add_argument("--runs", type=int, default=15, help="cold queries per tree (query i: the data set's i-th)")
    parser.add_argument("--cache-bytes", type=int, default=4_508_000_000)
    parser.add_argument("--realistic", action="store_true",
                        help="the namespace is run.py --realistic's: recall against the rows its ingest left live")
    parser.add_argument("--batch", type=int, default=5000, help="run.py's --batch (which rows --realistic deleted)")
    parser.add_argument("--baseline-tree", help="a checkout whose code answers the same queries, alternated")
    parser.add_argument("--profile", action="store_true", help="profile this tree's last cold query")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    trees = {"this tree": ROOT}
    if args.baseline_tree:
        trees["baseline"] = Path(args.baseline_tree).resolve()
    procs = {name: start(tree, args) for name, tree in trees.items()}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    profile = None
    try:
        for i in range(args.runs):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                last = args.profile and name == "this tree" and i == args.runs - 1
                got = ask(procs[name], i, last)
                profile = got.pop("profile", profile)
                results[name].append(got)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    out = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "store_uri": args.store_uri, "rows": args.rows, "realistic": args.realistic, "queries": args.runs,
           "cpus": os.cpu_count(),
           "trees": {name: tree_commit(tree) for name, tree in trees.items()},
           "summary": {name: summary(runs) for name, runs in results.items()}, "runs": results}
    for name, s in out["summary"].items():
        print(f"{name:10s} cold connect->answer median {s['connect_first_ms']} ms (last byte at {s['last_byte_ms']} "
              f"ms), {s['requests']} requests, {s['mb']} MB, {s['round_trips']} round trips, "
              f"recall@10 {s['recall_at_10']}")
    if "baseline" in out["summary"]:
        ratio = out["summary"]["this tree"]["connect_first_ms"] / out["summary"]["baseline"]["connect_first_ms"]
        out["ratio"] = round(ratio, 3)
        print(f"this tree / baseline: {ratio:.3f}")
    if profile:
        print(profile)
    path = BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-cold-query.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
