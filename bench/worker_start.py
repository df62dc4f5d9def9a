"""A fresh query worker: process start -> first vector answer, this tree beside a baseline.

    python bench/worker_start.py [--baseline 9b6d589] [--starts 9] [--rows 20000] [--store s3|file]

Each tree (the working tree as it is, and ``--baseline``, a commit exported with ``git
archive``) writes the same rows (``--rows`` x 384, int8 segments, one indexed segment) with
its own code into a store of its own, and has its modules compiled as the Dockerfile
compiles them (``compileall``): a deployed worker loads bytecode, while a checkout run with
``PYTHONDONTWRITEBYTECODE=1`` compiles every project module at each start. Then the starts
alternate between the trees: ``vectordb serve --role query`` spawned, one vector query sent
as soon as it accepts a connection (``ours.Worker.first_answer``, as bench/run.py measures
it); the figure is spawn -> answer. Prints the medians, their ratio and each start; writes
``bench/results/<time>-worker-start.json``.

The worker's default settings apply (the embedder preload starts after the first answer).
Uses the SeaweedFS on 127.0.0.1:8333 if it works, else starts one (``s3.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import s3  # noqa: E402
from ours import NAMESPACE, Worker, compile_sources  # noqa: E402

from vectordb.testing import ACCESS_KEY, SECRET_KEY  # noqa: E402

DIMS = 384

# Run by each tree's own interpreter in its own directory: the rows, written and indexed by
# that tree's code (a baseline may not read what this tree writes, nor the other way).
WRITE = """
import sys
import numpy as np
from api.service import Service
from vectordb.settings import Settings
rows, seed, ns, dims = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
svc = Service(Settings(auto_index=False, preload_embedder=""))
svc.create_namespace(ns, "none", dims, "cosine", None, "int8")
rng = np.random.default_rng(seed)
for lo in range(0, rows, 5000):
    block = rng.normal(size=(min(5000, rows - lo), dims)).astype(np.float32)
    svc.upsert(ns, [{"id": f"d{lo + i}", "vector": v.tolist()} for i, v in enumerate(block)])
svc.index(ns)
svc.close()
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def export_tree(rev: str | None, into: Path) -> Path:
    """The working tree as it is (``rev`` None: tracked and untracked files git does not
    ignore), or commit ``rev``, copied to ``into``; the project's venv beside it."""
    into.mkdir(parents=True)
    if rev is None:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                                capture_output=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            source = ROOT / name
            if source.is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, into / name)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / ".venv").symlink_to(ROOT / ".venv")
    compile_sources(into)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="9b6d589", help="a commit to run beside this tree ('' for none)")
    parser.add_argument("--starts", type=int, default=9, help="starts of each tree")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--store", choices=("s3", "file"), default="s3")
    parser.add_argument("--endpoint", help="S3 endpoint host:port (default: 127.0.0.1:8333, started if needed)")
    parser.add_argument("--out", help="JSON path (default bench/results/<time>-worker-start.json)")
    args = parser.parse_args()

    started_at = datetime.now(timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix="vdb-start-"))
    try:
        with s3.endpoint(args.endpoint, workdir, log) as endpoint:
            trees = {"this tree": export_tree(None, workdir / "head")}
            if args.baseline:
                trees[args.baseline] = export_tree(args.baseline, workdir / "base")
            envs = {}
            for name, tree in trees.items():
                if args.store == "s3":
                    env = {"VECTORDB_STORE_URI": f"s3://{s3.BUCKET}/worker-start-{uuid.uuid4().hex[:10]}",
                           "VECTORDB_S3_ENDPOINT": endpoint, "VECTORDB_S3_ACCESS_KEY": ACCESS_KEY,
                           "VECTORDB_S3_SECRET_KEY": SECRET_KEY}
                else:
                    env = {"VECTORDB_STORE_URI": f"file://{workdir}/{tree.name}-store"}
                log(f"{name}: writing {args.rows:,} rows with its own code")
                subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", WRITE, str(args.rows), "7", NAMESPACE, str(DIMS)],
                               cwd=tree, env={**os.environ, **env}, check=True)
                envs[name] = env
            body = orjson.dumps({"vector": np.random.default_rng(3).normal(size=DIMS).tolist(), "top_k": 10,
                                 "consistency": "strong"})
            samples: dict[str, list[dict]] = {name: [] for name in trees}
            for n in range(args.starts):
                for name, tree in trees.items():
                    worker = Worker(envs[name], "query", workdir / f"{tree.name}.log", root=tree)
                    try:
                        accepted_s, answered_s, _ = worker.first_answer(body)
                    finally:
                        worker.stop()
                    samples[name].append({"accepted_ms": round(accepted_s * 1000, 1),
                                          "answered_ms": round(answered_s * 1000, 1)})
                    log(f"start {n + 1} {name}: accepting {accepted_s * 1000:.0f} ms, answered {answered_s * 1000:.0f} ms")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {"started": started_at.isoformat(timespec="seconds"), "rows": args.rows, "store": args.store,
              "starts": args.starts, "loadavg": os.getloadavg()[0], "trees": {}}
    for name, runs in samples.items():
        result["trees"][name] = {
            "answered_p50_ms": round(statistics.median(r["answered_ms"] for r in runs), 1),
            "accepted_p50_ms": round(statistics.median(r["accepted_ms"] for r in runs), 1),
            "runs": runs,
        }
    print(f"\nprocess start -> first vector answer, {args.rows:,} x {DIMS} int8 on {args.store}, "
          f"{args.starts} starts each, alternated (load average {result['loadavg']:.2f} at the end):")
    for name, r in result["trees"].items():
        print(f"  {name:12} accepting {r['accepted_p50_ms']:7.1f} ms   answered {r['answered_p50_ms']:7.1f} ms (median)")
    if args.baseline:
        ours, base = (result["trees"][k]["answered_p50_ms"] for k in trees)
        result["ratio"] = round(ours / base, 3)
        print(f"  ratio this tree / {args.baseline}: {result['ratio']}")
    out = Path(args.out) if args.out else BENCH / "results" / f"{started_at:%Y%m%d-%H%M%S}-worker-start.json"
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
