"""WAL merging (``ingest.wal_merge``): a merge changes how the tail is stored, never what
it holds.

The property test holds the folded tail after a merge (from scratch, and as a reader that
followed the namespace extends it) to the one before, with segments underneath and
merged objects merged again, and every kind of query to the same answers. The rest: the
commit rules (a write, an index build or a garbage-collection fence between the upload
and the commit), writers running beside merges on the memory store and on SeaweedFS, and
the background trigger.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.service import Service
from ingest import gc
from tests.fakes import Processes
from vectordb import keys, wal
from vectordb.manifest import Manifest
from vectordb.rows import RowBatch, WriteBatch
from vectordb.tail import Tail, fold
from vectordb.tail_reader import continues

DIMS = 4
NS = "n"
IDS = [f"id{i}" for i in range(8)]
WORDS = ["apple", "pear", "plum", "fig", "kiwi", "the", "running"]


class World(Processes):
    """Processes over one store, merging only when a test says so."""

    def __init__(self, store=None, **overrides) -> None:
        super().__init__(store, **{"wal_merge_objects": 0, **overrides})


@pytest.fixture
def world():
    w = World()
    yield w
    w.close()


def _batch(upserts, deletes, seed: int) -> WriteBatch:
    rng = np.random.default_rng(seed)
    rows = RowBatch(
        list(upserts),
        rng.normal(size=(len(upserts), DIMS)).astype(np.float32),
        [None if (seed + n) % 5 == 2 else " ".join(rng.choice(WORDS, rng.integers(1, 5))) for n in range(len(upserts))],
        [f'{{"rev": {seed}, "n": {seed % 3}}}' for _ in upserts],
    )
    return WriteBatch(rows, list(deletes))


def _write(proc: Service, upserts, deletes, seed: int) -> int:
    return proc.committer.commit_batches(NS, [_batch(upserts, deletes, seed)], DIMS)


def _fold_from_scratch(store, manifest: Manifest) -> Tail:
    return fold([wal.decode(store.get(ref.key), DIMS) for ref in manifest.wal], DIMS)


def _assert_same_tail(got: Tail, want: Tail) -> None:
    assert got.rows.ids == want.rows.ids
    np.testing.assert_array_equal(got.rows.vectors, want.rows.vectors)
    assert got.rows.texts == want.rows.texts
    assert got.rows.attributes == want.rows.attributes
    assert got.touched == want.touched
    assert got.deleted == want.deleted


def _answers(proc: Service) -> list:
    """What every kind of query answers: ids and scores, in order."""
    everything = dict(top_k=100, include=("attributes",))
    queries = [
        dict(vector=[0.3, -0.2, 0.5, 0.1], **everything),
        dict(vector=[0.3, -0.2, 0.5, 0.1], filter={"n": {"$in": [0, 2]}}, **everything),
        dict(text="apple fig running", mode="bm25", **everything),
        dict(vector=[0.3, -0.2, 0.5, 0.1], text="plum kiwi", mode="hybrid", **everything),
    ]
    out = []
    for q in queries:
        result = proc.query(NS, **q)
        out.append((result.version, [(h.id, round(h.score, 5), h.attributes) for h in result.hits]))
    return out


def _ids(proc: Service) -> set[str]:
    return {h.id for h in proc.query(NS, vector=[0.0] * DIMS, top_k=1000, filter={"id": {"$ne": ""}}).hits}


writes = st.tuples(st.lists(st.sampled_from(IDS), max_size=4, unique=True), st.lists(st.sampled_from(IDS), max_size=2))
# Mostly writes, so that merges meet several WAL objects, often over segments.
steps = st.one_of(writes, writes, writes, st.sampled_from(["index", "merge"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(writes, max_size=8), st.lists(steps, min_size=2, max_size=30))
def test_a_merge_changes_nothing_a_query_sees(indexed, history):
    """Random upserts and deletes (ids upserted then deleted, deleted then upserted again,
    rows of segments overridden), index builds and merges (merged objects merged again):
    at every merge, the tail folded from scratch and the one the merging process extends
    equal the tail before it, and every kind of query answers the same, in a process that
    followed the namespace and in a fresh one."""
    w = World()
    try:
        proc = w.process()
        proc.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        for seed, step in enumerate([*indexed, "index", *history, "merge"], start=1):
            if step == "index":
                proc.index(NS)
            elif step != "merge":
                _write(proc, *step, seed)
                continue
            before = proc.catalog.latest(NS)
            want = _fold_from_scratch(w.store, before)
            answers = _answers(proc)
            result = proc.merger.merge(NS)
            event(f"merged {min(result.objects, 3)}+ objects, {bool(before.segments)} segments underneath")
            after = proc.catalog.latest(NS)
            if len(before.wal) < 2:
                assert result.objects == 0 and after.version == before.version
                continue
            assert result.objects == len(before.wal) and result.version == after.version == before.version + 1
            assert len(after.wal) == 1 and after.segments == before.segments
            assert after.change == {"op": "merge", "objects": len(before.wal), "rows": len(want.touched)}
            assert after.wal[0].upserts == len(want.rows) and after.wal[0].deletes == len(want.deleted)
            _assert_same_tail(_fold_from_scratch(w.store, after), want)
            _assert_same_tail(proc.reader.tail(after), want)
            fresh = w.process()
            _assert_same_tail(fresh.reader.tail(after), want)
            assert [hits for _, hits in _answers(proc)] == [hits for _, hits in answers]
            assert [hits for _, hits in _answers(fresh)] == [hits for _, hits in answers]
    finally:
        w.close()


def test_a_reader_that_followed_goes_on_without_fetching_the_merged_object(world):
    """The merged object stands for keys this reader folded already: its tail goes on
    from the one it holds (the very same object until something is appended)."""
    writer, reader = world.process(), world.process()
    writer.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for n in range(6):
        _write(writer, [f"d{n}", "shared"], ["d0"] if n == 4 else [], n)
    held = reader.reader.tail(reader.catalog.latest(NS))
    assert writer.merger.merge(NS).objects == 6
    fetched = []
    inner_get = world.store.get

    def get(key: str) -> bytes:
        fetched.append(key)
        return inner_get(key)

    world.store.get = get
    merged = reader.catalog.latest(NS)
    from_scratch = reader.reader.tails.stats.from_scratch
    assert reader.reader.tail(merged) is held
    assert reader.reader.tails.stats.past_merge == 1 and reader.reader.tails.stats.from_scratch == from_scratch
    _write(writer, ["late"], ["d1"], 99)
    later = reader.catalog.latest(NS)
    tail = reader.reader.tail(later)
    assert tail.parent is held
    assert not [k for k in fetched if k == merged.wal[0].key]  # only the manifests and the new write
    _assert_same_tail(tail, _fold_from_scratch(world.store, later))


def test_continues():
    a, b, c, d = "ns/wal/a.parquet", "ns/wal/b.parquet", "ns/wal/c.parquet", "ns/wal/d.parquet"
    m_ab = keys.wal_key("ns", 3, wal.merged_uid("x", [a, b]))
    m_abc = keys.wal_key("ns", 4, wal.merged_uid("y", [a, b, c]))
    assert continues((a, b), (a, b, c)) == 2  # appended
    assert continues((), (a,)) == 0
    assert continues((a, b, c), (m_ab, c, d)) == 2  # merged, then more
    assert continues((a, b), (m_ab,)) == 1
    assert continues((a, b, c), (m_abc,)) == 1
    assert continues((a, b), (m_abc,)) is None  # it holds a write this reader never folded
    assert continues((a, c), (m_ab,)) is None  # other keys
    assert continues((b, a), (m_ab,)) is None  # other order
    assert continues((a, b, c), (m_ab, d)) is None  # c was dropped: not a continuation
    assert continues((a, b), (c,)) is None  # an index build took them
    assert wal.covered_count(a) is None and wal.covered_count(m_abc) == 3
    assert keys.key_version("ns", m_ab) == 3  # garbage collection reads it like any WAL key


def test_a_write_between_upload_and_commit_stays_after_the_merged_object(world):
    merger, writer = world.process(), world.process()
    merger.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for n in range(4):
        _write(merger, [f"d{n}"], [], n)
    raced = []
    inner_put = world.store.put

    def put(key: str, data: bytes) -> None:
        inner_put(key, data)
        if wal.covered_count(key) and not raced:
            raced.append(_write(writer, ["late", "d1"], ["d2"], 50))

    world.store.put = put
    result = merger.merger.merge(NS)
    manifest = merger.catalog.latest(NS)
    assert result.objects == 4 and result.version == manifest.version == raced[0] + 1
    assert [wal.covered_count(r.key) for r in manifest.wal] == [4, None]
    assert _ids(world.process()) == {"d0", "d1", "d3", "late"}
    _assert_same_tail(world.process().reader.tail(manifest), _fold_from_scratch(world.store, manifest))


def test_an_index_build_between_upload_and_commit_wins(world):
    merger, indexer = world.process(), world.process()
    merger.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for n in range(4):
        _write(merger, [f"d{n}"], ["d0"] if n == 3 else [], n)
    raced = []
    inner_put = world.store.put

    def put(key: str, data: bytes) -> None:
        inner_put(key, data)
        if wal.covered_count(key) and not raced:
            raced.append(indexer.index(NS))

    world.store.put = put
    result = merger.merger.merge(NS)
    assert result.objects == 0 and merger.merger.stats.abandoned == 1
    manifest = merger.catalog.latest(NS)
    assert manifest.version == raced[0].version and not manifest.wal  # the build's version stands
    assert _ids(world.process()) == {"d1", "d2", "d3"}


def test_a_merge_uploads_again_after_a_gc_fence(world):
    """A collection that fences after the merged object was uploaded (and before it was
    committed) may delete it as garbage: the merge uploads it again under a fresh key."""
    merger, collector = world.process(), world.process()
    merger.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for n in range(5):
        _write(merger, [f"d{n}"], [], n)
    raced = []
    inner_put = world.store.put

    def put(key: str, data: bytes) -> None:
        inner_put(key, data)
        if wal.covered_count(key) and not raced:
            raced.append(gc.collect(collector.catalog, collector.store, NS, retain=1, grace_s=0))

    world.store.put = put
    result = merger.merger.merge(NS)
    assert raced[0].fence is not None and raced[0].objects_deleted >= 1  # our first upload among them
    manifest = merger.catalog.latest(NS)
    assert result.objects == 5 and result.version == manifest.version
    assert keys.key_version(NS, manifest.wal[0].key) > raced[0].fence
    assert _ids(world.process()) == {f"d{n}" for n in range(5)}
    # What the merge replaced is garbage now, and a collection takes it.
    gc.collect(collector.catalog, collector.store, NS, retain=1, grace_s=0)
    assert [i.key for i in world.store.list(f"{NS}/wal/")] == [manifest.wal[0].key]
    assert _ids(world.process()) == {f"d{n}" for n in range(5)}


def test_a_merge_waits_for_no_index_build_of_its_process(world):
    proc = world.process()
    proc.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    for n in range(3):
        _write(proc, [f"d{n}"], [], n)
    with proc.indexer.lock(NS):
        assert proc.merger.merge(NS).version is None
    assert proc.merger.merge(NS).objects == 3


def _run_writers(procs: list[Service], merger: Service, commits: int, indexer: Service | None = None) -> dict:
    """Writers (one thread each, ids of their own, some deleted again) while ``merger``
    merges without pause and ``indexer`` now and then builds an index; returns what the
    writers had acknowledged: id -> rev, or None if deleted."""
    acked: dict[str, int | None] = {}
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def write(w: int, proc: Service) -> None:
        try:
            for n in range(commits):
                doc = f"w{w}-{n}"
                deletes = [f"w{w}-{n - 3}"] if n % 4 == 3 else []
                proc.committer.write(NS, _batch([doc, f"w{w}-shared"], deletes, 1000 * w + n), DIMS)
                with lock:
                    acked[doc] = acked[f"w{w}-shared"] = 1000 * w + n
                    for gone in deletes:
                        acked[gone] = None
        except BaseException as exc:  # reported below
            errors.append(exc)

    def merge() -> None:
        try:
            for n in range(1_000_000):
                if done.is_set():
                    break
                merger.merger.merge(NS)
                if indexer is not None and n % 7 == 6:
                    indexer.index(NS)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w, p)) for w, p in enumerate(procs)]
    background = threading.Thread(target=merge)
    background.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    background.join()
    if errors:
        raise errors[0]
    return acked


def _check_everything(proc: Service, acked: dict) -> None:
    result = proc.query(NS, vector=[0.0] * DIMS, top_k=1000, filter={"id": {"$ne": ""}}, include=("attributes",))
    assert {h.id: h.attributes["rev"] for h in result.hits} == {i: r for i, r in acked.items() if r is not None}


def test_writers_beside_merges_lose_nothing(world):
    writers = [world.process() for _ in range(3)]
    merger = world.process()
    writers[0].create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
    acked = _run_writers(writers, merger, commits=40, indexer=world.process())
    assert merger.merger.stats.merges > 0
    _check_everything(world.process(), acked)
    merger.merger.merge(NS)
    _check_everything(world.process(), acked)
    _check_everything(merger, acked)


@pytest.mark.s3
def test_writers_beside_merges_lose_nothing_on_s3(s3_settings):
    settings = s3_settings.model_copy(update={"wal_merge_objects": 0, "group_commit_ms": 1.0, "auto_index": False})
    procs = [Service(settings) for _ in range(5)]
    try:
        procs[0].create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        acked = _run_writers(procs[:3], procs[3], commits=15, indexer=procs[4])
        assert procs[3].merger.stats.merges > 0
        fresh = Service(settings)
        procs.append(fresh)
        _check_everything(fresh, acked)
        _check_everything(procs[3], acked)
    finally:
        for proc in procs:
            proc.close()


def test_merges_run_in_the_background_past_the_threshold():
    w = World(wal_merge_objects=3)
    try:
        proc = w.process()
        proc.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        for n in range(12):
            proc.upsert(NS, [{"id": f"d{n}", "vector": [float(n), 0.0, 0.0, 1.0]}])
        deadline = time.monotonic() + 30
        while proc.merger.stats.merges < 2 or len(proc.catalog.latest(NS).wal) > 3:
            assert time.monotonic() < deadline, "no background merge"
            time.sleep(0.01)
        manifest = proc.catalog.latest(NS)
        assert manifest.unindexed_rows == 12
        assert _ids(w.process()) == {f"d{n}" for n in range(12)}
    finally:
        w.close()


def test_no_background_merge_once_an_index_build_is_due():
    """An index build empties the tail anyway; a merge committed while it runs (in another
    process) would only make it start over."""
    w = World(wal_merge_objects=2, auto_index=True, index_threshold_rows=3)
    try:
        proc = w.process()
        proc.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        proc.indexer.maybe_index = lambda manifest: None  # the build runs elsewhere
        for n in range(5):  # past 2 objects only with 3 rows, when a build is due
            proc.upsert(NS, [{"id": f"d{n}", "vector": [float(n), 0.0, 0.0, 1.0]}])
        time.sleep(0.2)
        assert proc.merger.stats.merges == 0 and len(proc.catalog.latest(NS).wal) == 5
    finally:
        w.close()


def test_no_background_merge_of_a_tail_too_big_to_fold_in_memory():
    """A merge folds the whole tail in memory; past an eighth of build_memory_bytes of WAL
    objects (here 16 MiB / 8 = 2 MiB) it is left for an index build, which streams it."""
    w = World(wal_merge_objects=2, build_memory_bytes=16 * 1024**2)
    try:
        proc = w.process()
        proc.create_namespace(NS, embedder="none", dimensions=DIMS, metric="l2")
        rng = np.random.default_rng(7)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
        for n in range(4):  # ~1 MB objects: past the bound at the third, when a merge is first due
            proc.upsert(NS, [{"id": f"d{n}-{k}", "vector": [float(n), 0.0, 0.0, 1.0],
                              "text": "".join(rng.choice(letters, 600_000))} for k in range(4)])
        time.sleep(0.3)
        manifest = proc.catalog.latest(NS)
        assert sum(ref.bytes for ref in manifest.wal[:3]) > 2 * 1024**2
        assert proc.merger.stats.merges == 0 and len(manifest.wal) == 4
        assert proc.index(NS).indexed_rows == 16  # the build takes it whole
    finally:
        w.close()
