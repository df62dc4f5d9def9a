"""Finding rows by id in an immutable segment or partition, without a Python pass over
all of its ids.

A strong reader needs this at every new tail version: the rows a tail overrides or a
tombstone list kills are a few ids among a segment's many. A dict from id to row would
cost ~100 bytes a row; a :class:`RowLookup` keeps 24 (each id's string hash in row order,
and the same sorted with the rows they came from). Both directions are numpy searches over
64-bit hashes, and every hit is checked against the id itself, so a hash collision never
picks a wrong row. Python's string hash is salted per process, which is fine: neither a
lookup nor a :func:`hash_set` ever leaves its process.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np


def hash_set(ids: Collection[str]) -> np.ndarray:
    """The sorted string hashes of ``ids`` (int64), for :meth:`RowLookup.candidates`."""
    return np.sort(np.fromiter(map(hash, ids), np.int64, len(ids)))


def merged(hashes: np.ndarray, ids: Collection[str]) -> np.ndarray:
    """``hashes`` (sorted) with the hashes of ``ids`` added: O(len(hashes)) in C, not a sort."""
    more = hash_set(ids)
    return np.insert(hashes, np.searchsorted(hashes, more), more) if len(more) else hashes


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``values`` (any order) that occur in ``sorted_set``, as a bool mask."""
    if not len(sorted_set) or not len(values):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_set, values)
    np.minimum(at, len(sorted_set) - 1, out=at)
    return sorted_set[at] == values


class RowLookup:
    """id <-> row over one segment's (or partition's) ids, in row order; ids are unique."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        self.hashes = np.fromiter(map(hash, ids), np.int64, len(ids))
        self._order = np.argsort(self.hashes, kind="stable")
        self._sorted = self.hashes[self._order]

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        """What the lookup holds beyond the ids themselves."""
        return self.hashes.nbytes + self._order.nbytes + self._sorted.nbytes

    def rows(self, wanted: Collection[str]) -> np.ndarray:
        """The rows (int64, ascending) of those ``wanted`` ids present here. Cost grows
        with ``wanted``, not with the rows."""
        if not wanted or not len(self.hashes):
            return np.zeros(0, np.int64)
        wanted = list(wanted)
        hashes = np.fromiter(map(hash, wanted), np.int64, len(wanted))
        lo = np.searchsorted(self._sorted, hashes, "left")
        hi = np.searchsorted(self._sorted, hashes, "right")
        found = []
        ids, order = self.ids, self._order
        for n in np.flatnonzero(hi > lo).tolist():
            doc_id = wanted[n]
            for j in range(int(lo[n]), int(hi[n])):
                row = int(order[j])
                if ids[row] == doc_id:
                    found.append(row)
                    break
        found.sort()
        return np.asarray(found, np.int64)

    def candidates(self, sorted_hashes: np.ndarray, holds: Callable[[str], bool]) -> np.ndarray:
        """Rows whose id ``holds``, among those whose hash is in ``sorted_hashes`` (a
        :func:`hash_set` of a superset of such ids). Cost: a search per row in C, and a
        check in Python per row that matches a hash."""
        maybe = np.flatnonzero(_member(self.hashes, sorted_hashes))
        if not len(maybe):
            return maybe.astype(np.int64)
        ids = self.ids
        return np.asarray([r for r in maybe.tolist() if holds(ids[r])], np.int64)
