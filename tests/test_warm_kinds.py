"""After the warm hint, every kind of query on a text namespace (vector, filtered, BM25,
hybrid, with text, GET) reads nothing from the store but a strong read's manifest probe,
and answers as a cold worker does."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from bench.counting import CountingStore
from query.warm import warm
from storage import CachedStore
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import segment

DIMS = 8
WORDS = "solar wind river cancer vitamin risk diet sleep heart brain".split()


@pytest.fixture(scope="module")
def store() -> MemoryStore:
    store = MemoryStore()
    svc = Service(unit_settings(rows_per_partition=40), store=store)
    svc.create_namespace("t", "none", DIMS)
    rng = np.random.default_rng(5)
    rows = [{"id": f"d{i}", "vector": rng.normal(size=DIMS).tolist(),
             "text": " ".join(rng.choice(WORDS, 12).tolist()),
             "attributes": {"year": 2000 + i % 20, "tenant": f"t{i % 7}"}} for i in range(600)]
    svc.upsert("t", rows)
    svc.index("t")
    svc.delete("t", ["d3", "d10"])
    svc.index("t")
    svc.close()
    return store


def _kinds():
    rng = np.random.default_rng(9)
    return {
        "vector": lambda svc, i: svc.query("t", vector=rng.normal(size=DIMS).tolist(), top_k=5).hits,
        "broad filter": lambda svc, i: svc.query("t", vector=rng.normal(size=DIMS).tolist(), top_k=5,
                                                 filter={"year": {"$gte": 2008}}).hits,
        "selective filter": lambda svc, i: svc.query("t", vector=rng.normal(size=DIMS).tolist(), top_k=5,
                                                     filter={"tenant": "t3", "year": 2003 + i % 3}).hits,
        "bm25": lambda svc, i: svc.query("t", mode="bm25", text=f"{WORDS[i]} {WORDS[i + 1]}", top_k=5).hits,
        "hybrid": lambda svc, i: svc.query("t", mode="hybrid", vector=rng.normal(size=DIMS).tolist(),
                                           text=WORDS[i], top_k=5, include=("text",)).hits,
        "text": lambda svc, i: svc.query("t", vector=rng.normal(size=DIMS).tolist(), top_k=5,
                                         include=("text", "attributes")).hits,
        "get": lambda svc, i: svc.get_document("t", f"d{100 + i}"),
    }


def test_a_warmed_worker_reads_only_manifest_probes(store):
    counting = CountingStore(store)
    worker = Service(unit_settings(rows_per_partition=40), store=CachedStore(counting, 256 << 20))
    out = warm(worker, "t", budget_bytes=256 << 20, include_docs=True, load_embedder=False)
    assert out["bm25_bytes"] > 0 and out["column_bytes"] > 0 and out["docs_bytes"] > 0 and out["skipped"] == []
    assert out["partitions"] == out["partitions_total"]
    counting.take()
    for name, run in _kinds().items():
        for i in range(5):
            assert run(worker, i), name
        sent = counting.take()
        assert all("/manifests/" in r.key for r in sent), (name, [r.key for r in sent if "/manifests/" not in r.key])


def test_warm_answers_equal_cold_answers(store):
    worker = Service(unit_settings(rows_per_partition=40), store=CachedStore(store, 256 << 20))
    warm(worker, "t", budget_bytes=256 << 20, include_docs=True, load_embedder=False)
    cold = Service(unit_settings(rows_per_partition=40), store=store)
    warmed_kinds, cold_kinds = _kinds(), _kinds()  # the same vectors, drawn in the same order
    for name in warmed_kinds:
        for i in range(5):
            assert _comparable(warmed_kinds[name](worker, i)) == _comparable(cold_kinds[name](cold, i)), name


def _comparable(answer):
    if isinstance(answer, list):
        return [(h.id, round(h.score, 5), h.text) for h in answer]
    return answer


def test_tombstoned_rows_are_dropped_without_decoding_partition_ids(store):
    """With the dead rows in the tombstone list and no tail, a partition's live mask comes
    from them: the deleted rows never answer, and no partition's ids are decoded for it."""
    worker = Service(unit_settings(rows_per_partition=40), store=CachedStore(store, 256 << 20))
    seg = worker.catalog.latest("t").segments[0]
    vectors, ids = worker.reader.all_rows("t", seg)
    for deleted in ("d3", "d10"):
        q = vectors[ids.index(deleted)]
        hits = worker.query("t", vector=q.tolist(), top_k=5, nprobe=3).hits
        assert hits and deleted not in [h.id for h in hits]
        broad = worker.query("t", vector=q.tolist(), top_k=5, filter={"year": {"$gte": 2001}}).hits
        assert broad and deleted not in [h.id for h in broad]
    layout = worker.reader.layout("t", seg)
    key = segment.file_key("t", seg.id, "vectors.bin")
    assert all(worker.reader._lookups.peek(("partition", key, p)) is None for p in range(layout.nlist))
