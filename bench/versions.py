"""What versions cost (issue 14): branch creation, reads as of a past version, backups.

One command, on SeaweedFS (started here unless ``--endpoint`` is given or one answers on
127.0.0.1:8333):

1. a namespace of ``--rows`` documents (default 1,000,000): 384-d unit vectors, a short
   text and attributes ``{year, tenant}`` each, upserted as Arrow batches and indexed
   (int8 segments, as the vector benchmark uses); then 1 % deleted and indexed again, and
   a tail of 2,000 more rows. Version *past* is the one before the deletes.
2. **branch**: ``Service.branch`` of the newest version: wall time, requests and bytes
   written (a counting store under the cache).
3. **as_of**: vector queries (top 10) against the newest version and against *past*, the
   same queries, in one process: warm p50/p99 of each and the ratio; then cold (a fresh
   service with an empty cache, first query) for each, ``--colds`` times, alternating.
4. **backup**: ``ingest.backup.copy_version`` of the newest version into another bucket,
   then back under a new name: MB, seconds, MB/s.

Prints a table and writes ``bench/results/<time>-versions-<rows>.json``. The machine's
load changes absolute numbers: the as_of ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from api.service import Service  # noqa: E402
from bench import s3 as s3_mod  # noqa: E402
from bench.counting import CountingStore  # noqa: E402
from ingest.backup import copy_version  # noqa: E402
from storage import open_raw_store  # noqa: E402
from storage.cache import CachedStore  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

DIMS = 384
WORDS = ["vitamin", "cancer", "risk", "heart", "statin", "diet", "sleep", "sugar", "fibre", "iron", "study", "trial"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def batch(lo: int, hi: int, rng: np.random.Generator):
    import pyarrow as pa

    vectors = rng.standard_normal((hi - lo, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"doc-{i}" for i in range(lo, hi)]
    texts = [f"{WORDS[i % 12]} {WORDS[(i * 7) % 12]} {WORDS[(i * 5) % 12]} report {i}" for i in range(lo, hi)]
    attrs = [json.dumps({"year": 2000 + i % 25, "tenant": f"t{i % 50}"}) for i in range(lo, hi)]
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, DIMS), "text": texts,
                     "attributes": attrs})


def settings_for(endpoint: str, uri: str, **extra) -> Settings:
    return Settings(store_uri=uri, s3_endpoint=endpoint, s3_access_key=s3_mod.ACCESS_KEY,
                    s3_secret_key=s3_mod.SECRET_KEY, preload_embedder="", auto_index=False,
                    group_commit_ms=1, **extra)


def build(service: Service, rows: int, rng) -> tuple[int, int]:
    """The namespace; returns (version before the deletes, newest version)."""
    service.create_namespace("kb", embedder="none", dimensions=DIMS, metric="cosine", vector_dtype="int8")
    started, step = time.perf_counter(), 10_000
    for lo in range(0, rows, step):
        service.upsert_table("kb", batch(lo, min(rows, lo + step), rng))
    log(f"ingested {rows:,} rows in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    service.index("kb")
    log(f"indexed in {time.perf_counter() - started:.1f} s")
    past = service.describe("kb")["version"]
    doomed = [f"doc-{i}" for i in rng.choice(rows, rows // 100, replace=False)]
    for lo in range(0, len(doomed), 10_000):
        service.delete("kb", ids=doomed[lo : lo + 10_000])
    service.index("kb")
    service.upsert_table("kb", batch(rows, rows + 2000, rng))
    return past, service.describe("kb")["version"]


def timed_queries(service: Service, queries: np.ndarray, as_of) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        service.query("kb", vector=q, top_k=10, as_of=as_of)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--colds", type=int, default=5)
    parser.add_argument("--endpoint", help="host:port of a running S3 server")
    parser.add_argument("--out", help="result JSON (default bench/results/<time>-versions-<rows>.json)")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    result: dict = {"rows": args.rows, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory() as work, s3_mod.endpoint(args.endpoint, Path(work), log) as endpoint:
        run = uuid.uuid4().hex[:8]
        uri = f"s3://{s3_mod.BUCKET}/versions-{run}"
        service = Service(settings_for(endpoint, uri))
        past, newest = build(service, args.rows, rng)
        result["versions"] = {"past": past, "newest": newest}

        # Branch creation: time and what it writes.
        counting = CountingStore(open_raw_store(service.settings))
        brancher = Service(service.settings, store=CachedStore(counting, 1 << 30))
        counting.take()
        t = time.perf_counter()
        brancher.branch("kb-branch", "kb")
        seconds = time.perf_counter() - t
        writes = [r for r in counting.take() if r.op in ("PUT", "PUT_IF_ABSENT")]
        result["branch"] = {"seconds": seconds, "puts": len(writes), "bytes_written": sum(r.bytes for r in writes),
                            "namespace_bytes": service.describe("kb")["bytes"]}
        log(f"branch: {seconds * 1000:.0f} ms, {len(writes)} PUTs, {sum(r.bytes for r in writes):,} bytes written "
            f"(the namespace holds {service.describe('kb')['bytes']:,} bytes)")

        # as_of beside the newest version, warm then cold, the same queries.
        queries = rng.standard_normal((args.queries, DIMS)).astype(np.float32)
        reader = Service(service.settings)
        for as_of in (None, past):
            timed_queries(reader, queries[:20], as_of)  # warm both up
        warm = {"newest": [], "as_of": []}
        for lo in range(0, args.queries, 50):  # alternate in blocks: the same load for both
            warm["newest"] += timed_queries(reader, queries[lo : lo + 50], None)
            warm["as_of"] += timed_queries(reader, queries[lo : lo + 50], past)
        cold = {"newest": [], "as_of": []}
        for n in range(args.colds):
            for name, as_of in (("newest", None), ("as_of", past)) if n % 2 == 0 else (("as_of", past), ("newest", None)):
                fresh = Service(service.settings)
                cold[name] += timed_queries(fresh, queries[n : n + 1], as_of)
                fresh.close()
        result["queries"] = {
            kind: {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "n": len(v)} for name, v in series.items()}
            for kind, series in (("warm", warm), ("cold", cold))
        }
        for kind in ("warm", "cold"):
            q = result["queries"][kind]
            q["ratio_p50"] = q["as_of"]["p50_ms"] / q["newest"]["p50_ms"]
            log(f"{kind}: newest p50 {q['newest']['p50_ms']:.2f} ms, as_of p50 {q['as_of']['p50_ms']:.2f} ms "
                f"({q['ratio_p50']:.2f}x)")

        # Backup into another bucket and back.
        backup = Service(settings_for(endpoint, f"s3://backup-{run}/vectordb"))
        t = time.perf_counter()
        copied = copy_version(service.catalog, "kb", backup.catalog, "kb")
        backup_s = time.perf_counter() - t
        restored = Service(settings_for(endpoint, f"{uri}-restored"))
        t = time.perf_counter()
        copy_version(backup.catalog, "kb", restored.catalog, "kb-restored")
        restore_s = time.perf_counter() - t
        same = [h.id for h in restored.query("kb-restored", vector=queries[0], top_k=10).hits] == [
            h.id for h in service.query("kb", vector=queries[0], top_k=10).hits]
        result["backup"] = {"objects": copied.objects, "bytes": copied.bytes, "backup_s": backup_s,
                            "restore_s": restore_s, "backup_mb_s": copied.bytes / 1e6 / backup_s,
                            "restore_mb_s": copied.bytes / 1e6 / restore_s, "same_answers": same}
        log(f"backup: {copied.objects} objects, {copied.bytes / 1e6:.1f} MB in {backup_s:.1f} s "
            f"({copied.bytes / 1e6 / backup_s:.1f} MB/s); restore {restore_s:.1f} s; same answers: {same}")
        s3_mod.remove_prefixes(endpoint, [f"versions-{run}", f"versions-{run}-restored"], log)
    out = Path(args.out) if args.out else BENCH / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-versions-{args.rows}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
