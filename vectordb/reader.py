"""Reading a namespace's immutable objects, decoded and memoised.

Every object read here is immutable (its key is never rewritten), so decoded forms are
kept in per-process LRU maps (:class:`vectordb.memo.Memo`, bounded in bytes) on top of the
byte cache of the store. The unindexed tail is :mod:`vectordb.tail_reader`'s.

Which rows of a segment are live depends on its tombstones and on the tail, which changes
with every commit. Those masks are found through a :class:`RowLookup` per partition or per
segment of the whole-docs layout, or through the segment's ``ids.bin`` (by-range layout,
:mod:`vectordb.docs_reader`), so their cost follows the dead and overridden ids, not the
rows; a segment's mask for a new tail version is the previous version's with the newly
touched ids cleared.

A segment's documents (ids, texts, attributes) are read by range where its ``ivf.bin``
says so (:mod:`vectordb.docs_format`), else from its whole ``docs.parquet``: the methods
here answer the same for both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from storage.base import ObjectStore
from vectordb import doc_fields, id_set, ivf, ranged_reads, row_vectors, segment
from vectordb.attr_columns import ID_COLUMN
from vectordb.bm25 import BM25Index
from vectordb.bm25_reader import BM25Reader, TermPostings
from vectordb.doc_fields import Record
from vectordb.docs_format import DOC_ID, DocsLayout
from vectordb.docs_reader import ENTRY_GAP, DocsReader, StoredRows
from vectordb.errors import VectorDBError
from vectordb.filters import Filter
from vectordb.id_set import IdSet
from vectordb.int8_rows import Int8Rows
from vectordb.manifest import Manifest, SegmentRef, WalRef
from vectordb.memo import Memo
from vectordb.row_lookup import RowLookup, hash_set
from vectordb.segment import Layout, Partition
from vectordb.tail import Tail
from vectordb.tail_bm25 import TailBM25
from vectordb.tail_doc_ids import TailDocIds
from vectordb.tail_reader import TailReader

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pyarrow as pa

log = logging.getLogger(__name__)

# Decoded state beside the partitions (tails, masks, id lookups) when the reader is given
# no partition budget; with one, an eighth of it.
_DEFAULT_MEMO_BYTES = 256 * 1024**2
# How far back a live mask looks for an ancestor tail's mask to derive from (versions, and
# ids touched since): past that, making it from scratch costs about as much.
_MAX_DERIVE_STEPS = 64
_MAX_DERIVE_IDS = 4096
# clusters.bin is read in pieces of at most this many bytes, in parallel.
_GROUP_PIECE = 1024 * 1024
_GROUPS_SLACK = 16
# ``rows_in`` reads a bucket of ``ids.bin`` per id while the ids are fewer than the table's
# buckets / this; else the whole table by range (a bucket holds ~16 ids: past that share, most
# buckets would be read one GET each).
_SCAN_SHARE = 4
# Partitions not held are read in GETs of neighbouring partitions, reading through the
# partitions between them while those add at most 1 / this of the bytes wanted.
_PARTITION_SLACK = 8
# ... in GETs of at most this many bytes (a partition bigger than that alone): the warm
# hint's partitions would otherwise be one GET of the whole file, held twice while decoded.
_PARTITION_GET_BYTES = 8 * 1024 * 1024


def _partition_bytes(part: Partition) -> int:
    return part.vectors.nbytes + part.ids.nbytes


def _start_threads(pool: ThreadPoolExecutor, count: int) -> None:
    """Have ``pool`` start its ``count`` threads now. A pool starts a thread when a task
    finds none idle, and the start waits for the new thread to get the GIL: during a cold
    worker's first query, with other threads decoding, that was ~5 ms a thread, ~50 ms on
    the query's path (a profile at 300k rows). Here, before any query, it is ~0.1 ms each.
    Each task waits (at most a second) until all have started, so no thread is reused."""
    barrier = threading.Barrier(count)

    def wait() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(1.0)

    for _ in range(count):
        pool.submit(wait)


class NamespaceReader:
    """Decoded access to segments and WAL of any namespace in one store."""

    def __init__(self, store: ObjectStore, fetch_threads: int = 16, partition_bytes: int | None = None) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")
        _start_threads(self._pool, fetch_threads)
        memo_bytes = partition_bytes // 8 if partition_bytes else _DEFAULT_MEMO_BYTES
        self._layouts = Memo(1024)
        # Decoded partitions share their vectors with the cached bytes; bounding them by the
        # same budget keeps a worker's memory near its cache setting.
        self._partitions = Memo(1 << 20, partition_bytes, _partition_bytes)
        self._tombstones = Memo(1024)
        self._docs = Memo(64)
        self._ids = Memo(64)
        # A query's BM25 postings, dictionary blocks and segment heads (bm25_reader).
        self.lexicon = BM25Reader(store, memo_bytes)
        self._masks = Memo(1 << 16, memo_bytes // 2, lambda mask: mask.nbytes)
        self._lookups = Memo(1 << 16, memo_bytes // 2, lambda lookup: lookup.nbytes)
        self.tails = TailReader(store, fetch_threads, memo_bytes)
        self.documents = DocsReader(store, self._pool, memo_bytes)  # by-range segments' documents
        self.tail_doc_ids = TailDocIds(memo_bytes // 8)
        # The vectors and ids of the rows a selective filter keeps (query.exact_filter).
        self._matched = Memo(1 << 12, memo_bytes // 2, lambda matched: matched.nbytes)
        # Each partition's rows' groups in clusters.bin (a broad filter on cluster_by keys).
        self._row_groups = Memo(1 << 20, memo_bytes // 8, lambda groups: groups.nbytes)

    @property
    def pool(self) -> Executor:
        """The fetch pool (a test may swap in one that runs tasks inline)."""
        return self._pool

    @pool.setter
    def pool(self, pool: Executor) -> None:
        self._pool = self.documents.pool = pool

    def has_layout(self, ns: str, seg: SegmentRef) -> bool:
        return segment.file_key(ns, seg.id, "ivf.bin") in self._layouts

    def has_tombstones(self, seg: SegmentRef) -> bool:
        """Whether the segment's tombstone list is held (or it has none)."""
        return not seg.tombstones_key or seg.tombstones_key in self._tombstones

    def has_tail(self, manifest: Manifest) -> bool:
        return self.tails.has(manifest)

    def hold_layouts(self, ns: str, segments, copies: Mapping[str, bytes]) -> None:
        """Hold the layouts of those of ``segments`` that ``copies`` (segment id -> its
        ``ivf.bin``: ``layouts.bin``'s entries) has; a copy that does not decode, or does
        not describe the segment's rows and partitions, is skipped (:meth:`layout` reads
        that segment's own)."""
        for seg in segments:
            data = copies.get(seg.id)
            key = segment.file_key(ns, seg.id, "ivf.bin")
            if data is None or key in self._layouts:
                continue
            try:
                layout = Layout.from_bytes(data)
            except (VectorDBError, ValueError):
                layout = None
            if layout is None or layout.nlist != seg.nlist or int(layout.part_rows[-1]) != seg.rows:
                log.warning("layouts.bin of %s holds a bad copy of segment %s's ivf.bin", ns, seg.id)
                continue
            self._layouts.get(key, lambda layout=layout: layout)

    def layout(self, ns: str, seg: SegmentRef) -> Layout:
        key = segment.file_key(ns, seg.id, "ivf.bin")
        return self._layouts.get(key, lambda: Layout.from_bytes(self.store.get(key)))

    def partition(self, ns: str, seg: SegmentRef, layout: Layout, p: int) -> Partition:
        key = segment.file_key(ns, seg.id, "vectors.bin")

        def load() -> Partition:
            start, length = layout.byte_range(p)
            data = self.store.get_range(key, start, length) if length else b""
            part = segment.decode_partition(data, layout.rows_in(p), layout.dims, layout.vector_dtype, held_codes=True)
            if layout.vector_dtype != "float32" and length and hasattr(self.store, "discard"):
                # This memo holds the partition now (float16 widened, int8 codes), and the
                # read cache need not hold its bytes too.
                self.store.discard(key, start, length)
            return part

        return self._partitions.get((key, p), load)

    def partitions(self, ns: str, seg: SegmentRef, layout: Layout, parts) -> list[Partition]:
        """Several partitions; those not yet decoded are fetched in parallel, neighbours
        in one GET (:meth:`partition_loads`)."""
        parts = [int(p) for p in parts]
        key = segment.file_key(ns, seg.id, "vectors.bin")
        found = self._partitions.peek_many([(key, p) for p in parts])
        missing = [p for p, part in zip(parts, found) if part is None]
        if len(missing) == 1:
            found[parts.index(missing[0])] = self.partition(ns, seg, layout, missing[0])
        elif missing:
            loads = self.partition_loads(ns, seg, layout, missing)
            loaded: dict[int, Partition] = {}
            for got in (self.pool.map(lambda load: load(), loads) if len(loads) > 1 else [loads[0]()]):
                loaded.update(got)
            found = [part if part is not None else loaded[p] for p, part in zip(parts, found)]
        return found

    def partition_loads(self, ns: str, seg: SegmentRef, layout: Layout, parts, metric: str | None = None) -> list:
        """Calls that fetch and hold those of partitions ``parts`` not held yet, one GET
        each, returning the partitions it holds ({number: partition}): partitions whose
        bytes are neighbours are read together, and so are those a few partitions apart
        while the bytes read between them stay within 1 / ``_PARTITION_SLACK`` of those
        wanted (``ranged_reads.coalesce_within``), each partition read through held too.
        Centroids are numbered in spatial order (``ivf.spatial_order``), so a query's
        probes fall into a few such runs; on the benchmark's S3 server a GET costs about
        as much whatever its size up to megabytes (``bench/range_reads.py``). Pieces of at
        most ``_PARTITION_GET_BYTES``; a partition another caller is loading is waited for.
        ``metric``: the caller scans what it loads by this metric at once; where FAISS is
        loaded, an int8 partition's codes then go from the GET's bytes straight into the
        FAISS index that scans them (:meth:`Int8Rows.index`), not through a copy of their
        own first (a cold query at 10M vectors reads ~100 MB: a copy is ~10 ms)."""
        key = segment.file_key(ns, seg.id, "vectors.bin")
        parts = sorted({int(p) for p in parts})
        held = self._partitions.peek_many([(key, p) for p in parts])
        missing = [p for p, part in zip(parts, held) if part is None]
        # Empty partitions need no GET, and one another caller is loading now is waited for.
        alone = [p for p in missing if not layout.rows_in(p) or (key, p) in self._partitions]
        wanted = [layout.byte_range(p) for p in missing if p not in alone]
        merged = ranged_reads.coalesce_within(wanted, 0, sum(n for _, n in wanted) // _PARTITION_SLACK)
        loads = [lambda p=p: {p: self.partition(ns, seg, layout, p)} for p in alone]
        return loads + [lambda start=start, length=length: self._load_partitions(ns, seg, layout, start, length, metric)
                        for start, length in ranged_reads.split_at(merged, layout.part_bytes, _PARTITION_GET_BYTES)]

    def _load_partitions(self, ns: str, seg: SegmentRef, layout: Layout, start: int, length: int,
                         metric: str | None = None) -> dict[int, Partition]:
        """Bytes ``[start, start + length)`` of ``vectors.bin`` (whole partitions), read in
        one GET; every partition in them decoded and held, none viewing the GET's bytes (so
        that what the memo counts is what it holds): each from a copy of its own bytes, or
        (int8, with ``metric`` and FAISS loaded) with its codes copied into its FAISS index
        and its ids into a blob of their own."""
        key = segment.file_key(ns, seg.id, "vectors.bin")
        first = int(np.searchsorted(layout.part_bytes, start, side="left"))
        last = int(np.searchsorted(layout.part_bytes, start + length, side="left"))  # one past
        if last - first == 1:
            return {first: self.partition(ns, seg, layout, first)}
        data = memoryview(self.store.get_range(key, start, length))
        if hasattr(self.store, "discard"):
            self.store.discard(key, start, length)  # held decoded below, not twice
        faiss = ivf.faiss_for_query() if metric is not None and layout.vector_dtype == "int8" else None
        out = {}
        for p in range(first, last):
            at, n = layout.byte_range(p)

            def load(at=at, n=n, p=p) -> Partition:
                piece = data[at - start : at - start + n]
                part = segment.decode_partition(piece if faiss is not None else bytes(piece), layout.rows_in(p),
                                                layout.dims, layout.vector_dtype, held_codes=True)
                if faiss is not None and isinstance(part.vectors, Int8Rows):
                    part.vectors.index(faiss, ivf.faiss_metric(metric))  # the codes leave ``data``
                return part

            out[p] = self._partitions.get((key, p), load)
        return out

    def partitions_grouped(self, ns: str, seg: SegmentRef, layout: Layout,
                           parts) -> tuple[list[Partition], list[np.ndarray]]:
        """Partitions ``parts`` and, per partition, its rows' groups in ``clusters.bin``
        (``layout.clusters.group_of_row`` segments): those not held yet fetched in one round
        of parallel GETs, the groups beside the vectors. The groups' ranges (2 bytes a row)
        are merged, nearest first, while the bytes between them stay within
        ``_GROUPS_SLACK`` times their own: a few GETs instead of one a partition (each one
        waits for a fetch thread beside the partitions'); every partition a GET covers is
        held, for later queries."""
        parts = [int(p) for p in parts]
        key = segment.file_key(ns, seg.id, "clusters.bin")
        directory = layout.clusters
        found = self._row_groups.peek_many([(key, p) for p in parts])
        wanted = [directory.group_range(int(layout.part_rows[p]), layout.rows_in(p))
                  for p, groups in zip(parts, found) if groups is None]
        merged = ranged_reads.coalesce_within(wanted, 0, _GROUPS_SLACK * sum(n for _, n in wanted))
        ranges = merged
        if sum(n for _, n in merged) > sum(n for _, n in wanted):  # read through partitions not wanted
            ranges = self._not_held_groups(key, layout, merged, {p for p, g in zip(parts, found) if g is None})
        pending = [self.pool.submit(self._load_row_groups, key, layout, *r) for r in ranges]
        held = self.partitions(ns, seg, layout, parts)
        loaded: dict[int, np.ndarray] = {}
        for fetch in pending:
            loaded.update(fetch.result())
        return held, [groups if groups is not None else loaded[p] for p, groups in zip(parts, found)]

    def _not_held_groups(self, key: str, layout: Layout, ranges: list[tuple[int, int]],
                         wanted: set[int]) -> list[tuple[int, int]]:
        """``ranges`` of whole partitions' rows' groups, less the partitions between the
        ``wanted`` ones whose groups are held (or being read) already: a range merged
        through them would read an earlier query's again. A wanted partition stays in,
        whatever another caller started meanwhile (its read waits for that one)."""
        directory, out = layout.clusters, []
        for start, length in ranges:
            first, end = directory.rows_at(start, length)
            p = int(np.searchsorted(layout.part_rows, first, side="left"))
            run: list[int] = []  # start and end of the current run of partitions not held
            while p < layout.nlist and int(layout.part_rows[p]) < end:
                at, n = directory.group_range(int(layout.part_rows[p]), layout.rows_in(p))
                if n and p not in wanted and (key, p) in self._row_groups:
                    if run:
                        out.append((run[0], run[1] - run[0]))
                    run = []
                elif n:
                    run = [run[0] if run else at, at + n]
                p += 1
            if run:
                out.append((run[0], run[1] - run[0]))
        return out

    def _load_row_groups(self, key: str, layout: Layout, start: int, length: int) -> dict[int, np.ndarray]:
        """Bytes ``[start, start + length)`` of the rows' groups in ``clusters.bin``, read;
        the groups of every partition wholly inside, held and returned (partition -> groups)."""
        directory = layout.clusters
        data = memoryview(self.store.get_range(key, start, length))
        if hasattr(self.store, "discard"):
            self.store.discard(key, start, length)  # held below, not twice
        first, end = directory.rows_at(start, length)
        p = int(np.searchsorted(layout.part_rows, first, side="left"))
        out = {}
        while p < layout.nlist and int(layout.part_rows[p + 1]) <= end:
            at, n = directory.group_range(int(layout.part_rows[p]), layout.rows_in(p))
            out[p] = self._row_groups.get((key, p), lambda at=at, n=n: directory.decode_groups(data[at - start : at - start + n]))
            p += 1
        return out

    def hold_row_groups(self, ns: str, seg: SegmentRef, layout: Layout) -> int:
        """Every partition's rows' groups (``layout.clusters.group_of_row`` segments), read
        as one GET and held as :meth:`partitions_grouped` holds them: the warm hint's.
        Returns the bytes read."""
        start, length = layout.clusters.group_range(0, int(layout.clusters.counts.sum()))
        if length:
            self._load_row_groups(segment.file_key(ns, seg.id, "clusters.bin"), layout, start, length)
        return length

    def held_partitions(self, ns: str, seg: SegmentRef, parts) -> list[bool]:
        """Whether each of ``parts`` is decoded and held already (reading it costs nothing)."""
        return [part is not None for part in self.peek_partitions(ns, seg, parts)]

    def peek_partitions(self, ns: str, seg: SegmentRef, parts) -> list[Partition | None]:
        """Each of ``parts`` if it is decoded and held already, else None (nothing is read)."""
        key = segment.file_key(ns, seg.id, "vectors.bin")
        return self._partitions.peek_many([(key, int(p)) for p in parts])

    def all_rows(self, ns: str, seg: SegmentRef) -> tuple[np.ndarray, list[str]]:
        """Every vector and id of a segment, in segment row order."""
        layout = self.layout(ns, seg)
        parts = self.partitions(ns, seg, layout, range(layout.nlist))
        vectors = np.concatenate([p.dense() for p in parts]) if parts else np.zeros((0, layout.dims), np.float32)
        return vectors, [i for p in parts for i in p.ids]

    def tombstones(self, ns: str, seg: SegmentRef) -> frozenset[str]:
        """The segment's dead ids."""
        return self._dead(seg).ids

    def dead_rows(self, ns: str, seg: SegmentRef) -> np.ndarray | None:
        """The rows of the segment's dead ids where its tombstone list has them, else None."""
        return self._dead(seg).rows

    def _dead(self, seg: SegmentRef) -> segment.Tombstones:
        if not seg.tombstones_key:
            return _NO_TOMBSTONES
        key = seg.tombstones_key
        return self._tombstones.get(key, lambda: segment.decode_tombstones(self.store.get(key)))

    def docs(self, ns: str, seg: SegmentRef) -> pa.Table:
        """Every row's ``id``, ``text`` and ``attributes`` (JSON): the whole documents, for
        compaction. Queries read what they need by range instead (by-range segments)."""
        if self.by_range(ns, seg) is not None:
            base = segment.file_key(ns, seg.id, "")
            return self._docs.get(base + "fields.bin", lambda: self.documents.whole(base))
        key = segment.file_key(ns, seg.id, "docs.parquet")
        return self._docs.get(key, lambda: segment.read_docs(self.store.get(key)))

    def ids(self, ns: str, seg: SegmentRef) -> list[str]:
        """Every id of a segment, in segment row order (by range: the ``$id`` column).
        Callers that need a few rows' ids use :meth:`row_ids`."""
        docs = self.by_range(ns, seg)
        if docs is not None:
            return self.documents.all_ids(segment.file_key(ns, seg.id, ""), docs, self.layout(ns, seg).nlist)
        key = segment.file_key(ns, seg.id, "docs.parquet")
        return self._ids.get(key, lambda: self.docs(ns, seg).column("id").to_pylist())

    # --- documents by row and by id -------------------------------------------------------
    def by_range(self, ns: str, seg: SegmentRef) -> DocsLayout | None:
        """The segment's by-range documents layout; None: it has ``docs.parquet``."""
        return self.layout(ns, seg).docs

    def records(self, ns: str, seg: SegmentRef, rows, entries: np.ndarray | None = None) -> list[Record]:
        """The id, text and attributes (JSON) of segment ``rows``: by range, one round of
        parallel GETs (two without the rows' ``rows.bin`` entries held or given)."""
        layout = self.layout(ns, seg)
        if layout.docs is not None:
            return self.documents.records(segment.file_key(ns, seg.id, ""), layout.part_rows, rows, entries)
        docs = self.docs(ns, seg)
        ids, texts, attrs = docs.column("id"), docs.column("text"), docs.column("attributes")
        return [Record(ids[int(r)].as_py(), texts[int(r)].as_py(), attrs[int(r)].as_py()) for r in rows]

    def records_many(self, ns: str, wanted: list[tuple[SegmentRef, list[int]]]) -> list[list[Record]]:
        """:meth:`records` of rows of several segments; by-range segments' all in one round
        of parallel GETs (two without their ``rows.bin`` entries held)."""
        layouts = [self.layout(ns, seg) for seg, _ in wanted]
        by_range = [(segment.file_key(ns, seg.id, ""), layout.part_rows, rows, None)
                    for (seg, rows), layout in zip(wanted, layouts) if layout.docs is not None]
        fetched = iter(self.documents.records_many(by_range) if by_range else [])
        return [next(fetched) if layout.docs is not None else self.records(ns, seg, rows)
                for (seg, rows), layout in zip(wanted, layouts)]

    def row_ids(self, ns: str, seg: SegmentRef, rows) -> list[str]:
        """The ids of segment ``rows`` (by range: the ids of the partitions that hold them)."""
        layout = self.layout(ns, seg)
        if layout.docs is None:
            ids = self.ids(ns, seg)
            return [ids[int(r)] for r in rows]
        base = segment.file_key(ns, seg.id, "")
        return self.documents.ids_of_rows(base, layout.docs, layout.part_rows, np.asarray(rows, np.int64))

    def row_vectors(self, ns: str, seg: SegmentRef, rows) -> np.ndarray:
        """The vectors of segment ``rows`` (float32, decoded as stored), by range."""
        layout = self.layout(ns, seg)
        key = segment.file_key(ns, seg.id, "vectors.bin")
        return row_vectors.fetch(self.store, self.pool, key, layout, np.asarray(rows, np.int64))

    def prefetch_fields(self, ns: str, seg: SegmentRef, layout: Layout, parts) -> None:
        """Start fetching what the fields of hits in partitions ``parts`` need first (their
        ``rows.bin`` entries), beside the partitions themselves. By-range segments only."""
        if layout.docs is not None:
            self.documents.prefetch_entries(segment.file_key(ns, seg.id, ""), layout.part_rows, parts)

    def rows_for_search(self, ns: str, seg: SegmentRef, layout: Layout, rows, with_entries: bool = False,
                        with_ids: bool = True) -> tuple[np.ndarray, list[str] | None, np.ndarray | None]:
        """The vectors of segment ``rows`` without their partitions, and (``with_ids``) their
        ids (by range: from the ``$id`` column of the partitions that hold them, memoised),
        and (by range, ``with_entries``) their ``rows.bin`` entries: one round of parallel
        GETs."""
        rows = np.asarray(rows, np.int64)
        vkey = segment.file_key(ns, seg.id, "vectors.bin")
        if layout.docs is None:
            ids = self.ids(ns, seg) if with_ids else None
            vectors = row_vectors.fetch(self.store, self.pool, vkey, layout, rows)
            return vectors, [ids[r] for r in rows.tolist()] if ids is not None else None, None
        base, docs = segment.file_key(ns, seg.id, ""), layout.docs
        akey, ekey = segment.file_key(ns, seg.id, "attrs.bin"), segment.file_key(ns, seg.id, "rows.bin")
        wanted = {vkey: (row_vectors.plan(layout, rows), -1)}
        if with_ids:
            groups = np.unique(np.searchsorted(layout.part_rows, rows, side="right") - 1).tolist()
            wanted[akey] = (self.documents.id_ranges(base, docs, groups), -1)
        if with_entries:
            wanted[ekey] = (self.documents.entry_ranges(rows), ENTRY_GAP)
        spans = ranged_reads.fetch_many(self.store, self.pool, wanted)
        vectors = row_vectors.decode(spans[vkey], layout, rows)
        ids = self.documents.ids_of_rows(base, docs, layout.part_rows, rows, spans[akey]) if with_ids else None
        entries = self.documents.entries(base, layout.part_rows, rows, spans[ekey]) if with_entries else None
        return vectors, ids, entries

    def group_rows(self, ns: str, seg: SegmentRef, layout: Layout, groups) -> tuple[np.ndarray, np.ndarray]:
        """The rows (int64) and vectors (float32, from float16) of ``groups`` of the
        segment's ``clusters.bin``, group after group: one round of parallel GETs of at
        most ``_GROUP_PIECE`` bytes each (adjacent groups read together)."""
        directory = layout.clusters
        groups = np.asarray(groups, np.int64)
        key = segment.file_key(ns, seg.id, "clusters.bin")
        ranges = directory.ranges(groups)
        merged = ranged_reads.coalesce(ranges, 0)
        pieces = [(s, min(_GROUP_PIECE, start + n - s)) for start, n in merged
                  for s in range(start, start + n, _GROUP_PIECE)]
        fetched = dict(zip((s for s, _ in pieces), self.pool.map(lambda r: self.store.get_range(key, *r), pieces)))
        spans = ranged_reads.Spans({start: b"".join(fetched[s] for s in range(start, start + n, _GROUP_PIECE))
                                    for start, n in merged})
        rows, vectors = [np.zeros(0, np.int64)], [np.zeros((0, layout.dims), np.float32)]
        for g, (start, length) in zip(groups.tolist(), ranges):
            if length:
                r, v = directory.decode(spans.get(start, length), g)
                rows.append(r)
                vectors.append(v)
        return np.concatenate(rows), np.concatenate(vectors)

    def matched_rows(self, key: tuple, make):
        """The rows a selective filter keeps, with their vectors (query.exact_filter),
        memoised under ``key`` (a segment, its tombstones, the filter): ``make()`` when not
        held."""
        return self._matched.get(key, make)

    def prefetch_filter(self, ns: str, seg: SegmentRef, filt: Filter, filter_key: str, exact_max_rows: int) -> None:
        """Start fetching the footers of the columns ``filt`` names (a by-range segment's
        first reads for it), each on its own thread of the pool; loads the layout first.
        A filter that ``clusters.bin``'s groups decide reads no column: only the ``$id``
        footer (the ids of its best rows, when it keeps at most ``exact_max_rows`` and they
        are searched exactly), or nothing (it keeps more: they are searched in their
        partitions, which hold their ids). Its groups are remembered under ``filter_key``,
        as the query's search asks for them again."""
        layout = self.layout(ns, seg)
        if layout.docs is None:
            return
        from vectordb.filter_columns import columns

        base = segment.file_key(ns, seg.id, "")
        directory = layout.clusters
        grouped = directory is not None and directory.covers(filt)
        if grouped and directory.group_of_row and directory.rows_in(directory.matching(filt, filter_key)) > exact_max_rows:
            return
        for name in [*([] if grouped else columns(filt, layout.docs.kinds)), ID_COLUMN]:
            self.pool.submit(self.documents.footers, base, layout.docs, [name])

    def prefetch_bm25(self, ns: str, seg: SegmentRef, terms: list[str]) -> None:
        """Start loading the head of the segment's ``bm25.bin`` ahead of a BM25 query of
        ``terms`` (analyzed), and their dictionary slots where the format has them."""
        self.lexicon.prefetch(segment.file_key(ns, seg.id, "bm25.bin"), seg.rows, terms, self.pool)

    def prefetch_ids(self, ns: str, seg: SegmentRef) -> None:
        """Load what the ids of hits found without their partitions need first (the ``$id``
        column's footer, or the column whole when it is small): a BM25 query's last read
        then waits for no footer. By-range segments only; loads the layout first."""
        layout = self.layout(ns, seg)
        if layout.docs is not None:
            self.documents.footers(segment.file_key(ns, seg.id, ""), layout.docs, [ID_COLUMN])

    def prefetch_id(self, ns: str, seg: SegmentRef, doc_id: str) -> None:
        """Look ``doc_id`` up ahead of a ``GET`` (its bucket, then its record): what
        :meth:`find` will read. Loads the layout first."""
        if doc_id not in self.tombstones(ns, seg):
            self.find(ns, [seg], doc_id)

    def find(self, ns: str, segs: list[SegmentRef], doc_id: str) -> list[Record | None]:
        """The record of ``doc_id`` in each of ``segs`` that stores it (tombstoned or not):
        by range, the buckets of all of them in one round of parallel GETs, then the record
        (or records) found."""
        layouts = [self.layout(ns, seg) for seg in segs]
        by_range = [(segment.file_key(ns, seg.id, ""), "ids.bin", layout.docs.ids, [doc_id])
                    for seg, layout in zip(segs, layouts) if layout.docs is not None]
        found = iter(self.documents.lookup_many(by_range) if by_range else [])
        out: list[Record | None] = []
        for seg, layout in zip(segs, layouts):
            if layout.docs is None:
                lookup = self._lookups.get(("segment", seg.id), lambda seg=seg: RowLookup(self.ids(ns, seg)))
                rows = lookup.rows([doc_id])
                out.append(self.records(ns, seg, rows)[0] if len(rows) else None)
                continue
            hits = next(found).get(doc_id)
            if not hits:
                out.append(None)
                continue
            row, entry = hits[0]
            out.append(self.documents.record_at(segment.file_key(ns, seg.id, ""), row, doc_fields.decode_entries(entry)[0]))
        return out

    def stored_ids(self, ns: str, seg: SegmentRef, ids) -> frozenset[str]:
        """Those of ``ids`` the segment stores (tombstoned or not): which rows an upsert
        of them overrides. By range: one bucket of ``ids.bin`` per id."""
        return frozenset(self.stored_rows(ns, seg, ids))

    def stored_rows(self, ns: str, seg: SegmentRef, ids) -> dict[str, int]:
        """id -> row of those of ``ids`` the segment stores (tombstoned or not). By range:
        one bucket of ``ids.bin`` per id."""
        layout = self.layout(ns, seg)
        if layout.docs is None:
            ids = set(ids)
            return {i: row for row, i in enumerate(self.ids(ns, seg)) if i in ids}
        found = self.documents.lookup(segment.file_key(ns, seg.id, ""), "ids.bin", layout.docs.ids, ids)
        return {i: hits[0][0] for i, hits in found.items()}

    def rows_in(self, ns: str, seg: SegmentRef, ids: IdSet) -> dict[str, int]:
        """id -> row of those of ``ids`` the segment stores (tombstoned or not), for a set
        that may be as large as the segment (the ids an index build's tail touched). Few
        of them: :meth:`stored_rows`, a bucket of ``ids.bin`` each. Many: the whole table
        in ranges of a few MB, each bucket's hashes searched in ``ids`` (nothing memoised:
        a query would not use it)."""
        layout = self.layout(ns, seg)
        if layout.docs is None or layout.docs.ids.hash != id_set.HASH:
            every = self.ids(ns, seg)
            return {every[row]: row for row in np.flatnonzero(ids.members(every)).tolist()}
        if len(ids) * _SCAN_SHARE < layout.docs.ids.buckets:
            return self.stored_rows(ns, seg, ids)
        found: dict[str, int] = {}
        for bucket in self.documents.scan(segment.file_key(ns, seg.id, ""), "ids.bin", layout.docs.ids):
            for n in np.flatnonzero(ids.members(bucket.keys, bucket.hashes)).tolist():
                found[bucket.keys[n].decode()] = int(bucket.rows[n])
        return found

    def chunks(self, ns: str, segs: list[SegmentRef], parents: list[str]) -> list[list[tuple[int, str]]]:
        """Per segment, (row, id) of the rows whose string ``doc_id`` attribute is one of
        ``parents`` (tombstoned or not): by range from ``doc_ids.bin`` (every segment's
        buckets in one round of parallel GETs), else by filtering the whole docs."""
        layouts = [self.layout(ns, seg) for seg in segs]
        by_range = [(segment.file_key(ns, seg.id, ""), "doc_ids.bin", layout.docs.doc_ids, parents)
                    for seg, layout in zip(segs, layouts) if layout.docs is not None]
        found = iter(self.documents.lookup_many(by_range) if by_range else [])
        out = []
        for seg, layout in zip(segs, layouts):
            if layout.docs is not None:
                out.append(sorted((row, payload.decode()) for hits in next(found).values() for row, payload in hits))
            else:
                out.append(self._filtered_chunks(ns, seg, parents))
        return out

    def _filtered_chunks(self, ns: str, seg: SegmentRef, parents: list[str]) -> list[tuple[int, str]]:
        from vectordb.filters import parse_filter

        out: list[tuple[int, str]] = []
        for lo in range(0, len(parents), 1000):  # the filter language caps $in at 1,000 values
            raw = {DOC_ID: {"$in": parents[lo : lo + 1000]}}
            mask = self.filter_mask(ns, seg, parse_filter(raw), json.dumps(raw, sort_keys=True))
            ids = self.ids(ns, seg)
            out += [(int(r), ids[r]) for r in np.flatnonzero(mask)]
        return sorted(set(out))

    def bm25(self, ns: str, segs: list[SegmentRef], terms: list[str]) -> list[BM25Index | TermPostings]:
        """What BM25 queries of ``terms`` (analyzed) need of each segment, fetched in three
        rounds of parallel ranged reads (see :mod:`vectordb.bm25_reader`); each answers
        ``stats(terms)`` and ``search``."""
        return self.lexicon.fetch([segment.file_key(ns, seg.id, "bm25.bin") for seg in segs], terms, self.pool)

    def filter_mask(self, ns: str, seg: SegmentRef, filt: Filter, filter_key: str) -> np.ndarray:
        """Rows of the segment whose id and attributes match ``filt`` (DuckDB)."""

        from vectordb.filter_sql import matching_rows  # DuckDB: imported when a filter first needs it

        def make() -> np.ndarray:
            layout = self.layout(ns, seg)
            if layout.docs is not None:
                return self.documents.filter_mask(segment.file_key(ns, seg.id, ""), layout.docs, layout.part_rows, filt)
            docs = self.docs(ns, seg)
            return matching_rows(filt, docs.column("id").combine_chunks(), docs.column("attributes").combine_chunks())

        return self._masks.get(("filter", seg.id, filter_key), make)

    def tail_bm25(self, manifest: Manifest) -> TailBM25:
        return self.tails.bm25(manifest)

    def tail_filter_mask(self, manifest: Manifest, filt: Filter, filter_key: str) -> np.ndarray:
        """Rows of the tail that match ``filt``."""
        return self.tails.filter_mask(manifest, filt, filter_key)

    def wal_batch(self, ref: WalRef, dims: int):
        return self.tails.batch(ref, dims)

    def tail(self, manifest: Manifest) -> Tail:
        """The folded unindexed tail of a manifest (see :mod:`vectordb.tail_reader`)."""
        return self.tails.tail(manifest)

    # --- live rows ------------------------------------------------------------------------
    def live_mask(self, ns: str, seg: SegmentRef, tail: Tail) -> np.ndarray | None:
        """Rows of the segment that are neither tombstoned nor overridden by ``tail``;
        None: all of them. By range: the dead and overridden ids looked up in ``ids.bin``
        (a bucket each; the whole table once they are many); else from all of the
        segment's ids."""
        dead = self.tombstones(ns, seg)
        if not dead and not tail.touched:
            return None
        if not tail.touched and self.dead_rows(ns, seg) is not None:
            return self._dead_rows_mask(ns, seg)
        docs = self.by_range(ns, seg)
        if docs is not None:
            stored = StoredRows(self.documents, segment.file_key(ns, seg.id, ""), docs)
            return self._live(("live", seg.id, seg.tombstones_key), dead, tail, lambda: stored,
                              self.dead_rows(ns, seg))
        return self._live(("live", seg.id, seg.tombstones_key), dead, tail,
                          lambda: self._lookups.get(("segment", seg.id), lambda: RowLookup(self.ids(ns, seg))))

    def partition_live(self, ns: str, seg: SegmentRef, p: int, part: Partition, tail: Tail) -> np.ndarray | None:
        """Rows of partition ``p`` that are neither tombstoned nor overridden by ``tail``;
        None: all of them. Reads nothing beyond the partition itself; where the tombstone
        list has the dead rows and the tail overrides none of the segment's, it decodes
        none of the partition's ids either (~1 ms a partition, which a warm query paid
        for every partition it met first); with no tail overrides at all it is a slice
        of one mask per tombstone list (a broad filter meets ~30 partitions a query)."""
        dead = self.tombstones(ns, seg)
        if not dead and not tail.touched:
            return None
        dead_rows = self.dead_rows(ns, seg)
        if dead_rows is not None:
            layout = self.layout(ns, seg)
            lo, n = int(layout.part_rows[p]), layout.rows_in(p)
            if not tail.touched:
                return self._dead_rows_mask(ns, seg)[lo : lo + n]
            first, end = np.searchsorted(dead_rows, [lo, lo + n])  # ascending: a slice, not a pass
            dead_rows = dead_rows[first:end] - lo
        key = (segment.file_key(ns, seg.id, "vectors.bin"), p)
        return self._live(("plive", *key, seg.tombstones_key), dead, tail,
                          lambda: self._lookups.get(("partition", *key), lambda: RowLookup(part.ids)), dead_rows,
                          len(part.vectors))

    def _dead_rows_mask(self, ns: str, seg: SegmentRef) -> np.ndarray:
        """The segment's rows but those its tombstone list names by row (it must have
        them): its live mask wherever the tail overrides none of its ids, whatever the
        tail's version."""

        def make() -> np.ndarray:
            mask = np.ones(int(self.layout(ns, seg).part_rows[-1]), bool)
            mask[self.dead_rows(ns, seg)] = False
            return _frozen(mask)

        return self._masks.get(("dead-rows", seg.tombstones_key), make)

    def _live(self, key: tuple, dead: frozenset[str], tail: Tail, lookup, dead_rows: np.ndarray | None = None,
              n: int | None = None) -> np.ndarray:
        """The live mask of rows ``lookup()`` finds, memoised under ``key`` + the tail.

        Derived from the mask of the nearest ancestor of ``tail`` that has one, clearing
        the rows of the ids touched since (the usual case beside a writer: cost follows
        the new writes); else made from scratch, a search per row in C and Python only for
        dead rows. ``dead_rows``: the rows of ``dead``, when the tombstone list has them
        (then they are not looked up); ``n``: how many rows (else ``len(lookup())``).
        ``lookup`` is called only where ids must be found."""

        def make() -> np.ndarray:
            found = []

            def rows():
                if not found:
                    found.append(lookup())
                return found[0]

            added: set[str] = set()
            version = tail
            for _ in range(_MAX_DERIVE_STEPS):
                parent, step = version.parent, version.step
                if parent is None or step is None:
                    break
                added |= step.added
                previous = self._masks.peek((*key, parent.serial))
                if previous is not None:
                    changed = rows().rows(added) if added else np.zeros(0, np.int64)
                    if not len(changed):
                        return previous  # shared: masks are read-only once made
                    mask = previous.copy()
                    mask[changed] = False
                    return _frozen(mask)
                if len(added) > _MAX_DERIVE_IDS:
                    break
                version = parent
            mask = np.ones(n if n is not None else len(rows()), bool)
            if dead_rows is not None:
                mask[dead_rows] = False
            elif dead:
                mask[_rows_of(rows(), dead, lambda: self._masks.get(("dead-hashes", key[-1]), lambda: hash_set(dead)))] = False
            if tail.touched:
                mask[_rows_of(rows(), tail.touched, lambda: tail.touched_hashes)] = False
            return _frozen(mask)

        return self._masks.get((*key, tail.serial), make)


_NO_TOMBSTONES = segment.Tombstones(frozenset())

def _rows_of(lookup, ids: frozenset[str], hashes) -> np.ndarray:
    """The rows of ``ids`` in ``lookup``: an in-memory :class:`RowLookup` matches every row's
    hash against ``hashes()`` in one pass (cheaper than a search per id when the ids are
    many); a :class:`StoredRows` looks the ids up in ``ids.bin``."""
    if isinstance(lookup, RowLookup):
        return lookup.candidates(hashes(), ids.__contains__)
    return lookup.rows(ids)


def _frozen(array: np.ndarray) -> np.ndarray:
    """``array``, read-only: a memoised mask is shared by every query (and by later masks)."""
    array.flags.writeable = False
    return array

