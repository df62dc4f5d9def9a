"""Group commit: concurrent writes to a namespace become one WAL object and one manifest.

Each namespace has a queue drained by one committer thread. The thread waits a short
window (``group_commit_ms``) to gather what arrives, unless what is queued already fills a
WAL object worth writing (``_GATHERED_ROWS``: a bulk load's batch gains nothing from the
wait), writes the gathered batches as one WAL object, then commits manifest ``v+1`` with
a conditional create. Losing that race to
another process means re-reading the newest manifest and retrying with the same WAL
object: the WAL object itself never conflicts because its key is unique. Callers are
acknowledged only after their manifest commit succeeded.

Two checks keep a retried commit honest: the namespace must still be the incarnation the
batch was validated against (a drop and re-create in between fails the write: nothing is
written), and if a garbage collection fenced at or above the WAL object's key version
meanwhile, the object may be gone, so it is written again under a fresh key first (see
``ingest.gc``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from storage.base import ObjectStore
from storage.errors import PreconditionFailed
from vectordb import keys, wal
from vectordb.catalog import Catalog
from vectordb.errors import Conflict
from vectordb.manifest import Manifest, WalRef
from vectordb.rows import WriteBatch
from vectordb.settings import Settings

log = logging.getLogger(__name__)

# One WAL object gathers at most this many rows; the rest wait for the next round.
_MAX_ROWS_PER_COMMIT = 100_000
# Queued rows that make a commit start without the gathering window: the window is there to
# turn many small concurrent writes into one object, and this many rows are one already.
_GATHERED_ROWS = 1_000


@dataclass
class CommitStats:
    commits: int = 0
    batches: int = 0
    conflicts: int = 0  # manifest creates that lost the race and were retried
    rows: int = 0


@dataclass
class _Pending:
    batch: WriteBatch
    dims: int
    incarnation: int | None  # of the manifest the batch was validated against (None: any)
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.batch.upserts) + len(self.batch.deletes)


class GroupCommitter:
    """Durable writes for every namespace of one store, gathered per namespace."""

    def __init__(
        self,
        catalog: Catalog,
        store: ObjectStore,
        settings: Settings,
        on_commit: Callable[[Manifest], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.settings = settings
        self.on_commit = on_commit
        self.stats = CommitStats()
        self._queues: dict[str, list[_Pending]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._cond = threading.Condition()
        self._closed = False

    def write(
        self, ns: str, batch: WriteBatch, dims: int, timeout: float | None = None, incarnation: int | None = None
    ) -> int:
        """Make ``batch`` durable; returns the manifest version that committed it.

        ``incarnation``: that of the manifest ``batch`` was validated against; if the
        namespace is dropped (and perhaps re-created) before the commit, nothing is written
        and NamespaceNotFound (or Conflict) is raised.
        """
        pending = _Pending(batch, dims, incarnation)
        with self._cond:
            self._queues.setdefault(ns, []).append(pending)
            if ns not in self._threads or not self._threads[ns].is_alive():
                thread = threading.Thread(target=self._run, args=(ns,), name=f"commit-{ns}", daemon=True)
                self._threads[ns] = thread
                thread.start()
            self._cond.notify_all()
        return pending.future.result(timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self, ns: str) -> None:
        idle_deadline = time.monotonic() + 30.0
        while True:
            with self._cond:
                while not self._queues.get(ns) and not self._closed:
                    remaining = idle_deadline - time.monotonic()
                    if remaining <= 0:
                        # Idle: let the thread go; the next write starts a new one.
                        del self._threads[ns]
                        return
                    self._cond.wait(remaining)
                if self._closed and not self._queues.get(ns):
                    return
                gathered = sum(p.rows for p in self._queues.get(ns, ()))
            if gathered < _GATHERED_ROWS:
                time.sleep(self.settings.group_commit_ms / 1000.0)
            with self._cond:
                queue = self._queues.get(ns, [])
                taken = [queue.pop(0)]
                rows = taken[0].rows
                # One commit takes batches of one incarnation (the rest wait for the next).
                for item in list(queue):
                    if rows + item.rows > _MAX_ROWS_PER_COMMIT:
                        break
                    if item.incarnation == taken[0].incarnation:
                        queue.remove(item)
                        taken.append(item)
                        rows += item.rows
            self._commit(ns, taken)
            idle_deadline = time.monotonic() + 30.0

    def _commit(self, ns: str, taken: list[_Pending]) -> None:
        try:
            version = self.commit_batches(ns, [p.batch for p in taken], taken[0].dims, taken[0].incarnation)
        except BaseException as exc:  # every waiter must hear about the failure
            for p in taken:
                p.future.set_exception(exc)
            return
        for p in taken:
            p.future.set_result(version)

    def commit_batches(self, ns: str, batches: list[WriteBatch], dims: int, incarnation: int | None = None) -> int:
        """Write one WAL object for ``batches`` and commit it; returns the version.

        ``incarnation``: see :meth:`write`. Raises NamespaceNotFound if the namespace is
        dropped, Conflict if it was re-created or the commit lost too many races.
        """
        base = self._base(ns, dims, incarnation)
        data = wal.encode(batches, dims, wal.half_for(base.config.vector_dtype))
        key_version = base.version + 1
        key = keys.wal_key(ns, key_version, uuid.uuid4().hex)
        self.store.put(key, data)
        upserts = sum(len(b.upserts) for b in batches)
        deletes = sum(len(b.deletes) for b in batches)
        for attempt in range(self.settings.commit_retries):
            if base.gc_fence >= key_version:
                # A collection fenced at or above our object since we wrote it: it may have
                # deleted it as garbage. Write it again where no collection has looked yet.
                old, key_version = key, base.version + 1
                key = keys.wal_key(ns, key_version, uuid.uuid4().hex)
                self.store.put(key, data)
                self.store.delete(old)
            ref = WalRef(key, base.version + 1, upserts, deletes, len(data))
            try:
                change = {"op": "write", "upserted": upserts, "deleted": deletes}
                manifest = self.catalog.commit(base.next(wal=base.wal + (ref,), change=change))
            except PreconditionFailed:
                self.stats.conflicts += 1
                # Back off a little so two writers stop colliding in lockstep.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                base = self._base(ns, dims, incarnation)
                continue
            self.stats.commits += 1
            self.stats.batches += len(batches)
            self.stats.rows += upserts + deletes
            if self.on_commit is not None:
                try:
                    self.on_commit(manifest)
                except Exception:  # a failed hook must not un-acknowledge a durable write
                    log.exception("post-commit hook failed")
            return manifest.version
        raise Conflict(f"gave up committing to {ns!r} after {self.settings.commit_retries} conflicting attempts")

    def _base(self, ns: str, dims: int, incarnation: int | None) -> Manifest:
        """The newest version, if it is still the namespace the batch was made for."""
        base = self.catalog.latest(ns)  # NamespaceNotFound once dropped
        if (incarnation is not None and base.incarnation != incarnation) or base.config.dimensions != dims:
            raise Conflict(
                f"namespace {ns!r} was dropped and created again while this write was in flight; "
                "nothing was written: send it again"
            )
        return base
