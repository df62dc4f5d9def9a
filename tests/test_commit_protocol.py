"""The commit protocol case by case (the model-based test in test_commit_model.py covers
the interleavings): lagging processes after garbage collection, drops, fences, stubs,
the trust window, incarnations, and ids a write may not create."""

from __future__ import annotations

import pytest

from api.service import Service
from ingest import gc
from storage.errors import PreconditionFailed
from tests.commit_model import FakeClock
from tests.fakes import Processes
from vectordb import keys
from vectordb.errors import Conflict, InvalidArgument, NamespaceNotFound
from vectordb.manifest import STUB_MAX_BYTES, Manifest, Pruned, decode
from vectordb.namespace import NamespaceConfig
from vectordb.rows import RowBatch, WriteBatch

DIMS = 4


def _doc(doc_id: str, x: float = 1.0) -> dict:
    return {"id": doc_id, "vector": [x, 0.0, 0.0, 1.0]}


class World(Processes):
    """Processes over one memory store and one fake clock."""

    def __init__(self, **settings) -> None:
        super().__init__(clock=FakeClock(), **{"pruned_manifest_ttl_s": 7200.0, **settings})


@pytest.fixture
def world():
    w = World()
    yield w
    w.close()


def _ids(proc: Service, ns: str) -> tuple[int, set[str]]:
    result = proc.query(ns, vector=[0.0] * DIMS, top_k=100, filter={"id": {"$ne": ""}})
    return result.version, {h.id for h in result.hits}


def test_stub_and_manifest_sizes_are_told_apart_by_size():
    longest_stub = Pruned("n" * 63, 10**20 - 1).to_bytes()
    smallest = Manifest("a", 0, NamespaceConfig("none", 1, "l2")).to_bytes()
    assert len(longest_stub) <= STUB_MAX_BYTES < len(smallest)
    assert decode(longest_stub) == Pruned("n" * 63, 10**20 - 1)


def test_lagging_writer_after_gc_does_not_reuse_a_version(world):
    """Issue 11, defect 1, in one process space: B and Q know v1; A commits 12 versions;
    GC (grace 0) prunes; B's next write gets a new number and everyone sees everything."""
    a, b, q = world.process(), world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    assert b.upsert("n", [_doc("b0")])[0] == 1
    assert _ids(q, "n") == (1, {"b0"})
    versions = [a.upsert("n", [_doc(f"a{i}")])[0] for i in range(12)]
    assert versions == list(range(2, 14))
    gc.collect(a.catalog, a.store, "n", retain=1, grace_s=0)
    version, _ = b.upsert("n", [_doc("b1")])
    assert version > 13
    everything = {"b0", "b1", *(f"a{i}" for i in range(12))}
    assert _ids(q, "n") == (version, everything)  # Q's strong read is not stuck at v1
    assert _ids(world.process(), "n") == (version, everything)


def test_lagging_writer_cannot_resurrect_a_dropped_namespace(world):
    """Defect 2: B knows v1; A writes 3 times and drops; B's write is refused, and the
    namespace stays dropped for everyone."""
    a, b = world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    b.upsert("n", [_doc("b0")])
    for i in range(3):
        a.upsert("n", [_doc(f"a{i}")])
    a.drop_namespace("n")
    with pytest.raises(NamespaceNotFound):
        b.upsert("n", [_doc("b1")])
    fresh = world.process()
    assert fresh.list_namespaces() == []
    with pytest.raises(NamespaceNotFound):
        fresh.query("n", vector=[0.0] * DIMS)
    # Every object but the versions' stubs is gone.
    left = [info.key for info in world.store.list("n/")]
    assert all(k.startswith("n/manifests/") or k == "n/latest.json" for k in left), left


def test_a_write_validated_against_a_dropped_incarnation_is_not_committed(world):
    a, b = world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    old = b.catalog.latest("n")
    a.drop_namespace("n")
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="cosine")
    rows = WriteBatch(RowBatch.empty(DIMS), ["x"])
    with pytest.raises(Conflict, match="dropped and created again"):
        b.committer.commit_batches("n", [rows], DIMS, old.incarnation)
    now = world.process().describe("n")
    assert now["metric"] == "cosine" and now["rows"] == {"indexed": 0, "unindexed": 0}


def test_recreation_continues_the_numbering_with_a_new_incarnation(world):
    a = world.process()
    first, _ = a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    a.upsert("n", [_doc("x")])
    tomb = a.drop_namespace("n")
    again, created = a.create_namespace("n", embedder="none", dimensions=8, metric="l2")
    assert created and again.version == tomb + 1 and again.incarnation == again.version != first.incarnation
    assert world.process().describe("n")["dimensions"] == 8


def test_idle_process_past_the_trust_window_finds_the_newest_after_stubs_expired(world):
    """A process that knew v1 sleeps for longer than the stubs live: they are deleted,
    and "v2 absent" would be a lie. It must not trust what it knew."""
    a, b = world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    b.upsert("n", [_doc("b0")])
    for i in range(5):
        a.upsert("n", [_doc(f"a{i}")])
    gc.collect(a.catalog, a.store, "n", retain=1, grace_s=0)
    world.clock.advance(3 * 3600)  # past pruned_manifest_ttl_s (2 h)
    result = gc.collect(a.catalog, a.store, "n", retain=1, grace_s=0)
    assert result.manifests_deleted > 0
    assert world.store.head(keys.manifest_key("n", 2)) is None  # v2's stub is gone
    version, _ = b.upsert("n", [_doc("b1")])
    assert version > 6
    assert _ids(b, "n")[1] == {"b0", "b1", *(f"a{i}" for i in range(5))}


def test_commit_on_a_base_confirmed_too_long_ago_is_refused(world):
    a = world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    base = a.catalog.latest("n")
    world.clock.advance(3601)  # the trust window is half of 2 h
    with pytest.raises(PreconditionFailed):
        a.catalog.commit(base.next())
    assert a.upsert("n", [_doc("x")])[0] == 1  # the committer re-reads and succeeds


def test_writer_rewrites_its_wal_object_after_a_gc_fence(world):
    """A collection that fences after the writer uploaded its WAL object (and before it
    committed) may delete the object; the writer uploads it again under a fresh key."""
    a, collector = world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    a.upsert("n", [_doc("first")])
    raced = []
    inner_put = world.store.put

    def put(key: str, data: bytes) -> None:
        inner_put(key, data)
        if "/wal/" in key and not raced:
            raced.append(gc.collect(collector.catalog, collector.store, "n", retain=1, grace_s=0))

    world.store.put = put
    version, _ = a.upsert("n", [_doc("x")])
    assert raced[0].fence is not None and raced[0].objects_deleted == 1  # our first upload
    assert version > raced[0].fence
    assert _ids(world.process(), "n") == (version, {"first", "x"})


def test_indexer_uploads_again_after_a_gc_fence(world):
    a, collector = world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    a.upsert("n", [_doc(f"d{i}", float(i)) for i in range(30)])
    raced = []
    inner_put = world.store.put

    def put(key: str, data: bytes) -> None:
        inner_put(key, data)
        if key.endswith("/ivf.bin") and not raced:
            raced.append(gc.collect(collector.catalog, collector.store, "n", retain=1, grace_s=0))

    world.store.put = put
    result = a.index("n")
    assert raced and raced[0].objects_deleted >= 1
    segment_ids = [s.id for s in a.catalog.latest("n").segments]
    assert all(keys.key_version("n", keys.segment_prefix("n", s)) > raced[0].fence for s in segment_ids)
    assert _ids(world.process(), "n") == (result.version, {f"d{i}" for i in range(30)})


def test_gc_on_a_dropped_namespace_spares_a_recreation_racing_it(world):
    """The collector of a dropped namespace lists its WAL objects while another process
    re-creates the namespace and writes: the new write's object is in the listing, but
    its key version is above the dropped version (the fence), so it stays."""
    a, b = world.process(), world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    a.upsert("n", [_doc("old")])
    tomb = a.catalog.drop("n")  # the drop's own sweep has not run
    acked = []
    inner_list = world.store.list

    def listing(prefix: str, start_after: str | None = None):
        if prefix == "n/wal/" and not acked:
            b.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
            acked.append(b.upsert("n", [_doc("new")])[0])
        return inner_list(prefix, start_after)

    world.store.list = listing
    result = gc.collect(a.catalog, a.store, "n", retain=1, grace_s=0)
    world.store.list = inner_list
    assert result.fence == tomb.version and result.objects_deleted == 1  # the old incarnation's WAL object
    assert _ids(world.process(), "n") == (acked[0], {"new"})


@pytest.mark.parametrize("bad", [".", ".."])
def test_ids_no_url_can_name_are_refused(world, bad):
    a = world.process()
    a.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    with pytest.raises(InvalidArgument, match="no URL can name it"):
        a.upsert("n", [_doc(bad)])
    assert a.describe("n")["version"] == 0


def test_chunk_shaped_ids_are_refused_in_a_chunking_namespace(world):
    """Defect 3: {"id": "a#1"} would be replaced by re-ingesting "a" and deleted with it."""
    a = world.process()
    a.create_namespace("c", embedder="fake")
    with pytest.raises(InvalidArgument, match="reserves for chunk ids"):
        a.upsert("c", [{"id": "a#1", "text": "a user document"}])
    a.upsert("c", [{"id": "a#b", "text": "fine: not a chunk number"}, {"id": "#", "text": "fine too"}])
    a.create_namespace("plain", embedder="fake", chunking=False)
    a.upsert("plain", [{"id": "a#1", "text": "no chunks here, so no clash"}])
