"""Unit tier: the whole write and read path on the in-memory store with a fake embedder."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb.errors import AlreadyExists, InvalidArgument, NamespaceNotFound, PayloadTooLarge
from vectordb.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return unit_settings()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def svc(settings, store) -> Service:
    service = Service(settings, store=store)
    yield service
    service.close()


def _docs(vectors: np.ndarray, prefix: str = "d") -> list[dict]:
    return [{"id": f"{prefix}{i}", "vector": v.tolist(), "attributes": {"n": i}} for i, v in enumerate(vectors)]


def _brute(vectors: np.ndarray, q: np.ndarray, k: int, metric: str) -> list[int]:
    if metric == "l2":
        scores = -((vectors - q) ** 2).sum(1)
    else:
        if metric == "cosine":
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            q = q / np.linalg.norm(q)
        scores = vectors @ q
    return list(np.argsort(-scores, kind="stable")[:k])


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_tail_and_segments_answer_like_brute_force(svc, metric):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    svc.create_namespace("ns1", "none", 16, metric)
    for lo in range(0, 400, 100):
        svc.upsert("ns1", _docs(vectors[lo : lo + 100])[: 100] if lo == 0 else _docs(vectors)[lo : lo + 100])
    queries = rng.normal(size=(20, 16)).astype(np.float32)

    def check(nprobe=None):
        for q in queries:
            got = [h.id for h in svc.query("ns1", vector=q.tolist(), top_k=10, nprobe=nprobe).hits]
            assert got == [f"d{i}" for i in _brute(vectors, q, 10, metric)]

    check()  # all in the WAL tail: exact
    result = svc.index("ns1")
    assert result.indexed_rows == 400
    assert svc.describe("ns1")["segments"][0]["partitions"] == 10
    check(nprobe=10)  # every partition probed: exact again


def test_read_your_writes_overwrite_and_delete_across_tail_and_segments(svc):
    svc.create_namespace("ns", "fake")
    svc.upsert("ns", [{"id": "a", "text": "red apple fruit"}, {"id": "b", "text": "blue ocean water"}])
    assert svc.query("ns", text="apple", top_k=1).hits[0].id == "a"
    svc.index("ns")
    # Overwrite "a" in the tail: the segment copy must not come back.
    svc.upsert("ns", [{"id": "a", "text": "green grass field", "attributes": {"v": 2}}])
    hits = svc.query("ns", text="green grass", top_k=5, include=("text", "attributes")).hits
    assert [h.id for h in hits].count("a") == 1
    assert hits[0].id == "a" and hits[0].text == "green grass field" and hits[0].attributes == {"v": 2, "doc_id": "a"}
    assert svc.get_document("ns", "a")["text"] == "green grass field"
    svc.delete("ns", ["b"])
    assert "b" not in [h.id for h in svc.query("ns", text="blue ocean", top_k=5).hits]
    svc.index("ns")
    assert "b" not in [h.id for h in svc.query("ns", text="blue ocean", top_k=5).hits]
    assert [h.id for h in svc.query("ns", text="green", top_k=5).hits] == ["a"]
    with pytest.raises(Exception, match="not found"):
        svc.get_document("ns", "b")


def test_fresh_service_on_same_store_answers_identically(settings, store, svc):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    svc.create_namespace("ns", "none", 8, "l2")
    svc.upsert("ns", _docs(vectors))
    svc.index("ns")
    svc.upsert("ns", _docs(vectors[:5] * 2, prefix="t"))
    q = rng.normal(size=8).astype(np.float32).tolist()
    before = svc.query("ns", vector=q, top_k=10, include=("attributes",))
    fresh = Service(settings, store=store)
    after = fresh.query("ns", vector=q, top_k=10, include=("attributes",))
    assert [(h.id, h.score, h.attributes) for h in before.hits] == [(h.id, h.score, h.attributes) for h in after.hits]
    assert before.version == after.version


class _SlowWalStore(MemoryStore):
    """WAL uploads take a few ms, as on a real object store, so writers overlap."""

    def put(self, key, data):
        if "/wal/" in key:
            time.sleep(0.005)
        super().put(key, data)


def test_concurrent_writers_conflict_retry_and_lose_nothing(settings):
    store = _SlowWalStore()
    writers = [Service(settings, store=store) for _ in range(2)]
    writers[0].create_namespace("ns", "none", 4, "dot")
    rng = np.random.default_rng(3)

    def write(w: int) -> None:
        for b in range(20):
            vecs = rng.normal(size=(5, 4)).astype(np.float32)
            writers[w].upsert("ns", [{"id": f"w{w}-{b}-{i}", "vector": v.tolist()} for i, v in enumerate(vecs)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w.committer.stats.conflicts for w in writers) > 0
    reader = Service(settings, store=store)
    tail = reader.reader.tail(reader.catalog.latest("ns"))
    assert len(tail.rows) == 200
    reader.index("ns")
    assert reader.describe("ns")["rows"]["indexed"] == 200


def test_compaction_and_gc_remove_deleted_bytes(svc, store):
    svc.create_namespace("ns", "fake")
    docs = [{"id": f"d{i}", "text": f"common words number {i}"} for i in range(120)]
    docs.append({"id": "secret", "text": "zebra-unique-marker payload"})
    svc.upsert("ns", docs)
    svc.index("ns")
    svc.delete("ns", ["secret"])
    svc.index("ns", compact=True)
    svc.collect_garbage("ns")
    blobs = b"".join(store.get(info.key) for info in store.list("ns/"))
    assert b"zebra-unique-marker" not in blobs
    assert svc.describe("ns")["rows"] == {"indexed": 120, "unindexed": 0}
    assert all(h.id != "secret" for h in svc.query("ns", text="zebra unique marker", top_k=50).hits)


def test_bad_input_is_rejected_and_loses_nothing(svc):
    svc.create_namespace("ns", "none", 3, "cosine")
    svc.upsert("ns", [{"id": "ok", "vector": [1, 0, 0]}])
    bad = [
        [{"id": "x", "vector": [1, 0]}],
        [{"id": "x", "vector": [1, float("nan"), 0]}],
        [{"id": "x", "vector": [1, float("inf"), 0]}],
        [{"id": "x", "vector": [0, 0, 0]}],
        [{"id": "x", "vector": ["1", 0, 0]}],
        [{"id": "x", "vector": [True, 0, 0]}],
        [{"id": "x"}],
        [{"id": "", "vector": [1, 0, 0]}],
        [{"id": 5, "vector": [1, 0, 0]}],
        [{"id": "x", "vector": [1, 0, 0], "extra": 1}],
        [{"id": "x", "vector": [1, 0, 0]}, {"id": "x", "vector": [0, 1, 0]}],
        [],
        "not a list",
    ]
    for docs in bad:
        with pytest.raises(InvalidArgument):
            svc.upsert("ns", docs)
    with pytest.raises(PayloadTooLarge):
        svc.upsert("ns", [{"id": f"{i}", "vector": [1, 0, 0]} for i in range(svc.settings.max_batch_docs + 1)])
    with pytest.raises(NamespaceNotFound):
        svc.upsert("missing", [{"id": "x", "vector": [1, 0, 0]}])
    for name in ["..", "a/b", "x" * 64, "ｎs", "nаme", "", "-x", "a..b/"]:
        with pytest.raises(InvalidArgument):
            svc.create_namespace(name, "none", 3)
    with pytest.raises(AlreadyExists):
        svc.create_namespace("ns", "none", 4)
    assert [h.id for h in svc.query("ns", vector=[1, 0, 0], top_k=5).hits] == ["ok"]


def test_drop_and_recreate_never_reuses_versions(svc):
    svc.create_namespace("ns", "none", 2, "l2")
    svc.upsert("ns", [{"id": "a", "vector": [1, 2]}])
    dropped = svc.drop_namespace("ns")
    with pytest.raises(NamespaceNotFound):
        svc.query("ns", vector=[1, 2])
    assert "ns" not in svc.list_namespaces()
    manifest, created = svc.create_namespace("ns", "none", 3, "l2")
    assert created and manifest.version > dropped
    assert svc.query("ns", vector=[1, 2, 3]).hits == []


def test_id_check_refuses_exactly_the_control_and_surrogate_characters():
    """check_id's one regex stands for a Unicode category lookup per character (Cc, Cs):
    the same verdict for every code point."""
    import unicodedata

    from ingest.validate import check_id

    refused = []
    for code in range(0x110000):
        try:
            check_id(f"a{chr(code)}b", "id")
        except InvalidArgument:
            refused.append(code)
    assert refused == [c for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cs")]
