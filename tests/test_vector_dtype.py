"""float16 and int8 segments: a half or a quarter of the bytes per cold query, the same answers
(to rounding)."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from storage.cache import CachedStore
from storage.memory import MemoryStore
from vectordb import keys as keys_mod
from vectordb import segment
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(store_uri="memory://dtype", group_commit_ms=1, flat_max_rows=50, rows_per_partition=40,
                    auto_index=False)


def _ingest(svc: Service, ns: str, vectors: np.ndarray, metric: str, dtype: str) -> None:
    svc.create_namespace(ns, embedder="none", dimensions=vectors.shape[1], metric=metric, vector_dtype=dtype)
    svc.upsert(ns, [{"id": f"d{i}", "vector": v.tolist()} for i, v in enumerate(vectors)])
    svc.index(ns)


def _float16_tolerance(q, vectors, metric, score):
    return 2e-3 * (abs(score) + 1.0)


def _int8_tolerance(q, vectors, metric, score):
    # No partition spans more than all rows do, so each component is off by at most half of
    # this step and a score by at most sum_j |q_j| step_j / 2 (l2: ~twice that, to first order).
    stored = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    widest_step = (stored.max(axis=0) - stored.min(axis=0)) / 255
    unit = q / np.linalg.norm(q) if metric == "cosine" else q
    return float(np.abs(unit) @ widest_step) / 2 * (2.5 if metric == "l2" else 1.0) + 1e-4 * (abs(score) + 1)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize(
    ("dtype", "size_ratio", "tolerance", "overlap"),
    [
        ("float16", 0.6, _float16_tolerance, 0.97),  # vectors half, ids the same
        ("int8", 0.5, _int8_tolerance, 0.9),  # codes a quarter, plus a quantizer per partition
    ],
)
def test_narrow_segments_answer_like_float32(settings, metric, dtype, size_ratio, tolerance, overlap):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 24)).astype(np.float32) * 3.0 + 1.0
    queries = rng.standard_normal((20, 24)).astype(np.float32)
    store = MemoryStore()
    svc = Service(settings, store=CachedStore(store, 64 * 1024**2))
    try:
        _ingest(svc, "f32", vectors, metric, "float32")
        _ingest(svc, "narrow", vectors, metric, dtype)
        assert svc.describe("narrow")["vector_dtype"] == dtype
        seg = svc.catalog.latest("narrow").segments[0]
        assert segment.Layout.from_bytes(store.get(segment.file_key("narrow", seg.id, "ivf.bin"))).vector_dtype == dtype
        narrow = store.get(segment.file_key("narrow", seg.id, "vectors.bin"))
        full = store.get(segment.file_key("f32", svc.catalog.latest("f32").segments[0].id, "vectors.bin"))
        assert len(narrow) < size_ratio * len(full)
        shared = 0
        for q in queries:
            a = svc.query("f32", vector=q.tolist(), top_k=10, nprobe=100).hits
            b = svc.query("narrow", vector=q.tolist(), top_k=10, nprobe=100).hits
            shared += len({h.id for h in a} & {h.id for h in b})
            for x, y in zip(sorted(h.score for h in a), sorted(h.score for h in b)):
                assert abs(x - y) <= tolerance(q, vectors, metric, x)
        assert shared >= overlap * 10 * len(queries)  # only near-ties may swap
    finally:
        svc.close()


def test_float16_refuses_what_it_cannot_store(settings):
    svc = Service(settings, store=MemoryStore())
    svc.create_namespace("big", embedder="none", dimensions=2, metric="l2", vector_dtype="float16")
    with pytest.raises(InvalidArgument, match="float16"):
        svc.upsert("big", [{"id": "a", "vector": [1.0, 2.0]}, {"id": "b", "vector": [70000.0, 1.0]}])
    svc.upsert("big", [{"id": "a", "vector": [65504.0, -65504.0]}])  # the limit itself fits
    svc.index("big")
    assert [h.id for h in svc.query("big", vector=[65504.0, -65504.0], top_k=1).hits] == ["a"]
    with pytest.raises(InvalidArgument, match="vector_dtype"):
        svc.create_namespace("bad", embedder="none", dimensions=2, vector_dtype="int4")
    svc.close()


def test_float32_layouts_of_the_first_format_still_read():
    centroids = np.arange(6, dtype=np.float32).reshape(2, 3)
    part_bytes, part_rows = np.array([0, 10, 20], np.int64), np.array([0, 1, 2], np.int64)
    v1 = segment.MAGIC_V1 + np.array([2, 3], np.uint32).tobytes() + centroids.tobytes() + part_bytes.tobytes() + part_rows.tobytes()
    layout = segment.Layout.from_bytes(v1)
    assert layout.vector_dtype == "float32" and layout.nlist == 2 and layout.rows_in(1) == 1
    assert np.array_equal(layout.centroids, centroids)
    again = segment.Layout.from_bytes(segment.Layout(centroids, part_bytes, part_rows, "float16").to_bytes())
    assert again.vector_dtype == "float16" and np.array_equal(again.part_bytes, part_bytes)


def test_decoded_float16_partitions_leave_the_ram_cache(settings):
    rng = np.random.default_rng(5)
    cached = CachedStore(MemoryStore(), 64 * 1024**2)
    svc = Service(settings, store=cached)
    try:
        _ingest(svc, "f16", rng.standard_normal((400, 16)).astype(np.float32), "dot", "float16")
        cached.inner.delete(keys_mod.layout_hint_key("f16"))  # centroids from ivf.bin, through the cache
        fresh = Service(settings, store=CachedStore(cached.inner, 64 * 1024**2))
        fresh.query("f16", vector=[0.5] * 16, top_k=5, nprobe=3)
        keys = [entry[0] for entry in fresh.store._entries]
        assert not any(k.endswith("vectors.bin") for k in keys)  # decoded copies live in the reader only
        assert any(k.endswith("ivf.bin") for k in keys)
        fresh.close()
    finally:
        svc.close()


def test_partition_ids_decode_on_demand():
    ids = ["a", "bé", "", "x" * 300, "d/e#1"]
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    part = segment.decode_partition(segment.encode_partition(vectors, ids, "float16"), 5, 2, "float16")
    assert len(part.ids) == 5 and list(part.ids) == ids
    assert [part.ids[i] for i in range(5)] == ids and part.ids[-1] == "d/e#1" and part.ids[np.int64(1)] == "bé"
    assert part.ids[1:3] == ids[1:3]
    with pytest.raises(IndexError):
        part.ids[5]
    assert np.array_equal(part.vectors, vectors) and part.vectors.dtype == np.float32


def test_int8_codes_round_trip_within_half_a_step():
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors[:, 3] = 0.25  # a constant component: step 1, codes 0, decoded exactly
    quantizer = segment.train_quantizer(vectors)
    ids = [f"r{i}" for i in range(300)]
    blob = segment.encode_partition(vectors, ids, "int8")
    assert len(blob) == 2 * 8 * 4 + 300 * 8 + 301 * 4 + sum(len(i) for i in ids)
    part = segment.decode_partition(blob, 300, 8, "int8")
    assert part.vectors.dtype == np.float32 and list(part.ids) == ids
    assert np.all(np.abs(part.vectors - vectors) <= quantizer[1] / 2 * (1 + 1e-4))
    assert np.array_equal(part.vectors[:, 3], vectors[:, 3])
    # The extremes of each component are codes 0 and 255, so they decode (nearly) exactly.
    assert np.allclose(part.vectors.min(axis=0), vectors.min(axis=0), atol=1e-6)
    assert np.allclose(part.vectors.max(axis=0), vectors.max(axis=0), rtol=1e-5, atol=1e-6)
    empty = segment.decode_partition(segment.encode_partition(vectors[:0], [], "int8"), 0, 8, "int8")
    assert empty.vectors.shape == (0, 8) and len(empty.ids) == 0


def test_centroids_are_float16_where_vectors_are_not_float32_and_they_fit():
    rng = np.random.default_rng(13)
    centroids = rng.standard_normal((4, 6)).astype(np.float32)
    part_bytes, part_rows = np.array([0, 1, 2, 3, 4], np.int64), np.array([0, 1, 2, 3, 4], np.int64)
    sizes = {}
    for dtype in ("float32", "float16", "int8"):
        data = segment.Layout(centroids, part_bytes, part_rows, dtype).to_bytes()
        again = segment.Layout.from_bytes(data)
        sizes[dtype] = len(data)
        assert segment.Layout(centroids, part_bytes, part_rows, dtype).stored_bytes() == len(data)
        assert again.vector_dtype == dtype and again.centroids.dtype == np.float32
        exact = centroids if dtype == "float32" else centroids.astype(np.float16).astype(np.float32)
        assert np.array_equal(again.centroids, exact)
    assert sizes["float16"] == sizes["int8"] == sizes["float32"] - 4 * 6 * 2
    huge = centroids * 1e6  # beyond float16: an int8 segment keeps them float32
    assert np.array_equal(segment.Layout.from_bytes(segment.Layout(huge, part_bytes, part_rows, "int8").to_bytes()).centroids, huge)
    with pytest.raises(Exception, match="centroid type"):
        bad = bytearray(segment.Layout(centroids, part_bytes, part_rows, "int8").to_bytes())
        bad[20] = 7
        segment.Layout.from_bytes(bytes(bad))
