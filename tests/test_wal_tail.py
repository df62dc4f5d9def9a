"""An index build's streamed fold of the WAL tail (ingest.build_input.WalTail: id
hashes sorted, vectorized) yields the rows, in the order, that folding the decoded batches in
memory (vectordb.tail.fold) gives, and the same touched ids where a build needs them."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from ingest.build_input import WalTail
from storage.memory import MemoryStore
from vectordb import tail as tail_mod
from vectordb import wal
from vectordb.settings import Settings


@pytest.mark.parametrize("seed", range(6))
def test_the_streamed_fold_is_the_in_memory_fold(seed):
    rng = np.random.default_rng(seed)
    store = MemoryStore()
    svc = Service(Settings(store_uri="memory://fold", group_commit_ms=1, auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        pool = [f"id-{i}" for i in range(int(rng.integers(5, 300)))] + ["é/ü#1", "x" * 200]
        writes = int(rng.integers(2, 12))
        for n in range(writes):
            if seed % 2 and n == writes // 2:
                svc.index("ns")  # a segment under the tail: the build must know what the tail touches
            ids = list(dict.fromkeys(rng.choice(pool, int(rng.integers(1, 60))).tolist()))
            svc.upsert("ns", [{"id": i, "vector": rng.standard_normal(4).tolist(), "attributes": {"n": int(rng.integers(9))}}
                              for i in ids])
            if rng.random() < 0.6:
                svc.delete("ns", ids=list(dict.fromkeys(rng.choice(pool, int(rng.integers(1, 20))).tolist())))
        manifest = svc.catalog.latest("ns")
        held = tail_mod.fold([wal.decode(store.get(ref.key), 4) for ref in manifest.wal], 4)
        streamed = WalTail.read(store, manifest)
        rows = [batch for batch in streamed.chunks(7)]
        ids = [i for batch in rows for i in batch.ids]
        assert ids == held.rows.ids and streamed.rows == len(held.rows)
        assert np.array_equal(np.concatenate([b.vectors for b in rows]) if rows else np.zeros((0, 4)), held.rows.vectors)
        assert [a for b in rows for a in b.attributes] == held.rows.attributes
        # Only a build over segments needs the touched ids (they override those segments' rows).
        assert frozenset(streamed.touched) == (held.touched if manifest.segments else frozenset())
        assert bool(manifest.segments) == bool(seed % 2)
    finally:
        svc.close()


def test_an_empty_tail_folds_to_nothing():
    store = MemoryStore()
    svc = Service(Settings(store_uri="memory://fold", auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        streamed = WalTail.read(store, svc.catalog.latest("ns"))
        assert streamed.rows == 0 and list(streamed.chunks(10)) == [] and frozenset(streamed.touched) == frozenset()
    finally:
        svc.close()


def _list_encoded(data: bytes) -> bytes:
    """The same WAL object with its ``vector`` column as the fixed-size float32 list that
    objects were written with before the binary column (``vectordb.wal``)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    dims = table.column("vector").type.byte_width // 4
    flat = wal.vectors_of(table.column("vector"), table.num_rows, dims).reshape(-1)
    table = table.set_column(table.schema.get_field_index("vector"), "vector",
                             pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dims))
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=wal.ROW_GROUP_ROWS)
    return sink.getvalue()


def test_vectors_are_one_binary_value_a_row_and_objects_written_as_float_lists_still_read(tmp_path):
    import io

    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    store = MemoryStore()
    svc = Service(Settings(store_uri="memory://fold", group_commit_ms=1, auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=6, metric="l2")
        vectors = rng.standard_normal((40, 6)).astype(np.float32)
        for lo in range(0, 40, 10):
            svc.upsert("ns", [{"id": f"d{i}", "vector": vectors[i].tolist()} for i in range(lo, lo + 10)])
        svc.delete("ns", ids=["d3"])
        manifest = svc.catalog.latest("ns")
        column = pq.read_table(io.BytesIO(store.get(manifest.wal[0].key))).column("vector")
        assert column.type.byte_width == 6 * 4  # fixed-size binary, one value a row
        ops, rows = wal.decode(store.get(manifest.wal[0].key), 6)
        assert rows.vectors.dtype == np.float32 and np.array_equal(rows.vectors, vectors[:10])

        before = [svc.query("ns", vector=v.tolist(), top_k=3) for v in vectors[::7]]
        for ref in manifest.wal[::2]:  # half the objects as an older writer left them
            store.put(ref.key, _list_encoded(store.get(ref.key)))
        assert wal.decode(store.get(manifest.wal[0].key), 6)[1].vectors.tolist() == vectors[:10].tolist()

        fresh = Service(Settings(store_uri="memory://fold", auto_index=False), store=store)
        try:
            assert [fresh.query("ns", vector=v.tolist(), top_k=3) for v in vectors[::7]] == before  # the tail
            streamed = WalTail.read(store, manifest)
            got = np.concatenate([b.vectors for b in streamed.chunks(7)])
            assert np.array_equal(got, np.delete(vectors, 3, axis=0))  # the build's streamed fold
            fresh.index("ns")
            assert fresh.query("ns", vector=vectors[11].tolist(), top_k=1).hits[0].id == "d11"
        finally:
            fresh.close()
    finally:
        svc.close()


@pytest.mark.parametrize("dtype,metric,scale,width", [
    ("float32", "l2", 1.0, 4),
    ("float16", "l2", 1.0, 2),
    ("int8", "cosine", 1.0, 2),
    ("int8", "l2", 1e5, 4),  # beyond float16's ±65504: that object stays float32
])
def test_wal_vectors_are_float16_where_the_segments_store_less_than_float32(dtype, metric, scale, width):
    import io

    import pyarrow.parquet as pq

    rng = np.random.default_rng(9)
    store = MemoryStore()
    svc = Service(Settings(store_uri="memory://half", group_commit_ms=1, auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=8, metric=metric, vector_dtype=dtype)
        vectors = (rng.standard_normal((30, 8)) * scale).astype(np.float32)
        svc.upsert("ns", [{"id": f"d{i}", "vector": vectors[i].tolist()} for i in range(30)])
        ref = svc.catalog.latest("ns").wal[0]
        assert pq.read_table(io.BytesIO(store.get(ref.key))).column("vector").type.byte_width == 8 * width
        stored = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
        got = wal.decode(store.get(ref.key), 8)[1].vectors
        assert got.dtype == np.float32
        if width == 4:
            assert np.array_equal(got, stored)
        else:
            assert np.array_equal(got, stored.astype(np.float16).astype(np.float32))
        # The tail answers from what the WAL holds, and so does the segment built from it.
        first = svc.query("ns", vector=vectors[4].tolist(), top_k=1).hits[0]
        svc.index("ns")
        assert first.id == "d4" and svc.query("ns", vector=vectors[4].tolist(), top_k=1).hits[0].id == "d4"
    finally:
        svc.close()
