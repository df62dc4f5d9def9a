"""Issue 11's two lost-write defects, as users met them: separate `vectordb serve`
processes (two ingest workers, a query worker) and the `vectordb gc` command on one real
S3 store (SeaweedFS). Every acknowledged write must stay visible and no version number
may be committed twice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.s3server import s3_env
from vectordb.testing import ROOT, start_server

pytestmark = [pytest.mark.s3, pytest.mark.integration]

DIMS = 4


@pytest.fixture
def env(s3_endpoint):
    return s3_env(s3_endpoint, "lag", VECTORDB_GROUP_COMMIT_MS="5", VECTORDB_AUTO_INDEX="false")


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(env, role="all"):
        server = start_server(env, tmp_path, role)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _upsert(client, doc_id: str, x: float = 1.0):
    r = client.post("/v1/namespaces/n/documents", json={"documents": [{"id": doc_id, "vector": [x, 0, 0, 1]}]})
    return r


def _all_ids(client) -> tuple[int, set[str]]:
    r = client.post("/v1/namespaces/n/query", json={"vector": [0, 0, 0, 0], "top_k": 100, "filter": {"id": {"$ne": ""}}})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["version"], {hit["id"] for hit in body["results"]}


def _gc(env, namespace: str = "n") -> dict:
    import json

    full = {**os.environ, **env, "VECTORDB_GC_GRACE_S": "0", "VECTORDB_RETAIN_MANIFESTS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "gc", namespace], cwd=ROOT, env=full, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_lagging_writer_after_gc_commits_a_new_version_and_loses_nothing(env, servers):
    a, b, q = servers(env, "ingest"), servers(env, "ingest"), servers(env, "query")
    with a.client() as ca, b.client() as cb, q.client() as cq:
        assert ca.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"}).status_code == 200
        assert _upsert(cb, "b0").json()["version"] == 1
        assert _all_ids(cq) == (1, {"b0"})  # Q now knows v1
        acked = [_upsert(ca, f"a{i}", i).json()["version"] for i in range(12)]
        assert acked == list(range(2, 14))
        collected = _gc(env)
        assert collected["manifests_pruned"] >= 12
        r = _upsert(cb, "b1")
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert version > 13 and version not in acked  # not v2 a second time
        everything = {"b0", "b1", *(f"a{i}" for i in range(12))}
        assert _all_ids(cq) == (version, everything)  # Q's strong reads move on
    fresh = servers(env, "query")
    with fresh.client() as cf:
        assert _all_ids(cf) == (version, everything)


def test_lagging_writer_cannot_resurrect_a_dropped_namespace(env, servers):
    a, b = servers(env, "ingest"), servers(env, "ingest")
    with a.client() as ca, b.client() as cb:
        assert ca.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"}).status_code == 200
        assert _upsert(cb, "b0").json()["version"] == 1
        for i in range(3):
            assert _upsert(ca, f"a{i}").status_code == 200
        assert ca.delete("/v1/namespaces/n").status_code == 200
        r = _upsert(cb, "b1")
        assert r.status_code == 404 and r.json()["error"]["code"] == "namespace_not_found", r.text
        assert cb.get("/v1/namespaces/n").status_code == 404
    fresh = servers(env, "query")
    with fresh.client() as cf:
        assert cf.get("/v1/namespaces").json()["namespaces"] == []
        assert cf.get("/v1/namespaces/n").status_code == 404
    # Re-created with another shape: the lagging writer validates against the new one.
    with a.client() as ca, b.client() as cb:
        assert ca.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": 8, "metric": "l2"}).status_code == 200
        r = _upsert(cb, "b2")
        assert r.status_code == 400 and "8" in r.json()["error"]["message"], r.text
        r = cb.post("/v1/namespaces/n/documents", json={"documents": [{"id": "b3", "vector": [1] * 8}]})
        assert r.status_code == 200, r.text
    with fresh.client() as cf:
        _, ids = _all_ids_8(cf)
        assert ids == {"b3"}


def _all_ids_8(client) -> tuple[int, set[str]]:
    r = client.post("/v1/namespaces/n/query", json={"vector": [0] * 8, "top_k": 100, "filter": {"id": {"$ne": ""}}})
    assert r.status_code == 200, r.text
    return r.json()["version"], {hit["id"] for hit in r.json()["results"]}


def test_ids_that_collide_or_cannot_be_named_are_refused(env, servers):
    """Defects 3 and 6 through a real server on S3: a chunk-shaped id in a chunking
    namespace, and ids '.' and '..' (no URL can name them), are 400 and write nothing."""
    server = servers({**env, "VECTORDB_PRELOAD_EMBEDDER": ""}, "all")
    with server.client() as c:
        assert c.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"}).status_code == 200
        for bad in (".", ".."):
            r = _upsert(c, bad)
            assert r.status_code == 400 and "no URL can name it" in r.json()["error"]["message"], r.text
        assert c.get("/v1/namespaces/n").json()["version"] == 0
        # A chunking namespace (an embedder) reserves <id>#<n> for chunks.
        assert c.put("/v1/namespaces/c", json={"embedder": "minilm"}).status_code == 200
        r = c.post("/v1/namespaces/c/documents", json={"documents": [{"id": "a#1", "text": "a user document"}]})
        assert r.status_code == 400 and "reserves for chunk ids" in r.json()["error"]["message"], r.text
        assert c.get("/v1/namespaces/c").json()["version"] == 0
