"""The indexer: folds the WAL tail into an immutable IVF segment, and compacts.

Indexing reads the manifest's WAL objects, replays them (last write wins), builds one
segment from the live upserts, and records in each older segment which of its ids the
tail overwrote or deleted (a new tombstone list per touched segment). Compaction also
rewrites every segment's live rows into one new segment, so dead rows stop taking space
once garbage collection removes the objects no retained manifest references.

The commit is a manifest create like any write. Writers may commit meanwhile: their WAL
entries come after the ones we indexed, so we rebase by keeping them. If another indexer
changed the segments meanwhile, our work is stale and is redone from the new manifest.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from storage.base import ObjectStore
from storage.errors import PreconditionFailed
from vectordb import segment
from vectordb.catalog import Catalog
from vectordb.errors import Conflict
from vectordb.manifest import Manifest, SegmentRef
from vectordb.reader import NamespaceReader
from vectordb.rows import RowBatch
from vectordb.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexResult:
    version: int
    indexed_rows: int  # rows written into the new segment
    segments: int  # segments after the run
    compacted: bool
    seconds: float


class Indexer:
    def __init__(self, catalog: Catalog, store: ObjectStore, reader: NamespaceReader, settings: Settings) -> None:
        self.catalog = catalog
        self.store = store
        self.reader = reader
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._running: set[str] = set()

    def _lock(self, ns: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(ns, threading.Lock())

    def index(self, ns: str, compact: bool = False) -> IndexResult:
        """Index the tail now (and compact every segment if ``compact``)."""
        started = time.perf_counter()
        with self._lock(ns):
            for _ in range(self.settings.commit_retries):
                base = self.catalog.latest(ns)
                compact = compact or len(base.segments) >= self.settings.compact_max_segments
                if not base.wal and not (compact and _worth_compacting(base)):
                    return IndexResult(base.version, 0, len(base.segments), False, time.perf_counter() - started)
                built, segments, rows = self._build(base, compact)
                manifest = self._commit(base, segments)
                if manifest is not None:
                    return IndexResult(manifest.version, rows, len(manifest.segments), compact, time.perf_counter() - started)
                log.info("index of %s raced with another indexer; redoing", ns)
        raise Conflict(f"indexing {ns!r} kept conflicting with other indexers")

    def maybe_index(self, manifest: Manifest) -> None:
        """Start a background index build when the tail has grown past the threshold."""
        if not self.settings.auto_index or manifest.unindexed_rows < self.settings.index_threshold_rows:
            return
        ns = manifest.namespace
        with self._locks_lock:
            if ns in self._running:
                return
            self._running.add(ns)

        def run() -> None:
            try:
                self.index(ns)
            except Exception:
                log.exception("background index of %s failed", ns)
            finally:
                with self._locks_lock:
                    self._running.discard(ns)

        threading.Thread(target=run, name=f"index-{ns}", daemon=True).start()

    # --- building ------------------------------------------------------------------------
    def _build(self, base: Manifest, compact: bool):
        ns, config = base.namespace, base.config
        tail = self.reader.tail(base)
        if compact:
            parts = [tail.rows]
            for seg in base.segments:
                parts.append(self._live_rows(ns, seg, self.reader.tombstones(ns, seg) | tail.touched))
            rows = RowBatch.concat(parts, config.dimensions)
            kept: list[SegmentRef] = []
        else:
            rows = tail.rows
            kept = [self._with_tombstones(base, seg, tail.touched) for seg in base.segments]
            kept = [s for s in kept if s.live_rows > 0]
        built = None
        if len(rows):
            built = segment.build(
                rows, config.metric, self.settings.rows_per_partition, self.settings.flat_max_rows, config.vector_dtype
            )
            self._upload(ns, built)
            kept.append(SegmentRef(built.id, built.rows, built.nlist, built.bytes))
        return built, tuple(kept), len(rows)

    def _live_rows(self, ns: str, seg: SegmentRef, dead: frozenset[str]) -> RowBatch:
        vectors, ids = self.reader.all_rows(ns, seg)
        docs = self.reader.docs(ns, seg)
        batch = RowBatch(ids, vectors, docs.column("text").to_pylist(), docs.column("attributes").to_pylist())
        return batch.take(i for i, doc_id in enumerate(ids) if doc_id not in dead) if dead else batch

    def _with_tombstones(self, base: Manifest, seg: SegmentRef, touched: frozenset[str]) -> SegmentRef:
        ns = base.namespace
        if not touched:
            return seg
        old = self.reader.tombstones(ns, seg)
        ids = self.reader.docs(ns, seg).column("id").to_pylist()
        newly_dead = {i for i in ids if i in touched} - old
        if not newly_dead:
            return seg
        dead = old | newly_dead
        key = segment.tombstones_key(ns, seg.id, base.version + 1)
        self.store.put(key, segment.encode_tombstones(dead))
        return SegmentRef(seg.id, seg.rows, seg.nlist, seg.bytes, key, len(dead))

    def _upload(self, ns: str, built: segment.BuiltSegment) -> None:
        items = list(built.files.items())
        list(self.reader.pool.map(lambda kv: self.store.put(segment.file_key(ns, built.id, kv[0]), kv[1]), items))

    def _commit(self, base: Manifest, segments: tuple[SegmentRef, ...]) -> Manifest | None:
        """Commit, rebasing over writes that arrived meanwhile. None = segments changed under us."""
        current = base
        while True:
            if current.segments != base.segments or current.wal[: len(base.wal)] != base.wal:
                return None
            manifest = current.next(segments=segments, wal=current.wal[len(base.wal) :])
            try:
                self.catalog.commit(manifest)
                return manifest
            except PreconditionFailed:
                current = self.catalog.latest(base.namespace)


def _worth_compacting(manifest: Manifest) -> bool:
    return len(manifest.segments) > 1 or any(s.tombstones for s in manifest.segments)
