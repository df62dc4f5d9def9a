"""Documents, attributes and ids on demand (issue 12): the whole-docs layout (``docs.parquet``)
beside the by-range one, same rows, same store, same run.

    python bench/docs_on_demand.py [--docs 200000] [--store s3|file] [--latency-ms 5] [--warm 50]

The corpus follows the issue: ``--docs`` documents of 80-160 words, 384-d unit vectors,
attributes ``{year, tenant, tags, doc_id}`` (35 years, 10 tenants), one segment, then 1 %
of the documents deleted and indexed again (a tombstone list). Two namespaces hold the same
rows: ``whole`` built by the old writer (``segment.build(..., docs="whole")``), ``by-range``
by the new one.

Cold: for each query kind a fresh worker (a fresh read cache with a
:class:`CountingStore` below it, nothing decoded) answers it first; reported are the time,
the bytes and requests that reached the store and the sequential round trips (requests
overlapping in time are one; the manifest's probes count). Warm: p50 / p99 of ``--warm``
more of the same kind on that worker (new vectors, other ids). The answers of both layouts
are compared (they must be equal).

``--store s3`` (default) starts a SeaweedFS of its own (``s3.py``; ``--endpoint`` names another);
``--store file`` a temporary directory whose reads each take ``--latency-ms`` more.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import s3  # noqa: E402
from counting import CountingStore, describe_requests  # noqa: E402

from api.service import Service  # noqa: E402
from storage import CachedStore, open_raw_store  # noqa: E402
from vectordb import segment  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

DIMS = 384
LAYOUTS = ("whole", "by_range")
TAGS = [f"tag{i}" for i in range(50)]
BATCH = 10_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Delayed:
    """``inner`` with ``seconds`` added to every read (a stand-in for object-store latency)."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds, self.uri = inner, seconds, inner.uri

    def get(self, key: str) -> bytes:
        time.sleep(self.seconds)
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        time.sleep(self.seconds)
        return self.inner.get_range(key, start, length)

    def head(self, key: str):
        time.sleep(self.seconds)
        return self.inner.head(key)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@contextlib.contextmanager
def raw_store(args: argparse.Namespace, tmp: Path):
    """(store to build with, store to read through)."""
    if args.store == "file":
        inner = open_raw_store(Settings(store_uri=f"file://{tmp}/store"))
        yield inner, (Delayed(inner, args.latency_ms / 1000) if args.latency_ms else inner)
        return
    # Our own SeaweedFS unless told otherwise: a shared one on :8333 may be stopped by its
    # owner in the middle of a run.
    own = contextlib.nullcontext(args.endpoint) if args.endpoint else s3.seaweedfs(tmp / "seaweedfs", s3.weed_binary(), log)
    with own as ep:
        prefix = f"docs-{uuid.uuid4().hex[:8]}"
        settings = Settings(store_uri=f"s3://{s3.BUCKET}/{prefix}", s3_endpoint=ep, s3_access_key=s3.ACCESS_KEY,
                            s3_secret_key=s3.SECRET_KEY)
        store = open_raw_store(settings)
        try:
            yield store, store
        finally:
            with contextlib.suppress(Exception):
                s3.remove_prefixes(ep, [prefix], log)


def settings(**over) -> Settings:
    return Settings(**{"store_uri": "memory://unused", "group_commit_ms": 1, "auto_index": False, "preload_embedder": "",
                       "index_threshold_rows": 10**9, **over})


def corpus_batches(n: int, seed: int, words: list[str] | None = None, p: np.ndarray | None = None):
    """Arrow tables of ``BATCH`` documents: ids, vectors, texts, attributes.

    Words are drawn from ``words`` with probabilities ``p`` (e.g. NFCorpus's, see
    ``bm25_on_demand.word_frequencies``); by default from 20,000 made-up words, Zipf-distributed.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    if words is None:
        vocabulary = np.array([f"w{i}" for i in range(20_000)])
        zipf = 1.0 / np.arange(1, len(vocabulary) + 1)
        zipf /= zipf.sum()
    else:
        vocabulary, zipf = np.array(words), p
    for lo in range(0, n, BATCH):
        hi = min(n, lo + BATCH)
        vectors = rng.normal(size=(hi - lo, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        lengths = rng.integers(80, 161, hi - lo)
        words = vocabulary[rng.choice(len(vocabulary), int(lengths.sum()), p=zipf)]
        cuts = np.cumsum(lengths)[:-1]
        texts = [" ".join(w) for w in np.split(words, cuts)]
        attrs = [json.dumps({"year": int(1990 + rng.integers(35)), "tenant": f"t{int(rng.integers(10))}",
                             "tags": sorted(set(rng.choice(TAGS, int(rng.integers(1, 4))).tolist())),
                             "doc_id": f"d{i}"}) for i in range(lo, hi)]
        flat = pa.array(vectors.reshape(-1))
        yield pa.table({
            "id": pa.array([f"d{i}" for i in range(lo, hi)]),
            "vector": pa.FixedSizeListArray.from_arrays(flat, DIMS),
            "text": pa.array(texts),
            "attributes": pa.array(attrs),
        })


def build(store, n: int, seed: int) -> dict[str, dict]:
    """Both namespaces, and each segment's file sizes."""
    svc = Service(settings(), store=store)
    original = segment.build
    sizes = {}
    try:
        for layout in LAYOUTS:
            ns = layout.replace("_", "-")
            started = time.perf_counter()
            svc.create_namespace(ns, "none", DIMS, "cosine", chunking=False)
            for table in corpus_batches(n, seed):
                svc.upsert_table(ns, table)
            segment.build = functools.partial(original, docs=layout)
            svc.index(ns)
            segment.build = original
            svc.delete(ns, deleted_ids(n, seed))
            svc.index(ns)  # the deletes become the segment's tombstone list
            seg = svc.catalog.latest(ns).segments[0]
            sizes[layout] = {name: info.size for name in segment.FILES
                             if (info := store.head(segment.file_key(ns, seg.id, name))) is not None}
            log(f"built {ns}: {n} rows in {time.perf_counter() - started:.1f} s, {sizes[layout]}")
    finally:
        segment.build = original
    svc.close()
    return sizes


def deleted_ids(n: int, seed: int) -> list[str]:
    """The 1 % of the ``n`` documents that a build deletes after indexing."""
    rng = np.random.default_rng(seed + 1)
    return sorted({f"d{i}" for i in rng.choice(n, n // 100, replace=False).tolist()})


def query_vector(i: int) -> list[float]:
    """The ``i``-th query vector (a unit vector; 0 is the cold query's)."""
    q = np.random.default_rng(10_000 + i).normal(size=DIMS)
    return (q / np.linalg.norm(q)).tolist()


def document_id(i: int, n: int) -> str:
    """The ``i``-th id a GET asks for (1 % of them were deleted)."""
    return f"d{(i * 7919 + 13) % n}"


def hit_rows(hits) -> list:
    return [(h.id, round(h.score, 5), h.text) for h in hits]


def kinds(n: int):
    """(name, function(service, ns, i) -> comparable answer) per query kind."""
    vector, ids = query_vector, hit_rows

    def live_id(i: int) -> str:
        return document_id(i, n)

    return [
        ("vector + {year: {$gte: 2013}}",
         lambda svc, ns, i: ids(svc.query(ns, vector=vector(i), top_k=10, filter={"year": {"$gte": 2013}}).hits)),
        ("vector + {tenant: t7, year: 2020}",
         lambda svc, ns, i: ids(svc.query(ns, vector=vector(i), top_k=10, filter={"tenant": "t7", "year": 2020}).hits)),
        ("vector + include [text]",
         lambda svc, ns, i: ids(svc.query(ns, vector=vector(i), top_k=10, include=("text",)).hits)),
        ("GET /documents/{id}", lambda svc, ns, i: _get(svc, ns, live_id(i))),
        ("chunks of a document (upsert path)", lambda svc, ns, i: sorted(svc.engine.chunk_ids(ns, [live_id(i)]))),
    ]


def _get(svc: Service, ns: str, doc_id: str):
    try:
        return svc.get_document(ns, doc_id)
    except Exception as exc:  # a deleted id: both layouts must say so alike
        return type(exc).__name__


def cold_then_warm(read_store, ns: str, run, warm_count: int, trace: bool = False,
                   cache_bytes: int = 4 * 1024**3, **over) -> tuple[dict, list]:
    """One query kind on a fresh worker (its own empty cache over a :class:`CountingStore`):
    the first answer (cold: connect -> answer, what reached the store) and ``warm_count``
    more (warm p50 / p99). Returns (measures, answers). ``over``: the worker's settings."""
    counting = CountingStore(read_store)
    started = time.perf_counter()
    worker = Service(settings(**over), store=CachedStore(counting, cache_bytes))
    first = run(worker, ns, 0)
    elapsed = time.perf_counter() - started
    requests = describe_requests(counting.take())
    times, answers = [], [first]
    for i in range(1, warm_count + 1):
        started = time.perf_counter()
        answers.append(run(worker, ns, i))
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    worker.close()
    del worker
    gc.collect()  # the worker's cache goes now, not at some later collection: RSS is measured
    return {
        "cold_ms": round(elapsed * 1000, 1),
        "cold_mb": round(requests["bytes"] / 1e6, 3),
        "requests": requests["requests"],
        "round_trips": requests["round_trips"],
        "warm_p50_ms": round(statistics.median(times), 2) if times else None,
        "warm_p99_ms": round(times[int(0.99 * (len(times) - 1))], 2) if times else None,
        **(compact_trace(requests["trace"]) if trace else {}),
    }, answers


def warmed_then_queried(read_store, ns: str, runs: dict, warm_count: int, cache_bytes: int = 4 * 1024**3,
                        **over) -> tuple[dict, dict, dict]:
    """Every kind of ``runs`` (key -> run) on one fresh worker after the warm hint
    (``query.warm``, budget = its cache, documents included): what a worker that warmed on
    scale-up answers. Per kind: p50 / p99 of queries 1..``warm_count`` and the requests
    they sent to the store, per query (a strong read's newest-manifest probe is one).
    Returns (measures per kind, answers per kind, the warm hint's result)."""
    from query.warm import warm

    counting = CountingStore(read_store)
    worker = Service(settings(**over), store=CachedStore(counting, cache_bytes))
    rss_before = rss_mb()
    started = time.perf_counter()
    hint = warm(worker, ns, budget_bytes=cache_bytes, include_docs=True, load_embedder=False)
    hint["wall_s"] = round(time.perf_counter() - started, 2)
    hint["requests"] = len(counting.take())
    hint["rss_mb_before"], hint["rss_mb_after"] = rss_before, rss_mb()
    out, answers = {}, {}
    for key, run in runs.items():
        times, answers[key] = [], []
        for i in range(1, warm_count + 1):
            started = time.perf_counter()
            answers[key].append(run(worker, ns, i))
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        requests = counting.take()
        out[key] = {"warmed_p50_ms": round(statistics.median(times), 2) if times else None,
                    "warmed_p99_ms": round(times[int(0.99 * (len(times) - 1))], 2) if times else None,
                    "warmed_requests_per_query": round(len(requests) / max(1, warm_count), 2),
                    "warmed_bytes_per_query": round(sum(r.bytes for r in requests) / max(1, warm_count)),
                    "warmed_requests_by_file": dict(Counter(f"{r.op} {r.key.rsplit('/', 1)[-1]}"
                                                            for r in requests).most_common(8))}
    worker.close()
    return out, answers, hint


def rss_mb() -> float | None:
    """This process's resident memory now (Linux), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


TRACE_KEPT = 200  # requests of a cold query kept whole in a result; the rest are counted


def compact_trace(trace: list[dict]) -> dict:
    """A cold query's requests for a result file: the first ``TRACE_KEPT`` as they were,
    and the count and bytes of every (operation, file) (thousands of ranged GETs made a
    1M-chunk result 4 MB)."""
    by_file: dict[str, dict] = {}
    for r in trace:
        name = f"{r['op']} {r['key'].rsplit('/', 1)[-1]}"
        entry = by_file.setdefault(name, {"requests": 0, "bytes": 0})
        entry["requests"] += 1
        entry["bytes"] += r.get("bytes", 0)
    return {"trace": trace[:TRACE_KEPT], "trace_requests": len(trace), "trace_by_file": by_file}


def measure(read_store, n: int, warm_count: int, trace: bool = False) -> tuple[dict, list[str]]:
    results: dict[str, dict] = {}
    mismatches = []
    for name, run in kinds(n):
        answers = {}
        for layout in LAYOUTS:
            ns = layout.replace("_", "-")
            results.setdefault(name, {})[layout], answers[layout] = cold_then_warm(read_store, ns, run, warm_count, trace)
            log(f"{name} [{layout}]: {results[name][layout]}")
            if trace:
                for r in results[name][layout]["trace"]:
                    log(f"    {r['op']:9} {r['key'][-40:]:40} {r['bytes']:>10} {r['start_ms']:8.1f} {r['end_ms']:8.1f}")
        if answers["whole"] != answers["by_range"]:
            mismatches.append(name)
    return results, mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--store", choices=("s3", "file"), default="s3")
    parser.add_argument("--endpoint", help="an S3 endpoint host:port (default: a SeaweedFS here)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added to each read of --store file")
    parser.add_argument("--warm", type=int, default=50, help="queries of each kind after the cold one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--trace", action="store_true", help="log (and keep) every cold request")
    args = parser.parse_args(argv)
    import duckdb  # noqa: F401  (imported before timing: a worker's first filter would import it)
    import pyarrow.parquet  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp, raw_store(args, Path(tmp)) as (build_store, read_store):
        sizes = build(build_store, args.docs, args.seed)
        results, mismatches = measure(read_store, args.docs, args.warm, args.trace)
    out = {"docs": args.docs, "store": args.store, "latency_ms": args.latency_ms if args.store == "file" else None,
           "sizes": sizes, "results": results, "answers_differ": mismatches}
    print(f"{'query':38} {'layout':9} {'cold ms':>8} {'MB':>8} {'reqs':>5} {'RTs':>4} {'p50 ms':>7} {'p99 ms':>7}")
    for name, by_layout in results.items():
        for layout, r in by_layout.items():
            print(f"{name:38} {layout:9} {r['cold_ms']:8.1f} {r['cold_mb']:8.3f} {r['requests']:5d} "
                  f"{r['round_trips']:4d} {r['warm_p50_ms']:7.2f} {r['warm_p99_ms']:7.2f}")
    print("answers equal" if not mismatches else f"ANSWERS DIFFER: {mismatches}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
