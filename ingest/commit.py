"""Group commit: concurrent writes to a namespace become one WAL object and one manifest.

Each namespace has a queue drained by one committer thread. The thread waits a short
window (``group_commit_ms``) to gather what arrives, writes the gathered batches as one
WAL object, then commits manifest ``v+1`` with a conditional create. Losing that race to
another process means re-reading the newest manifest and retrying with the same WAL
object: the WAL object itself never conflicts because its key is unique. Callers are
acknowledged only after their manifest commit succeeded.
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
from vectordb.errors import Conflict, NamespaceNotFound
from vectordb.manifest import Manifest, WalRef
from vectordb.rows import WriteBatch
from vectordb.settings import Settings

log = logging.getLogger(__name__)

# One WAL object gathers at most this many rows; the rest wait for the next round.
_MAX_ROWS_PER_COMMIT = 100_000


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

    def write(self, ns: str, batch: WriteBatch, dims: int, timeout: float | None = None) -> int:
        """Make ``batch`` durable; returns the manifest version that committed it."""
        pending = _Pending(batch, dims)
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
            time.sleep(self.settings.group_commit_ms / 1000.0)
            with self._cond:
                queue = self._queues.get(ns, [])
                taken, rows = [], 0
                while queue and (not taken or rows + queue[0].rows <= _MAX_ROWS_PER_COMMIT):
                    item = queue.pop(0)
                    taken.append(item)
                    rows += item.rows
            self._commit(ns, taken)
            idle_deadline = time.monotonic() + 30.0

    def _commit(self, ns: str, taken: list[_Pending]) -> None:
        try:
            version = self.commit_batches(ns, [p.batch for p in taken], taken[0].dims)
        except BaseException as exc:  # every waiter must hear about the failure
            for p in taken:
                p.future.set_exception(exc)
            return
        for p in taken:
            p.future.set_result(version)

    def commit_batches(self, ns: str, batches: list[WriteBatch], dims: int) -> int:
        """Write one WAL object for ``batches`` and commit it; returns the version."""
        base = self.catalog.latest(ns)
        if base.config.dimensions != dims:
            raise NamespaceNotFound(f"namespace {ns!r} was re-created with another configuration")
        data = wal.encode(batches, dims)
        key = keys.wal_key(ns, base.version + 1, uuid.uuid4().hex)
        self.store.put(key, data)
        upserts = sum(len(b.upserts) for b in batches)
        deletes = sum(len(b.deletes) for b in batches)
        for attempt in range(self.settings.commit_retries):
            ref = WalRef(key, base.version + 1, upserts, deletes, len(data))
            manifest = base.next(wal=base.wal + (ref,))
            try:
                self.catalog.commit(manifest)
            except PreconditionFailed:
                self.stats.conflicts += 1
                # Back off a little so two writers stop colliding in lockstep.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                base = self.catalog.latest(ns)
                if base.config.dimensions != dims:
                    raise NamespaceNotFound(f"namespace {ns!r} was re-created with another configuration") from None
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
