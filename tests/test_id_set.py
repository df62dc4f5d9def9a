"""The touched ids of an index build held compactly (vectordb.id_set): membership is exact
even when hashes collide, each id's last operation is found by a sort, and a kept
segment's rows of a set as large as the segment are found by reading its key table
through (NamespaceReader.rows_in), the same rows the per-bucket lookup finds."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from api.service import Service
from ingest import indexer
from ingest.build_input import WalTail
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import id_set, key_table
from vectordb import reader as reader_mod
from vectordb.id_set import IdSet


def _colliding(monkeypatch) -> None:
    """Every id hashes to one of 3 values: each hit must be decided by the id itself."""
    def few(keys):
        return np.fromiter((int(key_table.blake2b64([k])[0]) % 3 for k in keys), np.uint64, len(keys))

    monkeypatch.setattr(id_set, "blake2b64", few)


@pytest.mark.parametrize("collide", [False, True])
def test_membership_is_exact(monkeypatch, collide):
    if collide:
        _colliding(monkeypatch)
    ids = [f"id-{i}" for i in range(200)] + ["é/ü#1", "x" * 300, ""]
    s = IdSet.of(ids + ids[:50])
    assert len(s) == len(ids) and bool(s) and not id_set.EMPTY
    assert set(s) == set(ids)
    probe = ids[::3] + ["id-200", "nope", "x" * 299]
    assert s.members(probe).tolist() == [p in ids for p in probe]
    assert s.members([p.encode() for p in probe]).tolist() == [p in ids for p in probe]
    assert "id-7" in s and "id-9999" not in s and 7 not in s
    assert np.all(np.diff(s.hashes.astype(np.float64)) >= 0)
    again = pickle.loads(pickle.dumps(s))
    assert set(again) == set(ids) and again.members(probe).tolist() == s.members(probe).tolist()


@pytest.mark.parametrize("collide", [False, True])
def test_last_of_is_each_ids_last_operation(monkeypatch, collide):
    if collide:
        _colliding(monkeypatch)
    rng = np.random.default_rng(3)
    ops = [f"k{int(i)}" for i in rng.integers(0, 80, 600)]
    hashes = id_set.blake2b64(ops)
    last = id_set.last_of(hashes, pa.array(ops, pa.large_string()))
    want = {doc_id: n for n, doc_id in enumerate(ops)}
    assert sorted(last.tolist()) == sorted(want.values())
    assert np.all(np.diff(hashes[last].astype(np.float64)) >= 0)  # in hash order, as an IdSet keeps them


def test_rows_in_reads_the_key_table_through_for_a_large_set(monkeypatch):
    store = MemoryStore()
    svc = Service(unit_settings("memory://rows-in", auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        n = 3000
        svc.upsert("ns", [{"id": f"d{i}", "vector": [1.0, float(i % 7), float(i % 3), 0.5]} for i in range(n)])
        svc.index("ns")
        seg = svc.catalog.latest("ns").segments[0]
        wanted = IdSet.of([f"d{i}" for i in range(0, n, 2)] + [f"new{i}" for i in range(500)])
        want = {f"d{i}": i for i in range(0, n, 2)}
        buckets = svc.reader.layout("ns", seg).docs.ids.buckets
        assert len(wanted) * reader_mod._SCAN_SHARE >= buckets  # the scan path
        scanned = svc.reader.rows_in("ns", seg, wanted)
        stored = svc.reader.stored_rows("ns", seg, list(wanted))  # the per-bucket lookup
        rows = svc.reader.stored_rows("ns", seg, list(want))
        assert scanned == stored == {i: rows[i] for i in want}
        few = IdSet.of(["d5", "d6", "zzz"])
        assert svc.reader.rows_in("ns", seg, few) == {"d5": rows_of(svc, seg, "d5"), "d6": rows_of(svc, seg, "d6")}
        monkeypatch.setattr(reader_mod, "_SCAN_SHARE", 10**9)  # every set counts as large
        assert svc.reader.rows_in("ns", seg, few) == svc.reader.stored_rows("ns", seg, ["d5", "d6", "zzz"])
    finally:
        svc.close()


def rows_of(svc: Service, seg, doc_id: str) -> int:
    return svc.reader.stored_rows("ns", seg, [doc_id])[doc_id]


def test_a_streamed_build_over_a_segment_kills_every_row_its_tail_touched(monkeypatch):
    """A tail streamed by the build (as one too big to fold in memory is) that rewrites
    most of a segment and deletes some of it: the build's IdSet and the ids.bin scan
    tombstone exactly the touched rows; every other row stays."""
    monkeypatch.setattr(indexer, "foldable", lambda manifest, settings: False)
    streamed = []
    read = WalTail.read
    monkeypatch.setattr(WalTail, "read", classmethod(lambda cls, *a: streamed.append(1) or read(*a)))
    store = MemoryStore()
    svc = Service(unit_settings("memory://streamed", auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        n = 4000
        svc.upsert("ns", [{"id": f"d{i}", "vector": [1.0, 0.0, 0.0, float(i)], "attributes": {"gen": 1}}
                          for i in range(n)])
        svc.index("ns")
        seg = svc.catalog.latest("ns").segments[0]
        rewritten = [i for i in range(n) if i % 5]
        for lo in range(0, len(rewritten), 500):
            svc.upsert("ns", [{"id": f"d{i}", "vector": [2.0, 0.0, 0.0, float(i)], "attributes": {"gen": 2}}
                              for i in rewritten[lo : lo + 500]])
        deleted = list(range(0, n, 10))
        svc.delete("ns", ids=[f"d{i}" for i in deleted])
        manifest = svc.catalog.latest("ns")
        assert len(manifest.wal) > 1
        svc.index("ns")
        after = svc.catalog.latest("ns")
        kept = next(s for s in after.segments if s.id == seg.id)
        dead = svc.reader.tombstones("ns", kept)
        assert dead == {f"d{i}" for i in range(n) if i % 5 or i % 10 == 0}
        rows = svc.reader.stored_rows("ns", kept, list(dead))
        assert sorted(svc.reader.dead_rows("ns", kept).tolist()) == sorted(rows.values())
        assert streamed  # the build went through WalTail.read
        got = {d["id"]: d for lo in range(0, n, 1000)
               for d in svc.get_documents("ns", [f"d{i}" for i in range(lo, lo + 1000)])}
        assert set(got) == {f"d{i}" for i in range(n) if i % 10}
        assert all(got[f"d{i}"]["attributes"]["gen"] == (2 if i % 5 else 1) for i in range(n) if i % 10)
    finally:
        svc.close()


def test_a_delete_by_id_decides_liveness_from_the_wal_ids_without_folding_the_tail():
    """A delete by id on a worker that holds no folded tail (an ingest worker serving no
    query) reads only the WAL objects' id and op columns (TailReader.last_ops), and counts
    the same live rows as the folded tail decides: ids upserted in the tail, deleted in it,
    deleted then upserted again, only in a segment, and unknown."""
    store = MemoryStore()
    settings = unit_settings("memory://ops", auto_index=False)
    writer = Service(settings, store=store)
    deleter = Service(settings, store=store)  # another worker on the store: folds nothing
    try:
        writer.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        doc = lambda i, gen: {"id": f"d{i}", "vector": [1.0, float(i), 0.0, float(gen)]}  # noqa: E731
        writer.upsert("ns", [doc(i, 1) for i in range(40)])
        writer.index("ns")  # d0..d39 in a segment
        writer.upsert("ns", [doc(i, 2) for i in range(30, 60)])  # d30..d59 in the tail
        writer.delete("ns", ids=["d35", "d36", "d50", "d51"])
        writer.upsert("ns", [doc(36, 3), doc(51, 3)])  # deleted, then upserted again
        asked = [f"d{i}" for i in (1, 31, 35, 36, 50, 51, 55, 99)]
        manifest = deleter.catalog.latest("ns")
        assert deleter.reader.tails.last_ops(manifest, asked) == {
            "d31": True, "d35": False, "d36": True, "d50": False, "d51": True, "d55": True}
        assert not deleter.reader.tails.has(manifest)
        tail = writer.reader.tail(manifest)  # the folded tail decides the same
        assert {i: i not in tail.deleted for i in asked if i in tail.touched} == \
            deleter.reader.tails.last_ops(manifest, asked)
        version, deleted = deleter.delete("ns", ids=asked)
        assert deleted == 5  # d1 (segment), d31, d36, d51, d55 (tail); d35, d50 dead already; d99 unknown
        assert not deleter.reader.tails.has(deleter.catalog.latest("ns"))
        assert {d["id"] for d in writer.get_documents("ns", asked)} == set()
    finally:
        writer.close()
        deleter.close()
