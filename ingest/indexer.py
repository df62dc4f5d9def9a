"""The indexer: folds the WAL tail into an immutable IVF segment, and compacts.

Indexing reads the manifest's WAL objects, replays them (last write wins), builds one
segment from the live upserts, and records in each older segment which of its ids the
tail overwrote or deleted (a new tombstone list per touched segment). Compaction also
rewrites every segment's live rows into one new segment, so dead rows stop taking space
once garbage collection removes the objects no retained manifest references.

The commit is a manifest create like any write. Writers may commit meanwhile: their WAL
entries come after the ones we indexed, so we rebase by keeping them. If another indexer
changed the segments meanwhile (or garbage collection removed an object we were reading),
our work is stale and is redone from the new manifest. If a garbage collection fenced at
or above our objects' key version meanwhile, it may have deleted them as garbage: we
upload them again under fresh keys before committing (see ``ingest.gc``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

from storage.base import ObjectStore
from storage.errors import ObjectNotFound, PreconditionFailed
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


@dataclass
class _Build:
    """What one index run produced, ready to upload under any key version."""

    base: Manifest
    built: segment.BuiltSegment | None  # the new segment (None: no live rows)
    kept: list[SegmentRef]  # the base's segments that stay, before new tombstones
    dead: dict[str, frozenset[str]] = field(default_factory=dict)  # segment id -> all its dead ids
    rows: int = 0
    compacted: bool = False

    def publish(self, store: ObjectStore, pool, key_version: int) -> tuple[SegmentRef, ...]:
        """Upload the new segment and tombstone lists under ``key_version``; the segments of
        the version to commit."""
        ns = self.base.namespace
        segments = []
        for seg in self.kept:
            dead = self.dead.get(seg.id)
            if dead is not None:
                key = segment.tombstones_key(ns, seg.id, key_version)
                store.put(key, segment.encode_tombstones(dead))
                seg = SegmentRef(seg.id, seg.rows, seg.nlist, seg.bytes, key, len(dead))
            if seg.live_rows > 0:
                segments.append(seg)
        if self.built is not None:
            built = replace(self.built, id=segment.new_segment_id(key_version))
            items = list(built.files.items())
            list(pool.map(lambda kv: store.put(segment.file_key(ns, built.id, kv[0]), kv[1]), items))
            segments.append(SegmentRef(built.id, built.rows, built.nlist, built.bytes))
        return tuple(segments)


class Indexer:
    def __init__(self, catalog: Catalog, store: ObjectStore, reader: NamespaceReader, settings: Settings) -> None:
        self.catalog = catalog
        self.store = store
        self.reader = reader
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._running: set[str] = set()

    def lock(self, ns: str) -> threading.Lock:
        """Held while this process builds an index of ``ns``; a WAL merge holds it too
        (``ingest.wal_merge``), as either would make the other's work stale."""
        with self._locks_lock:
            return self._locks.setdefault(ns, threading.Lock())

    def index(self, ns: str, compact: bool = False) -> IndexResult:
        """Index the tail now (and compact every segment if ``compact``)."""
        started = time.perf_counter()
        with self.lock(ns):
            for _ in range(self.settings.commit_retries):
                base = self.catalog.latest(ns)
                compact = compact or len(base.segments) >= self.settings.compact_max_segments
                if not base.wal and not (compact and _worth_compacting(base)):
                    return IndexResult(base.version, 0, len(base.segments), False, time.perf_counter() - started)
                try:
                    build = self._build(base, compact)
                except ObjectNotFound:
                    # Collected under us: a newer version no longer needs what we read.
                    log.info("index of %s read a collected object; redoing from the newest version", ns)
                    continue
                manifest = self._commit(build)
                if manifest is not None:
                    return IndexResult(
                        manifest.version, build.rows, len(manifest.segments), compact, time.perf_counter() - started
                    )
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
    def _build(self, base: Manifest, compact: bool) -> _Build:
        ns, config = base.namespace, base.config
        tail = self.reader.tail(base)
        build = _Build(base, None, [], compacted=compact)
        if compact:
            parts = [tail.rows]
            for seg in base.segments:
                parts.append(self._live_rows(ns, seg, self.reader.tombstones(ns, seg) | tail.touched))
            rows = RowBatch.concat(parts, config.dimensions)
        else:
            rows = tail.rows
            build.kept = list(base.segments)
            for seg in base.segments:
                dead = self._dead_after(ns, seg, tail.touched)
                if dead is not None:
                    build.dead[seg.id] = dead
        if len(rows):
            build.built = segment.build(
                rows, config.metric, self.settings.rows_per_partition, self.settings.flat_max_rows,
                config.vector_dtype,
            )
        build.rows = len(rows)
        return build

    def _live_rows(self, ns: str, seg: SegmentRef, dead: frozenset[str]) -> RowBatch:
        vectors, ids = self.reader.all_rows(ns, seg)
        docs = self.reader.docs(ns, seg)
        batch = RowBatch(ids, vectors, docs.column("text").to_pylist(), docs.column("attributes").to_pylist())
        return batch.take(i for i, doc_id in enumerate(ids) if doc_id not in dead) if dead else batch

    def _dead_after(self, ns: str, seg: SegmentRef, touched: frozenset[str]) -> frozenset[str] | None:
        """Every dead id of ``seg`` once the tail's ``touched`` ids override it; None if
        the tail kills none of its rows (its tombstone list stays as it is)."""
        if not touched:
            return None
        old = self.reader.tombstones(ns, seg)
        ids = self.reader.docs(ns, seg).column("id").to_pylist()
        newly_dead = {i for i in ids if i in touched} - old
        return old | newly_dead if newly_dead else None

    def _commit(self, build: _Build) -> Manifest | None:
        """Upload and commit, rebasing over writes that arrived meanwhile. None = the
        segments changed under us (the build is stale)."""
        base = build.base
        key_version = base.version + 1
        segments = build.publish(self.store, self.reader.pool, key_version)
        current = base
        while True:
            if (
                current.segments != base.segments
                or current.wal[: len(base.wal)] != base.wal
                or current.incarnation != base.incarnation
            ):
                return None
            if current.gc_fence >= key_version:
                # A collection may have taken our uploads for garbage: upload them again.
                key_version = current.version + 1
                segments = build.publish(self.store, self.reader.pool, key_version)
            change = {"op": "compact" if build.compacted else "index", "rows": build.rows}
            try:
                return self.catalog.commit(
                    current.next(segments=segments, wal=current.wal[len(base.wal) :], change=change)
                )
            except PreconditionFailed:
                current = self.catalog.latest(base.namespace)


def _worth_compacting(manifest: Manifest) -> bool:
    return len(manifest.segments) > 1 or any(s.tombstones for s in manifest.segments)
