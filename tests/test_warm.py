"""The warm hint: after it, a query on a fresh worker reads nothing more from the store."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.service import Service
from api.warm import install_warm
from query.warm import warm
from storage import CachedStore
from storage.memory import MemoryStore
from tests.fakes import register_fake_embedder
from vectordb.errors import NamespaceNotFound
from vectordb.settings import Settings

DIMS = 8


def _settings() -> Settings:
    return Settings(
        store_uri="memory://warm", group_commit_ms=1, auto_index=False, preload_embedder="",
        flat_max_rows=50, rows_per_partition=40,
    )


@pytest.fixture
def shared_store() -> MemoryStore:
    """The "object store": one writer fills it, fresh workers read it."""
    store = MemoryStore()
    writer = Service(_settings(), store=store)
    rng = np.random.default_rng(7)
    writer.create_namespace("w", "none", DIMS)
    for batch in range(2):  # two segments
        vectors = rng.normal(size=(200, DIMS)).astype(np.float32)
        writer.upsert("w", [{"id": f"s{batch}-{i}", "vector": v.tolist(), "text": f"doc {i}"} for i, v in enumerate(vectors)])
        writer.index("w")
    writer.delete("w", ["s0-1"])  # a tombstone
    writer.upsert("w", [{"id": "tail-0", "vector": rng.normal(size=DIMS).tolist()}])  # a WAL tail
    writer.close()
    return store


def _fresh_worker(store: MemoryStore) -> Service:
    return Service(_settings(), store=CachedStore(store, 64 << 20))


def test_warm_fetches_manifest_centroids_tail_and_partitions(shared_store):
    worker = _fresh_worker(shared_store)
    out = warm(worker, "w", include_docs=True)
    manifest = worker.catalog.latest("w")
    assert out["namespace"] == "w" and out["version"] == manifest.version
    assert out["segments"] == len(manifest.segments) == 2
    assert out["wal_objects"] == len(manifest.wal) >= 1
    assert out["partitions"] == out["partitions_total"] > 2
    assert out["partition_bytes"] > 0 and out["centroid_bytes"] > 0 and out["docs_bytes"] > 0
    assert out["embedder"] is None and out["skipped"] == []
    misses = worker.store.stats()["misses"]
    rng = np.random.default_rng(1)
    for _ in range(20):
        r = worker.query("w", vector=rng.normal(size=DIMS).tolist(), top_k=5, include=("text",), consistency="eventual")
        assert len(r.hits) == 5
    assert worker.store.stats()["misses"] == misses  # everything came from the cache


def test_warm_budget_takes_biggest_partitions_first(shared_store):
    worker = _fresh_worker(shared_store)
    everything = warm(_fresh_worker(shared_store), "w")
    out = warm(worker, "w", budget_bytes=everything["partition_bytes"] // 3)
    assert 0 < out["partitions"] < everything["partitions"]
    assert out["partition_bytes"] <= everything["partition_bytes"] // 3
    # The same choice by hand: partitions by row count, biggest first, while they fit.
    manifest = worker.catalog.latest("w")
    layouts = [worker.reader.layout("w", seg) for seg in manifest.segments]
    parts = sorted(((lay.rows_in(p), lay.byte_range(p)[1]) for lay in layouts for p in range(lay.nlist)), reverse=True)
    # (The attribute columns are taken first.)
    budget, expected = everything["partition_bytes"] // 3 - out["column_bytes"], 0
    for rows, size in parts:
        if rows and size <= budget:
            budget -= size
            expected += 1
    assert out["partitions"] == expected
    nothing = warm(_fresh_worker(shared_store), "w", budget_bytes=0)
    assert nothing["partitions"] == 0 and nothing["centroid_bytes"] == everything["centroid_bytes"]


def test_warm_does_not_change_answers(shared_store):
    cold, warmed = _fresh_worker(shared_store), _fresh_worker(shared_store)
    warm(warmed, "w", include_docs=True)
    rng = np.random.default_rng(2)
    for _ in range(10):
        q = rng.normal(size=DIMS).tolist()
        a = cold.query("w", vector=q, top_k=7, include=("text",))
        b = warmed.query("w", vector=q, top_k=7, include=("text",))
        assert [(h.id, h.text) for h in a.hits] == [(h.id, h.text) for h in b.hits]


def test_warm_loads_the_embedder(shared_store):
    register_fake_embedder()
    writer = Service(_settings(), store=shared_store)
    writer.create_namespace("txt", "fake")
    writer.upsert("txt", [{"id": "1", "text": "solar panels"}])
    writer.close()
    out = warm(_fresh_worker(shared_store), "txt")
    assert out["embedder"] == "fake" and out["skipped"] == []


def test_warm_unknown_namespace(shared_store):
    with pytest.raises(NamespaceNotFound):
        warm(_fresh_worker(shared_store), "absent")


def test_warm_route(shared_store):
    worker = _fresh_worker(shared_store)
    app = create_app(worker.settings, "query", worker)
    install_warm(app, worker)
    install_warm(app, worker)  # idempotent
    # X-Requested-With: a body-less POST a web page could not send cross-site (api/access.py).
    with TestClient(app, headers={"X-Requested-With": "test"}) as client:
        r = client.post("/v1/namespaces/w/warm")
        assert r.status_code == 200 and r.json()["partitions"] > 0
        assert {"bm25_bytes", "column_bytes"} <= set(r.json())  # every field of the result reaches the client
        r = client.post("/v1/namespaces/w/warm", json={"budget_bytes": 0, "include_docs": True})
        assert r.status_code == 200 and r.json()["partitions"] == 0
        r = client.post("/v1/namespaces/w/warm", json={"budget_bytes": -1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_argument"
        r = client.post("/v1/namespaces/absent/warm")
        assert r.status_code == 404 and r.json()["error"]["code"] == "namespace_not_found"
