"""Reading a namespace's immutable objects, decoded and memoised.

Every object read here is immutable (its key is never rewritten), so decoded forms are
kept in small per-process LRU maps on top of the byte cache of the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from storage.base import ObjectStore
from vectordb import segment, wal
from vectordb.bm25 import BM25Index
from vectordb.filters import Filter
from vectordb.manifest import Manifest, SegmentRef, WalRef
from vectordb.segment import Layout, Partition
from vectordb.tail import Tail, fold

if TYPE_CHECKING:
    import pyarrow as pa


class _Memo:
    """A thread-safe LRU of decoded objects, bounded by entry count and, when ``weigh`` is
    given, by the bytes they hold."""

    def __init__(self, entries: int, max_bytes: int | None = None, weigh=None) -> None:
        self._entries = entries
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._bytes = 0
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def peek_many(self, keys: list) -> list:
        """The values of ``keys`` that are present (None where absent), without loading."""
        with self._lock:
            out = []
            for key in keys:
                value = self._data.get(key)
                if value is not None:
                    self._data.move_to_end(key)
                out.append(value)
            return out

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def get(self, key, make):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            if key not in self._data:
                self._data[key] = value
                self._bytes += self._weigh(value) if self._weigh else 0
            while len(self._data) > self._entries or (
                self._max_bytes is not None and self._bytes > self._max_bytes and len(self._data) > 1
            ):
                _, old = self._data.popitem(last=False)
                self._bytes -= self._weigh(old) if self._weigh else 0
        return value


def _partition_bytes(part: Partition) -> int:
    return part.vectors.nbytes + part.ids.nbytes


class NamespaceReader:
    """Decoded access to segments and WAL of any namespace in one store."""

    def __init__(self, store: ObjectStore, fetch_threads: int = 16, partition_bytes: int | None = None) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")
        self._layouts = _Memo(1024)
        # Decoded partitions share their vectors with the cached bytes; bounding them by the
        # same budget keeps a worker's memory near its cache setting.
        self._partitions = _Memo(1 << 20, partition_bytes, _partition_bytes)
        self._tombstones = _Memo(1024)
        self._wal = _Memo(4096)
        self._tails = _Memo(64)
        self._docs = _Memo(64)
        self._ids = _Memo(64)
        self._lexical = _Memo(256)
        self._masks = _Memo(256)

    def has_layout(self, ns: str, seg: SegmentRef) -> bool:
        return segment.file_key(ns, seg.id, "ivf.bin") in self._layouts

    def has_tail(self, manifest: Manifest) -> bool:
        return tuple(w.key for w in manifest.wal) in self._tails

    def layout(self, ns: str, seg: SegmentRef) -> Layout:
        key = segment.file_key(ns, seg.id, "ivf.bin")
        return self._layouts.get(key, lambda: Layout.from_bytes(self.store.get(key)))

    def partition(self, ns: str, seg: SegmentRef, layout: Layout, p: int) -> Partition:
        key = segment.file_key(ns, seg.id, "vectors.bin")

        def load() -> Partition:
            start, length = layout.byte_range(p)
            data = self.store.get_range(key, start, length) if length else b""
            part = segment.decode_partition(data, layout.rows_in(p), layout.dims, layout.vector_dtype)
            if layout.vector_dtype != "float32" and length and hasattr(self.store, "discard"):
                # Widened (float16) or dequantized (int8) to float32 in a copy: this memo
                # holds the partition now, and the read cache need not hold its bytes too.
                self.store.discard(key, start, length)
            return part

        return self._partitions.get((key, p), load)

    def partitions(self, ns: str, seg: SegmentRef, layout: Layout, parts) -> list[Partition]:
        """Several partitions; those not yet decoded are fetched in parallel."""
        parts = [int(p) for p in parts]
        key = segment.file_key(ns, seg.id, "vectors.bin")
        found = self._partitions.peek_many([(key, p) for p in parts])
        missing = [p for p, part in zip(parts, found) if part is None]
        if len(missing) == 1:
            found[parts.index(missing[0])] = self.partition(ns, seg, layout, missing[0])
        elif missing:
            loaded = dict(zip(missing, self.pool.map(lambda p: self.partition(ns, seg, layout, p), missing)))
            found = [part if part is not None else loaded[p] for p, part in zip(parts, found)]
        return found

    def all_rows(self, ns: str, seg: SegmentRef) -> tuple[np.ndarray, list[str]]:
        """Every vector and id of a segment, in segment row order."""
        layout = self.layout(ns, seg)
        parts = self.partitions(ns, seg, layout, range(layout.nlist))
        vectors = np.concatenate([p.vectors for p in parts]) if parts else np.zeros((0, layout.dims), np.float32)
        return vectors, [i for p in parts for i in p.ids]

    def tombstones(self, ns: str, seg: SegmentRef) -> frozenset[str]:
        if not seg.tombstones_key:
            return frozenset()
        key = seg.tombstones_key
        return self._tombstones.get(key, lambda: segment.decode_tombstones(self.store.get(key)))

    def docs(self, ns: str, seg: SegmentRef) -> pa.Table:
        """The whole ``docs.parquet`` of a segment."""
        key = segment.file_key(ns, seg.id, "docs.parquet")
        return self._docs.get(key, lambda: segment.read_docs(self.store.get(key)))

    def ids(self, ns: str, seg: SegmentRef) -> list[str]:
        """Every id of a segment, in segment row order."""
        key = segment.file_key(ns, seg.id, "docs.parquet")
        return self._ids.get(key, lambda: self.docs(ns, seg).column("id").to_pylist())

    def bm25(self, ns: str, seg: SegmentRef) -> BM25Index:
        key = segment.file_key(ns, seg.id, "bm25.bin")
        return self._lexical.get(key, lambda: BM25Index.from_bytes(self.store.get(key)))

    def tail_bm25(self, manifest: Manifest) -> BM25Index:
        tail = self.tail(manifest)
        sig = ("bm25",) + tuple(w.key for w in manifest.wal)
        return self._lexical.get(sig, lambda: BM25Index.build(t or "" for t in tail.rows.texts))

    def live_mask(self, ns: str, seg: SegmentRef, touched: frozenset[str], tail_sig: tuple) -> np.ndarray | None:
        """Rows of the segment that are neither tombstoned nor overridden by the tail
        (None: all of them)."""
        dead = self.tombstones(ns, seg)
        if not dead and not touched:
            return None

        def make() -> np.ndarray:
            return np.fromiter((i not in dead and i not in touched for i in self.ids(ns, seg)), bool, seg.rows)

        return self._masks.get(("live", seg.id, seg.tombstones_key, tail_sig), make)

    def filter_mask(self, ns: str, seg: SegmentRef, filt: Filter, filter_key: str) -> np.ndarray:
        """Rows of the segment whose id and attributes match ``filt`` (DuckDB)."""

        from vectordb.filter_sql import matching_rows  # DuckDB: imported when a filter first needs it

        def make() -> np.ndarray:
            docs = self.docs(ns, seg)
            return matching_rows(filt, docs.column("id").combine_chunks(), docs.column("attributes").combine_chunks())

        return self._masks.get(("filter", seg.id, filter_key), make)

    def tail_filter_mask(self, manifest: Manifest, filt: Filter, filter_key: str) -> np.ndarray:
        from vectordb.filter_sql import matching_rows

        rows = self.tail(manifest).rows
        sig = tuple(w.key for w in manifest.wal)
        return self._masks.get(("tail-filter", sig, filter_key), lambda: matching_rows(filt, rows.ids, rows.attributes))

    def wal_batch(self, ref: WalRef, dims: int):
        return self._wal.get(ref.key, lambda: wal.decode(self.store.get(ref.key), dims))

    def tail(self, manifest: Manifest) -> Tail:
        """The folded unindexed tail of a manifest (memoised by its WAL keys)."""
        dims = manifest.config.dimensions
        sig = tuple(w.key for w in manifest.wal)

        def load() -> Tail:
            batches = list(self.pool.map(lambda ref: self.wal_batch(ref, dims), manifest.wal))
            return fold(batches, dims)

        return self._tails.get(sig, load)
