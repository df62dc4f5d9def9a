"""Reading a by-range segment's documents (:mod:`vectordb.docs_format`) a few ranges at a time.

What each read costs, whatever the segment's size:

* a filter: the footers of the columns it names in ``attrs.bin`` (once per segment), then
  those columns' chunks in the row groups whose statistics allow a match (one round of
  parallel GETs);
* the fields of some rows: their ``rows.bin`` entries (unless the partitions' entries were
  fetched beside the partitions), then their records in ``fields.bin``;
* ids -> rows (``GET`` by id, live masks, what a tail overrides) and doc_id -> chunks: one
  bucket of ``ids.bin`` / ``doc_ids.bin`` per key (a second GET for a bucket that spills).

Everything decoded is memoised (byte-bounded, single-flight): the objects are immutable.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Executor

import numpy as np

from storage.base import ObjectStore
from vectordb import doc_fields, key_table, ranged_reads
from vectordb.attr_columns import ID_COLUMN, ColumnFooter, ColumnInfo, ColumnSet
from vectordb.doc_fields import Record
from vectordb.docs_format import DocsLayout
from vectordb.filters import Filter
from vectordb.key_table import Bucket, TableInfo
from vectordb.memo import Memo

# Ranges closer than this are one GET: a round trip costs more than the bytes between.
_COLUMN_GAP = 16 * 1024
# A column file this small is read whole with its footer: one round trip, not two (a
# number column of 1M rows is ~1.1 MB).
_WHOLE_COLUMN = 2 * 1024 * 1024
ENTRY_GAP = 1024
# A whole-table scan (``DocsReader.scan``) reads this many bytes of buckets at a time.
_SCAN_BYTES = 8 * 1024**2
_RECORD_GAP = 4096
# Past this share of a table's buckets, one GET of the whole table beats a GET per bucket.
_WHOLE_TABLE_SHARE = 0.25


def _key(base: str, name: str) -> str:
    return base + name


class DocsReader:
    """Decoded, memoised ranged reads of by-range segments. ``base`` arguments are a
    segment's key prefix (``segment.file_key(ns, seg_id, "")``)."""

    def __init__(self, store: ObjectStore, pool: Executor, memo_bytes: int) -> None:
        """``pool``: the owner's fetch pool (which the owner may swap, see
        :attr:`vectordb.reader.NamespaceReader.pool`)."""
        self.store = store
        self.pool = pool
        self._footers = Memo(1024, memo_bytes // 4, lambda f: f.nbytes)
        self._whole_column = _WHOLE_COLUMN
        self._buckets = Memo(1 << 20, memo_bytes // 8, lambda b: b.nbytes)
        self._entries = Memo(1 << 16, memo_bytes // 8, lambda e: e.nbytes)  # rows.bin per partition
        self._records = Memo(1 << 20, memo_bytes // 8, lambda r: r.nbytes)
        self._ids = Memo(64, memo_bytes // 4, lambda ids: 80 * len(ids))
        # $id per row group, as Arrow string arrays: ~20 bytes an id where a list of str took ~80,
        # so a warmed 1M-row segment's ids all fit (query.warm decodes them up front).
        self._group_ids = Memo(1 << 20, memo_bytes // 4, lambda ids: ids.nbytes + 64)

    # --- attributes ------------------------------------------------------------------------
    def footers(self, base: str, docs: DocsLayout, names: Sequence[str]) -> dict[str, ColumnFooter]:
        """The footers of columns ``names`` of ``attrs.bin`` (those not held: one round of
        parallel GETs). A small column is read whole with its footer: one round trip for
        it instead of two, for at most ``_WHOLE_COLUMN`` bytes."""
        key = _key(base, "attrs.bin")
        infos = [docs.column(name) for name in names]
        held = self._footers.peek_many([(key, info.name) for info in infos])
        missing = [info for info, footer in zip(infos, held) if footer is None]
        first = {info.name: _first_read(info, self._whole_column) for info in infos}
        spans = ranged_reads.fetch(self.store, self.pool, key, [first[i.name] for i in missing], -1)

        def loader(info):
            def load() -> ColumnFooter:
                data = spans.get(*first[info.name])
                return ColumnFooter.parse(info, data if data is not None else self.store.get_range(key, *first[info.name]))
            return load

        return {info.name: self._footers.get((key, info.name), loader(info)) for info in infos}

    def filter_mask(self, base: str, docs: DocsLayout, part_rows: np.ndarray, filt: Filter) -> np.ndarray:
        """Rows that match ``filt``: the footers of the columns it names, then their chunks
        in the row groups whose statistics allow a match but not a certain one."""
        from vectordb import filter_columns  # DuckDB: imported when a filter first needs it

        names = filter_columns.columns(filt, docs.kinds)
        # The ids' footer comes along: a search of the matches will want some of their ids.
        footers = self.footers(base, docs, [*names, ID_COLUMN])
        cols = ColumnSet(docs.kinds, np.asarray(part_rows, np.int64), footers)
        read, every = filter_columns.row_groups(filt, cols)
        starts = cols.starts
        mask = np.zeros(docs.rows, bool)
        for g in np.flatnonzero(every).tolist():
            mask[starts[g] : starts[g + 1]] = True
        groups = np.flatnonzero(read)
        if len(groups):
            table = self.columns(base, docs, names, groups.tolist())
            matched = filter_columns.matching_rows(filt, docs.kinds, names, table)
            lo, hi = starts[groups], starts[groups + 1]
            if np.array_equal(lo[1:], hi[:-1]):  # adjacent row groups (often all of them): one slice
                mask[lo[0] : hi[-1]] = matched
            else:
                sizes = hi - lo
                mask[np.repeat(lo - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))] = matched
        return mask

    def column_ranges(self, base: str, docs: DocsLayout, names: Sequence[str], groups: Sequence[int]) -> list[tuple[int, int]]:
        """The byte ranges of ``attrs.bin`` that hold columns ``names`` of row groups ``groups``
        (each column's chunks are contiguous in its own file: never another column's bytes)."""
        footers = self.footers(base, docs, names)
        return [r for name in names if footers[name].data is None
                for r in ranged_reads.coalesce((footers[name].chunk(g) for g in groups), _COLUMN_GAP)]

    def columns(self, base: str, docs: DocsLayout, names: Sequence[str], groups: Sequence[int],
                spans: ranged_reads.Spans | None = None):
        """Columns ``names`` of row groups ``groups`` (a pyarrow table, rows in order), from
        ``spans`` holding their :meth:`column_ranges` or fetched in one round of parallel
        GETs, decoded by pyarrow given the footers (so it reads nothing else)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = _key(base, "attrs.bin")
        footers = self.footers(base, docs, names)
        if spans is None:
            spans = ranged_reads.fetch(self.store, self.pool, key, self.column_ranges(base, docs, names, groups), -1)
        arrays = []
        for name in names:
            info = footers[name].info
            held = footers[name].data
            # A column held whole is read from memory by pyarrow itself: through a Python file
            # object it made ~2 calls per row group (1,000 at 1M rows: ~5 ms of a cold query).
            source = ranged_reads.SpanFile(self.store, key, info.size, spans, base=info.offset) if held is None else \
                pa.BufferReader(held)
            parquet = pq.ParquetFile(source, metadata=footers[name].metadata, pre_buffer=False)
            arrays.append(parquet.read_row_groups(list(groups), use_threads=False).column(0))
        return pa.table(arrays, names=list(names))

    def all_ids(self, base: str, docs: DocsLayout, nlist: int) -> list[str]:
        """Every id, in row order (the ``$id`` column; for callers that need them all)."""
        key = _key(base, "attrs.bin")
        return self._ids.get(key, lambda: self.columns(base, docs, [ID_COLUMN], range(nlist)).column(0).to_pylist())

    def id_ranges(self, base: str, docs: DocsLayout, groups: Sequence[int]) -> list[tuple[int, int]]:
        """What :meth:`group_ids` of ``groups`` still has to read (nothing if it holds them)."""
        key = _key(base, "attrs.bin")
        held = self._group_ids.peek_many([(key, int(g)) for g in groups])
        missing = [int(g) for g, ids in zip(groups, held) if ids is None]
        return self.column_ranges(base, docs, [ID_COLUMN], missing) if missing else []

    def group_ids(self, base: str, docs: DocsLayout, groups: Sequence[int],
                  spans: ranged_reads.Spans | None = None) -> dict:
        """The ids of each of row groups (partitions) ``groups`` (a pyarrow string array
        each), memoised per group: from ``spans`` holding their :meth:`id_ranges`, or fetched."""
        key = _key(base, "attrs.bin")
        groups = [int(g) for g in groups]
        found = dict(zip(groups, self._group_ids.peek_many([(key, g) for g in groups])))
        missing = [g for g, ids in found.items() if ids is None]
        if missing:
            column = self.columns(base, docs, [ID_COLUMN], missing, spans).column(0)
            sizes = [self.footers(base, docs, [ID_COLUMN])[ID_COLUMN].metadata.row_group(g).num_rows for g in missing]
            at = 0
            for g, size in zip(missing, sizes):
                ids = column.slice(at, size).combine_chunks()  # its own buffers: the column is let go
                at += size
                found[g] = self._group_ids.get((key, g), lambda ids=ids: ids)
        return found

    def ids_of_rows(self, base: str, docs: DocsLayout, part_rows: np.ndarray, rows: np.ndarray,
                    spans: ranged_reads.Spans | None = None) -> list[str]:
        """The ids of segment ``rows``, from the ``$id`` column of their row groups."""
        rows = np.asarray(rows, np.int64)
        parts = np.searchsorted(part_rows, rows, side="right") - 1
        ids = self.group_ids(base, docs, np.unique(parts).tolist(), spans)
        if len(rows) <= 4 * len(ids):
            # A few rows a partition (a query's hits): one scalar each, ~0.5 µs, where a
            # take costs ~9 µs a partition (100 BM25 candidates: ~1 ms).
            at = rows - part_rows[parts]
            return [ids[p][i].as_py() for p, i in zip(parts.tolist(), at.tolist())]
        out: list = [None] * len(rows)
        for p in np.unique(parts).tolist():
            at = np.flatnonzero(parts == p)
            for i, doc_id in zip(at.tolist(), ids[p].take(rows[at] - int(part_rows[p])).to_pylist()):
                out[i] = doc_id
        return out

    # --- fields ----------------------------------------------------------------------------
    def prefetch_entries(self, base: str, part_rows: np.ndarray, parts: Collection[int]) -> None:
        """Start fetching the ``rows.bin`` entries of ``parts`` (beside their vectors), so
        the fields of hits among them take one round trip, not two."""
        for p in parts:
            if (base, int(p)) not in self._entries:
                self.pool.submit(self._partition_entries, base, part_rows, int(p))

    def _partition_entries(self, base: str, part_rows: np.ndarray, p: int) -> np.ndarray:
        def load() -> np.ndarray:
            lo, hi = int(part_rows[p]), int(part_rows[p + 1])
            size = doc_fields.ENTRY.itemsize
            data = self.store.get_range(_key(base, "rows.bin"), lo * size, (hi - lo) * size) if hi > lo else b""
            return doc_fields.decode_entries(data)

        return self._entries.get((base, p), load)

    def entry_ranges(self, rows: np.ndarray) -> list[tuple[int, int]]:
        size = doc_fields.ENTRY.itemsize
        return [(int(r) * size, size) for r in np.asarray(rows).tolist()]

    def entries(self, base: str, part_rows: np.ndarray, rows: np.ndarray,
                spans: ranged_reads.Spans | None = None) -> np.ndarray:
        """``rows.bin`` entries of ``rows``: from partitions' entries held, else from
        ``spans`` (holding their :meth:`entry_ranges`) or fetched."""
        rows = np.asarray(rows, np.int64)
        parts = np.searchsorted(part_rows, rows, side="right") - 1
        held = self._entries.peek_many([(base, int(p)) for p in parts.tolist()])
        out = np.zeros(len(rows), doc_fields.ENTRY)
        missing = []
        for i, (row, p, entries) in enumerate(zip(rows.tolist(), parts.tolist(), held)):
            if entries is not None:
                out[i] = entries[row - int(part_rows[p])]
            else:
                missing.append(i)
        if missing:
            size = doc_fields.ENTRY.itemsize
            if spans is None:
                spans = ranged_reads.fetch(self.store, self.pool, _key(base, "rows.bin"),
                                           self.entry_ranges(rows[missing]), ENTRY_GAP)
            for i in missing:
                out[i] = doc_fields.decode_entries(spans[(int(rows[i]) * size, size)])[0]
        return out

    def records(self, base: str, part_rows: np.ndarray, rows: Sequence[int], entries: np.ndarray | None = None) -> list[Record]:
        """The records (id, text, attributes) of ``rows``: see :meth:`records_many`."""
        return self.records_many([(base, part_rows, rows, entries)])[0]

    def records_many(self, wanted: Sequence[tuple[str, np.ndarray, Sequence[int], np.ndarray | None]]) -> list[list[Record]]:
        """The records of rows of several segments, each item ``(base, part_rows, rows,
        entries or None)``: one round of parallel GETs for all of them once their entries
        are known (held beside their partitions, or given), two otherwise."""
        found, missing = [], []
        for base, _, rows, _ in wanted:
            rows = [int(r) for r in rows]
            got = self._records.peek_many([(base, r) for r in rows])
            found.append(got)
            missing.append([i for i, rec in enumerate(got) if rec is None])
        entries = []
        unknown: dict[str, tuple[list[tuple[int, int]], int]] = {}
        for (base, part_rows, rows, given), todo in zip(wanted, missing):
            if given is not None or not todo:
                entries.append(None if given is None else given[todo])
                continue
            rows_todo = np.asarray([int(rows[i]) for i in todo], np.int64)
            held = self._held_entries(base, part_rows, rows_todo)
            entries.append(held)
            if held is None:
                unknown[_key(base, "rows.bin")] = (self.entry_ranges(rows_todo), ENTRY_GAP)
        spans = ranged_reads.fetch_many(self.store, self.pool, unknown) if unknown else {}
        fields: dict[str, tuple[list[tuple[int, int]], int]] = {}
        for n, ((base, part_rows, rows, _), todo) in enumerate(zip(wanted, missing)):
            if todo and entries[n] is None:
                rows_todo = np.asarray([int(rows[i]) for i in todo], np.int64)
                entries[n] = self.entries(base, part_rows, rows_todo, spans[_key(base, "rows.bin")])
            if todo:
                fields[_key(base, "fields.bin")] = ([doc_fields.span(e) for e in entries[n]], _RECORD_GAP)
        spans = ranged_reads.fetch_many(self.store, self.pool, fields) if fields else {}
        for n, ((base, _, rows, _), todo) in enumerate(zip(wanted, missing)):
            for i, entry in zip(todo, entries[n] if todo else []):
                record = doc_fields.decode_record(spans[_key(base, "fields.bin")][doc_fields.span(entry)], entry)
                found[n][i] = self._records.get((base, int(rows[i])), lambda record=record: record)
        return found

    def _held_entries(self, base: str, part_rows: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """The entries of ``rows`` if the entries of their partitions are held; else None."""
        parts = np.searchsorted(part_rows, rows, side="right") - 1
        held = self._entries.peek_many([(base, int(p)) for p in parts.tolist()])
        if any(h is None for h in held):
            return None
        return np.array([h[r - int(part_rows[p])] for h, r, p in zip(held, rows.tolist(), parts.tolist())],
                        doc_fields.ENTRY)

    def record_at(self, base: str, row: int, entry) -> Record:
        """One record whose entry is known (a ``GET`` by id found it in ``ids.bin``)."""
        def load() -> Record:
            start, length = doc_fields.span(entry)
            return doc_fields.decode_record(self.store.get_range(_key(base, "fields.bin"), start, length), entry)

        return self._records.get((base, int(row)), load)

    def whole(self, base: str):
        """Every row's id, text and attributes as a pyarrow table (compaction rewrites
        them all: it reads ``fields.bin`` and ``rows.bin`` whole)."""
        import pyarrow as pa

        entries = doc_fields.decode_entries(self.store.get(_key(base, "rows.bin")))
        records = doc_fields.decode_all(self.store.get(_key(base, "fields.bin")), entries)
        return pa.table({
            "id": pa.array([r.id for r in records], pa.string()),
            "text": pa.array([r.text for r in records], pa.string()),
            "attributes": pa.array([r.attributes for r in records], pa.string()),
        })

    # --- key tables -----------------------------------------------------------------------
    def lookup(self, base: str, name: str, info: TableInfo, keys: Collection[str]) -> dict[str, list[tuple[int, bytes]]]:
        """key -> [(row, payload), ...] for the ``keys`` present in table ``name``."""
        return self.lookup_many([(base, name, info, keys)])[0]

    def lookup_many(self, wanted: Sequence[tuple[str, str, TableInfo, Collection[str]]]) -> list[dict[str, list[tuple[int, bytes]]]]:
        """:meth:`lookup` in several tables (``(base, name, info, keys)`` each): the buckets
        of all of them in one round of parallel GETs (and their spills in a second)."""
        plans = []
        for base, name, info, keys in wanted:
            keys = list(dict.fromkeys(keys))
            hashes = key_table.HASHERS[info.hash](keys) if keys else np.zeros(0, np.uint64)
            which = info.bucket_of(hashes)
            plans.append((_key(base, name), info, keys, hashes, which))
        buckets = self._buckets_many([(key, info, sorted(set(which.tolist()))) for key, info, _, _, which in plans])
        out = []
        for (_, _, keys, hashes, which), held in zip(plans, buckets):
            found: dict[str, list[tuple[int, bytes]]] = {}
            for k, h, b in zip(keys, hashes.tolist(), which.tolist()):
                hits = held[b].find(k.encode(), h)
                if hits:
                    found[k] = hits
            out.append(found)
        return out

    def _buckets_many(self, wanted: list[tuple[str, TableInfo, list[int]]]) -> list[dict[int, Bucket]]:
        """Decoded buckets (their spills merged in) of several tables, fetching those not
        held: a table whose wanted buckets are many is read whole."""
        out: list[dict[int, Bucket]] = []
        fetch: dict[str, tuple[list[tuple[int, int]], int]] = {}
        for key, info, buckets in wanted:
            whole = self._buckets.peek((key, "all"))
            if whole is not None:
                out.append(dict.fromkeys(buckets, whole))
                continue
            held = dict(zip(buckets, self._buckets.peek_many([(key, b) for b in buckets])))
            missing = [b for b, bucket in held.items() if bucket is None]
            if len(missing) > _WHOLE_TABLE_SHARE * info.buckets:
                table = self._buckets.get((key, "all"), lambda key=key, info=info: key_table.decode_all(self.store.get(key), info))
                held = dict.fromkeys(buckets, table)
            elif missing:
                fetch[key] = ([(b * info.stride, info.stride) for b in missing], info.stride)
            out.append(held)
        if not fetch:
            return out
        spans = ranged_reads.fetch_many(self.store, self.pool, fetch)
        decoded: dict[tuple[str, int], Bucket] = {}
        for (key, info, _), held in zip(wanted, out):
            if key in fetch:
                for b, bucket in held.items():
                    if bucket is None:
                        decoded[(key, b)] = key_table.decode(spans[key][(b * info.stride, info.stride)])
        spilled = {k: bucket.spill for k, bucket in decoded.items() if bucket.spill is not None}
        if spilled:
            ranges: dict[str, list[tuple[int, int]]] = {}
            for (key, _), spill in spilled.items():
                ranges.setdefault(key, []).append(spill)
            more = ranged_reads.fetch_many(self.store, self.pool, {key: (r, -1) for key, r in ranges.items()})
            for (key, b), spill in spilled.items():
                decoded[(key, b)] = _merged(decoded[(key, b)], key_table.decode(more[key][spill]))
        for (key, _, _), held in zip(wanted, out):
            for b, bucket in held.items():
                if bucket is None:
                    held[b] = self._buckets.get((key, b), lambda bucket=decoded[(key, b)]: bucket)
        return out

    def scan(self, base: str, name: str, info: TableInfo, read_bytes: int = _SCAN_BYTES) -> Iterator[Bucket]:
        """Every bucket of table ``name`` (its overflow merged in), read in ranges of about
        ``read_bytes`` and not memoised: what a build that checks a large set of keys
        against a whole table needs, in that much memory whatever the table's size."""
        key = _key(base, name)
        step = max(1, read_bytes // info.stride)
        for lo in range(0, info.buckets, step):
            n = min(step, info.buckets - lo)
            data = self.store.get_range(key, lo * info.stride, n * info.stride)
            buckets = [key_table.decode(data[b * info.stride : (b + 1) * info.stride]) for b in range(n)]
            del data
            spills = [bucket.spill for bucket in buckets if bucket.spill is not None]
            more = ranged_reads.fetch_many(self.store, self.pool, {key: (spills, -1)})[key] if spills else {}
            for bucket in buckets:
                yield bucket if bucket.spill is None else _merged(bucket, key_table.decode(more[bucket.spill]))

    def rows_of_ids(self, base: str, docs: DocsLayout, ids: Collection[str]) -> np.ndarray:
        """The rows (ascending) of those ``ids`` stored in the segment."""
        found = self.lookup(base, "ids.bin", docs.ids, ids)
        return np.sort(np.fromiter((row for hits in found.values() for row, _ in hits), np.int64))


def _first_read(info: ColumnInfo, whole_up_to: int) -> tuple[int, int]:
    """What to fetch of a column before its chunks: the footer, or a small column whole."""
    return (info.offset, info.size) if info.size <= whole_up_to else info.footer_range()


def _merged(bucket: Bucket, spill: Bucket) -> Bucket:
    return Bucket(
        np.concatenate([bucket.hashes, spill.hashes]),
        np.concatenate([bucket.rows, spill.rows]),
        bucket.keys + spill.keys,
        bucket.payloads + spill.payloads,
        None,
    )


class StoredRows:
    """id -> rows over a by-range segment's ``ids.bin``, for the reader's live masks (the
    interface of :class:`vectordb.row_lookup.RowLookup` that they use)."""

    def __init__(self, docs_reader: DocsReader, base: str, docs: DocsLayout) -> None:
        self._reader, self._base, self._docs = docs_reader, base, docs

    def __len__(self) -> int:
        return self._docs.rows

    nbytes = 64

    def rows(self, wanted: Collection[str]) -> np.ndarray:
        return self._reader.rows_of_ids(self._base, self._docs, wanted)
