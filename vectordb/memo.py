"""A thread-safe LRU of decoded objects, bounded in entries and in bytes, single-flight.

The reader keeps what it decodes from immutable objects here (partitions, tails, masks,
id lookups). Concurrent misses of one key share one ``make``: with a writer committing,
every query of a strong reader meets each new version at about the same moment, and
eight threads folding the same tail at once cost eight times the CPU for one answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class _Flight:
    """One ``make`` in progress: its lock is held until the value (or error) is set.
    (A bare lock, not a Future: a miss of a small mask should not cost a Condition.)"""

    __slots__ = ("lock", "value", "error")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def wait(self):
        with self.lock:
            pass
        if self.error is not None:
            raise self.error
        return self.value


class Memo:
    """LRU of at most ``entries`` values and, when ``weigh`` is given, ``max_bytes`` of
    them (``weigh(value)`` bytes each; the newest value stays even if it alone is over)."""

    def __init__(self, entries: int, max_bytes: int | None = None, weigh: Callable[[Any], int] | None = None) -> None:
        self._entries = entries
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._bytes = 0
        self._data: OrderedDict = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def peek(self, key: Hashable):
        """The value of ``key`` if present (None if not), without loading or waiting."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

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

    def __contains__(self, key: Hashable) -> bool:
        """Present, or being made by some caller right now."""
        with self._lock:
            return key in self._data or key in self._flights

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, make: Callable[[], Any]):
        """The value of ``key``, made by ``make()`` if absent. Callers that miss while
        another caller makes the same key wait for its value (or its exception)."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            return flight.wait()
        try:
            value = make()
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            flight.error = exc
            flight.lock.release()
            raise
        with self._lock:
            del self._flights[key]
            self._insert(key, value)
        flight.value = value
        flight.lock.release()
        return value

    def _insert(self, key: Hashable, value) -> None:
        if key not in self._data:
            self._data[key] = value
            self._bytes += self._weigh(value) if self._weigh else 0
        while len(self._data) > self._entries or (
            self._max_bytes is not None and self._bytes > self._max_bytes and len(self._data) > 1
        ):
            _, old = self._data.popitem(last=False)
            self._bytes -= self._weigh(old) if self._weigh else 0
