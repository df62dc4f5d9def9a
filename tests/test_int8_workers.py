"""int8 segments across separate processes on one real S3 store (SeaweedFS): an ingest
worker, a query worker that holds a small segment's int8 codes (scanned by FAISS's 8-bit
kernel) and then sits idle, `vectordb gc`, and a namespace drop. Meanwhile the namespace
grows into several segments, on centroid sets they share (the default) or with centroids
of their own (the per-set probe minimum), rows are overwritten and deleted, garbage
collection runs, and filters on the namespace's ``cluster_by`` key read each segment's
``clusters.bin``: a broad one the probed partitions' rows' groups, a selective one its
groups' rows and vectors. The stale worker's
answers must equal a fresh reader's and never name a deleted row or an overwritten vector;
after a drop and re-create it sees only the new namespace."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from tests.s3server import s3_env
from tests.test_lagging_workers import _gc
from vectordb.settings import Settings
from vectordb.testing import start_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]

DIMS = 16


def _docs(lo: int, hi: int, rng: np.random.Generator, shift: float = 0.0) -> list[dict]:
    return [{"id": f"d{i}", "vector": (rng.normal(size=DIMS) + shift).round(4).tolist(),
             "attributes": {"year": 2000 + i % 25}} for i in range(lo, hi)]


QUERIES = [
    {"vector": [0.3] * DIMS, "top_k": 10},
    {"vector": [-0.5, 0.2] * (DIMS // 2), "top_k": 10, "include": ["vector"]},
    {"vector": [0.1, -0.4] * (DIMS // 2), "top_k": 10, "filter": {"year": {"$gte": 2008}}},  # broad: probes, keeps rows by group
    # Selective, on the namespace's cluster_by key: each segment's clusters.bin group.
    {"vector": [0.2, 0.1] * (DIMS // 2), "top_k": 10, "filter": {"year": {"$in": [2003, 2011]}}},
]


def _answers(client, body: dict) -> list[tuple[str, float]]:
    r = client.post("/v1/namespaces/n/query", json={**body, "consistency": "strong"})
    assert r.status_code == 200, r.text
    return [(h["id"], round(h["score"], 4)) for h in r.json()["results"]]


@pytest.mark.parametrize("share", ["true", "false"])
def test_a_stale_query_worker_answers_int8_segments_after_growth_overwrites_deletes_gc_and_a_drop(
        s3_endpoint, tmp_path, share):
    env = s3_env(s3_endpoint, f"int8-share-{share}", VECTORDB_AUTO_INDEX="false", VECTORDB_GROUP_COMMIT_MS="5",
                 VECTORDB_FLAT_MAX_ROWS="200", VECTORDB_ROWS_PER_PARTITION="100",
                 VECTORDB_FILTER_EXACT_MAX_ROWS="300", VECTORDB_SHARE_CENTROIDS=share)
    ingest = start_server(env, tmp_path, "ingest")
    query = start_server(env, tmp_path, "query")
    rng = np.random.default_rng(5)
    try:
        with ingest.client() as w, query.client() as q:
            r = w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2",
                                                "vector_dtype": "int8", "cluster_by": ["year"]})
            assert r.status_code in (200, 201), r.text
            assert w.post("/v1/namespaces/n/documents", json={"documents": _docs(0, 1500, rng)}).status_code == 200
            assert w.post("/v1/namespaces/n/index", json={}).status_code == 200
            assert all(_answers(q, body) for body in QUERIES)  # the query worker now holds codes

            for lo in range(1500, 6000, 1500):  # one segment per batch
                r = w.post("/v1/namespaces/n/documents", json={"documents": _docs(lo, lo + 1500, rng)})
                assert r.status_code == 200, r.text
                assert w.post("/v1/namespaces/n/index", json={}).status_code == 200
            overwritten = _docs(0, 300, rng, shift=3.0)  # rows of the first segment, moved far away
            assert w.post("/v1/namespaces/n/documents", json={"documents": overwritten}).status_code == 200
            deleted = [f"d{i}" for i in range(300, 6000, 29)]
            assert w.post("/v1/namespaces/n/documents/delete", json={"ids": deleted}).status_code == 200
            assert w.post("/v1/namespaces/n/index", json={}).status_code == 200
            _gc(env, "n")
            assert len(w.get("/v1/namespaces/n").json()["segments"]) >= 3

            fresh = Service(Settings(store_uri=env["VECTORDB_STORE_URI"], s3_endpoint=s3_endpoint,
                                     s3_access_key=env["VECTORDB_S3_ACCESS_KEY"],
                                     s3_secret_key=env["VECTORDB_S3_SECRET_KEY"], preload_embedder="",
                                     flat_max_rows=200, rows_per_partition=100, filter_exact_max_rows=300))
            try:
                manifest = fresh.catalog.latest("n")
                sets = [fresh.reader.layout("n", seg).centroid_set for seg in manifest.segments]
                assert all(fresh.reader.layout("n", seg).clusters is not None for seg in manifest.segments)
                if share == "true":
                    assert None not in sets and len(set(sets)) < len(sets)  # builds joined a set
                else:
                    assert sets == [None] * len(sets)
                for body in QUERIES:
                    got = _answers(q, body)
                    want = [(h.id, round(h.score, 4)) for h in fresh.query("n", **body).hits]
                    assert got == want, body
                    assert got and not set(deleted) & {i for i, _ in got}
                # An overwritten row is found at its new vector, by the stale worker too.
                moved = overwritten[7]
                hits = q.post("/v1/namespaces/n/query", json={"vector": moved["vector"], "top_k": 1,
                                                               "include": ["vector"]}).json()["results"]
                assert hits[0]["id"] == "d7"
                assert np.allclose(hits[0]["vector"], moved["vector"], atol=0.1)  # int8: within a step
            finally:
                fresh.close()

            # Dropped and re-created: the stale worker sees only the new namespace.
            assert w.delete("/v1/namespaces/n").status_code == 200
            r = w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "vector_dtype": "int8"})
            assert r.status_code in (200, 201), r.text
            assert w.post("/v1/namespaces/n/documents", json={"documents": _docs(9000, 9400, rng)}).status_code == 200
            assert w.post("/v1/namespaces/n/index", json={}).status_code == 200
            got = _answers(q, {"vector": [0.3] * DIMS, "top_k": 50})
            assert len(got) == 50 and {i for i, _ in got} <= {f"d{i}" for i in range(9000, 9400)}
    finally:
        ingest.stop()
        query.stop()
