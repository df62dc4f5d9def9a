"""The benchmark, one command: our service on SeaweedFS beside FAISS, LanceDB and Chroma.

    python bench/run.py [--rows N] [--quick] [--peers faiss,lancedb,chroma] [--skip-ours]

Data: the cached MiniLM-like set of ``bench/dataset.py`` (made on first use). Ours runs in
this process and in ``vectordb serve`` subprocesses (project venv); each peer runs in
subprocesses of ``bench/.venv-peers`` (``bash bench/setup_peers.sh``): one that ingests and
builds, then a fresh one that serves, so its cold start is a real process start.
Uses the SeaweedFS on 127.0.0.1:8333 if it works, else starts one on free ports (``s3.py``).

Prints one table (every system, the same metrics), the ratios ours / peer, our cold-query
object-store trace and the embedding figures; writes everything to
``bench/results/<time>-<rows>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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

import dataset as ds_mod  # noqa: E402
import s3  # noqa: E402

from vectordb.ivf import default_nprobe  # noqa: E402
from vectordb.settings import Settings  # noqa: E402
from vectordb.testing import ACCESS_KEY, SECRET_KEY  # noqa: E402

PEERS_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
RESULTS = BENCH / "results"
BUCKET = s3.BUCKET
ALL_PEERS = ("faiss", "lancedb-local", "lancedb-s3", "chroma")
# LanceDB's IVF_PQ training alone takes 25-30 s even on 20k rows here: not in a < 1 minute run.
QUICK_PEERS = ("faiss",)
DEFAULT_CHROMA_ROWS = 200_000  # Chroma's HNSW build took 577 s at 1M in BENCHMARKS.md


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_peers(text: str) -> list[str]:
    out: list[str] = []
    for name in filter(None, (p.strip() for p in text.split(","))):
        expanded = ["lancedb-local", "lancedb-s3"] if name == "lancedb" else [name]
        for system in expanded:
            if system not in ALL_PEERS:
                raise SystemExit(f"unknown peer {name!r}; choose from faiss, lancedb, {', '.join(ALL_PEERS[1:])}")
            if system not in out:
                out.append(system)
    return out


# --------------------------------------------------------------------------- peers


def run_peer(system: str, rows: int, queries: int, args, workdir: Path, prefix: str, nlist: int, nprobe: int) -> dict:
    common = [
        "--system", system, "--rows", str(rows), "--queries", str(queries), "--seed", str(args.seed),
        "--workdir", str(workdir / system), "--nlist", str(nlist), "--nprobe", str(nprobe),
        "--s3-endpoint", args.endpoint, "--bucket", BUCKET, "--prefix", prefix,
        "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, "--faiss-index", faiss_index(args, rows),
    ]
    started = time.perf_counter()
    built = _peer_process(common + ["--phase", "build"])
    log(f"{system}: ingest {built['ingest_s'] or 0:.1f} s, build {built['build_s'] or 0:.1f} s "
        f"(phase wall {time.perf_counter() - started:.1f} s)")
    spawned = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process on Linux
    served = _peer_process(common + ["--phase", "serve"])
    served["process_first_ms"] = round((served.pop("first_result_at") - spawned) * 1000, 1)
    log(f"{system}: process->first {served['process_first_ms']} ms, warm p50 {served['warm_p50_ms']} ms, "
        f"recall {served['recall_at_10']}")
    out = {**built, **served}
    if out["ingest_s"]:
        out["ingest_vectors_per_s"] = round(rows / out["ingest_s"], 1)
    return out


def faiss_index(args, rows: int) -> str:
    """``--faiss-index``, or by default float32 (IndexIVFFlat) while its vectors take at most a
    quarter of this machine's memory, else 8-bit (IndexIVFScalarQuantizer, same nlist/nprobe):
    at 10M x 384 float32 is 15 GB, beside our worker and the page cache of a 24 GB machine."""
    if args.faiss_index:
        return args.faiss_index
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "ivfflat" if rows * ds_mod.DIMS * 4 <= memory // 4 else "ivfsq8"


def held_bytes(rows: int, vector_dtype: str) -> int:
    """What a query worker holds to keep every partition of ``rows`` vectors (stored as
    ``vector_dtype``; float16 is held widened) and their int64 ids, plus 15 %: the 10M runs
    that used the 2 GiB default held half the partitions and re-read the rest on every query
    (~50 of nprobe 100 partitions fetched again per warm query)."""
    held = {"int8": 1, "float16": 4, "float32": 4}[vector_dtype]
    return int(rows * (ds_mod.DIMS * held + 8) * 1.15)


def _peer_process(argv: list[str]) -> dict:
    proc = subprocess.run([str(PEERS_PYTHON), str(BENCH / "peers.py"), *argv], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peers.py {' '.join(argv[:4])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rows_of_table(result: dict) -> list[dict]:
    """One row per system, the same metric names for everyone."""
    table = []
    ours = result.get("ours")
    if ours:
        ing, inp, http = ours["ingest"], ours["in_process"], ours["http"]
        params = f"IVF-flat nlist {ours['nlist']}, nprobe {ours['nprobe']}, {ours.get('vector_dtype', 'float32')}" + \
            (", realistic rows" if ours.get("realistic") else "")
        table.append({
            "system": "ours, in-process (S3)", "params": params, "rows": result["rows"],
            "ingest_vectors_per_s": ing["ingest_vectors_per_s"], "ingest_s": ing["ingest_s"], "build_s": ing["build_s"],
            "warm_p50_ms": inp["warm_p50_ms"], "warm_p99_ms": inp["warm_p99_ms"], "recall_at_10": inp["recall_at_10"],
            "rss_mb": None, "process_first_ms": None, "connect_first_ms": inp["connect_first_ms"],
        })
        table.append({
            "system": "ours, HTTP worker (S3)", "params": params, "rows": result["rows"],
            "ingest_vectors_per_s": ing["ingest_vectors_per_s"], "ingest_s": ing["ingest_s"], "build_s": ing["build_s"],
            "warm_p50_ms": http["warm_p50_ms"], "warm_p99_ms": http["warm_p99_ms"],
            "recall_at_10": http["recall_at_10"], "rss_mb": http["rss_mb"],
            "process_first_ms": http["process_first_ms"], "connect_first_ms": http["connect_first_ms"],
        })
        lean = http.get("lean_client")
        if lean:
            table.append({
                "system": "ours, HTTP, http.client", "params": params, "rows": result["rows"],
                "warm_p50_ms": lean["warm_p50_ms"], "warm_p99_ms": lean["warm_p99_ms"],
                "recall_at_10": lean["recall_at_10"],
            })
    for system, peer in result.get("peers", {}).items():
        table.append({"system": system, **{k: peer.get(k) for k in (
            "params", "rows", "ingest_vectors_per_s", "ingest_s", "build_s", "warm_p50_ms", "warm_p99_ms",
            "recall_at_10", "rss_mb", "process_first_ms", "connect_first_ms")}})
    return table


COLUMNS = [
    ("system", "system", 0), ("params", "params", 0), ("rows", "rows", 0),
    ("ingest_vectors_per_s", "ingest vec/s", 0), ("build_s", "build s", 1),
    ("warm_p50_ms", "p50 ms", 2), ("warm_p99_ms", "p99 ms", 2), ("recall_at_10", "recall@10", 3),
    ("rss_mb", "RSS MB", 0), ("process_first_ms", "process->1st ms", 0), ("connect_first_ms", "connect->1st ms", 1),
]

# Which of our two rows a peer is compared with: peers are libraries called in-process,
# except for what only a server process has (its RSS, its process start).
RATIO_METRICS = [
    ("ingest_vectors_per_s", "ingest vectors/s", "ours, HTTP worker (S3)"),
    ("build_s", "build s", "ours, HTTP worker (S3)"),
    ("warm_p50_ms", "warm p50", "ours, in-process (S3)"),
    ("warm_p99_ms", "warm p99", "ours, in-process (S3)"),
    ("recall_at_10", "recall@10", "ours, in-process (S3)"),
    ("rss_mb", "serving RSS", "ours, HTTP worker (S3)"),
    ("process_first_ms", "process->1st", "ours, HTTP worker (S3)"),
    ("connect_first_ms", "connect->1st", "ours, in-process (S3)"),
]


def ratios(table: list[dict]) -> dict:
    by_name = {row["system"]: row for row in table}
    out: dict = {}
    for system in (row["system"] for row in table if not row["system"].startswith("ours")):
        peer = by_name[system]
        out[system] = {}
        for key, _, ours_row in RATIO_METRICS:
            ours_value = by_name.get(ours_row, {}).get(key)
            peer_value = peer.get(key)
            out[system][key] = round(ours_value / peer_value, 3) if ours_value and peer_value else None
    return out


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, rule, *body])


def report(result: dict) -> str:
    load = result["machine"]
    parts = [f"## vectordb benchmark: {result['rows']:,} x {ds_mod.DIMS} (seed {result['seed']}), "
             f"{result['queries']:,} queries, top-10, one query per call ({result['started']})",
             f"Machine: {load['cpus']} CPUs; load average (1 min) {load['loadavg_start']} at start, "
             f"{load.get('loadavg_end', '-')} at end: above ~{load['cpus']}, other work shares the cores "
             f"and every figure is slower", ""]
    parts.append("Data: " + ds_mod.describe_sanity(result["dataset"]).replace("\n", "\n      "))
    parts.append("")
    table = result["table"]
    parts.append(markdown([h for _, h, _ in COLUMNS],
                          [[fmt(row.get(k), d) for k, _, d in COLUMNS] for row in table]))
    notes = result.get("notes", [])
    if notes:
        parts += [""] + [f"* {n}" for n in notes]
    if result.get("ratios"):
        parts += ["", "Ratios ours / peer (time, RSS: < 1 is better for us; vectors/s, recall: > 1 is better for us).",
                  "Latency and connect->1st use ours in-process; ingest, build, RSS and process->1st our HTTP worker.",
                  ""]
        peers = list(result["ratios"])
        parts.append(markdown(["metric", *[f"ours / {p}" for p in peers]],
                              [[label, *[fmt(result["ratios"][p][key], 2) for p in peers]]
                               for key, label, _ in RATIO_METRICS]))
    ours = result.get("ours")
    if ours:
        ing, inp, http = ours["ingest"], ours["in_process"], ours["http"]
        parts += ["", "Ours, details:"]
        parts.append(f"* ingest: {ing['ingest_clients']} HTTP clients x {ing['ingest_batch']:,}-vector upserts "
                     f"({ing['vector_encoding']} vectors), "
                     f"{ing['ingest_vectors_per_s']:,.0f} vectors/s to durable ({ing['ingest_s']} s; upsert p50 "
                     f"{ing['upsert_p50_ms']:,.0f} ms / p99 {ing['upsert_p99_ms']:,.0f} ms; "
                     + (f"{ing['upsert_body_mb']} MB of bodies, encoded beforehand in {ing['client_encode_s']} s"
                        if "client_encode_s" in ing else "bodies encoded by the clients while sending")
                     + f"); POST /index {ing['build_s']} s "
                     f"(server {ing['index_response']['seconds']} s); ingest worker peak RSS "
                     f"{ing['ingest_worker_peak_rss_mb']:,.0f} MB ({ing.get('after_ingest_peak_rss_mb')} MB while "
                     f"ingesting, {ing.get('build_peak_rss_mb')} MB while building)")
        parts.append(f"  background builds during the ingest: {'on' if ours.get('background_builds') else 'off'}; "
                     f"vectors/s by tenth of the rows: {ing.get('ingest_vectors_per_s_by_tenth')}")
        parts.append(f"* cold query, fresh Service (empty cache), median of {len(inp['cold_runs'])}: "
                     f"{inp['connect_first_ms']} ms = connect {inp['cold_connect_ms']} ms + first query "
                     f"{inp['cold_first_query_ms']} ms; object store: {inp['cold_requests']} requests, "
                     f"{inp['cold_bytes']:,} bytes, {inp['cold_round_trips']} sequential round trips")
        if "cold_one_get_each" in inp:
            one = inp["cold_one_get_each"]
            parts.append(f"  the same cold queries with a GET a partition (alternated): {one['connect_first_ms']} ms, "
                         f"{one['requests']} requests, {one['bytes']:,} bytes; coalesced / that: "
                         f"{inp['cold_vs_one_get_each']}")
        if "cold_no_layout_hint" in inp:
            plain = inp["cold_no_layout_hint"]
            parts.append(f"  the same cold queries without layouts.bin (alternated): {plain['connect_first_ms']} ms, "
                         f"{plain['requests']} requests, {plain['round_trips']} round trips; with it / without: "
                         f"{inp['cold_vs_no_layout_hint']}")
        trace = ", ".join(f"{t['op']} {t['key']} ({t['bytes']:,} B, {t['start_ms']:.1f}-{t['end_ms']:.1f} ms"
                          f"{', ' + t['error'] if 'error' in t else ''})" for t in inp["cold_trace"][:12])
        more = len(inp["cold_trace"]) - 12
        parts.append(f"  trace: {trace}{f', ... {more} more' if more > 0 else ''}")
        parts.append(f"* warm in-process, strong consistency (first 200 queries): p50 {inp['warm_strong_p50_ms']} ms "
                     f"/ p99 {inp['warm_strong_p99_ms']} ms, object-store requests "
                     f"{inp.get('warm_strong_requests', '?')} ({inp.get('warm_strong_round_trips_per_query', '?')} "
                     f"sequential round trips per query); object-store requests in the measured eventual pass: "
                     f"{inp['warm_requests'] or 'none'}")
        parts.append(f"* HTTP worker (median of {len(http['starts'])} starts: "
                     f"{', '.join(str(x['process_first_ms']) for x in http['starts'])} ms): "
                     f"accepting connections {http['ready_ms']} ms after spawn, first answer "
                     f"{http['process_first_ms']} ms; busy {http['settle_s']} s more (embedder preload) before the "
                     f"warm passes; RSS {http['rss_mb']} MB (peak {http['peak_rss_mb']} MB)")
        if "http_no_preload" in ours:
            np_ = ours["http_no_preload"]
            parts.append(f"* HTTP worker without embedder preload (VECTORDB_PRELOAD_EMBEDDER=''; median of "
                         f"{len(np_['starts'])}: {', '.join(str(x['process_first_ms']) for x in np_['starts'])} ms): accepting connections "
                         f"{np_['ready_ms']} ms, first answer {np_['process_first_ms']} ms; warm p50 "
                         f"{np_['warm_p50_ms']} ms; RSS {np_['rss_mb']} MB")
    emb = result.get("embedding")
    if emb:
        parts.append(f"* embedding (minilm, embed_runtime {emb.get('runtime', '?')}, max_seq_length {emb['max_seq_length']}, batch "
                     f"{emb['batch_size']}): model load {emb['model_load_s']} s; single query p50 "
                     f"{emb['query_p50_ms']} ms / p99 {emb['query_p99_ms']} ms with {emb['torch_threads']} torch "
                     f"threads, {emb['query_1thread_p50_ms']} / {emb['query_1thread_p99_ms']} ms with 1 "
                     f"({emb['queries']} queries); "
                     f"{emb['docs_per_s']} NFCorpus docs/s ({emb['docs']} docs) "
                     f"[BENCHMARKS.md: 7.3 / 11.6 ms, 25.8 docs/s]")
        if "text_query_p50_ms" in emb:
            parts.append(f"* warm text query through the service (in-process, NFCorpus, 3,633 docs): p50 "
                         f"{emb['text_query_p50_ms']} ms = query embedding {emb['text_query_embed_p50_ms']} ms + "
                         f"{emb['text_query_overhead_ms']} ms")
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help="vectors (default 1,000,000; 20,000 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="20k rows, 200 queries, FAISS only, small embedding sample: < 1 minute")
    parser.add_argument("--peers", help=f"comma-separated: faiss, lancedb (= lancedb-local,lancedb-s3), "
                        f"lancedb-local, lancedb-s3, chroma; '' for none (default: all; quick: {','.join(QUICK_PEERS)})")
    parser.add_argument("--skip-ours", action="store_true", help="only the peers")
    parser.add_argument("--queries", type=int, help="queries (default 1,000; 200 with --quick)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--chroma-rows", type=int, default=DEFAULT_CHROMA_ROWS,
                        help="Chroma gets at most this many rows (its HNSW build is slow)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP ingest clients")
    parser.add_argument("--batch", type=int, default=5000, help="vectors per upsert request")
    parser.add_argument("--vector-encoding", choices=("arrow", "base64", "json"), default="arrow",
                        help="how upserts carry vectors: base64 float32 (the API's bulk form) or JSON numbers")
    parser.add_argument("--vector-dtype", choices=("float32", "float16", "int8"), default="int8",
                        help="how our namespace stores indexed vectors (float16: half the bytes per cold query, "
                        "int8: a quarter)")
    parser.add_argument("--no-embedding", action="store_true", help="skip the embedding model figures")
    parser.add_argument("--faiss-index", choices=("ivfflat", "ivfsq8"),
                        help="FAISS's index (default: ivfflat while float32 fits in a quarter of memory, else ivfsq8)")
    parser.add_argument("--endpoint", help="S3 endpoint host:port (default: 127.0.0.1:8333, started if needed)")
    parser.add_argument("--cache-bytes", type=int,
                        help="our query workers' RAM cache (VECTORDB_CACHE_BYTES). Default: the service's 2 GiB, or "
                             "what holds the namespace's stored vectors and ids whole (+15%%) when that is more "
                             "(int8 at 10M x 384: 4.5 GB); a smaller cache measures re-reads, not a warm worker")
    parser.add_argument("--background-builds", action="store_true",
                        help="ingest with the service's background builds on (VECTORDB_AUTO_INDEX, the default "
                             "of a deployment), then POST /index for what is left; default: off during the "
                             "ingest, one POST /index after it")
    parser.add_argument("--out", help="JSON path (default bench/results/<time>-<rows>.json)")
    parser.add_argument("--realistic", action="store_true",
                        help="our rows with text and attributes, 5%% of them updates of older rows, and deletes "
                             "between batches (bench/ours.py realistic_columns); recall against the exact top-10 "
                             "of the rows left live. Ours only: the peers would index the plain vectors")
    parser.add_argument("--keep-store", action="store_true",
                        help="leave the namespaces in the store at the end (with --endpoint: to measure them again "
                             "later, e.g. bench/cold_query.py)")
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    if args.cache_bytes is None:
        args.cache_bytes = max(Settings().cache_bytes, held_bytes(rows, args.vector_dtype))
    # Read by the in-process Settings and inherited by the worker processes.
    os.environ["VECTORDB_CACHE_BYTES"] = str(args.cache_bytes)
    queries = args.queries or (200 if args.quick else ds_mod.N_QUERIES)
    peers = parse_peers(args.peers if args.peers is not None else ",".join(QUICK_PEERS if args.quick else ALL_PEERS))
    if peers and not PEERS_PYTHON.exists():
        raise SystemExit(f"peers need their own venv: bash bench/setup_peers.sh (missing {PEERS_PYTHON})")
    if args.realistic and (peers or args.skip_ours or args.vector_encoding != "arrow"):
        raise SystemExit("--realistic measures ours alone (--peers ''), with Arrow upserts")
    chroma_rows = min(rows, args.chroma_rows)
    started_at = datetime.now(timezone.utc)
    wall = time.perf_counter()

    data = ds_mod.prepare(rows, args.seed, log)
    data = ds_mod.load(rows, args.seed, queries)
    if args.realistic:
        import ours as ours_mod

        data = ours_mod.realistic_truth(data, args.batch, log)
    if "chroma" in peers and chroma_rows != rows:
        ds_mod.prepare(chroma_rows, args.seed, log, sanity=False)
    nlist = ds_mod.nlist_for(rows)
    nprobe = default_nprobe(nlist)  # the service's own choice, so FAISS runs at the same nprobe
    result: dict = {
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"), "rows": rows, "queries": queries, "seed": args.seed,
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_start": round(os.getloadavg()[0], 2)},
        "dataset": data.sanity, "notes": [], "cache_bytes": args.cache_bytes,
    }
    run_id = uuid.uuid4().hex[:8]
    ds_mod.CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ds_mod.CACHE, prefix="work-") as tmp, \
            s3.endpoint(args.endpoint, Path(tmp), log) as ep:
        args.endpoint = ep
        workdir = Path(tmp)
        if not s3.healthy(ep):
            raise SystemExit(f"the S3 endpoint {ep} cannot create {BUCKET!r} or write to it")
        prefixes: list[str] = []
        try:
            if not args.skip_ours:
                import ours

                prefixes.append(f"ours-{run_id}")
                try:
                    result["ours"] = ours.run(
                        data, ep, BUCKET, prefixes[-1], ACCESS_KEY, SECRET_KEY, workdir, clients=args.clients,
                        batch=args.batch, encoding=args.vector_encoding, colds=3 if args.quick else 5,
                        quick=args.quick, log=log, vector_dtype=args.vector_dtype,
                        background_builds=args.background_builds, realistic=args.realistic,
                    )
                except Exception as exc:  # still run the peers; the report says what failed
                    log(f"ours failed: {exc!r}")
                    result["notes"].append(f"ours failed: {str(exc).splitlines()[0] if str(exc) else repr(exc)}")
                if not args.no_embedding:
                    result["embedding"] = ours.embedding(64 if args.quick else 256, 10 if args.quick else 50,
                                                         args.seed, log)
            result["peers"] = {}
            peer_prefix = f"peers-{run_id}"
            prefixes.append(peer_prefix)
            for system in peers:
                n = chroma_rows if system == "chroma" else rows
                if n != rows:
                    result["notes"].append(f"{system} ran on the first {n:,} rows only (--chroma-rows; its HNSW "
                                           f"build is slow): its recall is against that subset's exact top-10")
                try:
                    result["peers"][system] = run_peer(system, n, queries, args, workdir, peer_prefix, nlist, nprobe)
                except RuntimeError as exc:
                    log(f"{system} failed: {exc}")
                    result["notes"].append(f"{system} failed: {str(exc).splitlines()[0]}")
        finally:
            if args.keep_store:
                log(f"kept in the store (--keep-store): {', '.join(prefixes)} at {ep}")
            else:
                with contextlib.suppress(Exception):
                    s3.remove_prefixes(ep, prefixes, log)
    result["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    result["table"] = rows_of_table(result)
    result["ratios"] = ratios(result["table"]) if result.get("ours") else {}
    result["wall_s"] = round(time.perf_counter() - wall, 1)
    text = report(result)
    print(text)
    print(f"\n(total wall time {result['wall_s']} s)")
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"{started_at:%Y%m%d-%H%M%S}-{rows}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
