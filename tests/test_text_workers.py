"""BM25 and hybrid queries across separate processes on one real S3 store (SeaweedFS): an
ingest worker, a query worker that warmed its caches on a small segment and then sat idle,
and `vectordb gc`. The namespace grows past 20,000 rows (its new segment's bm25.bin has the
hashed dictionary, format 3), some documents are deleted, garbage collection runs; the
stale worker's answers must equal a fresh reader's and never name a deleted document."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from tests.s3server import s3_env
from tests.test_lagging_workers import _gc
from vectordb import bm25_blocks, segment
from vectordb.bm25_blocks import Head
from vectordb.settings import Settings
from vectordb.testing import start_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]

WORDS = [f"w{i}" for i in range(400)] + ["vitamin", "cancer", "risk"]


def _docs(lo: int, hi: int, rng: np.random.Generator) -> list[dict]:
    return [{"id": f"d{i}", "vector": rng.normal(size=4).round(4).tolist(),
             "text": " ".join(rng.choice(WORDS, int(rng.integers(5, 30)))),
             "attributes": {"year": 2000 + i % 25, "tenant": f"t{i % 7}"}} for i in range(lo, hi)]


def _answers(client, body: dict) -> list[tuple[str, float]]:
    r = client.post("/v1/namespaces/n/query", json={**body, "consistency": "strong"})
    assert r.status_code == 200, r.text
    return [(h["id"], round(h["score"], 5)) for h in r.json()["results"]]


QUERIES = [
    {"mode": "bm25", "text": "vitamin cancer risk", "top_k": 10},
    {"mode": "hybrid", "text": "vitamin risk w7", "vector": [0.5, -0.2, 0.1, 0.9], "top_k": 10},
    {"mode": "bm25", "text": "cancer w3", "top_k": 10, "filter": {"year": {"$gte": 2013}}},
]


def test_a_stale_query_worker_answers_bm25_and_hybrid_after_growth_deletes_and_gc(s3_endpoint, tmp_path):
    env = s3_env(s3_endpoint, "text", VECTORDB_AUTO_INDEX="false", VECTORDB_GROUP_COMMIT_MS="5")
    ingest = start_server(env, tmp_path, "ingest")
    query = start_server(env, tmp_path, "query")
    rng = np.random.default_rng(11)
    try:
        with ingest.client() as w, query.client() as q:
            assert w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": 4}).status_code in (200, 201)
            assert w.post("/v1/namespaces/n/documents", json={"documents": _docs(0, 1000, rng)}).status_code == 200
            assert w.post("/v1/namespaces/n/index", json={}).status_code == 200
            before = [_answers(q, body) for body in QUERIES]  # the query worker's caches: the small segment
            assert all(before)

            for lo in range(1000, 22_000, 5000):
                r = w.post("/v1/namespaces/n/documents", json={"documents": _docs(lo, min(lo + 5000, 22_000), rng)})
                assert r.status_code == 200, r.text
            assert w.post("/v1/namespaces/n/index", json={"compact": True}).status_code == 200
            deleted = [f"d{i}" for i in range(0, 22_000, 37)]
            assert w.post("/v1/namespaces/n/documents/delete", json={"ids": deleted}).status_code == 200
            _gc(env, "n")

            segments = w.get("/v1/namespaces/n").json()["segments"]
            assert max(s["rows"] for s in segments) >= bm25_blocks.HASHED_MIN_ROWS
            fresh = Service(Settings(store_uri=env["VECTORDB_STORE_URI"], s3_endpoint=s3_endpoint,
                                     s3_access_key=env["VECTORDB_S3_ACCESS_KEY"],
                                     s3_secret_key=env["VECTORDB_S3_SECRET_KEY"], preload_embedder=""))
            try:
                big = max(fresh.catalog.latest("n").segments, key=lambda s: s.rows)
                key = segment.file_key("n", big.id, "bm25.bin")
                assert Head.from_bytes(fresh.reader.store.get_range(key, 0, bm25_blocks.HEAD_BYTES)).slots
                for body in QUERIES:
                    got = _answers(q, body)
                    want = [(h.id, round(h.score, 5)) for h in fresh.query("n", **body).hits]
                    assert got == want, body
                    assert got and not set(deleted) & {i for i, _ in got}
            finally:
                fresh.close()
    finally:
        ingest.stop()
        query.stop()
