"""Issue 13: an index build's peak memory, and a namespace grown by many batches.

    .venv/bin/python bench/bounded_build.py [--rows 1000000] [--grow-rows 200000] [--batches 100]

On SeaweedFS (started here unless ``--s3`` names an endpoint), with the MiniLM-like set of
``bench/dataset.py``:

1. **build**: ``--rows`` rows are written as WAL objects (100 commits, no index), then one
   index build runs in a fresh child process (``Service.index``, as ``POST /index``
   would, upload and commit included) with ``build_memory_bytes`` = ``--memory``: its
   peak RSS (VmHWM), RSS before the build (imports done), build seconds. Beside it, in another child, the build as it was
   before issue 13 (the tree at ``git HEAD``, its ``Indexer._build``: fold the tail, build
   the segment in memory, no upload) on the same WAL, unless ``--old-rows 0``. ``--rows 0``
   skips this phase.
2. **grow**: ``--grow-rows`` rows in ``--batches`` successive batches, with the background
   builder's policy after each (a build once the tail passes ``index_threshold_rows``,
   tiered merges, no manual compaction); then warm
   p50 and recall@10 of 1,000 queries (eventual reads, in-process, after a warm-up pass);
   then the same rows compacted (``index(compact=True)``) and the same measures. Each state
   also gets a cold query: a fresh Service (empty cache, FAISS already imported) per query,
   connect -> answer, and the requests, bytes and sequential round trips that reached the
   store (``counting.py``); the median of 3. With ``--share-centroids both`` (the
   default) the same batches grow a second namespace with ``share_centroids`` off (each
   build trains centroids of its own, as before), measured the same way beside it.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dataset as ds_mod  # noqa: E402
import s3 as s3_mod  # noqa: E402
from counting import CountingStore, describe_requests  # noqa: E402

from api.service import Service  # noqa: E402
from storage import CachedStore, open_raw_store  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

NS = "bounded"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def settings_for(endpoint: str, prefix: str, **update) -> Settings:
    return Settings(store_uri=f"s3://{s3_mod.BUCKET}/{prefix}", s3_endpoint=endpoint, s3_access_key=s3_mod.ACCESS_KEY,
                    s3_secret_key=s3_mod.SECRET_KEY, preload_embedder="", auto_index=False, **update)


def write_wal(svc: Service, ns: str, base: np.ndarray, lo: int, hi: int, batches: int) -> None:
    import pyarrow as pa

    step = max(1, (hi - lo) // batches)
    for a in range(lo, hi, step):
        b = min(hi, a + step)
        vectors = np.ascontiguousarray(base[a:b], np.float32)
        table = pa.table({"id": [ds_mod.doc_id(i) for i in range(a, b)],
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])})
        svc.upsert_table(ns, table)


# --- child processes ----------------------------------------------------------------------------

def memory_kb() -> tuple[int, int]:
    """(RSS now, peak RSS) of this process in KiB, from /proc: the peak (VmHWM) is this
    process image's own (ru_maxrss would carry the parent's over fork + exec)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


_OLD_BUILD = """
import json, sys, time
from pathlib import Path
from api.service import Service
from vectordb.settings import Settings
def memory_kb():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
settings = Settings(**json.loads(sys.argv[1]))
svc = Service(settings)
base = svc.catalog.latest(sys.argv[2])
import faiss, pyarrow.parquet  # noqa: imports out of the measure, as the streamed child has them
before, _ = memory_kb()
started = time.perf_counter()
build = svc.indexer._build(base, False)
seconds = time.perf_counter() - started
print(json.dumps({"rows": build.rows, "seconds": seconds, "before_kb": before, "peak_kb": memory_kb()[1]}))
"""


def child_build(settings_json: str, ns: str) -> None:
    """In a fresh process: one index build (upload and commit included), its peak RSS."""
    import faiss  # noqa: F401  (imports out of the measure)
    import pyarrow.parquet  # noqa: F401

    svc = Service(Settings(**json.loads(settings_json)))
    before, _ = memory_kb()
    started = time.perf_counter()
    result = svc.index(ns)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": result.indexed_rows, "seconds": seconds, "before_kb": before, "peak_kb": memory_kb()[1]}))


def run_child(argv: list[str], cwd: Path, env: dict | None = None) -> dict:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_at(rev: str, target: Path) -> Path:
    """The repository's packages at git revision ``rev``, extracted into ``target`` (once)."""
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev, "api", "ingest", "storage", "vectordb", "query"],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def old_tree(workdir: Path) -> Path:
    """The repository at git HEAD (before this change), extracted read-only."""
    return tree_at("HEAD", workdir / "head-tree")


# --- measures -----------------------------------------------------------------------------------


def query_measures(svc: Service, ns: str, data: ds_mod.Dataset, n: int) -> dict:
    queries = data.queries[:n]
    for q in queries:  # warm-up
        svc.query(ns, vector=q.tolist(), top_k=10, consistency="eventual")
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        hits = svc.query(ns, vector=q.tolist(), top_k=10, consistency="eventual").hits
        times.append(time.perf_counter() - started)
        found.append([int(h.id.removeprefix("r")) for h in hits])
    manifest = svc.catalog.latest(ns)
    return {"segments": len(manifest.segments), "segment_rows": sorted(s.live_rows for s in manifest.segments),
            "tail_rows": manifest.unindexed_rows,
            "warm_p50_ms": round(statistics.median(times) * 1000, 2),
            "recall_at_10": round(ds_mod.recall_at_k(found, data.gt[:n]), 4)}


def cold_measures(settings: Settings, ns: str, data: ds_mod.Dataset, colds: int = 3) -> dict:
    """Fresh Services (empty caches), one query each: connect -> answer and what reached the
    store (requests, bytes, sequential round trips); the run with the median time."""
    runs = []
    for i in range(colds):
        started = time.perf_counter()
        counting = CountingStore(open_raw_store(settings))
        svc = Service(settings, store=CachedStore(counting, settings.cache_bytes))
        counting.take()
        svc.query(ns, vector=data.queries[-1 - i].tolist(), top_k=10, consistency="eventual")
        elapsed = time.perf_counter() - started
        seen = describe_requests(counting.take())
        runs.append({"connect_answer_ms": round(elapsed * 1000, 1), "requests": seen["requests"],
                     "bytes": seen["bytes"], "round_trips": seen["round_trips"]})
        svc.close()
    return sorted(runs, key=lambda run: run["connect_answer_ms"])[len(runs) // 2]


def grow(endpoint: str, prefix: str, data: ds_mod.Dataset, rows: int, batches: int, queries: int,
         share: bool = True, compact: bool = True) -> dict:
    settings = settings_for(endpoint, prefix, share_centroids=share)
    svc = Service(settings)
    svc.create_namespace(NS, "none", data.base.shape[1], "cosine")
    step = rows // batches
    started = time.perf_counter()
    builds = 0
    for b in range(batches):
        write_wal(svc, NS, data.base, b * step, (b + 1) * step, 1)
        # What Indexer.maybe_index starts after a commit (here synchronously, so the
        # measure does not depend on thread timing): a build once the tail passes the
        # threshold, merging segments as the tiered policy says.
        if svc.catalog.latest(NS).unindexed_rows >= settings.index_threshold_rows:
            svc.index(NS)
            builds += 1
    out = {"grow_s": round(time.perf_counter() - started, 1), "builds": builds}
    out["grown"] = query_measures(svc, NS, data, queries)
    manifest = svc.catalog.latest(NS)
    out["grown"]["centroid_sets"] = len({svc.reader.layout(NS, seg).centroid_set or seg.id for seg in manifest.segments})
    out["grown_cold"] = cold_measures(settings, NS, data)
    if not compact:
        svc.close()
        return out
    started = time.perf_counter()
    svc.index(NS, compact=True)
    out["compact_s"] = round(time.perf_counter() - started, 1)
    out["compacted"] = query_measures(svc, NS, data, queries)
    out["compacted_cold"] = cold_measures(settings, NS, data)
    out["batches"] = batches
    out["p50_ratio"] = round(out["grown"]["warm_p50_ms"] / out["compacted"]["warm_p50_ms"], 2)
    svc.close()
    return out


def build_phase(args, data: ds_mod.Dataset, endpoint: str, prefix: str, workdir: Path, result: dict) -> None:
    """``--rows`` rows as WAL objects, then the streamed build in a child process (and the
    old in-memory build of git HEAD beside it, unless ``--old-rows 0``)."""
    settings = settings_for(endpoint, prefix + "-build", build_memory_bytes=args.memory)
    svc = Service(settings)
    svc.create_namespace(NS, "none", data.base.shape[1], "cosine")
    log(f"writing {args.rows:,} rows as WAL objects")
    write_wal(svc, NS, data.base, 0, args.rows, 100)
    svc.close()
    settings_json = settings.model_dump_json()
    old_rows = args.rows if args.old_rows is None else args.old_rows
    if old_rows:
        old_ns = NS if old_rows == args.rows else f"{NS}-old"
        if old_ns != NS:
            svc = Service(settings)
            svc.create_namespace(old_ns, "none", data.base.shape[1], "cosine")
            write_wal(svc, old_ns, data.base, 0, old_rows, 100)
            svc.close()
        log(f"old in-memory build of {old_rows:,} rows (git HEAD)")
        tree = old_tree(workdir)
        result["old_build"] = {"rows": old_rows, **run_child(
            [sys.executable, "-c", _OLD_BUILD, settings_json, old_ns], tree, {"PYTHONPATH": str(tree)})}
    log(f"streamed build of {args.rows:,} rows")
    result["streamed_build"] = run_child([sys.executable, __file__, "--child", settings_json, NS], ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the build phase (0: only the grow phase)")
    parser.add_argument("--memory", type=int, default=2 * 1024**3, help="build_memory_bytes of the build")
    parser.add_argument("--old-rows", type=int, default=None, help="rows for the old build (default: --rows; 0: skip)")
    parser.add_argument("--grow-rows", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--share-centroids", choices=("on", "off", "both"), default="both",
                        help="the grow phase's share_centroids; both: grow again with it off, beside (the baseline)")
    parser.add_argument("--s3", default=None, help="host:port of an S3 endpoint (default: SeaweedFS started here)")
    parser.add_argument("--child", nargs=2, metavar=("SETTINGS_JSON", "NS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_build(*args.child)
        return 0
    data = ds_mod.prepare(max(args.rows, args.grow_rows), sanity=False)
    # The SeaweedFS started here keeps its data in the work dir (GBs at 1M rows): removed at
    # the end, with the server stopped first.
    workdir = Path(tempfile.mkdtemp(prefix="bounded-build-"))
    try:
        prefix = f"bounded-{int(time.time())}"
        result: dict = {"rows": args.rows, "memory_bytes": args.memory, "cpus": os.cpu_count()}
        with s3_mod.endpoint(args.s3, workdir, log) as endpoint:
            try:
                if args.rows:
                    build_phase(args, data, endpoint, prefix, workdir, result)
                log(f"growing a namespace of {args.grow_rows:,} rows by {args.batches} batches")
                grow_data = ds_mod.prepare(args.grow_rows, sanity=False)
                result["grow"] = grow(endpoint, prefix + "-grow", grow_data, args.grow_rows, args.batches, args.queries,
                                      share=args.share_centroids != "off")
                if args.share_centroids == "both":  # the baseline, in this run: every build with centroids of its own
                    log("again, each build training centroids of its own (share_centroids off)")
                    unshared = grow(endpoint, prefix + "-grow-unshared", grow_data, args.grow_rows, args.batches,
                                    args.queries, share=False, compact=False)
                    result["grow"]["unshared"] = unshared
                    result["grow"]["unshared_p50_ratio"] = round(
                        unshared["grown"]["warm_p50_ms"] / result["grow"]["compacted"]["warm_p50_ms"], 2)
            finally:
                s3_mod.remove_prefixes(endpoint, [prefix + "-build", prefix + "-grow", prefix + "-grow-unshared"], log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(result))
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-bounded-build-{args.rows}.json"
    out.write_text(json.dumps(result, indent=1))
    return 0


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f} MB"


def report(r: dict) -> str:
    lines = [f"bounded build: {r['rows']:,} rows x 384, build_memory_bytes {r['memory_bytes'] / 2**30:.2f} GiB, "
             f"{r['cpus']} CPUs, SeaweedFS"]
    for name in ("old_build", "streamed_build"):
        b = r.get(name)
        if not b:
            continue
        if "error" in b:
            lines.append(f"  {name}: failed: {b['error']}")
            continue
        lines.append(f"  {name:15s} rows {b['rows']:>9,}  peak RSS {mb(b['peak_kb']):>9s}  "
                     f"(before the build {mb(b['before_kb'])})  {b['seconds']:.1f} s")
    g = r.get("grow")
    if g:
        lines.append(f"  grown by {g.get('batches', '?')} batches, {g['builds']} background builds ({g['grow_s']} s): {g['grown']}")
        lines.append(f"  compacted ({g['compact_s']} s): {g['compacted']}")
        lines.append(f"  warm p50 grown / compacted: {g['p50_ratio']}")
        if "unshared" in g:
            u = g["unshared"]
            lines.append(f"  grown with centroids of its own per build ({u['builds']} builds, {u['grow_s']} s): {u['grown']}")
            lines.append(f"  warm p50 grown without shared centroids / compacted: {g['unshared_p50_ratio']}")
            lines.append(f"  unshared_cold: fresh process connect -> answer {u['grown_cold']['connect_answer_ms']} ms, "
                         f"{u['grown_cold']['round_trips']} sequential round trips, {u['grown_cold']['requests']} "
                         f"requests, {u['grown_cold']['bytes']:,} bytes")
        for name in ("grown_cold", "compacted_cold"):
            if name in g:
                c = g[name]
                lines.append(f"  {name}: fresh process connect -> answer {c['connect_answer_ms']} ms, "
                             f"{c['round_trips']} sequential round trips, {c['requests']} requests, {c['bytes']:,} bytes")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
