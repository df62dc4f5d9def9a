"""The segment format: immutable indexed data, laid out for ranged reads.

A segment ``<ns>/segments/<id>/`` has these objects:

``ivf.bin``
    magic ``VDBIVF02``, uint32 nlist, uint32 dims, uint32 vector type (0 float32,
    1 float16, 2 int8), uint32 centroid type (0 float32, 1 float16), centroids (nlist ×
    dims), int64 byte offsets of the partitions in ``vectors.bin`` (nlist + 1), int64 row
    offsets (nlist + 1). Small; a query fetches it first and keeps it cached. Segments
    that store vectors in less than float32 store float16 centroids where they fit: the
    second of a cold query's round trips carries half the bytes. (``VDBIVF01``: the same
    without the two type words, float32.) A segment whose documents are laid out by
    range ends ``ivf.bin`` with a trailer (magic ``VDBDOCS2``, :mod:`vectordb.docs_format`)
    telling its readers where their first ranged reads go; without one, ``docs.parquet``.
    A segment that shares its centroids with others (the shards of a Ray build) ends it
    with one more trailer, magic ``VDBCSET1``, a u32 length and the 16-byte id of that
    centroid set (a hash of the centroids): a query ranks a shared centroid once
    (:mod:`query.vector_search`). A segment of a namespace created with ``cluster_by``
    ends it with the directory of ``clusters.bin`` (magic ``VDBCLUS1``, JSON). Each trailer
    is magic, u32 length, body; readers skip those they do not know; a segment without the
    centroid-set one has centroids of its own, one without the clusters one no copy.
``vectors.bin``
    the partitions back to back. Partition ``p`` is one contiguous byte range: vectors
    (n × dims, float32, float16 or uint8 codes as ``ivf.bin`` says), int32 id offsets
    (n + 1), then the UTF-8 ids. An int8 partition starts with its quantizer, float32
    ``low`` (dims) and ``step`` (dims), and stores component ``j`` of a vector as the code
    ``round((x - low[j]) / step[j])``: 255 steps from the partition's own minimum to its
    maximum of that component (a partition is one cluster, so its span is narrow). A
    query fetches only the partitions it probes, one ranged GET each.
``attrs.bin``
    the attributes as columns, one per top-level key a filter can name, typed where the
    segment's values agree (float64, string, bool; else JSON text), plus ``$id`` (and
    ``$rest``, a JSON object of the keys past the 255 most frequent): one Parquet file per
    column, back to back, row group ``p`` = partition ``p``, min/max statistics on typed
    columns. A filter reads its columns' footers, then only their chunks in row groups
    that can match (:mod:`vectordb.attr_columns`).
``fields.bin`` and ``rows.bin``
    per row its id, text and attributes (JSON), compressed alone (raw deflate), back to
    back; and per row a fixed 22-byte entry saying where (:mod:`vectordb.doc_fields`). The
    fields of a hit are one ranged read each.
``ids.bin`` and ``doc_ids.bin``
    hash tables in fixed-size buckets (:mod:`vectordb.key_table`): id -> row (and its
    ``rows.bin`` entry), and a chunk's string ``doc_id`` attribute -> its rows and ids.
    A lookup reads one bucket.
``clusters.bin`` (namespaces created with ``cluster_by``)
    the vectors again, grouped by the values of the ``cluster_by`` attributes: per group
    its rows (uint32) then their vectors (float16). A filter on those attributes alone
    reads its groups, a few contiguous ranges, instead of each kept row by range
    (:mod:`vectordb.clusters`).
``docs.parquet`` (segments written before the by-range layout)
    ``id``, ``text``, ``attributes`` (JSON text), one row group per partition (empty ones
    included), rows in the same order as ``vectors.bin``; read whole.
``bm25.bin``
    the BM25 inverted index over the rows' text, row ``i`` = segment row ``i``, laid out
    for ranged reads (:mod:`vectordb.bm25_blocks`, magic ``VDBBM25B``): a head (segment
    statistics and the index of the dictionary blocks, in the first 64 KiB), the sorted
    term dictionary in blocks, then per term its postings (row gaps, term frequencies, row
    lengths; ~3 bytes a posting). A query reads the head, one block per term and those
    terms' postings. Older segments hold an ``.npz`` (:meth:`vectordb.bm25.BM25Index.to_bytes`),
    read whole.

Segment rows are sorted by partition; "row r of the segment" means the same document in
every file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import operator
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vectordb import clusters, docs_format, ivf, keys
from vectordb.clusters import ClusterDirectory
from vectordb.docs_format import DocsLayout
from vectordb.errors import VectorDBError
from vectordb.int8_rows import Int8Rows, dequantize
from vectordb.namespace import FLOAT16_MAX
from vectordb.rows import RowBatch

if TYPE_CHECKING:
    import pyarrow as pa

    from vectordb.segment_writer import BuiltSegment, RowSource

# pyarrow (~0.1 s to import) is imported where Parquet is read or written, not here: a query
# worker answering vector queries needs only ivf.bin and vectors.bin.

MAGIC_V1 = b"VDBIVF01"  # float32 vectors, no type word
MAGIC = b"VDBIVF02"
CENTROID_SET_MAGIC = b"VDBCSET1"  # ivf.bin's trailer naming the centroid set a segment shares
CLUSTERS_MAGIC = clusters.MAGIC  # ivf.bin's trailer: clusters.bin's directory
_DTYPES = ("float32", "float16", "int8")  # the type word indexes this
_CENTROID_TYPES = ("float32", "float16")  # the centroid type word indexes this
_STORED = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "int8": np.dtype(np.uint8)}
# Every file a segment may have (garbage collection keeps exactly these): a segment has the
# whole-docs layout (docs.parquet) or the by-range one (docs_format.FILES), not both.
FILES = ("ivf.bin", "vectors.bin", "docs.parquet", "bm25.bin", *docs_format.FILES, "clusters.bin")


@dataclass(frozen=True)
class Layout:
    """The contents of ``ivf.bin``.

    ``stored_centroids`` are the centroids as given (float32), or as ``ivf.bin`` stores them
    (:meth:`from_bytes`: float16 in segments whose vectors are not float32);
    :attr:`centroids` is them as float32, made on first use. Widening is the costly part of
    a cold query's centroid ranking (numpy: ~14 ms for 13,470 × 384 float16 on this
    benchmark machine), so :meth:`top_centroids` ranks float16 ones as they are, by FAISS's
    float16 scan, where FAISS is loaded."""

    stored_centroids: np.ndarray  # nlist × dims
    part_bytes: np.ndarray  # nlist + 1 byte offsets into vectors.bin
    part_rows: np.ndarray  # nlist + 1 row offsets
    vector_dtype: str = "float32"  # how vectors.bin stores the partitions' vectors
    docs: DocsLayout | None = None  # a by-range segment's documents (ivf.bin's trailer); None: docs.parquet
    centroid_set: str | None = None  # the id of centroids shared with other segments; None: its own
    clusters: ClusterDirectory | None = None  # the vectors grouped by cluster_by (clusters.bin); None: no copy

    @property
    def nlist(self) -> int:
        return len(self.stored_centroids)

    @property
    def dims(self) -> int:
        return self.stored_centroids.shape[1]

    @functools.cached_property
    def centroids(self) -> np.ndarray:
        """nlist × dims float32."""
        return np.ascontiguousarray(self.stored_centroids, np.float32)

    def top_centroids(self, query: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` (<= nlist) partitions whose centroids score best for ``query`` (one
        vector): (scores, partitions), best first; scores as
        :func:`vectordb.ivf.exact_scores` gives them (negative squared distance for l2), up to
        FAISS's order of summation where FAISS is loaded."""
        k = min(k, self.nlist)
        q = np.ascontiguousarray(query, np.float32).reshape(1, -1)
        faiss = ivf.faiss_for_query()
        if faiss is not None:
            if self.stored_centroids.dtype == np.float16:
                scores, parts = self._float16_index(faiss, metric).search(q, k)
            else:
                scores, parts = faiss.knn(q, self.centroids, k, metric=ivf.faiss_metric(metric))
            scores = -scores[0] if metric == "l2" else scores[0]
            return scores, parts[0].astype(np.int64)
        scores = ivf.exact_scores(self.centroids, q[0], metric)
        parts = np.argsort(-scores, kind="stable")[:k]
        return scores[parts], parts

    def _float16_index(self, faiss, metric: str):
        """FAISS's float16 scan over the stored centroids by ``metric`` (made once)."""
        held = self.__dict__.setdefault("_float16_indexes", {})
        metric_type = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index = held.get(metric_type)
        if index is None:
            index = faiss.IndexScalarQuantizer(self.dims, faiss.ScalarQuantizer.QT_fp16, metric_type)
            faiss.copy_array_to_vector(np.ascontiguousarray(self.stored_centroids).view(np.uint8).reshape(-1),
                                       index.codes)
            index.ntotal = self.nlist
            held[metric_type] = index
        return index

    def byte_range(self, p: int) -> tuple[int, int]:
        return int(self.part_bytes[p]), int(self.part_bytes[p + 1] - self.part_bytes[p])

    def rows_in(self, p: int) -> int:
        return int(self.part_rows[p + 1] - self.part_rows[p])

    def stored_bytes(self) -> int:
        """The size of this layout's ``ivf.bin`` as :meth:`to_bytes` writes it."""
        stored = np.dtype(centroid_type(self.stored_centroids, self.vector_dtype))
        return 24 + self.nlist * self.dims * stored.itemsize + 2 * (self.nlist + 1) * 8

    def to_bytes(self) -> bytes:
        kind = _CENTROID_TYPES.index(centroid_type(self.stored_centroids, self.vector_dtype))
        header = MAGIC + np.array([self.nlist, self.dims, _DTYPES.index(self.vector_dtype), kind], np.uint32).tobytes()
        return (
            header
            + self.stored_centroids.astype(_CENTROID_TYPES[kind]).tobytes()
            + self.part_bytes.astype(np.int64).tobytes()
            + self.part_rows.astype(np.int64).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Layout:
        if data[:8] == MAGIC:
            nlist, dims, dtype, kind = (int(x) for x in np.frombuffer(data, np.uint32, 4, 8))
            if dtype >= len(_DTYPES) or kind >= len(_CENTROID_TYPES):
                raise VectorDBError(f"corrupt segment: unknown vector or centroid type ({dtype}, {kind}) in ivf.bin")
            vector_dtype, at = _DTYPES[dtype], 24
        elif data[:8] == MAGIC_V1:
            nlist, dims = (int(x) for x in np.frombuffer(data, np.uint32, 2, 8))
            vector_dtype, kind, at = "float32", 0, 16
        else:
            raise VectorDBError("corrupt segment: bad ivf.bin header")
        stored = np.dtype(_CENTROID_TYPES[kind])
        centroids = np.frombuffer(data, stored, nlist * dims, at).reshape(nlist, dims)
        at += nlist * dims * stored.itemsize
        part_bytes = np.frombuffer(data, np.int64, nlist + 1, at)
        part_rows = np.frombuffer(data, np.int64, nlist + 1, at + (nlist + 1) * 8)
        at += 2 * (nlist + 1) * 8
        centroid_set, clusters = _trailer(data, at, CENTROID_SET_MAGIC), _trailer(data, at, CLUSTERS_MAGIC)
        return cls(centroids, part_bytes, part_rows, vector_dtype, DocsLayout.from_trailer(data, at),
                   bytes(centroid_set).hex() if centroid_set is not None else None,
                   ClusterDirectory.from_body(clusters) if clusters is not None else None)


def centroid_set_id(centroids: np.ndarray) -> str:
    """The id of a set of centroids (as stored, widened to float32): a hash of their values."""
    return hashlib.blake2b(np.ascontiguousarray(centroids, np.float32).tobytes(), digest_size=16).hexdigest()


def centroid_set_trailer(centroid_set: str) -> bytes:
    """The ``ivf.bin`` trailer naming ``centroid_set``, written after any other trailer."""
    body = bytes.fromhex(centroid_set)
    return CENTROID_SET_MAGIC + len(body).to_bytes(4, "little") + body


def _trailer(data: bytes, at: int, magic: bytes) -> bytes | None:
    """The body of ``ivf.bin``'s trailer ``magic`` (trailers from ``at``: magic, length,
    body); None: none there."""
    while at + 12 <= len(data):
        length = int.from_bytes(data[at + 8 : at + 12], "little")
        if data[at : at + 8] == magic:
            return data[at + 12 : at + 12 + length]
        at += 12 + length
    return None


class PartitionIds(Sequence[str]):
    """A partition's ids, decoded from the stored UTF-8 blob one at a time.

    A query needs the ids of its top-k rows, not of the ~1,000 rows it scanned: decoding
    them all cost a cold query ~1 ms of interpreter time per partition (while the other
    partitions' downloads wait for the GIL), and a decoded id takes ~5x its bytes in RAM.
    """

    __slots__ = ("_blob", "_offsets")

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self._blob = blob
        self._offsets = offsets  # int32, len(self) + 1 byte offsets into blob

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("partition id index out of range")
        return self._blob[int(self._offsets[i]) : int(self._offsets[i + 1])].decode()

    def __iter__(self) -> Iterator[str]:
        blob, offsets = self._blob, self._offsets.tolist()
        return (blob[a:b].decode() for a, b in zip(offsets, offsets[1:]))

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes


@dataclass(frozen=True)
class Partition:
    vectors: np.ndarray | Int8Rows  # n × dims: float32, or an int8 partition's codes (``held_codes``)
    ids: PartitionIds

    def dense(self) -> np.ndarray:
        """The vectors as float32 (int8 codes dequantized)."""
        return self.vectors.dense() if isinstance(self.vectors, Int8Rows) else self.vectors


def centroid_type(centroids: np.ndarray, vector_dtype: str) -> str:
    """How ``ivf.bin`` stores these centroids: float16 in a segment whose vectors are not
    float32, when every value fits; else float32."""
    if vector_dtype == "float32" or not len(centroids) or np.abs(centroids).max() > FLOAT16_MAX:
        return "float32"
    return "float16"


def train_quantizer(vectors: np.ndarray) -> np.ndarray:
    """The int8 quantizer of a partition: per component, the lowest value and the step that
    spans it to the highest in 255 steps (2 × dims float32). A constant component gets
    step 1 (all its codes are 0)."""
    low = vectors.min(axis=0).astype(np.float64)
    step = (vectors.max(axis=0).astype(np.float64) - low) / 255.0
    step[step <= 0] = 1.0
    return np.vstack([low, step]).astype(np.float32)


def quantize(vectors: np.ndarray, quantizer: np.ndarray) -> np.ndarray:
    """uint8 codes of ``vectors`` (values outside the quantizer's span clip to 0 or 255)."""
    codes = (np.asarray(vectors, np.float32) - quantizer[0]) / quantizer[1]
    return np.clip(np.rint(codes), 0, 255).astype(np.uint8)


def encode_partition(vectors: np.ndarray, ids: list[str], vector_dtype: str = "float32") -> bytes:
    encoded = [i.encode() for i in ids]
    offsets = np.zeros(len(ids) + 1, np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    if vector_dtype == "int8" and len(ids):
        quantizer = train_quantizer(vectors)
        stored = quantizer.tobytes() + quantize(vectors, quantizer).tobytes()
    else:
        stored = np.ascontiguousarray(vectors, vector_dtype).tobytes()
    return stored + offsets.tobytes() + b"".join(encoded)


def decode_partition(data: bytes, rows: int, dims: int, vector_dtype: str = "float32",
                     held_codes: bool = False) -> Partition:
    """A partition's vectors and ids. float32 vectors share ``data``'s memory; float16 ones
    are widened into a new array; int8 codes are dequantized into one, or with
    ``held_codes`` kept as they are (:class:`vectordb.int8_rows.Int8Rows`: what a reader
    holds, a quarter of the float32)."""
    stored = _STORED[vector_dtype]
    at = 0
    if vector_dtype == "int8" and rows:
        quantizer = np.frombuffer(data, np.float32, 2 * dims).reshape(2, dims)
        at = quantizer.nbytes
    vectors = np.frombuffer(data, stored, rows * dims, at).reshape(rows, dims)
    if vector_dtype == "int8" and rows:
        # Held codes view ``data`` until FAISS's index copies them (the first FAISS scan):
        # one copy of them, not two.
        vectors = Int8Rows(vectors, quantizer.copy()) if held_codes else dequantize(vectors, quantizer)
    elif stored != np.float32:
        vectors = vectors.astype(np.float32)
    at += rows * dims * stored.itemsize
    # Copies: a view would keep all of ``data`` alive, float16 vectors included.
    offsets = np.frombuffer(data, np.int32, rows + 1, at).copy()
    return Partition(vectors, PartitionIds(bytes(data[at + (rows + 1) * 4 :]), offsets))


def new_segment_id(key_version: int = 0) -> str:
    """A fresh segment id that records the version its build means to commit at (see
    ``vectordb.keys``: garbage collection spares objects newer than its fence)."""
    return keys.versioned_name(key_version, uuid.uuid4().hex)


DEFAULT_BUILD_MEMORY = 2 * 1024**3


def build(
    rows: RowBatch | RowSource,
    metric: str,
    rows_per_partition: int,
    flat_max_rows: int,
    vector_dtype: str = "float32",
    key_version: int = 0,
    docs: str = "by_range",
    memory_bytes: int = DEFAULT_BUILD_MEMORY,
    temp_dir: str | None = None,
    centroids_for=None,
    cluster_by: tuple[str, ...] = (),
) -> BuiltSegment | None:
    """Cluster ``rows`` (in memory, or a :class:`~vectordb.segment_writer.RowSource` read
    in chunks) into an IVF segment, in about ``memory_bytes`` of memory, its files in a
    working directory under ``temp_dir`` (see :mod:`vectordb.segment_writer`). Vectors must
    already be normalised for cosine; ``vector_dtype`` is how ``vectors.bin`` stores them
    (float32, float16 or int8); ``key_version`` the version the build means to commit at
    (it names the segment); ``docs`` the documents' layout (:mod:`vectordb.docs_format`):
    ``by_range``, or ``whole`` (``docs.parquet``, the layout before issue 12, kept to test
    that it stays readable); ``centroids_for`` which centroids (see
    :func:`vectordb.segment_writer.build`); ``cluster_by`` the attributes ``clusters.bin``
    groups the vectors by (none: no copy). None when there are no rows. The caller closes
    the result."""
    from vectordb import segment_writer

    if docs not in ("by_range", "whole"):
        raise ValueError(f"unknown docs layout {docs!r}")
    source = segment_writer.BatchSource(rows) if isinstance(rows, RowBatch) else rows
    return segment_writer.build(source, metric, rows_per_partition, flat_max_rows, vector_dtype,
                                new_segment_id(key_version), docs, memory_bytes, temp_dir, centroids_for,
                                cluster_by)


def file_key(ns: str, segment_id: str, name: str) -> str:
    return keys.segment_prefix(ns, segment_id) + name


def file_keys(ns: str, segment_id: str) -> list[str]:
    return [file_key(ns, segment_id, name) for name in FILES]


def read_docs(data: bytes, row_groups: list[int] | None = None, columns: list[str] | None = None) -> pa.Table:
    """Rows of ``docs.parquet`` (all, or the given row groups = partitions)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(io.BytesIO(data))
    if row_groups is None:
        return f.read(columns=columns)
    return f.read_row_groups(row_groups, columns=columns)


def tombstones_key(ns: str, segment_id: str, version: int) -> str:
    """A fresh key: two indexers racing from one version never overwrite each other.
    ``version`` is the key version (the version the indexer means to commit at)."""
    name = f"tomb-{keys.versioned_name(version, uuid.uuid4().hex[:12])}.json"
    return keys.segment_own_prefix(ns, segment_id) + name


@dataclass(frozen=True)
class Tombstones:
    """A segment's dead ids and, where the indexer wrote them, their rows: a reader's live
    mask then clears those rows without looking the ids up (``rows`` None: a list written
    before rows were, or by a writer that did not know them)."""

    ids: frozenset[str]
    rows: np.ndarray | None = None


def encode_tombstones(ids: set[str] | frozenset[str], rows: np.ndarray | None = None) -> bytes:
    """JSON: the sorted ids; with ``rows`` (those ids' rows, any order) an object
    ``{"ids": [...], "rows": [...]}``."""
    if rows is None:
        return json.dumps(sorted(ids)).encode()
    return json.dumps({"ids": sorted(ids), "rows": sorted(int(r) for r in rows)}).encode()


def decode_tombstones(data: bytes) -> Tombstones:
    """The list ``encode_tombstones`` wrote; its rows ascending (a reader slices them by
    partition)."""
    value = json.loads(data)
    if isinstance(value, list):
        return Tombstones(frozenset(value))
    return Tombstones(frozenset(value["ids"]), np.sort(np.asarray(value["rows"], np.int64)))
