"""Strong reads with one writer beside them, against the same clients with none.

A namespace of ``--rows`` (50,000) 384-d vectors with text and attributes is written and
indexed in this process: one segment of the bulk rows, a second of rows re-written later,
tombstones for 1 % of the rows deleted and the rewritten ones, and a small unindexed tail.
Then two ``vectordb serve`` processes run from this checkout on the same store
(``--roles split``: a query worker and an ingest worker, as deployed; ``--roles all``: one
process serving both): ``--clients`` keep-alive ``http.client`` clients send strong vector
queries (the default consistency) without pause for ``--seconds``, once with no writer
(series A) and once with one writer committing ``--batch`` documents per request (7 in 10
new ids, the rest overwrites of indexed rows) as fast as its acknowledgements come back
(series B). A and B alternate ``--rounds`` times in one run, so both see the same machine
(A B, then B A, ...); the writer's tail stays, so later rounds of A read a longer tail too.

Prints queries/s, p50 and p99 of both series (median over rounds) and B / A; the issue's
target is B ≥ 70 % of A's queries/s and B's p99 ≤ 2 × A's. Also the cores each process
kept busy (query and ingest servers, the S3 server when it listens on loopback, this
process, the whole machine), since on a small machine the writer's own work competes with
the queries. Writes ``bench/results/<time>-strong-reads-<store>[-<mix>].json``.

    python bench/strong_reads.py [--store s3|file] [--seconds 12] [--rounds 4] [--clients 8]

S3 is the SeaweedFS on 127.0.0.1:8333 if it serves, else one started here (``s3.py``);
what the run writes under its prefix is deleted at the end. ``--mix vector,filter,hybrid``
cycles query kinds (filtered and hybrid queries also read live masks and tail BM25);
``--index-threshold N`` sets the servers' ``index_threshold_rows`` (how long the tail grows);
``--wal-merge-objects N`` their ``wal_merge_objects`` (0: no WAL merges, the list grows with
every commit until an index build).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import s3  # noqa: E402

from vectordb.testing import free_port  # noqa: E402

NS = "strong"
DIMS = 384
# SeaweedFS without an IAM configuration accepts any key pair.
ACCESS_KEY, SECRET_KEY = "bench", "bench"
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


class Corpus:
    """Deterministic clustered unit vectors, short texts and attributes."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((400, DIMS)).astype(np.float32)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        self.words = ["".join(self.rng.choice(letters, self.rng.integers(3, 9))) for _ in range(3000)]

    def vectors(self, n: int) -> np.ndarray:
        which = self.rng.integers(0, len(self.centres), n)
        v = self.centres[which] + 1.2 * self.rng.standard_normal((n, DIMS)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def docs(self, ids: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
        n = len(ids)
        texts = [" ".join(self.rng.choice(self.words, self.rng.integers(8, 40))) for _ in range(n)]
        attrs = [
            json.dumps({"category": f"c{int(c)}", "year": int(y), "price": round(float(p), 2)})
            for c, y, p in zip(self.rng.integers(0, 20, n), self.rng.integers(2000, 2026, n), self.rng.random(n) * 100)
        ]
        return self.vectors(n), texts, attrs


def build_namespace(settings, corpus: Corpus, rows: int) -> dict:
    """Write and index the namespace in this process; returns what it holds."""
    import pyarrow as pa

    from api.service import Service

    svc = Service(settings.model_copy(update={"auto_index": False, "group_commit_ms": 1.0}))
    try:
        svc.create_namespace(NS, "none", dimensions=DIMS)
        for lo in range(0, rows, 10_000):
            ids = [f"doc-{i}" for i in range(lo, min(rows, lo + 10_000))]
            vectors, texts, attrs = corpus.docs(ids)
            table = pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS),
                              "text": texts, "attributes": attrs})
            svc.upsert_table(NS, table)
        log(f"wrote {rows:,} rows; indexing")
        svc.index(NS)
        doomed = [f"doc-{i}" for i in corpus.rng.choice(rows, rows // 100, replace=False)]
        svc.delete(NS, ids=doomed)
        rewritten = sorted({f"doc-{i}" for i in corpus.rng.choice(rows, rows // 50, replace=False)} - set(doomed))
        vectors, texts, attrs = corpus.docs(rewritten)
        svc.upsert_table(NS, pa.table({"id": rewritten, "text": texts, "attributes": attrs,
                                       "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS)}))
        svc.index(NS)
        tail = [f"tail-{i}" for i in range(200)]
        vectors, texts, attrs = corpus.docs(tail)
        svc.upsert_table(NS, pa.table({"id": tail, "text": texts, "attributes": attrs,
                                       "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS)}))
        return svc.describe(NS)
    finally:
        svc.close()


# --------------------------------------------------------------------------- servers


def start_server(env: dict[str, str], role: str, log_dir: Path) -> tuple[subprocess.Popen, int]:
    """``vectordb serve --role ROLE`` from this checkout; returns once /healthz answers."""
    port = free_port()
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "VECTORDB_PRELOAD_EMBEDDER": "", **env}
    with open(log_dir / f"server-{role}-{port}.log", "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--role", role, "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"the {role} server did not start; see {log_dir}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path}: {response.status} {data[:300]!r}")
    return data


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) so far of each process, of this one, and of the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
    t = os.times()
    out["bench"] = t.user + t.system
    with contextlib.suppress(OSError):  # every process on the machine, other people's included
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        out["machine"] = (sum(int(f) for f in fields[:8]) - int(fields[3]) - int(fields[4])) / tick
    return out


def listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:``port`` (Linux /proc; None if not found)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
    return None


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return orjson.loads(conn.getresponse().read())
    finally:
        conn.close()


# --------------------------------------------------------------------------- series


class Writer:
    """One client committing small batches without pause, each acknowledged = durable."""

    def __init__(self, port: int, corpus: Corpus, batch: int, rows: int) -> None:
        self.port, self.corpus, self.batch, self.rows = port, corpus, batch, rows
        self.next_id = 0
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def body(self) -> bytes:
        n_new = max(1, round(self.batch * 0.7))
        ids = [f"w-{self.next_id + i}" for i in range(n_new)]
        self.next_id += n_new
        existing = self.corpus.rng.choice(self.rows, self.batch - n_new, replace=False)
        ids += [f"doc-{int(i)}" for i in existing]
        vectors, texts, attrs = self.corpus.docs(ids)
        docs = [{"id": i, "vector": base64.b64encode(v.astype("<f4").tobytes()).decode(), "text": t,
                 "attributes": json.loads(a)} for i, v, t, a in zip(ids, vectors, texts, attrs)]
        return orjson.dumps({"documents": docs})

    def start(self) -> None:
        self._stop.clear()
        self.latencies = []
        self._thread = threading.Thread(target=self._run, name="writer")
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"the writer failed: {self.error!r}")
        lat = sorted(self.latencies)
        return {"commits": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None}

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            while not self._stop.is_set():
                body = self.body()
                started = time.perf_counter()
                post(conn, f"/v1/namespaces/{NS}/documents", body)
                self.latencies.append(time.perf_counter() - started)
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            conn.close()


def query_bodies(corpus: Corpus, n: int, mix: list[str]) -> list[bytes]:
    vectors = corpus.vectors(n)
    out = []
    for i, v in enumerate(vectors):
        kind = mix[i % len(mix)]
        body: dict = {"vector": v.tolist(), "top_k": 10}
        if kind == "filter":
            body["filter"] = {"category": {"$in": [f"c{i % 20}", f"c{(i + 7) % 20}"]}}
        elif kind == "hybrid":
            body.update(mode="hybrid", text=" ".join(corpus.rng.choice(corpus.words, 3)))
        out.append(orjson.dumps(body))
    return out


def series(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` keep-alive clients querying without pause for ``seconds``."""
    latencies: list[float] = []
    versions: list[int] = []
    lock, halt = threading.Lock(), threading.Event()
    errors: list[BaseException] = []
    path = f"/v1/namespaces/{NS}/query"

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k
        try:
            while not halt.is_set():
                started = time.perf_counter()
                data = post(conn, path, bodies[i % len(bodies)])
                elapsed = time.perf_counter() - started
                i += clients
                with lock:
                    latencies.append(elapsed)
                    if len(latencies) % 50 == 0:
                        versions.append(orjson.loads(data)["version"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    halt.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a query client failed: {errors[0]!r}")
    latencies.sort()
    return {"queries_per_s": round(len(latencies) / wall, 1), "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2), "queries": len(latencies),
            "versions_seen": len(set(versions))}


# --------------------------------------------------------------------------- main


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def run(args, store_uri: str, env: dict[str, str], settings, s3_port: int | None = None) -> dict:
    corpus = Corpus(args.seed)
    log(f"building the namespace ({args.rows:,} rows) in {store_uri}")
    described = build_namespace(settings, corpus, args.rows)
    log(f"namespace: version {described['version']}, {described['rows']}, {len(described['segments'])} segments")
    bodies = query_bodies(corpus, 500, args.mix.split(","))
    logs = Path(tempfile.mkdtemp(prefix="vdbstrong-logs-"))
    servers: list[subprocess.Popen] = []
    out: dict = {"namespace_start": described, "series": {"A": [], "B": []}, "writer": []}
    try:
        if args.roles == "all":
            proc, q_port = start_server(env, "all", logs)
            servers.append(proc)
            w_port = q_port
        else:
            proc, q_port = start_server(env, "query", logs)
            servers.append(proc)
            proc, w_port = start_server(env, "ingest", logs)
            servers.append(proc)
        out["query_server_pid"] = servers[0].pid
        pids = {"query": servers[0].pid} if args.roles == "all" else {"query": servers[0].pid, "ingest": servers[1].pid}
        s3_pid = listener_pid(s3_port) if s3_port else None
        if s3_pid is not None:
            pids["s3"] = s3_pid
        writer = Writer(w_port, corpus, args.batch, args.rows)
        log("warm-up")
        series(q_port, bodies, args.clients, args.warmup)

        def measured(name: str, rnd: int) -> dict:
            before = cpu_seconds(pids)
            if name == "B":
                writer.start()
            try:
                result = series(q_port, bodies, args.clients, args.seconds)
            finally:
                if name == "B":
                    w = writer.stop()
                    w["commits_per_s"] = round(w["commits"] / args.seconds, 1)
                    out["writer"].append(w)
            after = cpu_seconds(pids)
            # Cores busy per process (the bench's own: the query clients and the writer).
            result["cores"] = {k: round((after[k] - before[k]) / args.seconds, 2) for k in after if k in before}
            out["series"][name].append(result)
            log(f"round {rnd + 1} {name} ({'one writer' if name == 'B' else 'no writer'}): {result}"
                + (f"; writer {out['writer'][-1]}" if name == "B" else ""))
            return result

        # A B, B A, A B, ...: a drift over the run (the tail grows) weighs on both alike.
        for rnd in range(args.rounds):
            for name in ("AB" if rnd % 2 == 0 else "BA"):
                measured(name, rnd)
        out["namespace_end"] = get(q_port, f"/v1/namespaces/{NS}")
        out["wal_merges"] = get(w_port, "/healthz")["stats"].get("wal_merges")  # the ingest worker's
        out["tail_folds"] = get(q_port, "/healthz")["stats"].get("tail_folds")  # the query worker's
    finally:
        for proc in servers:
            stop(proc)
        out["server_logs_tail"] = {p.name: p.read_text(errors="replace")[-2000:] for p in logs.iterdir()}
        shutil.rmtree(logs, ignore_errors=True)
    a, b = out["series"]["A"], out["series"]["B"]
    summary = {name: {k: _median(runs, k) for k in ("queries_per_s", "p50_ms", "p99_ms")} for name, runs in out["series"].items()}
    summary["ratio"] = {
        "qps_B_over_A": round(summary["B"]["queries_per_s"] / summary["A"]["queries_per_s"], 3),
        "p50_B_over_A": round(summary["B"]["p50_ms"] / summary["A"]["p50_ms"], 3),
        "p99_B_over_A": round(summary["B"]["p99_ms"] / summary["A"]["p99_ms"], 3),
        # per round, A and B back to back, so noise of the shared machine shows
        "qps_by_round": [round(y["queries_per_s"] / x["queries_per_s"], 3) for x, y in zip(a, b)],
        "p99_by_round": [round(y["p99_ms"] / x["p99_ms"], 3) for x, y in zip(a, b)],
    }
    summary["cores"] = {name: {k: round(statistics.median(r["cores"][k] for r in runs), 2) for k in runs[0]["cores"]}
                        for name, runs in out["series"].items()}
    summary["target_met"] = summary["ratio"]["qps_B_over_A"] >= 0.7 and summary["ratio"]["p99_B_over_A"] <= 2.0
    out["summary"] = summary
    return out


def report(result: dict) -> str:
    s = result["summary"]
    w = result["writer"]
    lines = [
        f"strong reads, {result['rows']:,} rows, {result['clients']} clients, {result['store']} store, roles "
        f"{result['roles']}, mix {result['mix']}, {result['rounds']} rounds of {result['seconds']} s",
        "| series | q/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- |",
        f"| A: no writer | {s['A']['queries_per_s']} | {s['A']['p50_ms']} | {s['A']['p99_ms']} |",
        f"| B: one writer ({result['batch']} docs/commit, "
        f"{round(statistics.median(x['commits_per_s'] for x in w), 1)} commits/s) | {s['B']['queries_per_s']} | "
        f"{s['B']['p50_ms']} | {s['B']['p99_ms']} |",
        f"| B / A | {s['ratio']['qps_B_over_A']} | {s['ratio']['p50_B_over_A']} | {s['ratio']['p99_B_over_A']} |",
        f"per round B/A: q/s {s['ratio']['qps_by_round']}, p99 {s['ratio']['p99_by_round']}",
        f"cores busy (median): A {s['cores']['A']}, B {s['cores']['B']}",
        f"target (q/s ≥ 0.70, p99 ≤ 2.0): {'met' if s['target_met'] else 'NOT met'}",
        f"namespace at the end: version {result['namespace_end']['version']}, rows {result['namespace_end']['rows']}, "
        f"{result['namespace_end']['wal_objects']} WAL objects, {len(result['namespace_end']['segments'])} segments",
        f"WAL merges in the ingest worker: {result.get('wal_merges')}; tails the query worker folded: "
        f"{result.get('tail_folds')}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each series")
    parser.add_argument("--rounds", type=int, default=4, help="A/B pairs, alternated")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of queries before the first series")
    parser.add_argument("--batch", type=int, default=10, help="documents per write request")
    parser.add_argument("--store", choices=("s3", "file"), default="s3")
    parser.add_argument("--roles", choices=("split", "all"), default="split",
                        help="split: a query and an ingest process; all: one process serving both")
    parser.add_argument("--mix", default="vector", help="query kinds cycled: vector, filter, hybrid")
    parser.add_argument("--index-threshold", type=int,
                        help="the servers' index_threshold_rows (default: the setting's default, 20,000)")
    parser.add_argument("--wal-merge-objects", type=int,
                        help="the servers' wal_merge_objects (default: the setting's default; 0: no merges)")
    parser.add_argument("--endpoint", help="S3 host:port (default: 127.0.0.1:8333 if it serves, else SeaweedFS started here)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", help="result JSON (default bench/results/<time>-strong-reads-<store>[-<mix>].json)")
    args = parser.parse_args()
    if set(args.mix.split(",")) - {"vector", "filter", "hybrid"}:
        raise SystemExit("--mix takes vector, filter and hybrid")
    extra_env = {"VECTORDB_INDEX_THRESHOLD_ROWS": str(args.index_threshold)} if args.index_threshold else {}
    if args.wal_merge_objects is not None:
        extra_env["VECTORDB_WAL_MERGE_OBJECTS"] = str(args.wal_merge_objects)

    from vectordb.settings import Settings

    started_at = datetime.now(timezone.utc)
    result: dict = {
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"), "command": " ".join(sys.argv),
        **{k: getattr(args, k) for k in ("rows", "clients", "seconds", "rounds", "batch", "store", "roles", "mix",
                                         "index_threshold", "wal_merge_objects")},
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "loadavg_start": round(os.getloadavg()[0], 2)},
    }
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="vdbstrong-") as tmp:
        if args.store == "file":
            store_uri = f"file://{tmp}/store"
            env = {"VECTORDB_STORE_URI": store_uri, **extra_env}
            result.update(run(args, store_uri, env, Settings(store_uri=store_uri)))
        else:
            with s3.endpoint(args.endpoint, Path(tmp), log) as ep:
                prefix = f"strong-{run_id}"
                store_uri = f"s3://{s3.BUCKET}/{prefix}"
                env = {"VECTORDB_STORE_URI": store_uri, "VECTORDB_S3_ENDPOINT": ep,
                       "VECTORDB_S3_ACCESS_KEY": ACCESS_KEY, "VECTORDB_S3_SECRET_KEY": SECRET_KEY, **extra_env}
                settings = Settings(store_uri=store_uri, s3_endpoint=ep, s3_access_key=ACCESS_KEY,
                                    s3_secret_key=SECRET_KEY)
                try:
                    result.update(run(args, store_uri, env, settings, int(ep.rsplit(":", 1)[1])))
                finally:
                    with contextlib.suppress(Exception):
                        s3.remove_prefixes(ep, [prefix], log)
    result["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(report(result))
    mix = "" if args.mix == "vector" else "-" + args.mix.replace(",", "-")
    threshold = f"-threshold-{args.index_threshold}" if args.index_threshold else ""
    if args.wal_merge_objects is not None:
        threshold += f"-merge-{args.wal_merge_objects}"
    name = f"{started_at:%Y%m%d-%H%M%S}-strong-reads-{args.store}{mix}{threshold}.json"
    out = Path(args.out) if args.out else BENCH / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
