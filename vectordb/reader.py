"""Reading a namespace's immutable objects, decoded and memoised.

Every object read here is immutable (its key is never rewritten), so decoded forms are
kept in per-process LRU maps (:class:`vectordb.memo.Memo`, bounded in bytes) on top of the
byte cache of the store. The unindexed tail is :mod:`vectordb.tail_reader`'s.

Which rows of a segment are live depends on its tombstones and on the tail, which changes
with every commit. Those masks are found through a :class:`RowLookup` per segment or
partition (made once: they are immutable), so their cost follows the dead and overridden
ids, not the rows; a segment's mask for a new tail version is the previous version's with
the newly touched ids cleared.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from storage.base import ObjectStore
from vectordb import segment
from vectordb.bm25 import BM25Index
from vectordb.filters import Filter
from vectordb.manifest import Manifest, SegmentRef, WalRef
from vectordb.memo import Memo
from vectordb.row_lookup import RowLookup, hash_set
from vectordb.segment import Layout, Partition
from vectordb.tail import Tail
from vectordb.tail_bm25 import TailBM25
from vectordb.tail_reader import TailReader

if TYPE_CHECKING:
    import pyarrow as pa

# Decoded state beside the partitions (tails, masks, id lookups) when the reader is given
# no partition budget; with one, an eighth of it.
_DEFAULT_MEMO_BYTES = 256 * 1024**2
# How far back a live mask looks for an ancestor tail's mask to derive from (versions, and
# ids touched since): past that, making it from scratch costs about as much.
_MAX_DERIVE_STEPS = 64
_MAX_DERIVE_IDS = 4096


def _partition_bytes(part: Partition) -> int:
    return part.vectors.nbytes + part.ids.nbytes


class NamespaceReader:
    """Decoded access to segments and WAL of any namespace in one store."""

    def __init__(self, store: ObjectStore, fetch_threads: int = 16, partition_bytes: int | None = None) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fetch")
        memo_bytes = partition_bytes // 8 if partition_bytes else _DEFAULT_MEMO_BYTES
        self._layouts = Memo(1024)
        # Decoded partitions share their vectors with the cached bytes; bounding them by the
        # same budget keeps a worker's memory near its cache setting.
        self._partitions = Memo(1 << 20, partition_bytes, _partition_bytes)
        self._tombstones = Memo(1024)
        self._docs = Memo(64)
        self._ids = Memo(64)
        self._lexical = Memo(256)
        self._masks = Memo(1 << 16, memo_bytes // 2, lambda mask: mask.nbytes)
        self._lookups = Memo(1 << 16, memo_bytes // 2, lambda lookup: lookup.nbytes)
        self.tails = TailReader(store, fetch_threads, memo_bytes)

    def has_layout(self, ns: str, seg: SegmentRef) -> bool:
        return segment.file_key(ns, seg.id, "ivf.bin") in self._layouts

    def has_tail(self, manifest: Manifest) -> bool:
        return self.tails.has(manifest)

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

    def filter_mask(self, ns: str, seg: SegmentRef, filt: Filter, filter_key: str) -> np.ndarray:
        """Rows of the segment whose id and attributes match ``filt`` (DuckDB)."""

        from vectordb.filter_sql import matching_rows  # DuckDB: imported when a filter first needs it

        def make() -> np.ndarray:
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
        None: all of them. Needs the segment's ids (its docs): for the filtered and BM25
        paths, which read them anyway."""
        dead = self.tombstones(ns, seg)
        if not dead and not tail.touched:
            return None
        return self._live(("live", seg.id, seg.tombstones_key), dead, tail,
                          lambda: self._lookups.get(("segment", seg.id), lambda: RowLookup(self.ids(ns, seg))))

    def partition_live(self, ns: str, seg: SegmentRef, p: int, part: Partition, tail: Tail) -> np.ndarray | None:
        """Rows of partition ``p`` that are neither tombstoned nor overridden by ``tail``;
        None: all of them. Reads nothing beyond the partition itself."""
        dead = self.tombstones(ns, seg)
        if not dead and not tail.touched:
            return None
        key = (segment.file_key(ns, seg.id, "vectors.bin"), p)
        return self._live(("plive", *key, seg.tombstones_key), dead, tail,
                          lambda: self._lookups.get(("partition", *key), lambda: RowLookup(part.ids)))

    def _live(self, key: tuple, dead: frozenset[str], tail: Tail, lookup) -> np.ndarray:
        """The live mask of rows ``lookup()`` finds, memoised under ``key`` + the tail.

        Derived from the mask of the nearest ancestor of ``tail`` that has one, clearing
        the rows of the ids touched since (the usual case beside a writer: cost follows
        the new writes); else made from scratch, a search per row in C and Python only for
        dead rows."""

        def make() -> np.ndarray:
            rows = lookup()
            added: set[str] = set()
            version = tail
            for _ in range(_MAX_DERIVE_STEPS):
                parent, step = version.parent, version.step
                if parent is None or step is None:
                    break
                added |= step.added
                previous = self._masks.peek((*key, parent.serial))
                if previous is not None:
                    changed = rows.rows(added)
                    if not len(changed):
                        return previous  # shared: masks are read-only once made
                    mask = previous.copy()
                    mask[changed] = False
                    return _frozen(mask)
                if len(added) > _MAX_DERIVE_IDS:
                    break
                version = parent
            mask = np.ones(len(rows), bool)
            if dead:
                dead_hashes = self._masks.get(("dead-hashes", key[-1]), lambda: hash_set(dead))
                mask[rows.candidates(dead_hashes, dead.__contains__)] = False
            if tail.touched:
                mask[rows.candidates(tail.touched_hashes, tail.touched.__contains__)] = False
            return _frozen(mask)

        return self._masks.get((*key, tail.serial), make)


def _frozen(array: np.ndarray) -> np.ndarray:
    """``array``, read-only: a memoised mask is shared by every query (and by later masks)."""
    array.flags.writeable = False
    return array
