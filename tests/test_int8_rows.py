"""int8 partitions held as their codes (a quarter of float32) and scanned by FAISS's 8-bit
kernel: the same rows and scores as a scan of the dequantized float32 rows."""

from __future__ import annotations

import faiss  # noqa: F401  (loaded: ivf scans with FAISS, as a warm worker does)
import numpy as np
import pytest

from api.service import Service
from storage.cache import CachedStore
from storage.memory import MemoryStore
from tests.fakes import scan_blocks
from vectordb import ivf, segment
from vectordb.int8_rows import Int8Rows
from vectordb.settings import Settings


def _partition(rng, n: int, dims: int, metric: str) -> tuple[bytes, list[str]]:
    vectors = rng.standard_normal((n, dims)).astype(np.float32) * rng.uniform(0.2, 3.0, dims).astype(np.float32)
    if metric == "cosine":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"r{i}" for i in range(n)]
    return segment.encode_partition(vectors, ids, "int8"), ids


def test_held_codes_are_the_dequantized_rows_at_a_quarter_of_the_bytes():
    rng = np.random.default_rng(1)
    blob, ids = _partition(rng, 300, 16, "l2")
    dense = segment.decode_partition(blob, 300, 16, "int8")
    held = segment.decode_partition(blob, 300, 16, "int8", held_codes=True)
    assert isinstance(held.vectors, Int8Rows) and list(held.ids) == ids
    assert held.vectors.nbytes == 300 * 16 + 2 * 16 * 4 and dense.vectors.nbytes == 300 * 16 * 4
    assert len(held.vectors) == 300 and held.vectors.shape == (300, 16)
    assert np.array_equal(held.dense(), dense.vectors)
    rows = np.array([299, 0, 17, 17])
    assert np.array_equal(held.vectors[rows], dense.vectors[rows])
    assert np.array_equal(held.vectors[5], dense.vectors[5]) and np.array_equal(held.vectors[3:9], dense.vectors[3:9])
    # Once FAISS's index holds the codes, they are read from there.
    held.vectors.index(faiss, faiss.METRIC_L2)
    del blob
    assert np.array_equal(held.vectors[rows], dense.vectors[rows]) and np.array_equal(held.dense(), dense.vectors)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("seed", range(8))
def test_the_8bit_scan_picks_what_a_scan_of_the_float32_rows_picks(metric, seed):
    rng = np.random.default_rng(seed)
    n, dims = int(rng.integers(20, 1500)), int(rng.choice([8, 24, 384]))
    blob, _ = _partition(rng, n, dims, metric)
    dense = segment.decode_partition(blob, n, dims, "int8").vectors
    held = segment.decode_partition(blob, n, dims, "int8", held_codes=True).vectors
    for _ in range(5):
        q = rng.standard_normal(dims).astype(np.float32)
        k = int(rng.integers(1, 40))
        scores, rows = ivf.scan(held, q, k, metric)
        want_scores, want_rows = ivf.scan(dense, q, k, metric)
        assert np.array_equal(rows, want_rows) and np.array_equal(scores, want_scores)
        # Brute force over the dequantized rows agrees too.
        brute = ivf.exact_scores(dense, q, metric)
        assert np.allclose(np.sort(brute)[::-1][: len(scores)], scores, rtol=1e-5, atol=1e-5)
        kept = np.flatnonzero(rng.random(n) < 0.3)
        if len(kept):
            picked = ivf.scan_rows(held, kept, q, k, metric)
            want = ivf.scan_rows(dense, kept, q, k, metric)
            assert np.array_equal(np.sort(picked), np.sort(want)) and set(picked.tolist()) <= set(kept.tolist())
    blocks_held, blocks_dense = [held, held[: n // 2]], [dense, dense[: n // 2]]
    blocks_held[1] = segment.decode_partition(segment.encode_partition(dense[: n // 2], ["x"] * (n // 2), "int8"),
                                              n // 2, dims, "int8", held_codes=True).vectors if n // 2 else dense[:0]
    blocks_dense[1] = blocks_held[1].dense() if n // 2 else dense[:0]
    q = rng.standard_normal(dims).astype(np.float32)
    got = scan_blocks(blocks_held, q, 10, metric)
    want = scan_blocks(blocks_dense, q, 10, metric)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_a_reader_holds_int8_partitions_at_their_stored_size():
    settings = Settings(store_uri="memory://codes", group_commit_ms=1, flat_max_rows=50, rows_per_partition=100,
                        auto_index=False)
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((2000, 64)).astype(np.float32)
    store = MemoryStore()
    svc = Service(settings, store=CachedStore(store, 64 * 1024**2))
    try:
        svc.create_namespace("q8", embedder="none", dimensions=64, metric="l2", vector_dtype="int8")
        svc.upsert("q8", [{"id": f"d{i}", "vector": v.tolist()} for i, v in enumerate(vectors)])
        svc.index("q8")
        seg = svc.catalog.latest("q8").segments[0]
        stored = len(store.get(segment.file_key("q8", seg.id, "vectors.bin")))
        fresh = Service(settings, store=CachedStore(store, 64 * 1024**2))
        for i, q in enumerate(vectors[:5]):
            hits = fresh.query("q8", vector=q.tolist(), top_k=5, nprobe=1000).hits
            assert hits[0].id == f"d{i}"  # itself, to rounding
        held = fresh.engine.reader._partitions.bytes
        assert 0.9 * stored <= held <= stored  # every partition, at its stored size (float32: ~4x)
        fresh.close()
    finally:
        svc.close()
