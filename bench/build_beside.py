"""Issue 13: an index build beside an indexed segment, this tree against a baseline revision,
in one command.

    .venv/bin/python bench/build_beside.py --baseline REV [--seg-rows 1000000] [--tail-rows 2000000]

A namespace on a local ``file://`` store (int8, cosine, the MiniLM-like vectors of
``bench/dataset.py``) gets ``--seg-rows`` rows, indexed into one segment, then a tail of
``--tail-rows`` rows as WAL objects of 10,000 rows: every row with text (an NFCorpus
abstract's first 400 characters) and attributes, ``--overwrite`` of the tail's rows
updates of the segment's ids, and ``--delete`` of the segment's ids deleted. Then, in a
fresh process each, the build that ``POST /index`` would run on that version
(``Indexer._build``: the streamed fold of the tail, the tombstone lists of the segment
it keeps, the new segment's files on local disk; not uploaded or committed, so every run
builds the same version), once with the tree at ``--baseline`` (extracted with ``git
archive``) and once with this one, alternating for ``--rounds``. Per run: the process's
peak RSS (VmHWM), its RSS before the build (imports done), the build's seconds and rows,
and the tombstones it wrote; then the ratios this tree / baseline. Writes
``bench/results/<time>-build-beside-<seg>-<tail>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402
import ours  # noqa: E402
from bounded_build import tree_at  # noqa: E402

NS = "beside"

_BUILD = """
import json, sys, time
from pathlib import Path
def memory_kb():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
import faiss, pyarrow.parquet  # noqa: imports out of the measure
from api.service import Service
from vectordb.settings import Settings
svc = Service(Settings(**json.loads(sys.argv[1])))
base = svc.catalog.latest(sys.argv[2])
merge = svc.indexer._plan(base, False)
before, _ = memory_kb()
started = time.perf_counter()
build = svc.indexer._build(base, merge)
seconds = time.perf_counter() - started
peak = memory_kb()[1]
dead = {seg: len(t.ids) for seg, t in build.dead.items()}
print(json.dumps({"rows": build.rows, "merged": len(merge), "seconds": round(seconds, 2), "before_mb": round(before / 1024, 1),
                  "peak_mb": round(peak / 1024, 1), "tombstones": dead}))
build.close()
svc.close()
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write(svc, base: np.ndarray, rows: range, ids, step: int = 10_000) -> None:
    import pyarrow as pa

    for lo in range(rows.start, rows.stop, step):
        hi = min(rows.stop, lo + step)
        columns = ours.realistic_columns(lo, hi)
        columns["id"] = [ids(r) for r in range(lo, hi)]
        block = np.ascontiguousarray(base[lo:hi], np.float32)
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
        svc.upsert_table(NS, pa.table(columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare with (its tree is built the same way)")
    parser.add_argument("--seg-rows", type=int, default=1_000_000)
    parser.add_argument("--tail-rows", type=int, default=2_000_000)
    parser.add_argument("--overwrite", type=float, default=0.1, help="share of the tail's rows that update segment ids")
    parser.add_argument("--delete", type=float, default=0.01, help="share of the segment's ids deleted")
    parser.add_argument("--memory", type=int, default=2 * 1024**3, help="build_memory_bytes")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from api.service import Service
    from vectordb.settings import Settings

    started = datetime.datetime.now(datetime.timezone.utc)
    seg, tail = args.seg_rows, args.tail_rows
    ds_mod.prepare(seg + tail, 42, log, sanity=False)
    data = ds_mod.load(seg + tail, 42, 1)
    ds_mod.CACHE.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=ds_mod.CACHE, prefix="beside-"))
    try:
        settings = Settings(store_uri=f"file://{workdir}/store", preload_embedder="", auto_index=False,
                            build_memory_bytes=args.memory, build_temp_dir=str(workdir / "tmp"))
        (workdir / "tmp").mkdir()
        svc = Service(settings)
        svc.create_namespace(NS, "none", ds_mod.DIMS, "cosine", vector_dtype="int8")
        log(f"{seg:,} rows, indexed")
        write(svc, data.base, range(0, seg), ds_mod.doc_id)
        svc.index(NS)
        every = max(1, round(1 / args.overwrite)) if args.overwrite > 0 else 0
        log(f"a tail of {tail:,} rows ({args.overwrite:.0%} updates of the segment's ids), {args.delete:.1%} of the segment deleted")
        write(svc, data.base, range(seg, seg + tail),
              lambda r: ds_mod.doc_id((r - seg) * 7919 % seg) if every and r % every == 0 else ds_mod.doc_id(r))
        doomed = [ds_mod.doc_id(r) for r in range(3, seg, max(1, round(1 / args.delete)))] if args.delete > 0 else []
        for lo in range(0, len(doomed), 1000):
            svc.delete(NS, ids=doomed[lo : lo + 1000])
        svc.close()
        trees = {"baseline": tree_at(args.baseline, workdir / f"tree-{args.baseline}"), "this tree": ROOT}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
                out = subprocess.run([sys.executable, "-c", _BUILD, settings.model_dump_json(), NS], cwd=trees[name],
                                     capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(trees[name])})
                if out.returncode != 0:
                    raise SystemExit(f"{name} build failed:\n{out.stderr[-3000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs[name].append(result)
                log(f"round {r + 1}, {name}: {result}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = {name: {k: statistics.median(run[k] for run in rs) for k in ("peak_mb", "seconds", "before_mb")}
              for name, rs in runs.items()}
    ratios = {k: round(median["this tree"][k] / median["baseline"][k], 3) for k in ("peak_mb", "seconds")}
    report = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "baseline": args.baseline,
              "seg_rows": seg, "tail_rows": tail, "overwrite": args.overwrite, "delete": args.delete,
              "build_memory_bytes": args.memory, "cpus": os.cpu_count(), "runs": runs, "median": median,
              "this_over_baseline": ratios}
    print("\n| tree | peak RSS MB (runs) | RSS before MB | build s (runs) |")
    print("| --- | --- | --- | --- |")
    for name, rs in runs.items():
        print(f"| {name} | {', '.join(str(x['peak_mb']) for x in rs)} | {median[name]['before_mb']} | "
              f"{', '.join(str(x['seconds']) for x in rs)} |")
    print(f"this tree / baseline: peak RSS {ratios['peak_mb']}, build seconds {ratios['seconds']}")
    out = args.out or ROOT / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}-build-beside-{seg}-{tail}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
