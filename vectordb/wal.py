"""Write-ahead-log objects: one Parquet file per group commit.

Columns: ``op`` (0 upsert, 1 delete), ``id``, ``vector`` (fixed-size float32 list, zeros
for deletes), ``text``, ``attributes`` (JSON text). Rows are in commit order; within a
namespace the manifest orders WAL objects, so replaying them in that order gives the
state of every id.
"""

from __future__ import annotations

import io

import numpy as np

from vectordb.rows import RowBatch, WriteBatch

UPSERT, DELETE = 0, 1


def encode(batches: list[WriteBatch], dims: int) -> bytes:
    ops: list[int] = []
    ids: list[str] = []
    texts: list[str | None] = []
    attrs: list[str | None] = []
    vectors: list[np.ndarray] = []
    for batch in batches:
        up = batch.upserts
        ops += [UPSERT] * len(up)
        ids += up.ids
        texts += up.texts
        attrs += up.attributes
        vectors.append(up.vectors.astype(np.float32, copy=False).reshape(-1, dims))
        ops += [DELETE] * len(batch.deletes)
        ids += batch.deletes
        texts += [None] * len(batch.deletes)
        attrs += [None] * len(batch.deletes)
        vectors.append(np.zeros((len(batch.deletes), dims), np.float32))
    import pyarrow as pa  # on first use: a query worker with no unindexed writes never needs it
    import pyarrow.parquet as pq

    flat = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dims)
    table = pa.table(
        {
            "op": pa.array(ops, pa.uint8()),
            "id": pa.array(ids, pa.string()),
            "vector": vec,
            "text": pa.array(texts, pa.string()),
            "attributes": pa.array(attrs, pa.string()),
        }
    )
    sink = io.BytesIO()
    # Float vectors do not compress; zstd on them costs 5x the time of the rest of the write.
    pq.write_table(
        table,
        sink,
        compression={"op": "zstd", "id": "zstd", "vector": "none", "text": "zstd", "attributes": "zstd"},
        use_dictionary=["op", "id", "text", "attributes"],
        write_statistics=["op"],
    )
    return sink.getvalue()


def decode(data: bytes, dims: int) -> tuple[np.ndarray, RowBatch]:
    """Returns (ops, rows); ``rows.vectors`` is zero where ``ops`` is DELETE."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    ops = table.column("op").to_numpy()
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(len(ops), dims)
    rows = RowBatch(
        table.column("id").to_pylist(),
        vectors,
        table.column("text").to_pylist(),
        table.column("attributes").to_pylist(),
    )
    return ops, rows
