"""Ingest with the service's background builds on beside the same ingest with them off, in
one command (issue 13: "ingest ≥ 50,000 vectors/s acknowledged durable, sustained while
background builds run").

    .venv/bin/python bench/ingest_builds.py [--rows 1000000] [--rounds 2] [--endpoint host:port]

Each run is ``ours.ingest`` as ``run.py`` measures it: a fresh ``vectordb serve --role
ingest`` process on its own prefix of one SeaweedFS bucket, ``--clients`` HTTP clients
sending ``--batch`` precomputed vectors (Arrow) per upsert, acknowledged = durable. With
builds off (``VECTORDB_AUTO_INDEX=false``) nothing is indexed until the ``POST /index``
after the last upsert; with them on (the default of a deployment), a build starts in the
ingest process whenever the tail passes ``index_threshold_rows`` and competes with the
upserts for the cores (at ``background_nice`` steps below them: ``--nice``, one mode per
value; in a child process at the idle priority, in one at background_nice only, or in a
thread of the server: ``--builds``), and ``POST /index`` builds what is left. Runs alternate (off, on, then on, off,
...), so drift on the shared machine falls on every mode; the medians and their ratios
to "off" are printed. Per run: vectors/s, per tenth of the rows, upsert p50 / p99, what the
background builds had indexed when the last upsert was acknowledged (segments, rows), the
``POST /index`` time after it, and the ingest process's peak RSS. ``--realistic``: rows with text and attributes, 5 % of them
updates of older rows, and deletes between batches (``ours.realistic_columns``).
``--baseline-tree DIR`` (a checkout of another commit, with the same ``.venv``): every mode
runs a second time with the ingest server from that tree (``MODE@baseline``), alternated
with this tree's, and the ratios of this tree's medians to the baseline's are printed. Writes
``bench/results/<time>-ingest-builds-<rows>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402
import ours  # noqa: E402
import s3  # noqa: E402

from vectordb.testing import ACCESS_KEY, SECRET_KEY  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_run(data, endpoint: str, prefix: str, workdir: Path, mode: str, args) -> dict:
    """One ingest: ``mode`` "off" (no background builds) or "on-WHERE-niceN" (builds in a
    child process or a thread of the server, at nice N), with "@baseline" the server of
    ``--baseline-tree``."""
    mode, _, tree = mode.partition("@")
    env = {
        "VECTORDB_STORE_URI": f"s3://{s3.BUCKET}/{prefix}",
        "VECTORDB_S3_ENDPOINT": endpoint,
        "VECTORDB_S3_ACCESS_KEY": ACCESS_KEY,
        "VECTORDB_S3_SECRET_KEY": SECRET_KEY,
        "VECTORDB_AUTO_INDEX": "false" if mode == "off" else "true",
    }
    if mode != "off":
        _, where, nice = mode.split("-")
        env["VECTORDB_BACKGROUND_BUILDS"] = "thread" if where == "thread" else "process"
        env["VECTORDB_BACKGROUND_IDLE"] = "true" if where == "idle" else "false"
        env["VECTORDB_BACKGROUND_NICE"] = nice.removeprefix("nice")
    root = Path(args.baseline_tree).resolve() if tree else ROOT
    out = ours.ingest(data, env, workdir, args.clients, args.batch, "arrow", log, args.vector_dtype, args.realistic,
                      root)
    keep = ("ingest_vectors_per_s", "ingest_vectors_per_s_by_tenth", "ingest_s", "upsert_p50_ms", "upsert_p99_ms",
            "after_ingest_segments", "after_ingest_rows", "build_s", "segments", "after_ingest_peak_rss_mb",
            "build_peak_rss_mb", "bodies_encoded", "after_ingest_rss_mb", "build_rss_mb_every_5s", "stats",
            "delete_requests", "ids_deleted_named", "index_response")
    return {k: out[k] for k in keep if k in out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternated")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--vector-dtype", default="int8", choices=("float32", "float16", "int8"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--realistic", action="store_true",
                        help="rows with text (NFCorpus abstracts) and attributes, 5%% of them updates of rows "
                        "100,000 back, and 250 ids deleted after every 10th batch (bench/ours.py realistic_columns)")
    parser.add_argument("--nice", default="10",
                        help="background_nice values to run builds at, comma-separated (each a mode beside 'off')")
    parser.add_argument("--builds", default="idle",
                        help="where background builds run, comma-separated: idle (a child process at SCHED_IDLE, the "
                        "default), process (a child process, background_nice only), thread (background_builds)")
    parser.add_argument("--endpoint", help="S3 endpoint host:port (default: 127.0.0.1:8333, else a SeaweedFS of its own)")
    parser.add_argument("--baseline-tree",
                        help="a checkout of another commit (with .venv): each mode also runs with its ingest server")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    modes = ["off", *(f"on-{where}-nice{int(n)}" for where in args.builds.split(",") for n in args.nice.split(","))]
    if args.baseline_tree:
        modes = [m + tree for m in modes for tree in ("", "@baseline")]
    started = datetime.datetime.now(datetime.timezone.utc)
    ds_mod.prepare(args.rows, args.seed, log, sanity=False)
    data = ds_mod.load(args.rows, args.seed, 1)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    run_id = uuid.uuid4().hex[:8]
    ds_mod.CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ds_mod.CACHE, prefix="work-") as tmp, \
            s3.endpoint(args.endpoint, Path(tmp), log) as endpoint:
        client = s3.client(endpoint)
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                prefix = f"ingest-builds-{run_id}-{mode.replace('@', '-')}-{r}"
                log(f"round {r + 1}/{args.rounds}, background builds {mode}")
                result = one_run(data, endpoint, prefix, Path(tmp), mode, args)
                runs[mode].append(result)
                log(f"  {result['ingest_vectors_per_s']:,.0f} vectors/s; by tenth {result['ingest_vectors_per_s_by_tenth']}; "
                    f"indexed when the last upsert was acknowledged: {result['after_ingest_rows']}, "
                    f"{result['after_ingest_segments']} segments; POST /index after it {result['build_s']} s")
                # Each run's objects go: the disk holds one run at a time (10M int8 is ~15 GB of WAL).
                names = [o.object_name for o in client.list_objects(s3.BUCKET, prefix=prefix + "/", recursive=True)]
                for name in names:
                    client.remove_object(s3.BUCKET, name)
    medians = {m: statistics.median(r["ingest_vectors_per_s"] for r in runs[m]) for m in modes}
    report = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"), "rows": args.rows, "clients": args.clients,
        "batch": args.batch, "vector_dtype": args.vector_dtype, "realistic": args.realistic, "cpus": os.cpu_count(),
        "runs": runs,
        "median_vectors_per_s": medians,
        "over_off": {m: round(medians[m] / medians["off"], 3) for m in modes if m != "off"},
    }
    if args.baseline_tree:
        report["trees"] = {"this tree": ours.tree_commit(ROOT), "baseline": ours.tree_commit(Path(args.baseline_tree))}
        report["over_baseline"] = {m: round(medians[m] / medians[m + "@baseline"], 3) for m in modes if "@" not in m}
    print("\n| background builds | vectors/s (runs) | median | upsert p99 ms | indexed at the last ack | POST /index s "
          "| ingest worker peak MB while building |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m in modes:
        rs = runs[m]
        cells = [", ".join(f"{r['ingest_vectors_per_s']:,.0f}" for r in rs), f"{medians[m]:,.0f}",
                 ", ".join(str(r["upsert_p99_ms"]) for r in rs),
                 ", ".join(str(r["after_ingest_rows"].get("indexed")) for r in rs),
                 ", ".join(str(r["build_s"]) for r in rs),
                 ", ".join(str(r.get("build_peak_rss_mb")) for r in rs)]
        print(f"| {m} | {' | '.join(cells)} |")
    for m, ratio in report["over_off"].items():
        print(f"{m} / off (median vectors/s): {ratio}")
    for m, ratio in report.get("over_baseline", {}).items():
        print(f"{m}: this tree ({report['trees']['this tree']}) / baseline ({report['trees']['baseline']}), "
              f"median vectors/s: {ratio}")
    out = args.out or ROOT / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}-ingest-builds-{args.rows}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
