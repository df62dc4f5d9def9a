"""Write-ahead-log objects: one Parquet file per group commit.

Columns: ``op`` (0 upsert, 1 delete), ``id``, ``vector`` (each row's components as one
fixed-size binary value, little-endian float32, zeros for deletes; float16 in a namespace
whose segments store float16 or int8, :func:`encode`), ``text``, ``attributes`` (JSON
text). Objects written before the binary column hold ``vector`` as a fixed-size list of
float32; :func:`vectors_of` reads all three. (A list costs Parquet a repetition and a
definition level per component: writing a 5,000 × 384 batch took 33 ms as a list and 7 ms
as binary, reading it 32 and 5; the list's write was 29 % of an ingest worker's busy
time.) Rows are in commit order; within a namespace the manifest orders WAL objects, so
replaying them in that order gives the state of every id.

A *merged* WAL object (``ingest.wal_merge``) holds the folded state of a run of others,
each touched id once: live upserts with their vectors, text and attributes (in the order
of their last operation, as a fold lists them) and delete records. Its name says which
run it stands for, a count and a digest of their keys (:func:`merged_uid`), so a reader
that has already folded those keys knows what the merged object holds without fetching it
(``vectordb.tail_reader``).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence

import numpy as np

from vectordb.namespace import FLOAT16_MAX
from vectordb.rows import RowBatch, WriteBatch

UPSERT, DELETE = 0, 1
ROW_GROUP_ROWS = 65_536

_MERGED = re.compile(r"-m(\d+)-([0-9a-f]{32})\.parquet$")


def merged_uid(uid: str, covered: Sequence[str]) -> str:
    """The unique part of a merged WAL object's key (``keys.wal_key``): ``uid``, then how
    many keys it covers and their digest."""
    return f"{uid}-m{len(covered)}-{_digest(covered)}"


def covered_count(key: str) -> int | None:
    """How many WAL objects the merged object ``key`` stands for; None if it is not one."""
    match = _MERGED.search(key)
    return int(match.group(1)) if match else None


def covers(key: str, covered: Sequence[str]) -> bool:
    """Whether ``key`` is a merged WAL object made from exactly ``covered`` (in order)."""
    match = _MERGED.search(key)
    return match is not None and int(match.group(1)) == len(covered) and match.group(2) == _digest(covered)


def _digest(covered: Sequence[str]) -> str:
    h = hashlib.sha256()
    for key in covered:
        h.update(key.encode())
        h.update(b"\0")  # no key contains NUL: the list, not just the concatenation, is hashed
    return h.hexdigest()[:32]


def half_for(vector_dtype: str) -> bool:
    """Whether a namespace whose segments store ``vector_dtype`` writes its WAL vectors as
    float16: its segments hold float16, or int8 codes whose step (a partition's span of a
    component / 255; ~0.002 on unit vectors) is ~20x float16's error on those values. Half
    the bytes to PUT, hash and store per row, and to read back in every build and tail fold."""
    return vector_dtype in ("float16", "int8")


def encode(batches: list[WriteBatch], dims: int, half: bool = False) -> bytes:
    """``half``: vectors as float16 (:func:`half_for`), unless one of them has a component
    float16 cannot hold (beyond ±65504: an int8 namespace takes any finite value), then
    the whole object as float32."""
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

    flat = np.concatenate(vectors) if vectors else np.zeros((0, dims), np.float32)
    # Two reductions, not abs(): no temporary the size of the batch on the commit path.
    if half and (not flat.size or max(-float(flat.min()), float(flat.max())) <= FLOAT16_MAX):
        flat = np.ascontiguousarray(flat, "<f2")
    else:
        flat = np.ascontiguousarray(flat, "<f4")
    vec = pa.FixedSizeBinaryArray.from_buffers(pa.binary(dims * flat.itemsize), len(flat), [None, pa.py_buffer(flat)])
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
        # Row groups of a bounded size: a WAL merge's object can hold a whole tail, and an
        # index build reads it a row group at a time (ingest.build_input).
        row_group_size=ROW_GROUP_ROWS,
    )
    return sink.getvalue()


def decode(data: bytes, dims: int) -> tuple[np.ndarray, RowBatch]:
    """Returns (ops, rows); ``rows.vectors`` is zero where ``ops`` is DELETE."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    ops = table.column("op").to_numpy()
    vectors = vectors_of(table.column("vector"), len(ops), dims)
    rows = RowBatch(
        table.column("id").to_pylist(),
        vectors,
        table.column("text").to_pylist(),
        table.column("attributes").to_pylist(),
    )
    return ops, rows


def vectors_of(column, rows: int, dims: int) -> np.ndarray:
    """A WAL object's ``vector`` column (a table's or a record batch's) as a float32
    ``rows × dims`` array: fixed-size binary values of little-endian float32 or float16
    components (the width says which), or the fixed-size float32 list of objects written
    before them."""
    import pyarrow as pa

    if rows == 0:
        return np.zeros((0, dims), np.float32)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_fixed_size_binary(column.type):
        width = column.type.byte_width
        if width not in (dims * 4, dims * 2):
            raise ValueError(f"a WAL vector of {width} bytes is not {dims} float32 or float16 components")
        flat = np.frombuffer(column.buffers()[1], "<f4" if width == dims * 4 else "<f2", rows * dims,
                             column.offset * width)
        return flat.astype(np.float32).reshape(rows, dims)  # a copy: nothing held views the object's buffers
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(rows, dims)


def parquet_file(store, key: str):
    """A WAL object as a Parquet file read by ranges (``store``: an ``ObjectStore``): its
    footer, then only the column chunks asked for, never the whole object (a WAL merge's
    can hold a whole tail)."""
    import pyarrow.parquet as pq

    from storage.errors import ObjectNotFound
    from vectordb import ranged_reads

    info = store.head(key)
    if info is None:
        raise ObjectNotFound(f"no object {key!r}")
    return pq.ParquetFile(ranged_reads.SpanFile(store, key, info.size, ranged_reads.Spans({})))


def read_ops(store, key: str, attributes: bool = False):
    """A WAL object's ``id`` and ``op`` columns alone (by range): (ids as an Arrow
    ``large_string`` array, their BLAKE2b hashes, which rows are deletes), and with
    ``attributes`` each row's attributes (JSON text, or None) as a fourth item."""
    import pyarrow as pa

    from vectordb.key_table import blake2b64

    table = parquet_file(store, key).read(columns=["id", "op", "attributes"] if attributes else ["id", "op"])
    column = table.column("id")
    ids = pa.concat_arrays([chunk.cast(pa.large_string()) for chunk in column.chunks]) if column.num_chunks \
        else pa.array([], pa.large_string())
    out = ids, blake2b64(column.to_pylist()), table.column("op").to_numpy() == DELETE
    return (*out, table.column("attributes").to_pylist()) if attributes else out
