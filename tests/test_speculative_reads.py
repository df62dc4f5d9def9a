"""Speculative strong reads (``QueryEngine._speculate``): a worker that knows a namespace's
newest version searches it while the probe for the next version is in flight, and keeps
that answer only when the probe finds none. A write acknowledged before the query began
(by another worker, on the same store) is always in the answer."""

from __future__ import annotations

import threading

import pytest

from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import keys
from vectordb.errors import NamespaceNotFound


class _WatchedStore(MemoryStore):
    """A memory store that knows when a manifest read is in flight, and can hold one open."""

    def __init__(self) -> None:
        super().__init__()
        self.probing = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        if "/manifests/" not in key:
            return super().get(key)
        with self._lock:
            self.probing += 1
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            return super().get(key)
        finally:
            with self._lock:
                self.probing -= 1


def _vector(i: int) -> list[float]:
    return [1.0 if j == i % 4 else 0.0 for j in range(4)]


@pytest.fixture
def pair():
    """A reader worker and a writer worker (two catalogs, as two processes) on one store."""
    store = _WatchedStore()
    reader = Service(unit_settings(preload_embedder=""), store=store)
    writer = Service(unit_settings(preload_embedder=""), store=store)
    writer.create_namespace("n", "none", dimensions=4)
    writer.upsert("n", [{"id": f"d{i}", "vector": _vector(i)} for i in range(8)])
    yield store, reader, writer
    reader.close()
    writer.close()


def _searches(service):
    """Record, for each search the engine runs, the version it searched and whether a
    manifest read was in flight when it began; then let held manifest reads finish."""
    seen: list[tuple[int, bool]] = []
    real = service.engine._search

    def search(manifest, req, q, filt):
        seen.append((manifest.version, service.store.probing > 0))
        service.store.gate.set()
        return real(manifest, req, q, filt)

    service.engine._search = search
    return seen


def test_a_worker_that_knows_the_newest_version_searches_it_during_the_probe(pair):
    store, reader, _ = pair
    first = reader.query("n", vector=_vector(1), top_k=3)
    seen = _searches(reader)
    store.gate.clear()  # the probe waits until a search has begun (10 s, then it fails)
    again = reader.query("n", vector=_vector(1), top_k=3)
    assert [h.id for h in again.hits] == [h.id for h in first.hits] and again.version == first.version
    assert seen == [(first.version, True)]  # one search, run while the probe was out


def test_a_write_by_another_worker_is_in_the_answer(pair):
    store, reader, writer = pair
    before = reader.query("n", vector=_vector(2), top_k=20)
    writer.upsert("n", [{"id": "new", "vector": [0.0, 0.0, 1.0, 0.0]}])  # acknowledged before the query
    seen = _searches(reader)
    after = reader.query("n", vector=_vector(2), top_k=20)
    assert "new" in {h.id for h in after.hits} and after.version > before.version
    # The speculative search of the old version was thrown away; the new one was searched.
    assert [v for v, _ in seen] == [before.version, after.version]
    # While the namespace is being written, the next query waits for its probe instead.
    seen.clear()
    writer.upsert("n", [{"id": "newer", "vector": [0.0, 0.0, 1.0, 0.0]}])
    latest = reader.query("n", vector=_vector(2), top_k=20)
    assert "newer" in {h.id for h in latest.hits}
    assert seen == [(latest.version, False)]


def test_a_search_redone_on_a_newer_version_makes_the_query_vector_once(pair):
    _, reader, writer = pair
    reader.query("n", vector=_vector(2), top_k=5)
    writer.upsert("n", [{"id": "new", "vector": [0.0, 0.0, 1.0, 0.0]}])
    made = []
    real = reader.engine._query_vector
    reader.engine._query_vector = lambda manifest, req: made.append(manifest.version) or real(manifest, req)
    seen = _searches(reader)
    reader.query("n", vector=_vector(2), top_k=5)
    assert len(seen) == 2 and len(made) == 1  # two versions searched, one vector (the config is the same)


def test_the_probe_is_awaited_even_when_the_search_is_done(pair):
    store, reader, _ = pair
    reader.query("n", vector=_vector(0), top_k=3)
    store.gate.clear()  # the probe cannot finish yet
    result: list = []
    worker = threading.Thread(target=lambda: result.append(reader.query("n", vector=_vector(0), top_k=3)))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive() and not result  # searched, but no answer before the store's
    store.gate.set()
    worker.join(10)
    assert result and [h.id for h in result[0].hits][0] == "d0"


def test_a_drop_seen_by_the_probe_wins_over_the_speculative_answer(pair):
    _, reader, writer = pair
    reader.query("n", vector=_vector(0), top_k=3)
    writer.drop_namespace("n")
    with pytest.raises(NamespaceNotFound):
        reader.query("n", vector=_vector(0), top_k=3)


def test_bad_input_fails_the_same_with_speculation(pair):
    _, reader, _ = pair
    reader.query("n", vector=_vector(0), top_k=3)
    from vectordb.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="dimension"):
        reader.query("n", vector=[1.0, 0.0], top_k=3)


def test_off_when_the_setting_says_so():
    store = _WatchedStore()
    reader = Service(unit_settings(preload_embedder="", speculative_reads=False), store=store)
    try:
        reader.create_namespace("n", "none", dimensions=4)
        reader.upsert("n", [{"id": "a", "vector": _vector(0)}])
        reader.query("n", vector=_vector(0), top_k=1)
        seen = _searches(reader)
        reader.query("n", vector=_vector(0), top_k=1)
        assert [probing for _, probing in seen] == [False]
    finally:
        reader.close()


def test_keys_module_names_manifests_as_the_watched_store_expects():
    assert "/manifests/" in keys.manifest_key("n", 3)
