"""A large set of string ids, held compactly: the ids an index build's WAL tail touched.

A build that keeps or merges segments needs every id its tail upserts or deletes: those
ids' rows in older segments are dead. As a ``frozenset`` of ``str`` that set costs ~100
bytes an id (the string object, the set's slot at its load factor) for the whole build:
a gigabyte at 10M ids, more than the build's spill and sort together. An :class:`IdSet`
keeps each id's stable 64-bit hash (BLAKE2b, the hash of the segments' key tables,
:mod:`vectordb.key_table`), sorted, and the ids themselves as one Arrow string array in
the same order: 16 bytes an id and its UTF-8. Membership is a search over the hashes in
C, every hit checked against the id itself, so a collision never counts a wrong id. It
pickles as its arrays (a Ray build ships it to its tasks, :mod:`ingest.ray_build`), and
the hash is the same in every process (Python's ``hash`` is not).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from vectordb.key_table import blake2b64

HASH = "blake2b64"  # the key tables' hash name whose values ``IdSet.hashes`` are


class IdSet:
    """An immutable set of ids: ``hashes`` (uint64, ascending) and ``ids`` (Arrow
    ``large_string``, in the same order), one entry per distinct id."""

    __slots__ = ("hashes", "ids")

    def __init__(self, hashes: np.ndarray, ids: pa.Array) -> None:
        self.hashes = hashes
        self.ids = ids

    @classmethod
    def of(cls, ids: Iterable[str]) -> IdSet:
        ids = list(dict.fromkeys(ids))
        hashes = blake2b64(ids)
        order = np.argsort(hashes, kind="stable")
        return cls(hashes[order], pa.array(ids, pa.large_string()).take(pa.array(order)))

    def __len__(self) -> int:
        return len(self.hashes)

    def __bool__(self) -> bool:
        return len(self.hashes) > 0

    def __iter__(self) -> Iterator[str]:
        for lo in range(0, len(self.ids), 65536):
            yield from self.ids.slice(lo, 65536).to_pylist()

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.members([doc_id])[0])

    def __reduce__(self):
        return (IdSet, (self.hashes, self.ids))

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.ids.nbytes

    def members(self, ids: Sequence[str] | Sequence[bytes], hashes: np.ndarray | None = None) -> np.ndarray:
        """Which of ``ids`` are in the set, as a bool mask; ``hashes``: their BLAKE2b hashes
        where the caller has them (a key table's entries do). Cost: a search per id in C,
        and a comparison of the id itself per hash that matches."""
        return self.positions(ids, hashes) >= 0

    def positions(self, ids: Sequence[str] | Sequence[bytes], hashes: np.ndarray | None = None) -> np.ndarray:
        """Where each of ``ids`` is in the set (its index in ``hashes`` and ``ids``), -1
        where it is not; as :meth:`members`."""
        out = np.full(len(ids), -1, np.int64)
        if not len(self.hashes) or not len(ids):
            return out
        if hashes is None:
            hashes = blake2b64([i.decode() if isinstance(i, bytes) else i for i in ids])
        lo = np.searchsorted(self.hashes, hashes, "left")
        hi = np.searchsorted(self.hashes, hashes, "right")
        for n in np.flatnonzero(hi > lo).tolist():
            doc_id = ids[n]
            if isinstance(doc_id, bytes):
                doc_id = doc_id.decode()
            for j in range(int(lo[n]), int(hi[n])):
                if self.ids[j].as_py() == doc_id:
                    out[n] = j
                    break
        return out


EMPTY = IdSet(np.zeros(0, np.uint64), pa.array([], pa.large_string()))


def last_of(hashes: np.ndarray, ids: pa.Array) -> np.ndarray:
    """For ``ids`` in order of their operations (``hashes``: their BLAKE2b hashes), the
    position of each distinct id's last one, in hash order (as :class:`IdSet` keeps them):
    a sort of the hashes in C, and a look at the ids themselves only where a hash repeats
    (an id written again, or, once in 2**64, two ids of one hash)."""
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in operation order
    ordered = hashes[order]
    last = np.ones(len(order), bool)  # the last of its run of equal hashes
    last[:-1] = ordered[1:] != ordered[:-1]
    repeated = np.flatnonzero(~last)
    if not len(repeated):
        return order
    # Runs of one hash: the last operation of each distinct id among them.
    keep = last.copy()
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.append(starts[1:], len(order))
    runs = np.flatnonzero(ends - starts > 1)
    for s, e in zip(starts[runs].tolist(), ends[runs].tolist()):
        run = ids.take(pa.array(order[s:e])).to_pylist()
        if len(set(run)) == 1:
            continue  # the common case: one id written again; its last write is the run's last
        keep[s:e] = False
        latest = {doc_id: s + k for k, doc_id in enumerate(run)}
        keep[sorted(latest.values())] = True
    return order[keep]


def distinct(hashes: np.ndarray, ids: pa.Array) -> tuple[IdSet, np.ndarray]:
    """The distinct ``ids`` (in order of their operations; ``hashes`` theirs) as an
    :class:`IdSet`, and the position of each one's last operation, in the set's order."""
    last = last_of(hashes, ids)
    return IdSet(hashes[last], ids.take(pa.array(last))), last
