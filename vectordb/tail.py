"""Folding write-ahead-log batches into the state they describe.

Later writes win: replaying every row in commit order, the last operation on an id
decides whether it is live (and with which vector, text and attributes) or deleted.

:func:`fold` replays a whole tail. :func:`extend` replays only the batches appended since
a tail that was already folded: a manifest's WAL is the previous version's plus the new
commits (until an index build drops a prefix), so with one writer committing small
batches a reader folds each batch once instead of the whole tail at every version. Both
give the same :class:`Tail`, rows in the same order (a property test holds them equal).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from vectordb.row_lookup import hash_set, merged
from vectordb.rows import RowBatch
from vectordb.wal import DELETE

Batch = tuple[np.ndarray, RowBatch]  # (ops, rows) of one decoded WAL object

_serials = itertools.count(1)


@dataclass(frozen=True)
class Step:
    """How :func:`extend` made a tail from the one before: what a derived mask needs."""

    kept: np.ndarray | None  # rows of the old tail that stay, in order (None: all of them)
    appended: RowBatch  # rows added after those
    added: frozenset[str]  # ids the new batches touched


@dataclass(eq=False)
class Tail:
    """The unindexed state: live upserted rows, and every id the tail touched.

    Rows are ordered by the position of their id's last operation in the WAL. ``serial``
    tells tail objects apart within a process (what is derived from a tail is memoised
    under it); a tail made by :func:`extend` knows its ``parent`` (while that one lives)
    and the ``step`` from it.
    """

    rows: RowBatch  # the last upsert of each id whose last operation is an upsert
    touched: frozenset[str]  # ids upserted or deleted in the tail: they override segments
    deleted: frozenset[str]  # ids whose last operation is a delete
    step: Step | None = field(default=None, repr=False)
    serial: int = field(default_factory=lambda: next(_serials), repr=False)
    # A weak reference: a chain of versions must not keep every older version alive.
    _parent: weakref.ref | None = field(default=None, repr=False)
    # Where rows.vectors lives when it can grow in place (see _VectorBuffer); the row of
    # each live id and the sorted hashes of the touched ids, made on first use.
    _buffer: _VectorBuffer | None = field(default=None, repr=False)
    _row_of: dict[str, int] | None = field(default=None, repr=False)
    _touched_hashes: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def parent(self) -> Tail | None:
        """The tail this one extends, if it was made by :func:`extend` and still lives."""
        return self._parent() if self._parent is not None else None

    @property
    def row_of(self) -> dict[str, int]:
        """The row of each live id."""
        if self._row_of is None:
            self._row_of = dict(zip(self.rows.ids, range(len(self.rows.ids))))
        return self._row_of

    @property
    def touched_hashes(self) -> np.ndarray:
        """The sorted string hashes of ``touched`` (see :mod:`vectordb.row_lookup`)."""
        if self._touched_hashes is None:
            self._touched_hashes = hash_set(self.touched)
        return self._touched_hashes

    @property
    def nbytes(self) -> int:
        """About what this tail holds in memory (vectors, and ~200 bytes of lists, sets and
        dicts per row and touched id); vectors shared with another version count again."""
        step = self.step.appended.vectors.nbytes if self.step is not None else 0
        return self.rows.vectors.nbytes + step + 200 * (len(self.rows) + len(self.touched))


class _VectorBuffer:
    """Room to append tail vectors without copying the ones before.

    Versions of a tail share one buffer: each sees the rows up to its own length, and only
    the version that ends where the buffer's rows end may append (others copy), so no
    version's view ever changes under it.
    """

    def __init__(self, vectors: np.ndarray, capacity: int) -> None:
        self.array = np.empty((max(capacity, len(vectors)), vectors.shape[1]), np.float32)
        self.array[: len(vectors)] = vectors
        self.used = len(vectors)
        self._lock = threading.Lock()

    def append(self, visible: int, more: np.ndarray) -> np.ndarray | None:
        """The first ``visible`` rows followed by ``more``, or None when that would
        overwrite rows another version sees or the buffer is full."""
        with self._lock:
            end = visible + len(more)
            if self.used != visible or end > len(self.array):
                return None
            self.array[visible:end] = more
            self.used = end
            return self.array[:end]


def _last_ops(batches: list[Batch]) -> dict[str, tuple[int, int]]:
    """id -> (batch index, row index) of its last operation in ``batches``."""
    last: dict[str, tuple[int, int]] = {}
    for b, (_, rows) in enumerate(batches):
        last.update(zip(rows.ids, ((b, r) for r in range(len(rows.ids)))))
    return last


def _replay(batches: list[Batch], dims: int) -> tuple[RowBatch, dict[str, tuple[int, int]], set[str]]:
    """The live rows of ``batches`` alone (in last-operation order), every id's last
    operation, and the ids whose last operation is a delete."""
    last = _last_ops(batches)
    deleted = set()
    keep: list[list[int]] = [[] for _ in batches]
    for doc_id, (b, r) in last.items():
        if batches[b][0][r] == DELETE:
            deleted.add(doc_id)
        else:
            keep[b].append(r)
    live = RowBatch.concat([rows.take(sorted(k)) for (_, rows), k in zip(batches, keep)], dims)
    return live, last, deleted


def fold(batches: list[Batch], dims: int) -> Tail:
    """Replay decoded WAL batches (oldest first) into a Tail."""
    live, last, deleted = _replay(batches, dims)
    return Tail(live, frozenset(last), frozenset(deleted))


def extend(tail: Tail, batches: list[Batch], dims: int) -> Tail:
    """``tail`` followed by ``batches`` (oldest first): the same Tail as folding the
    batches of ``tail`` and then these, at a cost that grows with ``batches`` (plus a copy
    of the tail's rows when a new batch overrides one of them).
    """
    fresh, last, deleted = _replay(batches, dims)
    added = frozenset(last)
    row_of = tail.row_of
    gone = [row_of[i] for i in added if i in row_of]  # live rows the new batches override
    old = tail.rows
    if gone:
        mask = np.ones(len(old), bool)
        mask[gone] = False
        kept = np.flatnonzero(mask)
        pick = kept.tolist()
        buffer = _VectorBuffer(old.vectors[kept], 2 * (len(kept) + len(fresh)))
        vectors = buffer.append(len(kept), fresh.vectors)
        old = RowBatch(_pick(old.ids, pick), old.vectors[:0], _pick(old.texts, pick), _pick(old.attributes, pick))
        new_row_of = None  # rows moved: made again when needed
    else:
        kept = None
        vectors, buffer = _grown(old.vectors, fresh.vectors, tail._buffer)
        new_row_of = dict(row_of)
        new_row_of.update(zip(fresh.ids, range(len(old), len(old) + len(fresh))))
    rows = RowBatch(old.ids + fresh.ids, vectors, old.texts + fresh.texts, old.attributes + fresh.attributes)
    hashes = None if tail._touched_hashes is None else merged(tail._touched_hashes, added - tail.touched)
    return Tail(
        rows,
        tail.touched | added,
        (tail.deleted - added) | deleted,
        step=Step(kept, fresh, added),
        _parent=weakref.ref(tail),
        _buffer=buffer,
        _row_of=new_row_of,
        _touched_hashes=hashes,
    )


def _pick(values: list, rows: list[int]) -> list:
    return list(map(values.__getitem__, rows))


def _grown(vectors: np.ndarray, more: np.ndarray, buffer: _VectorBuffer | None) -> tuple[np.ndarray, _VectorBuffer | None]:
    """``vectors`` followed by ``more``: appended in place in ``buffer`` when it allows,
    else copied into a new buffer with room to double."""
    if not len(more):
        return vectors, buffer
    if buffer is not None:
        grown = buffer.append(len(vectors), more)
        if grown is not None:
            return grown, buffer
    buffer = _VectorBuffer(vectors, 2 * (len(vectors) + len(more)))
    return buffer.append(len(vectors), more), buffer
