"""The incremental read path (issue 11, defect 5) answers exactly like the from-scratch one.

A strong reader beside a writer derives each new tail from the previous version's
(``vectordb.tail.extend``), each segment's live mask from the previous mask, and tail
filter masks from the previous mask plus the appended rows. These property tests hold
every such derivation to the plain definition: a full ``fold`` of the manifest's WAL, and
masks computed with Python sets over every id.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import wal
from vectordb.bm25 import BM25Index, analyze, combine_stats
from vectordb.filter_sql import matching_rows
from vectordb.filters import parse_filter
from vectordb.manifest import Manifest, WalRef
from vectordb.namespace import NamespaceConfig
from vectordb.reader import NamespaceReader
from vectordb.row_lookup import RowLookup, hash_set
from vectordb.rows import RowBatch, WriteBatch
from vectordb.tail import Tail, extend, fold
from vectordb.tail_bm25 import TailBM25
from vectordb.tail_reader import TailReader

DIMS = 4
IDS = [f"id{i}" for i in range(10)]

# One write: (upserted ids, deleted ids), drawn from a few ids so later writes override.
writes = st.tuples(st.lists(st.sampled_from(IDS), max_size=4, unique=True), st.lists(st.sampled_from(IDS), max_size=2))


WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "the", "running", "ran"]


def _write_batch(upserts: list[str], deletes: list[str], seed: int) -> WriteBatch:
    rng = np.random.default_rng(seed)
    rows = RowBatch(
        list(upserts),
        rng.normal(size=(len(upserts), DIMS)).astype(np.float32),
        [None if (seed + n) % 7 == 3 else " ".join(rng.choice(WORDS, rng.integers(0, 6))) for n, _ in enumerate(upserts)],
        [f'{{"n": {seed % 5}, "tag": "{i}"}}' for i in upserts],
    )
    return WriteBatch(rows, list(deletes))


def _decoded(batch: WriteBatch):
    return wal.decode(wal.encode([batch], DIMS), DIMS)


def assert_same_tail(got: Tail, want: Tail) -> None:
    assert got.rows.ids == want.rows.ids
    np.testing.assert_array_equal(got.rows.vectors, want.rows.vectors)
    assert got.rows.vectors.dtype == np.float32 and got.rows.vectors.shape == (len(want.rows), DIMS)
    assert got.rows.texts == want.rows.texts
    assert got.rows.attributes == want.rows.attributes
    assert got.touched == want.touched
    assert got.deleted == want.deleted
    assert got.row_of == {doc_id: r for r, doc_id in enumerate(want.rows.ids)}
    np.testing.assert_array_equal(got.touched_hashes, hash_set(want.touched))


@settings(max_examples=150, deadline=None)
@given(st.lists(writes, min_size=1, max_size=14), st.lists(st.integers(1, 4), min_size=1, max_size=14), st.data())
def test_extend_equals_fold(write_list, steps, data):
    """Any chain of extensions equals one fold of all the batches, and extending an older
    version again (a branch) never changes what a newer one sees."""
    batches = [_decoded(_write_batch(u, d, n)) for n, (u, d) in enumerate(write_list)]
    cut = data.draw(st.integers(0, len(batches)))
    tail = fold(batches[:cut], DIMS)
    if data.draw(st.booleans()):
        tail.touched_hashes  # noqa: B018  (made now, so the extensions merge into it)
    done, versions = cut, [(cut, tail)]
    for size in steps:
        if done >= len(batches):
            break
        appended = batches[done : done + size]
        parent, tail = tail, extend(tail, appended, DIMS)
        done += len(appended)
        assert_same_tail(tail, fold(batches[:done], DIMS))
        assert tail.parent is parent and tail.serial != parent.serial
        assert tail.step.added == frozenset(i for _, rows in appended for i in rows.ids)
        versions.append((done, tail))
    # A branch from an older version appends elsewhere; the versions already made stay.
    at, old = versions[data.draw(st.integers(0, len(versions) - 1))]
    extra = _decoded(_write_batch(["id1", "new"], ["id2"], 999))
    branched = extend(old, [extra], DIMS)
    assert_same_tail(branched, fold(batches[:at] + [extra], DIMS))
    for at, version in versions:
        assert_same_tail(version, fold(batches[:at], DIMS))


@settings(max_examples=120, deadline=None)
@given(st.lists(writes, min_size=1, max_size=30), st.lists(st.integers(1, 3), min_size=1, max_size=30), st.data())
def test_tail_bm25_extended_equals_a_full_build(write_list, steps, data):
    """Version after version, the runs of a TailBM25 give the statistics, scores and
    order of one BM25Index over the tail's texts, with or without a row mask and with
    statistics shared with another index."""
    batches = [_decoded(_write_batch(u, d, n)) for n, (u, d) in enumerate(write_list)]
    tail = fold(batches[:1], DIMS)
    index = TailBM25.build(tail)
    done = 1
    other = BM25Index.build(["apple pie", "fig and plum jam", "kiwi"])  # a segment beside the tail
    for size in steps:
        if done >= len(batches):
            break
        tail = extend(tail, batches[done : done + size], DIMS)
        done += size
        index = index.extended(tail)
        full = BM25Index.build(t or "" for t in tail.rows.texts)
        assert len(index) == len(full) == len(tail.rows)
        assert index.stats(WORDS) == full.stats(WORDS)
        assert index.stats().doc_freq == full.stats().doc_freq
        query = " ".join(data.draw(st.lists(st.sampled_from(WORDS + ["absent"]), min_size=1, max_size=4)))
        k = data.draw(st.integers(0, 6))
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(full), max_size=len(full))), bool)
        terms = analyze(query)
        shared = combine_stats([other.stats(terms), full.stats(terms)])
        assert index.stats(terms) == full.stats(terms)
        for allowed in (None, mask):
            for stats in (None, shared):
                got_rows, got_scores = index.search(query, k, allowed_mask=allowed, stats=stats)
                want_rows, want_scores = full.search(query, k, allowed_mask=allowed, stats=stats)
                assert got_rows.tolist() == want_rows.tolist()
                assert got_scores.tolist() == want_scores.tolist()
    assert len(index.runs) <= 2 + 2 * max(1, len(tail.rows)).bit_length()


def _config() -> NamespaceConfig:
    return NamespaceConfig("none", DIMS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(writes, st.integers(0, 9)), min_size=1, max_size=25), st.integers(0, 3))
def test_tail_reader_across_versions_and_index_builds(history, lagging):
    """Manifest after manifest, with index builds dropping WAL prefixes and now and then
    an older version read again, the reader's tail is a full fold, and its filter mask and
    BM25 index answer as ones made from that fold."""
    store = MemoryStore()
    reader = TailReader(store, fetch_threads=4, max_bytes=1 << 26)
    filt_raw = {"n": {"$in": [1, 3]}}
    filt = parse_filter(filt_raw)
    refs: list[WalRef] = []
    manifests: list[Manifest] = []
    for version, ((upserts, deletes), event) in enumerate(history, start=1):
        data = wal.encode([_write_batch(upserts, deletes, version)], DIMS)
        key = f"ns/wal/{version}-{uuid.uuid4().hex}.parquet"
        store.put(key, data)
        refs.append(WalRef(key, version, len(upserts), len(deletes), len(data)))
        if event == 0 and refs:  # an index build took a prefix of the tail
            refs = refs[len(refs) // 2 + 1 :]
        manifest = Manifest("ns", version, _config(), wal=tuple(refs))
        manifests.append(manifest)
        wanted = [manifest]
        if event == 1 and len(manifests) > lagging + 1:  # an eventual read of an older version
            wanted.append(manifests[-1 - lagging - 1])
        for m in wanted:
            want = fold([wal.decode(store.get(r.key), DIMS) for r in m.wal], DIMS)
            assert_same_tail(reader.tail(m), want)
            if version % 3 != 1:  # now and then: the mask is derived over several versions
                mask = reader.filter_mask(m, filt, "f")
                np.testing.assert_array_equal(mask, matching_rows(filt, want.rows.ids, want.rows.attributes))
            if version % 4:
                continue
            full = BM25Index.build(t or "" for t in want.rows.texts)
            index = reader.bm25(m)
            assert index.stats(WORDS) == full.stats(WORDS)
            for query in ("apple fig", "the running plum"):
                got, want_hits = index.search(query, 3), full.search(query, 3)
                assert got[0].tolist() == want_hits[0].tolist() and got[1].tolist() == want_hits[1].tolist()


def test_concurrent_readers_fold_a_version_once():
    """Eight threads meeting a new version at once share one fold (single flight)."""
    import threading

    store = MemoryStore()
    reader = TailReader(store, fetch_threads=4, max_bytes=1 << 26)
    calls = []
    fold_once = reader._fold

    def counting(manifest):
        calls.append(manifest.version)
        return fold_once(manifest)

    reader._fold = counting
    data = wal.encode([_write_batch(["a", "b"], [], 1)], DIMS)
    store.put("ns/wal/1-x.parquet", data)
    manifest = Manifest("ns", 1, _config(), wal=(WalRef("ns/wal/1-x.parquet", 1, 2, 0, len(data)),))
    barrier = threading.Barrier(8)
    tails = []

    def query():
        barrier.wait()
        tails.append(reader.tail(manifest))

    threads = [threading.Thread(target=query) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(t is tails[0] for t in tails)


class _Colliding(str):
    """An id whose hash collides with every other such id."""

    def __hash__(self) -> int:
        return 42


def test_row_lookup_is_exact_under_hash_collisions():
    ids = [_Colliding(f"c{i}") for i in range(5)] + [f"p{i}" for i in range(50)]
    lookup = RowLookup(ids)
    assert lookup.rows({"p3", _Colliding("c2"), "p49", "absent", _Colliding("c9")}).tolist() == [2, 8, 54]
    dead = frozenset({_Colliding("c4"), "p0"})
    found = lookup.candidates(hash_set(dead | {_Colliding("zz")}), dead.__contains__)
    assert sorted(found.tolist()) == [4, 5]
    assert RowLookup([]).rows({"x"}).tolist() == []


def _live_by_definition(ids, dead, touched) -> np.ndarray:
    return np.fromiter((i not in dead and i not in touched for i in ids), bool, len(ids))


@pytest.fixture
def svc():
    service = Service(unit_settings(), store=MemoryStore())
    yield service
    service.close()


def test_live_masks_follow_every_version(svc, monkeypatch):
    """Segment and partition live masks, derived version after version (with index builds
    that change tombstones and drop WAL prefixes between), equal masks from sets; and the
    long-lived reader answers like a fresh one on the same store."""
    rng = np.random.default_rng(3)
    svc.create_namespace("ns", "none", DIMS, "l2")
    n = 300
    svc.upsert("ns", [{"id": f"d{i}", "vector": rng.normal(size=DIMS).tolist(), "attributes": {"n": i % 7}} for i in range(n)])
    svc.index("ns")
    svc.delete("ns", ids=[f"d{i}" for i in range(0, n, 17)])
    svc.index("ns")
    reader = svc.reader
    filt_raw = {"n": {"$lt": 3}}
    derived = 0
    derivations = []  # RowLookup.rows runs only when a mask is derived from an ancestor's
    rows_of = RowLookup.rows
    monkeypatch.setattr(RowLookup, "rows", lambda self, wanted: derivations.append(1) or rows_of(self, wanted))
    for version in range(40):
        ids = [f"d{int(i)}" for i in rng.integers(0, n + 60, 5)]
        if version % 9 == 4:
            svc.delete("ns", ids=ids[:2])
        else:
            docs = {i: {"id": i, "vector": rng.normal(size=DIMS).tolist(), "attributes": {"n": version % 7}} for i in ids}
            svc.upsert("ns", list(docs.values()))
        if version % 13 == 12:
            svc.index("ns")
        manifest = svc.catalog.latest("ns")
        q = rng.normal(size=DIMS).tolist()
        got = svc.query("ns", vector=q, top_k=10, nprobe=2)  # derives the masks it needs
        svc.query("ns", vector=q, top_k=5, filter=filt_raw)
        tail = reader.tail(manifest)
        derived += tail.parent is not None
        for seg in manifest.segments:
            dead = reader.tombstones("ns", seg)
            seg_ids = reader.ids("ns", seg)
            want = _live_by_definition(seg_ids, dead, tail.touched)
            live = reader.live_mask("ns", seg, tail)
            np.testing.assert_array_equal(want if live is None else live, want)
            layout = reader.layout("ns", seg)
            for p, part in enumerate(reader.partitions("ns", seg, layout, range(layout.nlist))):
                plive = reader.partition_live("ns", seg, p, part, tail)
                pwant = _live_by_definition(list(part.ids), dead, tail.touched)
                np.testing.assert_array_equal(pwant if plive is None else plive, pwant)
        fresh = Service(unit_settings(), store=svc.store)
        try:
            again = fresh.query("ns", vector=q, top_k=10, nprobe=2)
            assert [(h.id, h.score) for h in got.hits] == [(h.id, h.score) for h in again.hits]
            assert fresh.engine.matching_ids("ns", filt_raw) == svc.engine.matching_ids("ns", filt_raw)
        finally:
            fresh.close()
    assert derived >= 25  # every version but those after an index build (and the first)
    assert len(derivations) >= 20


def test_memo_bounds_hold(svc):
    """Derived state stays within the reader's byte budget."""
    reader = NamespaceReader(svc.store, 2, partition_bytes=8 * 1024**2)  # one MiB of memos
    svc.create_namespace("ns", "none", DIMS)
    rng = np.random.default_rng(0)
    for lo in range(0, 4000, 400):
        svc.upsert("ns", [{"id": f"d{i}", "vector": rng.normal(size=DIMS).tolist()} for i in range(lo, lo + 400)])
        reader.tail(svc.catalog.latest("ns"))
    assert reader.tails._folded.bytes <= 1024**2 or len(reader.tails._folded) == 1


def test_empty_tails_of_other_namespaces_and_dimensions_stay_apart():
    """An empty WAL looks the same everywhere: a tail of another namespace (or of a dropped
    incarnation with other dimensions) is never the base of this one."""
    store = MemoryStore()
    reader = TailReader(store, fetch_threads=2, max_bytes=1 << 26)
    wide = NamespaceConfig("none", 8)
    assert reader.tail(Manifest("a", 1, _config())).rows.vectors.shape == (0, DIMS)
    assert reader.tail(Manifest("b", 1, wide)).rows.vectors.shape == (0, 8)
    assert reader.tail(Manifest("a", 5, wide)).rows.vectors.shape == (0, 8)  # re-created wider
    batch = WriteBatch(RowBatch(["x"], np.ones((1, 8), np.float32), ["t"], [None]), [])
    data = wal.encode([batch], 8)
    store.put("a/wal/6-x.parquet", data)
    tail = reader.tail(Manifest("a", 6, wide, wal=(WalRef("a/wal/6-x.parquet", 6, 1, 0, len(data)),)))
    assert tail.rows.ids == ["x"] and tail.rows.vectors.shape == (1, 8)
