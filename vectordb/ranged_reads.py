"""Many small ranges of one object, fetched as few parallel ranged GETs.

Reading the fields of ten hits, a filter's column chunks or a few hash buckets means
many small ranges of one object. Ranges closer than ``gap`` bytes are read as one GET
(a round trip costs far more than the bytes between them), the GETs run in parallel, and
:class:`Spans` hands out any range inside what was fetched. :class:`SpanFile` puts a
file interface on it for pyarrow, so a Parquet reader given the footer reads only the
column chunks fetched here.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from collections.abc import Iterable
from concurrent.futures import Executor

from storage.base import ObjectStore


def coalesce(ranges: Iterable[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """(start, length) ranges merged where they overlap or lie within ``gap`` bytes (-1:
    only where they overlap)."""
    out: list[list[int]] = []
    for start, length in sorted(r for r in ranges if r[1] > 0):
        if out and start <= out[-1][0] + out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], start + length - out[-1][0])
        else:
            out.append([start, length])
    return [(s, n) for s, n in out]


def coalesce_within(ranges: Iterable[tuple[int, int]], gap: int, budget: int) -> list[tuple[int, int]]:
    """:func:`coalesce` within ``gap``, then the closest neighbours merged too, smallest
    gap first, while the bytes read between them add up to at most ``budget``: fewer GETs
    for many scattered small ranges (a GET costs about as much up to ~100 KB) at a
    bounded price in bytes."""
    merged = coalesce(ranges, gap)
    if budget <= 0 or len(merged) < 2:
        return merged
    starts = [s for s, _ in merged]
    ends = [s + n for s, n in merged]
    gaps = sorted((starts[i + 1] - ends[i], i) for i in range(len(merged) - 1))
    join = [False] * (len(merged) - 1)  # join[i]: range i and i + 1 become one
    for size, i in gaps:
        if size > budget:
            break
        budget -= size
        join[i] = True
    out = [list(merged[0])]
    for i, (start, length) in enumerate(merged[1:]):
        if join[i]:
            out[-1][1] = start + length - out[-1][0]
        else:
            out.append([start, length])
    return [(s, n) for s, n in out]


def split_at(ranges: list[tuple[int, int]], bounds, most: int) -> list[tuple[int, int]]:
    """``ranges`` (each made of whole pieces: ``bounds`` are the pieces' start offsets, and
    the end, ascending) cut at piece boundaries into ranges of at most ``most`` bytes where
    the pieces allow (a piece bigger than ``most`` is a range alone)."""
    out = []
    for start, length in ranges:
        end = start + length
        while end - start > most:
            cut = int(bounds[bisect_right(bounds, start + most) - 1])
            if cut <= start:  # a piece bigger than ``most``: alone
                cut = int(bounds[bisect_right(bounds, start)])
            out.append((start, cut - start))
            start = cut
        if end > start:
            out.append((start, end - start))
    return out


class Spans:
    """Fetched byte spans of one object."""

    def __init__(self, spans: dict[int, bytes]) -> None:
        self._starts = sorted(spans)
        self._spans = spans

    def get(self, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` if one fetched span holds them."""
        import bisect

        i = bisect.bisect_right(self._starts, start) - 1
        if i < 0:
            return None
        at = self._starts[i]
        data = self._spans[at]
        if start + length > at + len(data):
            return None
        return data[start - at : start - at + length]

    def __getitem__(self, span: tuple[int, int]) -> bytes:
        data = self.get(*span)
        if data is None:
            raise KeyError(span)
        return data


def fetch(store: ObjectStore, pool: Executor | None, key: str, ranges: Iterable[tuple[int, int]],
          gap: int = 0) -> Spans:
    """Every range of ``ranges`` (coalesced within ``gap``), fetched in parallel on ``pool``
    (or in this thread when ``pool`` is None: a caller already on the pool must not wait
    for it)."""
    merged = coalesce(ranges, gap)
    if pool is None or len(merged) <= 1:
        blobs = [store.get_range(key, s, n) for s, n in merged]
    else:
        blobs = list(pool.map(lambda r: store.get_range(key, *r), merged))
    return Spans({s: b for (s, _), b in zip(merged, blobs)})


def fetch_many(store: ObjectStore, pool: Executor, wanted: dict[str, tuple[Iterable[tuple[int, int]], int]]) -> dict[str, Spans]:
    """Ranges of several objects (key -> (ranges, gap)) in one round of parallel GETs."""
    jobs = [(key, r) for key, (ranges, gap) in wanted.items() for r in coalesce(ranges, gap)]
    blobs = list(pool.map(lambda job: store.get_range(job[0], *job[1]), jobs)) if len(jobs) > 1 else \
        [store.get_range(key, *r) for key, r in jobs]
    out: dict[str, dict[int, bytes]] = {key: {} for key in wanted}
    for (key, (start, _)), blob in zip(jobs, blobs):
        out[key][start] = blob
    return {key: Spans(spans) for key, spans in out.items()}


class SpanFile(io.RawIOBase):
    """A read-only seekable file over prefetched :class:`Spans`: the ``size`` bytes of the
    object at ``key`` from offset ``base`` on. A read outside the spans is a ranged GET of
    its own."""

    def __init__(self, store: ObjectStore, key: str, size: int, spans: Spans, base: int = 0) -> None:
        super().__init__()
        self._store, self._key, self._size, self._spans, self._base = store, key, size, spans, base
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        length = max(0, end - self._pos)
        data = self._spans.get(self._base + self._pos, length)
        if data is None:
            data = self._store.get_range(self._key, self._base + self._pos, length) if length else b""
        self._pos += len(data)
        return bytes(data)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
