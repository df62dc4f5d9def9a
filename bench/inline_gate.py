"""The query route's inline gate (``api.app.InlineGate``) against every query in the thread
pool, over HTTP, one client and several at once.

Two query servers (``vectordb serve --role query``) run from this checkout on the same
``file://`` namespace (100 NFCorpus-style query texts as documents, embedder minilm):
one as shipped, one with ``VECTORDB_QUERY_INLINE=false``. Each series is ``--seconds`` of
keep-alive ``http.client`` clients querying without pause, text and vector queries, the
two servers in turn, ``--rounds`` times; it prints queries/s and latency per series and
the ratio gate / pool.

    python bench/inline_gate.py [--clients 1,4] [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from coldstart import test_queries  # noqa: E402

from vectordb.testing import free_port  # noqa: E402

NS = "gate"


def make_namespace(store: str, texts: list[str]) -> list[list[float]]:
    """The namespace, written once; returns the query vectors (the texts, embedded)."""
    from api.service import Service
    from vectordb import embedders
    from vectordb.bert_numpy import use_for_minilm
    from vectordb.settings import Settings

    use_for_minilm()
    settings = Settings(store_uri=f"file://{store}", group_commit_ms=1, auto_index=False, preload_embedder="")
    writer = Service(settings)
    try:
        writer.create_namespace(NS, "minilm")
        writer.upsert(NS, [{"id": f"d{i}", "text": t} for i, t in enumerate(texts[:100])])
        writer.index(NS)
        embedder = embedders.get("minilm", settings)
        return [embedder.embed_query(t).tolist() for t in texts]
    finally:
        writer.close()


def start_server(store: str, inline: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "VECTORDB_STORE_URI": f"file://{store}", "VECTORDB_HOST": "127.0.0.1",
           "VECTORDB_PORT": str(port), "VECTORDB_QUERY_INLINE": str(inline).lower(), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([str(Path(sys.executable).parent / "vectordb"), "serve", "--role", "query"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return process, port


def query(conn: http.client.HTTPConnection, body: dict) -> None:
    conn.request("POST", f"/v1/namespaces/{NS}/query", body=orjson.dumps(body),
                 headers={"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"query failed: {response.status} {data[:300]!r}")


def series(port: int, bodies: list[dict], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        query(conn, bodies[i % len(bodies)])  # connect outside the clock
        while not stop.is_set():
            started = time.perf_counter()
            query(conn, bodies[i % len(bodies)])
            elapsed = time.perf_counter() - started
            i += clients
            with lock:
                latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"queries_per_s": round(len(latencies) / wall, 1), "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2), "queries": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each series")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="result JSON (default bench/results/<time>-inline-gate.json)")
    args = parser.parse_args()

    texts = test_queries(200)
    store = tempfile.mkdtemp(prefix="vdbgate-", dir="/tmp")
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    out: dict = {"load_average_start": os.getloadavg(), "series": {}}
    try:
        vectors = make_namespace(store, texts)
        bodies = {"text": [{"text": t, "top_k": 10} for t in texts],
                  "vector": [{"vector": v, "top_k": 10} for v in vectors]}
        servers = {"gate": start_server(store, True), "pool": start_server(store, False)}
        for name, (process, port) in servers.items():
            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    for kind in bodies:  # load the model; every kind has answered once
                        query(conn, bodies[kind][0])
                    conn.close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the {name} server did not start") from None
                    time.sleep(0.05)
        for rnd in range(args.rounds):
            for kind in bodies:
                for clients in (int(c) for c in args.clients.split(",")):
                    for name, (_, port) in servers.items():
                        key = f"{kind} clients={clients} {name}"
                        result = series(port, bodies[kind], clients, args.seconds)
                        out["series"].setdefault(key, []).append(result)
                        print(f"round {rnd + 1}: {key}: {result}", file=sys.stderr, flush=True)
    finally:
        for process, _ in servers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        shutil.rmtree(store, ignore_errors=True)
    out["load_average_end"] = os.getloadavg()

    rows = ["| queries | clients | gate q/s | pool q/s | q/s gate/pool | gate p50 ms | pool p50 ms | gate p99 ms | pool p99 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in out["series"]:
        if not key.endswith(" gate"):
            continue
        kind, clients = key.split()[:2]
        gate, pool = out["series"][key], out["series"][key[: -len("gate")] + "pool"]
        med = lambda runs, field: round(statistics.median(r[field] for r in runs), 2)  # noqa: E731
        rows.append(f"| {kind} | {clients.split('=')[1]} | {med(gate, 'queries_per_s')} | {med(pool, 'queries_per_s')} | "
                    f"{med(gate, 'queries_per_s') / med(pool, 'queries_per_s'):.2f} | {med(gate, 'p50_ms')} | "
                    f"{med(pool, 'p50_ms')} | {med(gate, 'p99_ms')} | {med(pool, 'p99_ms')} |")
    out["table"] = rows
    print("\n".join(rows))
    path = Path(args.out or ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S-inline-gate.json"))
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
