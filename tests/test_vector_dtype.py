"""float16 segments: half the bytes per cold query, the same answers (to rounding)."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from storage.cache import CachedStore
from storage.memory import MemoryStore
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


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_float16_segments_answer_like_float32(settings, metric):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 24)).astype(np.float32)
    queries = rng.standard_normal((20, 24)).astype(np.float32)
    store = MemoryStore()
    svc = Service(settings, store=CachedStore(store, 64 * 1024**2))
    try:
        _ingest(svc, "f32", vectors, metric, "float32")
        _ingest(svc, "f16", vectors, metric, "float16")
        assert svc.describe("f16")["vector_dtype"] == "float16"
        seg = svc.catalog.latest("f16").segments[0]
        half = store.get(segment.file_key("f16", seg.id, "vectors.bin"))
        full = store.get(segment.file_key("f32", svc.catalog.latest("f32").segments[0].id, "vectors.bin"))
        assert len(half) < 0.6 * len(full)  # the vectors are half; the ids are the same
        overlap = 0
        for q in queries:
            a = svc.query("f32", vector=q.tolist(), top_k=10, nprobe=100).hits
            b = svc.query("f16", vector=q.tolist(), top_k=10, nprobe=100).hits
            overlap += len({h.id for h in a} & {h.id for h in b})
            scale = max(abs(h.score) for h in a) + 1.0
            for x, y in zip(sorted(h.score for h in a), sorted(h.score for h in b)):
                assert abs(x - y) <= 2e-3 * scale
        assert overlap >= 0.97 * 10 * len(queries)  # only near-ties may swap
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
        svc.create_namespace("bad", embedder="none", dimensions=2, vector_dtype="int8")
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
