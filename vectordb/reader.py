"""Reading a namespace's immutable objects, decoded and memoised.

Every object read here is immutable (its key is never rewritten), so decoded forms are
kept in small per-process LRU maps on top of the byte cache of the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from storage.base import ObjectStore
from vectordb import segment, wal
from vectordb.manifest import Manifest, SegmentRef, WalRef
from vectordb.segment import Layout, Partition
from vectordb.tail import Tail, fold


class _Memo:
    """A thread-safe LRU of decoded objects, bounded by entry count."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self._entries:
                self._data.popitem(last=False)
        return value


class NamespaceReader:
    """Decoded access to segments and WAL of any namespace in one store."""

    def __init__(self, store: ObjectStore, fetch_threads: int = 16) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")
        self._layouts = _Memo(1024)
        self._partitions = _Memo(16384)
        self._tombstones = _Memo(1024)
        self._wal = _Memo(4096)
        self._tails = _Memo(64)
        self._docs = _Memo(64)

    def layout(self, ns: str, seg: SegmentRef) -> Layout:
        key = segment.file_key(ns, seg.id, "ivf.bin")
        return self._layouts.get(key, lambda: Layout.from_bytes(self.store.get(key)))

    def partition(self, ns: str, seg: SegmentRef, layout: Layout, p: int) -> Partition:
        key = segment.file_key(ns, seg.id, "vectors.bin")

        def load() -> Partition:
            start, length = layout.byte_range(p)
            data = self.store.get_range(key, start, length) if length else b""
            return segment.decode_partition(data, layout.rows_in(p), layout.dims)

        return self._partitions.get((key, p), load)

    def partitions(self, ns: str, seg: SegmentRef, layout: Layout, parts) -> list[Partition]:
        """Several partitions, fetched in parallel."""
        parts = [int(p) for p in parts]
        if len(parts) <= 1:
            return [self.partition(ns, seg, layout, p) for p in parts]
        return list(self.pool.map(lambda p: self.partition(ns, seg, layout, p), parts))

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
