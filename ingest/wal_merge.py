"""WAL merging: the unindexed tail as a few WAL objects, not one per commit.

Every commit appends a WAL object to the manifest, and an index build only empties the
list once the tail holds ``index_threshold_rows`` rows. With one writer committing small
batches that is thousands of objects, listed in every new manifest, which every strong
reader fetches and decodes at each commit (issue 11: a 270 KB manifest at 1,000 objects,
3.7 ms to decode at 2,000). So once a manifest lists more than ``wal_merge_objects`` WAL
objects, the ingest worker that committed it folds them (last write wins,
``vectordb.tail``) into one merged WAL object: the live upserts with their vectors, text
and attributes, and a delete record for every id whose last operation is a delete (it
still overrides the rows older segments hold). Then it commits a manifest in which that
one object replaces exactly the objects it folded; objects committed meanwhile follow it.

The commit follows the same rules as an index build (``ingest.indexer``):

* the merged object's key version is its base version + 1, and if the version it is about
  to commit on carries a garbage-collection fence at or above that, it is uploaded again
  under a fresh key first (the collection may have taken it for garbage, ``ingest.gc``);
* on a lost race it re-reads the newest version and keeps the objects committed meanwhile
  after the merged one, but gives up if that version's segments differ, its WAL list does
  not start with the objects it merged (an index build, a restore or another merge got
  there first) or the namespace was re-created;
* the objects it replaced are garbage for the collector; nothing is deleted here.

A merge never waits for an index build of its namespace in this process, and an index
build waits for a merge (they share the indexer's lock): either would make the other's
work stale. Across processes, background merges stop once the tail is due for an index
build (the build empties it anyway), so they do not keep invalidating a slow build.

The merged object's name records which objects it holds (``vectordb.wal.merged_uid``), so
a reader that folded them already goes on from its tail without fetching it
(``vectordb.tail_reader``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ingest.background import OnePerNamespace
from ingest.indexer import foldable
from storage.base import ObjectStore
from storage.errors import PreconditionFailed
from vectordb import keys, wal
from vectordb.catalog import Catalog
from vectordb.errors import NamespaceNotFound
from vectordb.manifest import Manifest, WalRef
from vectordb.reader import NamespaceReader
from vectordb.rows import WriteBatch
from vectordb.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeResult:
    version: int | None  # the version committed (or found, if nothing was merged); None: skipped
    objects: int  # WAL objects folded into one (0: nothing merged)
    rows: int  # rows of the merged object: live upserts and delete records
    seconds: float


@dataclass
class MergeStats:
    merges: int = 0
    objects: int = 0  # WAL objects replaced by merged ones
    abandoned: int = 0  # merges made stale by an index build, a restore or another merge


class WalMerger:
    """Background and on-demand WAL merges for every namespace of one store.

    ``lock(ns)`` is the indexer's per-namespace lock (``Indexer.lock``), held while a
    merge runs so that an index build of this process never races it.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: ObjectStore,
        reader: NamespaceReader,
        settings: Settings,
        lock: Callable[[str], threading.Lock],
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.reader = reader
        self.settings = settings
        self.stats = MergeStats()
        self._lock = lock
        self._background = OnePerNamespace("merge", settings.background_nice)

    def maybe_merge(self, manifest: Manifest) -> None:
        """Start a background merge of ``manifest``'s namespace when its WAL list is longer
        than ``wal_merge_objects`` (and no index build is due: it would empty the list; and
        the tail is ``foldable`` in memory: with auto_index off, a tail that grew past that
        waits for an explicit build, which streams it)."""
        limit = self.settings.wal_merge_objects
        if limit <= 0 or len(manifest.wal) <= limit or self._index_due(manifest) or not foldable(manifest, self.settings):
            return
        ns = manifest.namespace

        def run() -> None:
            try:
                # Writes that came while it ran did not start another: go on while the list
                # is still too long (and the last merge got somewhere).
                while self.merge(ns, min_objects=limit + 1).objects:
                    newest = self.catalog.latest(ns)
                    if len(newest.wal) <= limit or self._index_due(newest) or not foldable(newest, self.settings):
                        break
            except NamespaceNotFound:
                pass  # dropped meanwhile: nothing left to merge
            except Exception:
                log.exception("background WAL merge of %s failed", ns)

        self._background.start(ns, run)

    def merge(self, ns: str, min_objects: int = 2) -> MergeResult:
        """Fold the newest version's WAL objects into one and commit that, if it lists at
        least ``min_objects`` (and at least 2) of them.

        Skipped (version None) while this process builds an index of ``ns``. Raises
        NamespaceNotFound if the namespace does not exist or was dropped meanwhile.
        """
        started = time.perf_counter()
        lock = self._lock(ns)
        if not lock.acquire(blocking=False):  # an index build runs: it empties the tail anyway
            return MergeResult(None, 0, 0, time.perf_counter() - started)
        try:
            base = self.catalog.latest(ns)
            if len(base.wal) < max(2, min_objects):
                return MergeResult(base.version, 0, 0, time.perf_counter() - started)
            tail = self.reader.tail(base)
            # Rows in the fold's order, so that a reader extending its tail past this object
            # and one folding it from scratch hold the same rows in the same order.
            data = wal.encode([WriteBatch(tail.rows, sorted(tail.deleted))], base.config.dimensions,
                              wal.half_for(base.config.vector_dtype))
            committed = self._commit(base, data, len(tail.rows), len(tail.deleted))
        finally:
            lock.release()
        seconds = time.perf_counter() - started
        if committed is None:
            self.stats.abandoned += 1
            return MergeResult(base.version, 0, 0, seconds)
        self.stats.merges += 1
        self.stats.objects += len(base.wal)
        return MergeResult(committed.version, len(base.wal), len(tail.rows) + len(tail.deleted), seconds)

    def _commit(self, base: Manifest, data: bytes, upserts: int, deletes: int) -> Manifest | None:
        """Upload the merged object and commit it in place of ``base``'s WAL objects,
        rebasing over the writes committed meanwhile. None: the merge went stale."""
        ns, merged = base.namespace, tuple(w.key for w in base.wal)
        key_version = base.version + 1
        key = self._upload(ns, key_version, merged, data)
        current = base
        change = {"op": "merge", "objects": len(merged), "rows": upserts + deletes}
        for attempt in range(self.settings.commit_retries):
            if (
                current.segments != base.segments
                or current.wal[: len(base.wal)] != base.wal
                or current.incarnation != base.incarnation
            ):
                return None
            if current.gc_fence >= key_version:
                # A collection fenced at or above our upload: it may have deleted it.
                key_version = current.version + 1
                key = self._upload(ns, key_version, merged, data)
            ref = WalRef(key, current.version + 1, upserts, deletes, len(data))
            try:
                return self.catalog.commit(current.next(wal=(ref, *current.wal[len(base.wal) :]), change=change))
            except PreconditionFailed:
                # A writer committed meanwhile (the usual case beside a busy one): back off a
                # little so we stop colliding in lockstep, then rebase on the newest version.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                current = self.catalog.latest(ns)
        log.info("WAL merge of %s lost %d races in a row; leaving it to the next commit", ns, self.settings.commit_retries)
        return None

    def _upload(self, ns: str, key_version: int, merged: tuple[str, ...], data: bytes) -> str:
        key = keys.wal_key(ns, key_version, wal.merged_uid(uuid.uuid4().hex, merged))
        self.store.put(key, data)
        return key

    def _index_due(self, manifest: Manifest) -> bool:
        return self.settings.auto_index and manifest.unindexed_rows >= self.settings.index_threshold_rows
