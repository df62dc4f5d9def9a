"""An ObjectStore wrapper that records every request reaching the real store, and the
number of sequential round trips those requests needed.

Put it under the read cache (``CachedStore(CountingStore(open_raw_store(settings)), ...)``)
so that it sees what a worker really asks of object storage: cache hits never reach it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from storage.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class Request:
    op: str  # GET, GET_RANGE, HEAD, PUT, PUT_IF_ABSENT, DELETE, LIST, LIST_PREFIXES
    key: str
    bytes: int
    start: float  # perf_counter seconds
    end: float
    error: str | None = None


class CountingStore:
    """An ObjectStore wrapper that records every request that reaches the real store."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self._lock = threading.Lock()
        self.requests: list[Request] = []

    def take(self) -> list[Request]:
        """The requests recorded since the last take, oldest first."""
        with self._lock:
            out, self.requests = self.requests, []
        return sorted(out, key=lambda r: r.start)

    def _timed(self, op: str, key: str, fn, size=len):
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            self._record(Request(op, key, 0, started, time.perf_counter(), type(exc).__name__))
            raise
        self._record(Request(op, key, size(result), started, time.perf_counter()))
        return result

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def get(self, key: str) -> bytes:
        return self._timed("GET", key, lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._timed("GET_RANGE", key, lambda: self.inner.get_range(key, start, length))

    def head(self, key: str) -> ObjectInfo | None:
        return self._timed("HEAD", key, lambda: self.inner.head(key), lambda _: 0)

    def put(self, key: str, data: bytes) -> None:
        self._timed("PUT", key, lambda: self.inner.put(key, data), lambda _: len(data))

    def put_file(self, key: str, path) -> None:
        size = os.path.getsize(path)
        self._timed("PUT", key, lambda: self.inner.put_file(key, path), lambda _: size)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._timed("PUT_IF_ABSENT", key, lambda: self.inner.put_if_absent(key, data), lambda _: len(data))

    def delete(self, key: str) -> None:
        self._timed("DELETE", key, lambda: self.inner.delete(key), lambda _: 0)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return iter(self._timed("LIST", prefix, lambda: list(self.inner.list(prefix, start_after)), lambda _: 0))

    def list_prefixes(self, prefix: str) -> list[str]:
        return self._timed("LIST_PREFIXES", prefix, lambda: self.inner.list_prefixes(prefix), lambda _: 0)


def round_trips(requests: list[Request]) -> int:
    """Depth of the critical path: requests that overlap in time form one round."""
    rounds, round_end = 0, None
    for r in sorted(requests, key=lambda r: r.start):
        if round_end is None or r.start >= round_end:
            rounds += 1
            round_end = r.end
        else:
            round_end = max(round_end, r.end)
    return rounds


def describe_requests(requests: list[Request]) -> dict:
    t0 = requests[0].start if requests else 0.0
    return {
        "requests": len(requests),
        "bytes": sum(r.bytes for r in requests),
        "round_trips": round_trips(requests),
        "by_op": dict(Counter(r.op + (f"({r.error})" if r.error else "") for r in requests)),
        "trace": [
            {"op": r.op, "key": r.key.split("/", 1)[-1], "bytes": r.bytes, "start_ms": round((r.start - t0) * 1000, 2),
             "end_ms": round((r.end - t0) * 1000, 2), **({"error": r.error} if r.error else {})}
            for r in requests
        ],
    }
