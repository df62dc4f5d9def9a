"""What an index build reads, in chunks: the WAL tail and segments' live rows.

A build must not hold the namespace in memory (:mod:`vectordb.segment_writer`), so its
input is a :class:`~vectordb.segment_writer.RowSource`:

* :class:`WalTail` folds the manifest's WAL objects without holding their rows: a first
  pass reads each object's ``id`` and ``op`` columns only (by range, :func:`vectordb.wal.read_ops`)
  and keeps each operation's id hash and id (:func:`vectordb.id_set.last_of` finds each
  id's last operation); a second pass reads each object again a row group at a time and
  yields its rows whose last operation is that upsert. Rows come in the order
  :func:`vectordb.tail.fold` gives (by the position of the id's last operation), so the
  segment is the one an in-memory build of the folded tail makes. Memory: ~40 bytes and
  the id's UTF-8 per operation while the first pass sorts, then the touched ids as an
  :class:`~vectordb.id_set.IdSet` (16 bytes and the id's UTF-8 each) and 8 bytes per live
  row, where a ``dict`` and a ``frozenset`` of ``str`` took ~250 bytes an id.
* :class:`WalRows` reads given rows of given WAL objects: a part of a folded tail (a Ray
  build's shard, :mod:`ingest.ray_build`, reads one without folding again).
* :class:`SegmentRows` reads a segment's partitions (all, or a range of them) a few at a
  time by range (vectors, then the rows' records from ``rows.bin``/``fields.bin``),
  dropping dead rows.
* :class:`Chained` reads several sources one after the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from storage.base import ObjectStore
from vectordb import doc_fields, id_set, segment, wal
from vectordb.id_set import IdSet
from vectordb.manifest import Manifest, SegmentRef
from vectordb.reader import NamespaceReader
from vectordb.rows import RowBatch
from vectordb.segment_writer import RowSource


@dataclass
class WalTail:
    """The live rows of a manifest's WAL tail, folded (last write wins) while streaming."""

    store: ObjectStore
    manifest: Manifest
    touched: IdSet = id_set.EMPTY  # every id the tail upserts or deletes (when there are segments)
    _keep: list[np.ndarray] = field(default_factory=list)  # per WAL object, its rows that stay
    rows: int = 0

    @property
    def dims(self) -> int:
        return self.manifest.config.dimensions

    @classmethod
    def read(cls, store: ObjectStore, manifest: Manifest) -> WalTail:
        """The first pass: which row of which object holds each live id's last upsert
        (reading only the objects' ``id`` and ``op`` columns)."""
        hashes, ids, deletes, starts = [], [], [], [0]
        for ref in manifest.wal:
            object_ids, object_hashes, object_deletes = wal.read_ops(store, ref.key)
            ids.append(object_ids)
            hashes.append(object_hashes)
            deletes.append(object_deletes)
            starts.append(starts[-1] + len(object_ids))
            del object_ids, object_hashes, object_deletes
        every_id = pa.concat_arrays(ids) if ids else id_set.EMPTY.ids
        every_hash = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        del ids, hashes
        touched, last = id_set.distinct(every_hash, every_id)  # last: a position per distinct id
        if not manifest.segments:  # only a build that keeps or merges segments needs the touched ids
            touched = id_set.EMPTY
        del every_id, every_hash
        live = np.sort(last[~np.concatenate(deletes)[last]]) if len(last) else last
        cut = np.searchsorted(live, starts)
        tail = cls(store, manifest, touched)
        tail._keep = [live[cut[b] : cut[b + 1]] - starts[b] for b in range(len(manifest.wal))]
        tail.rows = len(live)
        return tail

    def objects(self) -> list[tuple[str, np.ndarray]]:
        """Each WAL object's key and its rows that stay (ascending), in fold order."""
        return [(ref.key, keep) for ref, keep in zip(self.manifest.wal, self._keep)]

    def chunks(self, rows: int) -> Iterator[RowBatch]:
        return WalRows(self.store, self.objects(), self.dims).chunks(rows)


@dataclass
class WalRows:
    """Given rows of WAL objects: ``objects`` is (key, rows of it, ascending) in order."""

    store: ObjectStore
    objects: list[tuple[str, np.ndarray]]
    dims: int

    def chunks(self, rows: int) -> Iterator[RowBatch]:
        """Chunks of exactly ``rows`` rows (the last one fewer), each filled in place as the
        row groups come: one chunk and one row group held, not the pieces and their copy."""
        chunk = _Chunk(rows, self.dims)
        for key, keep in self.objects:
            if not len(keep):
                continue
            start = 0
            for record in wal.parquet_file(self.store, key).iter_batches(batch_size=8192):
                end = start + record.num_rows
                lo, hi = np.searchsorted(keep, [start, end])
                if hi > lo:
                    piece = _rows(record, self.dims).take((keep[lo:hi] - start).tolist())
                    at = 0
                    while at < len(piece):
                        at = chunk.fill(piece, at)
                        if chunk.full:
                            yield chunk.batch()
                            chunk = _Chunk(rows, self.dims)
                    del piece
                start = end
        if chunk.filled:
            yield chunk.batch()


class _Chunk:
    """A chunk of ``rows`` rows being filled: its vectors one array from the start."""

    def __init__(self, rows: int, dims: int) -> None:
        self.vectors = np.empty((rows, dims), np.float32)
        self.ids: list[str] = []
        self.texts: list[str | None] = []
        self.attributes: list = []
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled == len(self.vectors)

    def fill(self, piece: RowBatch, at: int) -> int:
        """Rows of ``piece`` from ``at`` on, as many as there is room for; where it stopped."""
        n = min(len(piece) - at, len(self.vectors) - self.filled)
        self.vectors[self.filled : self.filled + n] = piece.vectors[at : at + n]
        self.ids += piece.ids[at : at + n]
        self.texts += piece.texts[at : at + n]
        self.attributes += piece.attributes[at : at + n]
        self.filled += n
        return at + n

    def batch(self) -> RowBatch:
        return RowBatch(self.ids, self.vectors[: self.filled], self.texts, self.attributes)


@dataclass
class SegmentRows:
    """A segment's rows but ``dead`` ones (its tombstones) and those whose id a newer
    write ``touched``, partitions in order, a few at a time."""

    store: ObjectStore
    reader: NamespaceReader
    ns: str
    seg: SegmentRef
    dead: frozenset[str]
    parts: tuple[int, int] | None = None  # partitions lo..hi (exclusive); None: all
    touched: IdSet = id_set.EMPTY

    @property
    def dims(self) -> int:
        return self.reader.layout(self.ns, self.seg).dims

    def chunks(self, rows: int) -> Iterator[RowBatch]:
        layout = self.reader.layout(self.ns, self.seg)
        lo, end = self.parts if self.parts is not None else (0, layout.nlist)
        while lo < end:
            hi = lo + 1
            while hi < end and int(layout.part_rows[hi + 1] - layout.part_rows[lo]) <= rows:
                hi += 1
            batch = self._partitions(layout, lo, hi)
            lo = hi
            if self.dead or self.touched:
                gone = self.touched.members(batch.ids)
                batch = batch.take(i for i, doc_id in enumerate(batch.ids) if not gone[i] and doc_id not in self.dead)
            if len(batch):
                yield batch

    def _partitions(self, layout: segment.Layout, lo: int, hi: int) -> RowBatch:
        """Partitions ``lo`` to ``hi`` (exclusive): two or three ranged reads."""
        key = segment.file_key(self.ns, self.seg.id, "")
        first_row, end_row = int(layout.part_rows[lo]), int(layout.part_rows[hi])
        start, end = int(layout.part_bytes[lo]), int(layout.part_bytes[hi])
        data = self.store.get_range(key + "vectors.bin", start, end - start) if end > start else b""
        vectors, ids = [], []
        for p in range(lo, hi):
            a, b = int(layout.part_bytes[p]) - start, int(layout.part_bytes[p + 1]) - start
            part = segment.decode_partition(data[a:b], layout.rows_in(p), layout.dims, layout.vector_dtype)
            vectors.append(part.vectors)
            ids.extend(part.ids)
        del data
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, layout.dims), np.float32)
        if layout.docs is None:  # docs.parquet (segments before the by-range layout): read whole
            docs = self.reader.docs(self.ns, self.seg)
            texts = docs.column("text").to_pylist()[first_row:end_row]
            attrs = docs.column("attributes").to_pylist()[first_row:end_row]
            return RowBatch(ids, stacked, texts, attrs)
        size = doc_fields.ENTRY.itemsize
        if end_row == first_row:
            return RowBatch(ids, stacked, [], [])
        entries = doc_fields.decode_entries(self.store.get_range(key + "rows.bin", first_row * size, (end_row - first_row) * size))
        f_start = int(entries["offset"][0])
        f_end = int(entries["offset"][-1]) + int(entries["stored"][-1])
        fields = self.store.get_range(key + "fields.bin", f_start, f_end - f_start)
        texts, attrs = [], []
        for entry in entries:
            at, length = doc_fields.span(entry)
            record = doc_fields.decode_record(fields[at - f_start : at - f_start + length], entry)
            texts.append(record.text)
            attrs.append(record.attributes)
        return RowBatch(ids, stacked, texts, attrs)


@dataclass
class Chained:
    """Several sources' rows, one source after the other."""

    sources: list[RowSource]
    dims: int

    def chunks(self, rows: int) -> Iterator[RowBatch]:
        for source in self.sources:
            yield from source.chunks(rows)


def _rows(record, dims: int) -> RowBatch:
    """A WAL record batch's rows (as :func:`vectordb.wal.decode` makes them)."""
    vectors = wal.vectors_of(record.column("vector"), record.num_rows, dims)
    return RowBatch(record.column("id").to_pylist(), vectors, record.column("text").to_pylist(),
                    record.column("attributes").to_pylist())
