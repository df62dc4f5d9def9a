"""The text-scale benchmark of issue 12, in one command: our service and LanceDB on the same
chunks, cold and warm, per query kind; then text ingest with chunking beside the embedder.

    bash bench/setup_peers.sh                        # once: bench/.venv-peers (lancedb)
    .venv/bin/python bench/text_scale.py [--chunks 1000000] [--warm 50] [--ingest-passes 2]
    # build once, then reuse (a SeaweedFS that outlives the run, no LanceDB):
    .venv/bin/python bench/text_scale.py --endpoint 127.0.0.1:8333 --keep text-scale-200k --skip-lancedb ...

The corpus is ``docs_on_demand.corpus_batches`` with NFCorpus's word frequencies
(``bm25_on_demand.word_frequencies``): ``--chunks`` chunks of 80-160 words, 384-d unit
vectors, attributes ``{year, tenant, tags, doc_id}``, seeded. It is written once as Parquet
shards (LanceDB reads those) while our namespace ingests the same tables.

Ours: one namespace on a SeaweedFS of its own (``s3.py``; ``--endpoint`` names another),
``vector_dtype`` int8 as in the vector benchmark, ``cluster_by`` tenant and year
(``--cluster-by``: the tenant + year filter reads its group of ``clusters.bin``), indexed into one segment, then 1 % of the
chunks deleted and indexed again (a tombstone list). A query worker process measures each
kind on a fresh worker (``docs_on_demand.cold_then_warm``: connect -> answer, bytes, requests
and sequential round trips that reached the store, then ``--warm`` more for p50 / p99; its
cold time is the median of ``--colds`` fresh workers, each one's kept, bytes and requests
the first's, as every one answers the same) and
reports its peak RSS; its cache is the default ``cache_bytes``. Queries are strong reads (the
default). Warm is reported twice: "unwarmed", the queries after the cold one on that worker
(each reads what it has not seen: new partitions, new terms' postings, the hits' records);
and "warmed", the same queries on one more fresh worker after the warm hint
(``query.warm``, budget = its cache, documents included: what a worker that warms on
scale-up holds), with the requests they still send (a strong read's manifest probe) and
whether their answers equal the unwarmed ones. Then four more warmed workers, with
``speculative_reads`` off, on, off, on: each kind's median warmed p50 with and without
speculative strong reads (the search overlapping the newest-manifest probe), and on / off.
Before them one query of each kind on a throwaway worker pays what a process does once
(imports, first use of each code path): its times are kept as ``first_in_process_cold_ms``.
The warm queries use other vectors and NFCorpus test queries, so they read partitions and
posting blocks the cold one did not.

LanceDB 0.40 (``lance_text.py`` in bench/.venv-peers): the same shards, IVF_PQ + FTS +
scalar indexes, the same ids deleted, on local disk; the finished table directory is then
copied into the same bucket, so both read byte-identical files. Each kind runs in a fresh
process, on local disk and on S3; on S3 a second fresh process goes through a counting
relay (``relay.py``) for the bytes and requests of its cold query (not timed: the relay
adds a hop).

Ingest (``text_ingest.py``): NFCorpus through a chunking namespace with the real embedder
beside the embedder alone. Writes ``bench/results/<time>-text-scale-<chunks>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import docs_on_demand as corpus  # noqa: E402
import s3  # noqa: E402
import text_ingest  # noqa: E402
from beir import read_queries  # noqa: E402
from bm25_on_demand import COLD_QUERY, word_frequencies  # noqa: E402
from relay import CountingRelay  # noqa: E402

from api.service import Service  # noqa: E402
from storage import open_raw_store  # noqa: E402
from vectordb import segment  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nfcorpus"
PEERS_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
NS = "chunks"
KINDS = {  # key (lance_text.py knows the same keys) -> the issue's name
    "vector": "vector",
    "vector+year": 'vector + {"year": {"$gte": 2013}}',
    "vector+tenant+year": 'vector + {"tenant": "t7", "year": 2020}',
    "bm25": f'bm25 "{COLD_QUERY}"',
    "vector+text": 'vector + include ["text"]',
    "get": "GET /documents/{id}",
    "hybrid": f'hybrid (vector + "{COLD_QUERY}")',
}
WARM_TARGET_MS = {"vector+year": 5, "vector+tenant+year": 5, "bm25": 5, "hybrid": 8, "get": 3}
COLD_TARGETS = {"round_trips": 4, "cold_mb": 8, "cold_ms": 150}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def s3_settings(endpoint: str, prefix: str) -> dict:
    return {"store_uri": f"s3://{s3.BUCKET}/{prefix}", "s3_endpoint": endpoint, "s3_access_key": s3.ACCESS_KEY,
            "s3_secret_key": s3.SECRET_KEY}


def query_texts(warm: int) -> list[str]:
    """The cold BM25 text, then NFCorpus test queries for the warm ones."""
    queries, _ = read_queries(DATA, "test")
    return [COLD_QUERY, *list(queries.values())[:warm]]


def our_kinds(n: int, texts: list[str]) -> dict:
    """Key -> function(service, ns, i) -> answer, for every kind in ``KINDS``."""
    shared = dict(corpus.kinds(n))

    def search(arguments):
        return lambda svc, ns, i: corpus.hit_rows(svc.query(ns, top_k=10, **arguments(i)).hits)

    return {
        "vector": search(lambda i: {"vector": corpus.query_vector(i)}),
        "vector+year": shared["vector + {year: {$gte: 2013}}"],
        "vector+tenant+year": shared["vector + {tenant: t7, year: 2020}"],
        "bm25": search(lambda i: {"mode": "bm25", "text": texts[i]}),
        "vector+text": shared["vector + include [text]"],
        "get": shared["GET /documents/{id}"],
        "hybrid": search(lambda i: {"mode": "hybrid", "vector": corpus.query_vector(i), "text": texts[i]}),
    }


# --------------------------------------------------------------------------- ours


def build_ours(store, n: int, seed: int, shards: Path, cluster_by: list[str]) -> dict:
    """Our namespace (grouped by ``cluster_by``) from the generated tables (each also written
    to ``shards``), indexed, 1 % deleted, indexed again. Returns timings and the segment's
    file sizes."""
    import pyarrow.parquet as pq

    words, p = word_frequencies(DATA)
    svc = Service(corpus.settings(), store=store)
    svc.create_namespace(NS, "none", corpus.DIMS, "cosine", chunking=False, vector_dtype="int8", cluster_by=cluster_by)
    shards.mkdir()
    out = {"generate_s": 0.0, "upsert_s": 0.0}
    batches = -(-n // corpus.BATCH)
    started = time.perf_counter()
    tables = corpus.corpus_batches(n, seed, words, p)
    for k in range(batches):
        t0 = time.perf_counter()
        table = next(tables)
        pq.write_table(table, shards / f"{k:05d}.parquet")
        t1 = time.perf_counter()
        svc.upsert_table(NS, table)
        out["generate_s"] += t1 - t0
        out["upsert_s"] += time.perf_counter() - t1
        if k % 10 == 9 or k == batches - 1:
            elapsed = time.perf_counter() - started
            log(f"ours: {(k + 1) * corpus.BATCH:,}/{n:,} chunks generated and upserted, {elapsed:.0f} s, "
                f"ETA {elapsed / (k + 1) * (batches - k - 1):.0f} s (then the index build)")
    for step, work in (("index_s", lambda: svc.index(NS)),
                       ("delete_s", lambda: svc.delete(NS, corpus.deleted_ids(n, seed))),
                       ("reindex_s", lambda: svc.index(NS))):
        t0 = time.perf_counter()
        work()
        out[step] = time.perf_counter() - t0
        log(f"ours: {step[:-2]} in {out[step]:.1f} s")
    seg = svc.catalog.latest(NS).segments[0]
    out = {key: round(value, 1) for key, value in out.items()}
    out["segment_bytes"] = {name: info.size for name in segment.FILES
                            if (info := store.head(segment.file_key(NS, seg.id, name))) is not None}
    out["segments"] = len(svc.catalog.latest(NS).segments)
    svc.close()
    return out


def worker(spec_path: Path) -> dict:
    """The query worker process: every kind on a fresh worker, then this process's peak RSS."""
    import duckdb  # noqa: F401  (a worker imports these at start; not part of a first query)
    import faiss  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    spec = json.loads(spec_path.read_text())
    over = s3_settings(spec["endpoint"], spec["prefix"])
    store = open_raw_store(Settings(**over))
    cache_bytes = Settings().cache_bytes
    runs = our_kinds(spec["n"], spec["texts"])
    # What a process does once (lazy imports, first use of each code path) is a process
    # start's cost, not a fresh worker's: one query of each kind first, its cache dropped.
    first_in_process = {key: corpus.cold_then_warm(store, NS, run, 0, cache_bytes=cache_bytes, **over)[0]["cold_ms"]
                        for key, run in runs.items()}
    out: dict = {"cache_bytes": cache_bytes, "first_in_process_cold_ms": first_in_process, "kinds": {}}
    unwarmed = {}
    for key in KINDS:
        result, answers = corpus.cold_then_warm(store, NS, runs[key], spec["warm"], trace=True,
                                                cache_bytes=cache_bytes, **over)
        # More fresh workers, cold only: one cold query is one sample of a noisy machine.
        colds = [result["cold_ms"]]
        for _ in range(spec["colds"] - 1):
            again, first = corpus.cold_then_warm(store, NS, runs[key], 0, cache_bytes=cache_bytes, **over)
            colds.append(again["cold_ms"])
            result["cold_answers_equal"] = result.get("cold_answers_equal", True) and first[0] == answers[0]
        result["cold_ms_runs"] = colds
        result["cold_ms"] = round(statistics.median(colds), 1)
        result["cold_hits"] = len(answers[0]) if isinstance(answers[0], (list, dict)) else answers[0]
        unwarmed[key] = answers[1:]
        out["kinds"][key] = result
        log(f"ours {key}: { {m: v for m, v in result.items() if m != 'trace'} }")
    # The same queries on a fresh worker after the warm hint (query.warm): a worker that
    # warmed on scale-up. Its answers must equal the unwarmed ones.
    warmed, warmed_answers, out["warm_hint"] = corpus.warmed_then_queried(store, NS, runs, spec["warm"],
                                                                           cache_bytes=cache_bytes, **over)
    log(f"ours warm hint: {out['warm_hint']}")
    for key in KINDS:
        out["kinds"][key].update(warmed[key])
        out["kinds"][key]["warmed_answers_equal"] = warmed_answers[key] == unwarmed[key]
        log(f"ours {key} warmed: {warmed[key]}")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            out["peak_rss_mb" if line.startswith("VmHWM") else "rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    # (After the peak RSS was read: these workers come and go one at a time.)
    # The baseline of speculative strong reads, in this run: warmed workers with
    # speculative_reads off and on, alternately (off, on, off, on), the median p50 of each.
    p50s: dict[str, dict[str, list[float]]] = {key: {"off": [], "on": []} for key in KINDS}
    for setting in ("off", "on", "off", "on"):
        rounds, answers, _ = corpus.warmed_then_queried(store, NS, runs, spec["warm"], cache_bytes=cache_bytes,
                                                        speculative_reads=setting == "on", **over)
        for key in KINDS:
            p50s[key][setting].append(rounds[key]["warmed_p50_ms"])
            if answers[key] != unwarmed[key]:
                out["kinds"][key]["warmed_answers_equal"] = False
        del rounds, answers
        gc.collect()
    for key in KINDS:
        off, on = statistics.median(p50s[key]["off"]), statistics.median(p50s[key]["on"])
        out["kinds"][key]["speculation"] = {"p50_ms_off": round(off, 2), "p50_ms_on": round(on, 2),
                                            "on_over_off": round(on / off, 3) if off else None}
        log(f"ours {key} warmed, speculative reads off / on: {out['kinds'][key]['speculation']}")
    return out


def subprocess_json(command: list, timeout: float) -> dict:
    """Run ``command`` and parse the JSON object on its last stdout line. Its stderr passes
    through but for Lance's warning on every query that its projection of scores will change."""
    with subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        # Each pipe read by one thread (communicate() would read stderr too, racing the
        # relay, which then met a closed file).
        out: list[str] = []
        readers = [threading.Thread(target=_relay_stderr, args=(child.stderr,), daemon=True),
                   threading.Thread(target=lambda: out.append(child.stdout.read()), daemon=True)]
        for thread in readers:
            thread.start()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        for thread in readers:
            thread.join()
        stdout = out[0] if out else ""
    done = subprocess.CompletedProcess(command, child.returncode, stdout)
    if done.returncode:
        raise RuntimeError(f"{command[:4]} failed ({done.returncode}): {done.stdout[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _relay_stderr(stream) -> None:
    for line in stream:
        if "Call `disable_scoring_autoprojection`" not in line:
            sys.stderr.write(line)


# --------------------------------------------------------------------------- LanceDB


def lancedb_side(tmp: Path, endpoint: str, prefix: str, warm: int) -> dict:
    """Build on local disk, copy into the bucket, then every kind in fresh processes on both."""
    peer = [PEERS_PYTHON, BENCH / "lance_text.py"]
    keys = ["--access-key", s3.ACCESS_KEY, "--secret-key", s3.SECRET_KEY]
    local = tmp / "lancedb"
    out: dict = {"build": subprocess_json([*peer, "build", "--uri", local, "--corpus", tmp / "shards",
                                           "--deleted", tmp / "deleted.json"], 3 * 3600)}
    started = time.perf_counter()
    client, files = s3.client(endpoint), [f for f in local.rglob("*") if f.is_file()]
    for f in files:
        client.fput_object(s3.BUCKET, f"{prefix}/lancedb/{f.relative_to(local)}", str(f))
    out["build"]["bytes"] = sum(f.stat().st_size for f in files)
    out["build"]["copy_to_s3_s"] = round(time.perf_counter() - started, 1)
    log(f"lancedb: copied {len(files)} files ({out['build']['bytes'] / 1e6:.0f} MB) into the bucket "
        f"in {out['build']['copy_to_s3_s']} s")
    remote = f"s3://{s3.BUCKET}/{prefix}/lancedb"
    out["local"], out["s3"] = {}, {}
    with CountingRelay(endpoint) as relay:
        for key in KINDS:
            serve = [*peer, "serve", "--plan", tmp / "plan.json", "--kind", key, *keys]
            out["local"][key] = subprocess_json([*serve, "--uri", local, "--warm", warm], 600)
            result = subprocess_json([*serve, "--uri", remote, "--s3-endpoint", endpoint, "--warm", warm], 600)
            relay.take()
            relayed = subprocess_json([*serve, "--uri", remote, "--s3-endpoint", relay.endpoint, "--warm", 0], 600)
            counted = relay.take()
            result.update({"cold_mb": round(counted["bytes_down"] / 1e6, 3), "requests": counted["requests"],
                           "relayed_cold_ms": relayed["cold_ms"]})
            out["s3"][key] = result
            log(f"lancedb {key}: local {out['local'][key]}; s3 {result}")
    return out


# --------------------------------------------------------------------------- report


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def report(result: dict) -> list[str]:
    """The markdown tables and the targets, as lines."""
    ours, lance = result["ours"]["kinds"], result.get("lancedb")
    lines = ["| query | ours cold ms | ours MB | ours RTs | ours reqs | ours unwarmed p50 / p99 ms | "
             "ours warmed p50 / p99 ms (reqs/query) | "
             "LanceDB local cold ms | local MB read | local p50 / p99 ms | LanceDB S3 cold ms | S3 MB | S3 reqs | "
             "S3 p50 / p99 ms | cold ms ours / S3 | p50 ours / local | warmed p50 ours / local |",
             "| --- " * 17 + "|"]
    for key, name in KINDS.items():
        o = ours[key]
        row = [name, o["cold_ms"], o["cold_mb"], o["round_trips"], o["requests"], f"{o['warm_p50_ms']} / {o['warm_p99_ms']}",
               f"{o.get('warmed_p50_ms')} / {o.get('warmed_p99_ms')} ({o.get('warmed_requests_per_query')})"]
        if lance:
            lo, ls = lance["local"][key], lance["s3"][key]
            row += [lo["cold_ms"], lo["cold_read_mb"], f"{lo['warm_p50_ms']} / {lo['warm_p99_ms']}",
                    ls["cold_ms"], ls["cold_mb"], ls["requests"], f"{ls['warm_p50_ms']} / {ls['warm_p99_ms']}",
                    ratio(o["cold_ms"], ls["cold_ms"]), ratio(o["warm_p50_ms"], lo["warm_p50_ms"]),
                    ratio(o.get("warmed_p50_ms"), lo["warm_p50_ms"])]
        else:
            row += ["–"] * 10
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    w = result["ours"]
    lines.append("")
    if all("cold_ms_runs" in o for o in ours.values()):
        lines.append("Our cold ms, each fresh worker (the table gives the median): "
                     + "; ".join(f"{key} {ours[key]['cold_ms_runs']}" for key in KINDS))
    if "warm_hint" in w:
        hint = w["warm_hint"]
        lines.append(f"Warm hint (budget = cache): {hint['wall_s']} s, {hint['requests']} requests, RSS "
                     f"{hint.get('rss_mb_before')} -> {hint.get('rss_mb_after')} MB, partitions "
                     f"{hint['partitions']}/{hint['partitions_total']}, skipped {hint['skipped'] or 'nothing'}; "
                     f"warmed answers equal the unwarmed: {all(o.get('warmed_answers_equal', True) for o in ours.values())}")
    if all("speculation" in o for o in ours.values()):
        lines += ["| warmed p50 ms | speculative reads off | on | on / off |", "| --- " * 4 + "|"]
        lines += [f"| {name} | {ours[key]['speculation']['p50_ms_off']} | {ours[key]['speculation']['p50_ms_on']} | "
                  f"{ours[key]['speculation']['on_over_off']} |" for key, name in KINDS.items()]
        lines.append("")
    lines.append(f"Our query worker: peak RSS {w['peak_rss_mb']} MB (cache_bytes {w['cache_bytes'] / 2**20:.0f} MiB, "
                 f"no model loaded: the queries bring vectors)")
    if lance:
        rss = max(r["peak_rss_mb"] for side in ("local", "s3") for r in lance[side].values())
        lines.append(f"LanceDB serving process: peak RSS up to {rss} MB")
    if "ingest" in result:
        ing = result["ingest"]
        lines += ["", "| ingest (NFCorpus, chunking 256/32, minilm) | chunks | first 10k chunks/s | last 10k chunks/s "
                      "| overall chunks/s |", "| --- " * 5 + "|"]
        for side in ("service", "embedder"):
            r = ing[side]
            lines.append(f"| {side} | {r['chunks']} | {r['first_10k_chunks_per_s']} | {r['last_10k_chunks_per_s']} | "
                         f"{r['overall_chunks_per_s']} |")
        lines.append(f"| service / embedder | | {ing['service_over_embedder']['first_10k_chunks_per_s']} | "
                     f"{ing['service_over_embedder']['last_10k_chunks_per_s']} | "
                     f"{ing['service_over_embedder']['overall_chunks_per_s']} |")
    lines += ["", "Targets:"] + [f"- {t}" for t in targets(result)]
    return lines


def targets(result: dict) -> list[str]:
    ours, lance, out = result["ours"]["kinds"], result.get("lancedb"), []
    for key in KINDS:
        o = ours[key]
        misses = [f"{m} {o[m]} > {limit}" for m, limit in COLD_TARGETS.items() if o[m] > limit]
        if lance and o["cold_ms"] >= lance["s3"][key]["cold_ms"]:
            misses.append(f"not faster than LanceDB on S3 ({lance['s3'][key]['cold_ms']} ms)")
        out.append(f"cold {key}: {'met' if not misses else 'MISSED: ' + '; '.join(misses)}")
    for key, limit in WARM_TARGET_MS.items():
        for state, p50 in (("unwarmed", ours[key]["warm_p50_ms"]), ("warmed", ours[key].get("warmed_p50_ms"))):
            if p50 is not None:
                out.append(f"warm p50 {key} ({state}) {p50} ms <= {limit}: {'met' if p50 <= limit else 'MISSED'}")
    w = result["ours"]
    bound = w["cache_bytes"] / 2**20 + 300
    out.append(f"worker RSS {w['peak_rss_mb']} MB <= cache + model (none) + 300 = {bound:.0f} MB: "
               f"{'met' if w['peak_rss_mb'] <= bound else 'MISSED'}")
    if "ingest" in result:
        ing = result["ingest"]
        share, flat = ing["service_over_embedder"]["overall_chunks_per_s"], ing["service_last_over_first"]
        out.append(f"ingest service / embedder {share} >= 0.90: {'met' if share >= 0.9 else 'MISSED'}; "
                   f"last 10k / first 10k {flat} (flat)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--warm", type=int, default=50, help="queries of each kind after the cold one")
    parser.add_argument("--colds", type=int, default=3,
                        help="fresh workers per kind for our cold figure (the median; bytes and requests are the first's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--endpoint", help="an S3 endpoint host:port (default: a SeaweedFS of its own)")
    parser.add_argument("--skip-lancedb", action="store_true")
    parser.add_argument("--ingest-passes", type=int, default=2, help="NFCorpus copies in the ingest run (0: none)")
    parser.add_argument("--ingest-docs", type=int, help="only the first N NFCorpus documents per pass")
    parser.add_argument("--ingest-batch", type=int, default=64, help="documents per upsert in the ingest run")
    parser.add_argument("--keep", metavar="PREFIX",
                        help="build our namespace under this prefix of the bucket and keep it; a later run with the "
                             "same --keep (and --endpoint) reuses it instead of building (needs --skip-lancedb)")
    parser.add_argument("--cluster-by", default="tenant,year",
                        help="our namespace's cluster_by (comma-separated; '' for none): a filter on these keys "
                             "alone reads their groups of clusters.bin")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # the query worker process
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    if not args.skip_lancedb and not PEERS_PYTHON.exists():
        raise SystemExit("no bench/.venv-peers: run bash bench/setup_peers.sh (or pass --skip-lancedb)")
    started_at = datetime.datetime.now()
    result: dict = {"started": started_at.isoformat(timespec="seconds"), "chunks": args.chunks, "warm": args.warm,
                    "seed": args.seed, "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}}
    if args.keep and not (args.skip_lancedb and args.endpoint):
        raise SystemExit("--keep needs --skip-lancedb and --endpoint (a store that outlives this run)")
    prefix = args.keep or f"text-scale-{uuid.uuid4().hex[:8]}"
    cluster_by = [name for name in args.cluster_by.split(",") if name]
    result["cluster_by"] = cluster_by
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        endpoint = args.endpoint or stack.enter_context(s3.seaweedfs(tmp / "seaweedfs", s3.weed_binary(), log))
        stack.callback(s3.remove_prefixes, endpoint, [prefix + "-ingest"] if args.keep else [prefix, prefix + "-ingest"],
                       log)
        texts = query_texts(args.warm)
        (tmp / "plan.json").write_text(json.dumps({
            "vectors": [corpus.query_vector(i) for i in range(args.warm + 1)], "texts": texts,
            "ids": [corpus.document_id(i, args.chunks) for i in range(args.warm + 1)]}))
        (tmp / "deleted.json").write_text(json.dumps(corpus.deleted_ids(args.chunks, args.seed)))
        store = open_raw_store(Settings(**s3_settings(endpoint, prefix)))
        marker = f"{NS}-built-{args.chunks}-{args.seed}.json"  # beside the namespace, in the kept prefix
        kept = store.get(marker) if args.keep and store.head(marker) is not None else None
        if kept is not None:
            result["ours_build"] = {**json.loads(kept), "reused": prefix}
            log(f"ours: reusing the namespace kept under {prefix}")
        else:
            result["ours_build"] = build_ours(store, args.chunks, args.seed, tmp / "shards", cluster_by)
            if args.keep:
                store.put(marker, json.dumps(result["ours_build"]).encode())
        spec = tmp / "worker.json"
        spec.write_text(json.dumps({"endpoint": endpoint, "prefix": prefix, "n": args.chunks, "warm": args.warm,
                                    "colds": args.colds, "texts": texts}))
        result["ours"] = subprocess_json([sys.executable, __file__, "--worker", spec], 1800)
        if not args.skip_lancedb:
            result["lancedb"] = lancedb_side(tmp, endpoint, prefix, args.warm)
        if args.ingest_passes:
            settings = Settings(**s3_settings(endpoint, prefix + "-ingest"), preload_embedder="")
            docs = text_ingest.nfcorpus(DATA, args.ingest_passes, args.ingest_docs)
            result["ingest"] = text_ingest.measure(settings, None, docs, args.ingest_batch, log)
    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    result["wall_s"] = round((datetime.datetime.now() - started_at).total_seconds(), 1)
    lines = report(result)
    result["table"] = lines
    print("\n".join(lines))
    out = args.out or BENCH / "results" / f"{started_at:%Y%m%d-%H%M%S}-text-scale-{args.chunks}.json"
    out.write_text(json.dumps(result, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
