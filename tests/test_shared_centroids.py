"""Segments that share one set of centroids (a Ray build's shards, ``ingest.ray_build``).

The streamed builder takes given centroids (``segment_writer.spill`` then
``Spilled.finish``) and records their id in ``ivf.bin``; a query's one probe budget
(``query.vector_search._shared_probes``) ranks a shared centroid once and scans its
partition in every segment that shares it. So two halves built on one set answer as one
segment of all the rows built on it; segments with centroids of their own are ranked as
before. No Ray here: the segments are built in this process into the memory store.
"""

from __future__ import annotations

import numpy as np
import pytest

from query import vector_search
from query.plan import Context
from storage.memory import MemoryStore
from vectordb import ivf, segment, segment_writer
from vectordb.manifest import Manifest, SegmentRef
from vectordb.namespace import NamespaceConfig
from vectordb.reader import NamespaceReader
from vectordb.rows import RowBatch
from vectordb.tail import Tail

NS, DIMS, METRIC, NLIST = "ns", 16, "cosine", 50
CONFIG = NamespaceConfig("none", DIMS, METRIC)


def _vectors(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIMS)).astype(np.float32)
    v = centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, DIMS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _batch(vectors: np.ndarray, first: int) -> RowBatch:
    n = len(vectors)
    return RowBatch([f"v{i}" for i in range(first, first + n)], vectors, [None] * n, [None] * n)


def _upload(store: MemoryStore, built) -> SegmentRef:
    try:
        for name, path in built.files.items():
            store.put_file(segment.file_key(NS, built.id, name), path)
        return SegmentRef(built.id, built.rows, built.nlist, built.bytes)
    finally:
        built.close()


def _on(centroids: np.ndarray, rows: RowBatch, shared: bool, docs: str = "by_range"):
    spilled = segment_writer.spill(segment_writer.BatchSource(rows), METRIC, "float32", docs, 64 * 1024**2)
    try:
        return spilled.finish(centroids, segment.new_segment_id(), shared)
    finally:
        spilled.close()


@pytest.fixture(scope="module")
def world():
    """Halves ``a`` and ``b`` on one set of centroids, ``whole`` (all the rows) on the same
    set, and ``c``, ``d``: the halves, each on centroids of its own."""
    store = MemoryStore()
    vectors = _vectors(4000)
    centroids = ivf.train_centroids(vectors, NLIST, METRIC)
    halves = [_batch(vectors[:2000], 0), _batch(vectors[2000:], 2000)]
    segs = {
        "a": _upload(store, _on(centroids, halves[0], shared=True)),
        "b": _upload(store, _on(centroids, halves[1], shared=True)),
        "whole": _upload(store, _on(centroids, _batch(vectors, 0), shared=False)),
        "c": _upload(store, segment.build(halves[0], METRIC, 40, 50)),
        "d": _upload(store, segment.build(halves[1], METRIC, 40, 50)),
    }
    return store, NamespaceReader(store, fetch_threads=4), segs, vectors


def _ctx(segs: list[SegmentRef], nprobe: int | None = None) -> Context:
    empty = Tail(RowBatch([], np.zeros((0, DIMS), np.float32), [], []), frozenset(), frozenset())
    return Context(Manifest(NS, 1, CONFIG, tuple(segs)), empty, nprobe=nprobe)


def _ids(store: MemoryStore, reader: NamespaceReader, seg: SegmentRef, p: int) -> set[str]:
    layout = reader.layout(NS, seg)
    start, length = layout.byte_range(p)
    data = store.get_range(segment.file_key(NS, seg.id, "vectors.bin"), start, length)
    return set(segment.decode_partition(data, layout.rows_in(p), DIMS).ids)


def test_segments_on_given_centroids_record_the_set_and_split_its_partitions(world):
    store, reader, segs, _ = world
    a, b, whole, c = (reader.layout(NS, segs[name]) for name in ("a", "b", "whole", "c"))
    assert a.centroid_set is not None and a.centroid_set == b.centroid_set == segment.centroid_set_id(a.centroids)
    assert a.docs is not None and a.docs.rows == 2000  # the documents' trailer is read as before
    assert np.array_equal(a.centroids, whole.centroids) and a.nlist == NLIST
    assert whole.centroid_set is None and c.centroid_set is None  # not shared, or its own: nothing recorded
    for p in range(NLIST):  # each half holds its rows of the one build's partition p
        in_a, in_b = _ids(store, reader, segs["a"], p), _ids(store, reader, segs["b"], p)
        assert not in_a & in_b and in_a | in_b == _ids(store, reader, segs["whole"], p)


@pytest.mark.parametrize("docs", ["by_range", "whole"])
def test_the_centroid_set_trailer_follows_any_other_and_old_layouts_read_without_it(docs):
    vectors = _vectors(600, seed=3)
    centroids = ivf.train_centroids(vectors, 10, METRIC)
    built = _on(centroids, _batch(vectors, 0), shared=True, docs=docs)
    try:
        data = built.read("ivf.bin")
    finally:
        built.close()
    layout = segment.Layout.from_bytes(data)
    assert layout.centroid_set == segment.centroid_set_id(centroids)
    assert (layout.docs is not None) == (docs == "by_range")
    trailer = segment.centroid_set_trailer(layout.centroid_set)
    assert data.endswith(trailer)
    older = segment.Layout.from_bytes(data[: -len(trailer)])  # as a segment without it
    assert older.centroid_set is None and older.docs == layout.docs


def _ranked(layouts: list[segment.Layout], q: np.ndarray, budget: int) -> list[list[int]]:
    """Each layout's cells among the best ``budget`` of all their centroids ranked
    together, best first; then, with several layouts, each tops up to
    ``MIN_PROBES_PER_SET`` of its own best (the default budget's minimum)."""
    own = [ivf.exact_scores(lay.centroids, q, METRIC) for lay in layouts]
    scores = np.concatenate(own)
    owner = np.concatenate([np.full(lay.nlist, i) for i, lay in enumerate(layouts)])
    part = np.concatenate([np.arange(lay.nlist) for lay in layouts])
    cells: list[list[int]] = [[] for _ in layouts]
    for i in np.argsort(-scores, kind="stable")[:budget]:
        cells[owner[i]].append(int(part[i]))
    if len(layouts) > 1:
        for mine, sc in zip(cells, own):
            want = min(len(sc), vector_search.MIN_PROBES_PER_SET)
            mine += [p for p in np.argsort(-sc, kind="stable")[:want].tolist() if p not in mine][: max(0, want - len(mine))]
    return cells


def _held(layout: segment.Layout, cells: list[int]) -> list[int]:
    return [p for p in cells if layout.rows_in(p)]


@pytest.mark.parametrize("nprobe", [None, 3, 20])
def test_a_centroid_shared_by_segments_counts_once_in_the_probe_budget(world, nprobe):
    _, reader, segs, vectors = world
    a, b = segs["a"], segs["b"]
    budget = nprobe or ivf.default_nprobe(NLIST)  # one set of NLIST centroids, not 2 x NLIST
    for q in vectors[::500]:
        picked = vector_search._shared_probes(reader, _ctx([a, b], nprobe), q, METRIC)
        (cells,) = _ranked([reader.layout(NS, a)], q, budget)
        assert len(set(cells)) == budget
        for seg in (a, b):  # the same cells, each scanned in both halves
            assert picked.get(seg.id, []) == _held(reader.layout(NS, seg), cells)


def test_segments_with_their_own_centroids_share_the_budget_each_probing_a_few_of_its_own(world):
    _, reader, segs, vectors = world
    a, b, c, d = (reader.layout(NS, segs[name]) for name in "abcd")
    budget = ivf.default_nprobe(2 * NLIST)
    for q in vectors[::400]:
        picked = vector_search._shared_probes(reader, _ctx([segs["c"], segs["d"]]), q, METRIC)
        c_cells, d_cells = _ranked([c, d], q, budget)
        assert [picked.get(segs["c"].id, []), picked.get(segs["d"].id, [])] == [_held(c, c_cells), _held(d, d_cells)]
        # Beside a segment of its own, the shared set ranks as one segment would.
        picked = vector_search._shared_probes(reader, _ctx([segs["a"], segs["c"], segs["b"]]), q, METRIC)
        shared_cells, c_cells = _ranked([a, c], q, budget)
        assert picked.get(segs["c"].id, []) == _held(c, c_cells)
        assert picked.get(segs["a"].id, []) == _held(a, shared_cells)
        assert picked.get(segs["b"].id, []) == _held(b, shared_cells)


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_halves_on_shared_centroids_answer_as_one_segment_on_them(world, device):
    if device == "torch-cpu":
        pytest.importorskip("torch")
    _, reader, segs, vectors = world
    queries = _vectors(40, seed=11)
    for q in queries:
        found = {}
        for name, parts in (("halves", [segs["a"], segs["b"]]), ("one", [segs["whole"]])):
            hits = vector_search.search(reader, _ctx(parts), q, 10, exact_max_rows=0, device=device)
            found[name] = sorted((round(h.score, 5), h.id) for h in hits)[-10:]
        assert found["halves"] == found["one"]


def _per_segment(reader: NamespaceReader, ctx: Context, q: np.ndarray, k: int) -> list[tuple[float, str]]:
    """What the namespace's segments answer searched one by one on their shares of the
    budget (each segment's own top k, then the best k of them all)."""
    shared = vector_search._shared_probes(reader, ctx, q, METRIC)
    found = []
    for seg in ctx.manifest.segments:
        if shared.get(seg.id):
            found += vector_search._search_segment(reader, ctx, seg, q, k, METRIC, None, shared[seg.id])
    return sorted(((round(c.score, 5), c.id) for c in found), reverse=True)[:k]


def test_segments_scanned_as_one_answer_as_each_searched_alone_and_skip_dead_rows(world):
    """The probed partitions of all clean segments are scanned at once (``_search_shared``);
    a segment with tombstones is searched alone, its dead rows never returned: the answer
    is what each segment's own search would have merged into."""
    store, reader, segs, vectors = world
    queries = _vectors(30, seed=13)
    # Tombstone, in segment c, the ids that the clean segments' search finds best.
    ctx = _ctx([segs["a"], segs["b"], segs["c"], segs["d"]])
    best = {c.id for q in queries[:10] for c in vector_search.search(reader, ctx, q, 3, exact_max_rows=0)}
    c_ids = {f"v{i}" for i in range(2000)}
    dead = best & c_ids
    assert dead
    key = segment.tombstones_key(NS, segs["c"].id, 2)
    store.put(key, segment.encode_tombstones(dead))
    c_dead = SegmentRef(segs["c"].id, segs["c"].rows, segs["c"].nlist, segs["c"].bytes, key, len(dead))
    ctx = _ctx([segs["a"], segs["b"], c_dead, segs["d"]])
    for q in queries:
        hits = vector_search.search(reader, ctx, q, 10, exact_max_rows=0)
        got = sorted(((round(h.score, 5), h.id) for h in hits), reverse=True)[:10]
        assert got == _per_segment(reader, ctx, q, 10)
        assert not {h.id for h in hits if h.segment.id == c_dead.id} & dead
        assert len(got) == 10
