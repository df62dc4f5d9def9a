"""The indexer: folds the WAL tail into an immutable IVF segment, and compacts.

Indexing reads the manifest's WAL objects, replays them (last write wins), builds one
segment from the live upserts, and records in each older segment which of its ids the
tail overwrote or deleted (a new tombstone list per touched segment). Compaction also
rewrites some segments' live rows into the new segment (``ingest.compaction`` picks
which: size tiers, a maximum segment size), so dead rows stop taking space once garbage
collection removes the objects no retained manifest references. A build streams: rows
are read in chunks and spilled to a local directory, files are written and uploaded
from there (``vectordb.segment_writer``, ``ingest.build_input``), so its memory is
``build_memory_bytes`` whatever the size of the namespace. With ``ray_address`` set, the
rows are built as several segments by Ray tasks across a cluster (``ingest.ray_build``)
and committed here the same way.

The commit is a manifest create like any write. Writers may commit meanwhile: their WAL
entries come after the ones we indexed, so we rebase by keeping them. If another indexer
changed the segments meanwhile (or garbage collection removed an object we were reading),
our work is stale and is redone from the new manifest. If a garbage collection fenced at
or above our objects' key version meanwhile, it may have deleted them as garbage: we
upload them again under fresh keys before committing (see ``ingest.gc``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ingest import centroid_sets, compaction
from ingest.background import OnePerNamespace
from ingest.build_input import Chained, SegmentRows, WalTail
from storage.base import ObjectStore
from storage.errors import ObjectNotFound, PreconditionFailed
from vectordb import id_set, layout_hint, segment, wal
from vectordb.catalog import Catalog
from vectordb.errors import Conflict
from vectordb.id_set import IdSet
from vectordb.manifest import Manifest, SegmentRef
from vectordb.reader import NamespaceReader
from vectordb.segment_writer import BatchSource, BuiltSegment, RowSource
from vectordb.settings import Settings
from vectordb.tail import fold

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ingest.build_process import ChildBuilds
    from ingest.ray_build import RayBuilt

log = logging.getLogger(__name__)

# An explicit build waiting for a background child checks this often that the child is not
# starved (``Indexer._explicit_lock``, ``ChildBuilds.stop_starved``).
STARVED_CHECK_S = 1.0


def foldable(manifest: Manifest, settings: Settings) -> bool:
    """Whether ``manifest``'s tail may be folded in memory (by a build, a WAL merge): its WAL
    objects within an eighth of ``build_memory_bytes`` (decoded and folded, a tail takes
    about five times their bytes). A bigger one is streamed by the build (``WalTail``)."""
    return sum(ref.bytes for ref in manifest.wal) <= settings.build_memory_bytes // 8


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
    built: BuiltSegment | None  # the new segment, its files on local disk (None: no live rows)
    kept: list[SegmentRef]  # the base's segments that stay, before new tombstones
    dead: dict[str, segment.Tombstones] = field(default_factory=dict)  # segment id -> all its dead ids, rows
    rows: int = 0
    compacted: bool = False
    remote: RayBuilt | None = None  # segments a Ray build uploaded already (ingest.ray_build)
    published_id: str | None = None  # the id ``built`` was last uploaded under (publish)

    def publish(self, store: ObjectStore, pool, key_version: int) -> tuple[SegmentRef, ...]:
        """Upload the new segment and tombstone lists under ``key_version``; the segments of
        the version to commit."""
        ns = self.base.namespace
        segments = []
        for seg in self.kept:
            dead = self.dead.get(seg.id)
            if dead is not None:
                key = segment.tombstones_key(ns, seg.id, key_version)
                store.put(key, segment.encode_tombstones(dead.ids, dead.rows))
                seg = SegmentRef(seg.id, seg.rows, seg.nlist, seg.bytes, key, len(dead.ids))
            if seg.live_rows > 0:
                segments.append(seg)
        if self.built is not None:
            built = replace(self.built, id=segment.new_segment_id(key_version))
            items = list(built.files.items())
            list(pool.map(lambda kv: store.put_file(segment.file_key(ns, built.id, kv[0]), kv[1]), items))
            segments.append(SegmentRef(built.id, built.rows, built.nlist, built.bytes))
            self.published_id = built.id
        if self.remote is not None:
            segments.extend(self.remote.under(store, key_version))
        return tuple(segments)

    def close(self) -> None:
        if self.built is not None:
            self.built.close()


class Indexer:
    def __init__(self, catalog: Catalog, store: ObjectStore, reader: NamespaceReader, settings: Settings,
                 input_store: ObjectStore | None = None, children: ChildBuilds | None = None) -> None:
        """``input_store``: where a build reads its input (WAL objects, merged segments'
        rows), the store without its RAM cache: read once, they would only evict what
        queries use and add up to ``cache_bytes`` to the build's memory. ``children``:
        background builds run in child processes (``ingest.build_process``), not threads."""
        self.catalog = catalog
        self.store = store
        self.input_store = input_store if input_store is not None else store
        self.reader = reader
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._background = OnePerNamespace("index", settings.background_nice)
        self.children = children

    def lock(self, ns: str) -> threading.Lock:
        """Held while this process builds an index of ``ns``; a WAL merge holds it too
        (``ingest.wal_merge``), as either would make the other's work stale."""
        with self._locks_lock:
            return self._locks.setdefault(ns, threading.Lock())

    def index(self, ns: str, compact: bool = False) -> IndexResult:
        """Index the tail now, merging segments as :mod:`ingest.compaction` plans (with
        ``compact``: every segment that fits under ``segment_max_rows``)."""
        started = time.perf_counter()
        with self._explicit_lock(ns):
            for _ in range(self.settings.commit_retries):
                base = self.catalog.latest(ns)
                merge = self._plan(base, compact)
                if not base.wal and not merge:
                    return IndexResult(base.version, 0, len(base.segments), False, time.perf_counter() - started)
                try:
                    build = self._build(base, merge)
                except ObjectNotFound:
                    # Collected under us: a newer version no longer needs what we read.
                    log.info("index of %s read a collected object; redoing from the newest version", ns)
                    continue
                try:
                    manifest = self._commit(build)
                finally:
                    build.close()
                if manifest is not None:
                    return IndexResult(
                        manifest.version, build.rows, len(manifest.segments), bool(merge), time.perf_counter() - started
                    )
                log.info("index of %s raced with another indexer; redoing", ns)
        raise Conflict(f"indexing {ns!r} kept conflicting with other indexers")

    @contextlib.contextmanager
    def _explicit_lock(self, ns: str) -> Iterator[None]:
        """The namespace's lock, for an explicit build. A background build in a child holds
        it (its waiting thread does): waited for while it progresses, stopped once it gets
        less than a quarter of a core and moves no bytes, as an idle-class child does while
        the server is busy (``ingest.build_process``). No child of ``ns`` starts meanwhile."""
        lock = self.lock(ns)
        if self.children is None:
            with lock:
                yield
            return
        with self.children.explicit(ns):
            while not lock.acquire(timeout=STARVED_CHECK_S):
                self.children.stop_starved(ns)
            try:
                yield
            finally:
                lock.release()

    def _plan(self, base: Manifest, compact: bool) -> list[SegmentRef]:
        s = self.settings
        return compaction.plan(base.segments, compact, s.index_threshold_rows, s.compact_max_segments, s.segment_max_rows,
                               has_tail=bool(base.wal))

    def maybe_index(self, manifest: Manifest) -> None:
        """Start a background index build when the tail has grown past the threshold."""
        if not self.settings.auto_index or manifest.unindexed_rows < self.settings.index_threshold_rows:
            return
        ns = manifest.namespace

        def run() -> None:
            try:
                if self.children is None:
                    self.index(ns)
                    return
                with self.lock(ns):  # no WAL merge of ours beside the child's build
                    result = self.children.run(ns)
                if result is not None:
                    log.info("background index of %s: %s", ns, result)
            except Exception:
                log.exception("background index of %s failed", ns)

        self._background.start(ns, run)

    def close(self) -> None:
        """Stop background builds running in child processes (threads end with the process)."""
        if self.children is not None:
            self.children.close()

    # --- building ------------------------------------------------------------------------
    def _build(self, base: Manifest, merge: list[SegmentRef]) -> _Build:
        """Build a segment of the tail and the live rows of ``merge``; tombstones for the
        segments that stay."""
        ns, config = base.namespace, base.config
        on_ray = self.settings.ray_address is not None
        if not on_ray and self.reader.has_tail(base):  # a query folded it already
            held = self.reader.tail(base)
        elif not on_ray and foldable(base, self.settings):
            # Folded here from the store without its cache: the build reads these objects
            # once, and the reader's cache and tail memos would keep them beside the build.
            held = fold([wal.decode(data, config.dimensions)
                         for data in self.reader.pool.map(self.input_store.get, [ref.key for ref in base.wal])],
                        config.dimensions)
        else:
            held = None
        if held is not None:
            tail: RowSource = BatchSource(held.rows)
            touched = IdSet.of(held.touched) if base.segments else id_set.EMPTY
        else:
            tail = WalTail.read(self.input_store, base)
            touched = tail.touched
        build = _Build(base, None, [], compacted=bool(merge))
        sources = [tail]
        merged = {seg.id for seg in merge}
        for seg in base.segments:
            if seg.id in merged:
                sources.append(SegmentRows(self.input_store, self.reader, ns, seg, self.reader.tombstones(ns, seg),
                                           touched=touched))
                continue
            build.kept.append(seg)
            dead = self._dead_after(ns, seg, touched)
            if dead is not None:
                build.dead[seg.id] = dead
        s = self.settings
        if on_ray:  # Ray tasks read the WAL objects and merged segments from the store themselves
            from ingest import ray_build

            merging = [seg for seg in base.segments if seg.id in merged]
            build.remote = ray_build.build(s, self.reader, base, tail, merging, touched, base.version + 1)
            build.rows = build.remote.rows
            return build
        centroids_for = self._centroids_for(base, build.kept) if s.share_centroids else None
        build.built = segment.build(
            Chained(sources, config.dimensions), config.metric, s.rows_per_partition, s.flat_max_rows,
            config.vector_dtype, memory_bytes=s.build_memory_bytes, temp_dir=s.build_temp_dir,
            centroids_for=centroids_for, cluster_by=config.cluster_by,
        )
        build.rows = build.built.rows if build.built is not None else 0
        return build

    def _centroids_for(self, base: Manifest, kept: list[SegmentRef]):
        """The build's choice of centroids given its row count (:mod:`ingest.centroid_sets`)
        among the named sets of the segments it keeps (a compaction of every segment keeps
        none: it trains centroids for all the rows)."""
        layouts = [self.reader.layout(base.namespace, seg) for seg in kept]  # held by queries, mostly
        sets: dict[str, tuple] = {}
        for seg, layout in zip(kept, layouts):
            if layout.centroid_set is None:
                continue
            centroids, rows = sets.get(layout.centroid_set, (layout.centroids, 0))
            sets[layout.centroid_set] = (centroids, rows + seg.live_rows)
        candidates = [centroid_sets.CentroidSet(c, rows) for c, rows in sets.values()]
        kept_rows = sum(seg.live_rows for seg in kept)
        s = self.settings
        return lambda rows: centroid_sets.choose(candidates, rows, kept_rows + rows, s.rows_per_partition,
                                                 s.flat_max_rows)

    def _dead_after(self, ns: str, seg: SegmentRef, touched: IdSet) -> segment.Tombstones | None:
        """Every dead id of ``seg`` once the tail's ``touched`` ids override it, with their
        rows (so a reader's live mask needs no lookup of them); None if the tail kills none
        of its rows (its tombstone list stays as it is). By range (``NamespaceReader.rows_in``):
        one ``ids.bin`` bucket per touched id, or the table read through once for many."""
        if not touched:
            return None
        old = self.reader.tombstones(ns, seg)
        newly_dead = {i: row for i, row in self.reader.rows_in(ns, seg, touched).items() if i not in old}
        if not newly_dead:
            return None
        old_rows = self.reader.dead_rows(ns, seg) if old else np.zeros(0, np.int64)
        if old_rows is None:  # a list written without rows: look its ids up once
            old_rows = np.fromiter(self.reader.stored_rows(ns, seg, old).values(), np.int64)
        rows = np.concatenate([old_rows, np.fromiter(newly_dead.values(), np.int64)])
        return segment.Tombstones(old | newly_dead.keys(), rows)

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
                committed = self.catalog.commit(
                    current.next(segments=segments, wal=current.wal[len(base.wal) :], change=change)
                )
            except PreconditionFailed:
                current = self.catalog.latest(base.namespace)
                continue
            self._write_layout_hint(committed, build)
            return committed

    def _write_layout_hint(self, manifest: Manifest, build: _Build) -> None:
        """Rewrite ``layouts.bin`` for ``manifest`` (:mod:`vectordb.layout_hint`): the new
        segment's ``ivf.bin`` from its local file, the others' read from the store. Only a
        hint: a failure is logged, and cold workers read each ``ivf.bin`` meanwhile."""
        held = {build.published_id: build.built.read("ivf.bin")} if build.published_id is not None else {}
        try:
            layout_hint.write(self.store, manifest, held, self.reader.pool.map)
        except Exception:  # noqa: BLE001 - the commit stands; the hint is an optimisation
            log.warning("could not write the layout hint of %s", manifest.namespace, exc_info=True)
