"""The read cache: an ObjectStore wrapper that keeps what ``get`` and ``get_range`` read.

Made for immutable keys (segments, WAL batches, manifest versions): a cached object is
never revalidated against the store. Writes and deletes through this wrapper drop the
key from the cache, but a write by another process is not seen; read a key that can
change with :meth:`CachedStore.get_uncached`. Absent keys are never cached, so ``head``
and a failed ``get`` always ask the store.

Tiers: a RAM LRU bounded in payload bytes, then optionally a :class:`DiskCache`, then
the store. Concurrent misses for the same object or range share one fetch
("single flight"), since a query reads partitions from many threads at once.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from storage.base import ObjectInfo, ObjectStore, check_range
from storage.disk_cache import DiskCache

# (key, start, length); the whole object is (key, 0, -1).
Entry = tuple[str, int, int]
_WHOLE = -1


class CachedStore:
    """``inner`` with a byte-bounded LRU (``max_bytes``; 0 disables it) and an optional
    disk tier in ``disk_dir`` bounded by ``disk_max_bytes``."""

    def __init__(
        self,
        inner: ObjectStore,
        max_bytes: int,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_max_bytes: int = 4 * 1024**3,
    ) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.max_bytes = max_bytes
        self._disk = DiskCache(disk_dir, disk_max_bytes, inner.uri) if disk_dir else None
        self._lock = threading.Lock()
        self._entries: OrderedDict[Entry, bytes] = OrderedDict()  # least recently used first
        self._by_key: dict[str, set[Entry]] = {}
        self._bytes = 0
        self._flights: dict[Entry, Future[bytes]] = {}
        self._counts: Counter[str] = Counter()

    # --- cached reads --------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self._read((key, 0, _WHOLE), lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        with self._lock:
            whole = self._entries.get((key, 0, _WHOLE))
            if whole is not None:
                self._entries.move_to_end((key, 0, _WHOLE))
                self._counts["requests"] += 1
                self._counts["hits"] += 1
                return whole[start : start + length]
        return self._read((key, start, length), lambda: self.inner.get_range(key, start, length))

    def discard(self, key: str, start: int, length: int) -> None:
        """Drop one ranged read from RAM (not from the disk tier): for a caller that keeps
        its own decoded copy, so the bytes are not held twice."""
        with self._lock:
            entry = (key, start, length)
            data = self._entries.pop(entry, None)
            if data is not None:
                self._forget(entry, data)

    def get_uncached(self, key: str) -> bytes:
        """The object as the store holds it now, bypassing (and not filling) the cache."""
        data = self.inner.get(key)
        with self._lock:
            self._counts["misses"] += 1
            self._counts["bytes_fetched"] += len(data)
        return data

    def stats(self) -> dict[str, int]:
        """Counters since start: ``requests`` (cached reads asked for), ``hits`` (from RAM),
        ``disk_hits``, ``misses`` (reads sent to the store), ``coalesced`` (reads that
        waited for another thread's fetch), ``bytes_fetched`` (from the store),
        ``evictions`` (from RAM); and the current ``ram_bytes``, ``ram_entries``,
        ``disk_bytes``."""
        with self._lock:
            counts = {
                name: self._counts[name]
                for name in ("requests", "hits", "disk_hits", "misses", "coalesced", "bytes_fetched", "evictions")
            }
            counts["ram_bytes"] = self._bytes
            counts["ram_entries"] = len(self._entries)
        counts["disk_bytes"] = self._disk.bytes if self._disk else 0
        return counts

    # --- passed through ------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)
        self._invalidate(key)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.inner.put_file(key, path)
        self._invalidate(key)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, data)
        self._invalidate(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self._invalidate(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after)

    def list_prefixes(self, prefix: str) -> list[str]:
        return self.inner.list_prefixes(prefix)

    # --- internals -----------------------------------------------------------------------

    def _read(self, entry: Entry, fetch: Callable[[], bytes]) -> bytes:
        """RAM, else join a fetch in flight, else lead one: disk tier, then the store."""
        with self._lock:
            self._counts["requests"] += 1
            data = self._entries.get(entry)
            if data is not None:
                self._entries.move_to_end(entry)
                self._counts["hits"] += 1
                return data
            flight = self._flights.get(entry)
            if flight is None:
                flight = self._flights[entry] = Future()
                leading = True
            else:
                self._counts["coalesced"] += 1
                leading = False
        if leading:
            return self._lead(entry, flight, fetch)
        return flight.result()  # the leader's bytes, or its exception

    def _lead(self, entry: Entry, flight: Future[bytes], fetch: Callable[[], bytes]) -> bytes:
        key, start, length = entry
        part = "all" if length == _WHOLE else f"{start}-{length}"
        try:
            data = self._disk.get(key, part) if self._disk else None
            from_disk = data is not None
            if data is None:
                data = fetch()
        except BaseException as exc:
            with self._lock:
                if self._flights.get(entry) is flight:
                    del self._flights[entry]
            flight.set_exception(exc)
            raise
        with self._lock:
            self._counts["disk_hits" if from_disk else "misses"] += 1
            if not from_disk:
                self._counts["bytes_fetched"] += len(data)
            # A write of the key while we fetched took our flight away: do not cache.
            fresh = self._flights.get(entry) is flight
            if fresh:
                del self._flights[entry]
                self._insert(entry, data)
        flight.set_result(data)
        if fresh and not from_disk and self._disk:
            self._disk.put(key, part, data)
        return data

    def _insert(self, entry: Entry, data: bytes) -> None:
        """Add to the LRU and evict down to the bound. Caller holds the lock."""
        if len(data) > self.max_bytes or entry in self._entries:
            return
        self._entries[entry] = data
        self._by_key.setdefault(entry[0], set()).add(entry)
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            old, old_data = self._entries.popitem(last=False)
            self._forget(old, old_data)
            self._counts["evictions"] += 1

    def _forget(self, entry: Entry, data: bytes) -> None:
        self._bytes -= len(data)
        entries = self._by_key[entry[0]]
        entries.discard(entry)
        if not entries:
            del self._by_key[entry[0]]

    def _invalidate(self, key: str) -> None:
        with self._lock:
            for entry in self._by_key.pop(key, set()):
                self._bytes -= len(self._entries.pop(entry))
            for entry in [e for e in self._flights if e[0] == key]:
                del self._flights[entry]  # its leader still answers its waiters
        if self._disk:
            self._disk.invalidate(key)
