"""A cold query reads its probed partitions in a few GETs (NamespaceReader.partition_loads):
neighbouring partitions (centroids numbered in spatial order) in one, and those a few
partitions apart too while the bytes between stay within an eighth; every partition a GET
covers is held; the answers are those of partitions read one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from bench.counting import CountingStore
from storage.cache import CachedStore
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import reader as reader_mod
from vectordb import segment
from vectordb.testing import one_get_per_partition

DIMS = 16


@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_a_cold_query_reads_neighbouring_partitions_in_one_get(dtype):
    rng = np.random.default_rng(3)
    store = MemoryStore()
    writer = Service(unit_settings(rows_per_partition=40), store=store)
    writer.create_namespace("p", "none", DIMS, "l2", vector_dtype=dtype)
    centres = rng.normal(size=(20, DIMS))
    vectors = centres[rng.integers(0, 20, 6000)] + 0.3 * rng.normal(size=(6000, DIMS))
    writer.upsert("p", [{"id": f"r{i}", "vector": v.tolist()} for i, v in enumerate(vectors)])
    writer.index("p")
    [seg] = writer.catalog.latest("p").segments
    assert seg.nlist >= 100
    queries = [vectors[i] + 0.05 * rng.normal(size=DIMS) for i in rng.integers(0, 6000, 12)]

    def cold(one_by_one: bool):
        hits, gets = [], []
        for q in queries:  # a fresh worker each: every query cold
            counting = CountingStore(store)
            worker = Service(unit_settings(rows_per_partition=40), store=CachedStore(counting, 64 << 20))
            reader = worker.reader
            if one_by_one:  # a GET a partition, as before partition_loads
                one_get_per_partition(reader)
            worker.query("p", vector=q.tolist(), top_k=1, nprobe=1)  # the manifest and centroids
            worker.reader._partitions = type(worker.reader._partitions)(1 << 20, 1 << 30, lambda part: 1)
            counting.take()
            found = worker.query("p", vector=q.tolist(), top_k=10, nprobe=24).hits
            hits.append([(h.id, round(h.score, 4)) for h in found])
            gets.append(sum(1 for r in counting.take() if r.key.endswith("vectors.bin")))
            worker.close()
        return hits, gets

    merged_hits, merged_gets = cold(False)
    single_hits, single_gets = cold(True)
    assert merged_hits == single_hits
    assert all(g >= 20 for g in single_gets)  # a GET a probed partition (24 of them, a few empty)
    assert np.mean(merged_gets) < 0.5 * np.mean(single_gets)
    writer.close()


def _indexed(ns: str, dtype: str, seed: int):
    """3,000 random rows indexed into one segment of ~75 partitions by one Service; a
    second, cold one reads the store through a CountingStore."""
    rng = np.random.default_rng(seed)
    store = MemoryStore()
    svc = Service(unit_settings(rows_per_partition=40), store=store)
    svc.create_namespace(ns, "none", DIMS, "l2", vector_dtype=dtype)
    svc.upsert(ns, [{"id": f"r{i}", "vector": rng.normal(size=DIMS).tolist()} for i in range(3000)])
    svc.index(ns)
    [seg] = svc.catalog.latest(ns).segments
    counting = CountingStore(store)
    worker = Service(unit_settings(rows_per_partition=40), store=CachedStore(counting, 64 << 20))
    return store, svc, seg, counting, worker


def test_every_partition_a_get_covers_is_held_and_read_once(monkeypatch):
    monkeypatch.setattr(reader_mod, "_PARTITION_SLACK", 1)  # gaps up to the bytes wanted are read through
    store, svc, seg, counting, worker = _indexed("h", "int8", 4)
    try:
        layout = worker.reader.layout("h", seg)
        counting.take()
        wanted = [3, 4, 5, 7, 60]  # 6 is read through (the gap is within the slack), 60 alone
        parts = worker.reader.partitions("h", seg, layout, wanted)
        reads = [r for r in counting.take() if r.key.endswith("vectors.bin")]
        assert len(reads) == 2
        assert worker.reader.held_partitions("h", seg, range(3, 8)) == [True] * 5
        assert worker.reader.held_partitions("h", seg, [2, 8, 59, 61]) == [False] * 4
        key = segment.file_key("h", seg.id, "vectors.bin")
        for p, part in zip(wanted, parts):
            start, length = layout.byte_range(p)
            alone = segment.decode_partition(store.get_range(key, start, length), layout.rows_in(p), DIMS, "int8",
                                             held_codes=True)
            assert list(part.ids) == list(alone.ids) and np.array_equal(part.dense(), alone.dense())
        worker.reader.partitions("h", seg, layout, range(3, 8))
        assert not [r for r in counting.take() if r.key.endswith("vectors.bin")]
    finally:
        svc.close()
        worker.close()


def test_neighbours_are_read_in_gets_of_bounded_size(monkeypatch):
    """The warm hint's partitions (all of them) are read in GETs of at most
    _PARTITION_GET_BYTES, cut at partition boundaries, not in one GET of the file."""
    _, svc, seg, counting, worker = _indexed("w", "float32", 5)
    try:
        layout = worker.reader.layout("w", seg)
        most = 4 * max(layout.byte_range(p)[1] for p in range(layout.nlist))
        monkeypatch.setattr(reader_mod, "_PARTITION_GET_BYTES", most)
        counting.take()
        parts = worker.reader.partitions("w", seg, layout, range(layout.nlist))
        reads = [r for r in counting.take() if r.key.endswith("vectors.bin")]
        total = int(layout.part_bytes[-1])
        assert total / most <= len(reads) <= 2 * total / most + 1
        assert all(r.bytes <= most for r in reads) and sum(r.bytes for r in reads) == total
        assert sum(len(p.ids) for p in parts) == 3000
    finally:
        svc.close()
        worker.close()


@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_partitions_a_cold_query_scans_as_they_land_hold_nothing_of_the_gets_bytes(dtype):
    """Partitions read together are picked from as each GET lands (query.vector_search's
    _scan_arriving); an int8 one's codes go into its FAISS index, not through a copy of
    their own, and no held partition views the GET's buffer (the memo counts what it
    holds). The answers are those of a worker that reads a partition a GET."""
    from vectordb import ivf
    from vectordb.int8_rows import Int8Rows

    ivf._faiss()
    store, svc, seg, counting, worker = _indexed("own", dtype, 5)
    baseline = Service(unit_settings(rows_per_partition=40), store=CachedStore(CountingStore(store), 64 << 20))
    one_get_per_partition(baseline.reader)
    try:
        rng = np.random.default_rng(6)
        for q in rng.normal(size=(6, DIMS)):
            got = worker.query("own", vector=q.tolist(), top_k=10, nprobe=30).hits
            want = baseline.query("own", vector=q.tolist(), top_k=10, nprobe=30).hits
            assert [(h.id, h.score) for h in got] == [(h.id, h.score) for h in want]
        layout = worker.reader.layout("own", seg)
        key = segment.file_key("own", seg.id, "vectors.bin")
        held = [(p, part) for p, part in enumerate(worker.reader._partitions.peek_many(
            [(key, p) for p in range(layout.nlist)])) if part is not None]
        assert len(held) > 30
        for p, part in held:
            assert isinstance(part.ids._blob, bytes) and len(part.ids._blob) < layout.byte_range(p)[1] // 4
            if dtype == "int8":
                assert isinstance(part.vectors, Int8Rows)
                assert part.vectors._index is not None  # the codes are FAISS's; the GET's bytes are let go
            else:  # a copy of the partition's own bytes
                owner = part.vectors
                while isinstance(owner, np.ndarray):
                    owner = owner.base
                assert isinstance(owner, bytes) and len(owner) == layout.byte_range(p)[1]
    finally:
        baseline.close()
        worker.close()
        svc.close()
