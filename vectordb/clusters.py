"""A segment's vectors grouped by the namespace's ``cluster_by`` attributes: ``clusters.bin``.

A selective filter on the attributes most queries of a namespace name (a tenant, a year)
keeps rows scattered over every partition. Searched exactly, each kept row's vector was a
ranged read of its own: 2,900 rows of one tenant and year at 1M chunks took ~3,500 GETs
and 3 s from a cold worker. A namespace created with ``cluster_by`` (up to
:data:`MAX_NAMES` top-level attribute keys) keeps in each segment a second copy of its
vectors, grouped by the values of those keys, so the rows a filter on them keeps are a few
contiguous ranges: one round of parallel GETs.

``clusters.bin``: per group, in the directory's order, its rows (uint32, ascending) and
then their vectors (float16 of the vectors as ingested, row after row); after the last
group, each row's group (uint16, in segment order: partition after partition). The
directory is ``ivf.bin``'s trailer ``VDBCLUS1`` (JSON): the key names, the dimensions, per
group its key (each name's value as canonical JSON text, null where the row lacks the key)
and its row count, and ``"group_of_row": "uint16"`` where the groups of the rows follow
(segments written before they did lack it); a group's offset is the size of the groups
before it.

A filter that names only ``cluster_by`` keys is decided per group (:meth:`ClusterDirectory.
matching`, by :func:`vectordb.filters.evaluate` on the group's values: a row's match
depends on nothing else), without reading any attribute column. When its groups hold few
rows, they are scored from the float16 copy (:mod:`query.exact_filter`): a rounding error
of at most 2^-11 of each component, finer than an int8 segment's codes (the IVF path's,
so one row's score may differ between the two paths by that much). When they hold many
(a broad filter: a year range), the IVF search keeps the rows whose group matches, read
for the probed partitions only (:meth:`ClusterDirectory.group_range`: 2 bytes a row,
fetched beside the partitions) instead of the filter's columns for the whole segment.

A segment gets no copy (and filters read its columns as before) when its rows make more
than :data:`MAX_GROUPS` groups or keys of more than :data:`MAX_KEY_BYTES` in all (the
directory is in ``ivf.bin``, which every cold query reads), or a vector component lies
beyond float16's range.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vectordb import attr_columns, filters
from vectordb.errors import InvalidArgument
from vectordb.filters import And, Condition, Filter, Not, Or

MAGIC = b"VDBCLUS1"
MAX_NAMES = 4
# More groups than this and a copy stops paying: a group per few rows is a GET per few rows.
MAX_GROUPS = 16_384
MAX_KEY_BYTES = 512 * 1024  # the groups' keys, all together
_STORED = np.dtype(np.float16)
_GROUP_OF_ROW = np.dtype("<u2")  # MAX_GROUPS fits
_FLOAT16_MAX = 65504.0
_GATHER_ROWS = 65_536  # rows gathered from the spill per write
_REMEMBERED_FILTERS = 1024  # per segment
_UNSEEN = object()


def check_names(names: Any) -> tuple[str, ...]:
    """``cluster_by`` as given at namespace creation, validated: distinct top-level
    attribute keys a filter can name (``id`` is not an attribute)."""
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise InvalidArgument("cluster_by must be a list of attribute names")
    names = tuple(names)
    if len(names) > MAX_NAMES:
        raise InvalidArgument(f"cluster_by names at most {MAX_NAMES} attributes, not {len(names)}")
    for name in names:
        if not isinstance(name, str) or not attr_columns.addressable(name) or name == filters.ID_FIELD:
            raise InvalidArgument(f"cluster_by: {str(name)[:80]!r} is not a top-level attribute name "
                                  "(letters, digits, '_' or '-', at most 64, not 'id')")
    if len(set(names)) != len(names):
        raise InvalidArgument("cluster_by names an attribute twice")
    return names


def _key_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _sort_key(key: tuple[str | None, ...]) -> tuple:
    return tuple((0, "") if v is None else (1, v) for v in key)


def _fields(filt: Filter) -> set[str]:
    if isinstance(filt, (And, Or)):
        return set().union(*(_fields(c) for c in filt.children))
    if isinstance(filt, Not):
        return _fields(filt.child)
    assert isinstance(filt, Condition)
    return {filt.field}


@dataclass(frozen=True, eq=False)
class ClusterDirectory:
    """Where each group of ``clusters.bin`` lies, and its key."""

    names: tuple[str, ...]
    dims: int
    keys: tuple[tuple[str | None, ...], ...]
    counts: np.ndarray  # rows per group (int64)
    group_of_row: bool = False  # whether each row's group follows the groups
    offsets: np.ndarray = field(init=False, repr=False)  # byte offset per group, and the end
    _matched: dict = field(init=False, repr=False)  # filter key -> matching groups (or None)

    def __post_init__(self) -> None:
        offsets = np.zeros(len(self.counts) + 1, np.int64)
        np.cumsum(self.counts * self.row_bytes, out=offsets[1:])
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "_matched", {})

    @cached_property
    def _values(self) -> list[dict]:
        """Each group's key as the attributes a filter sees: parsed when a filter first asks
        (a layout is loaded by every query, most of which never filter)."""
        return [{n: json.loads(v) for n, v in zip(self.names, key) if v is not None} for key in self.keys]

    @property
    def row_bytes(self) -> int:
        return 4 + self.dims * _STORED.itemsize

    def covers(self, filt: Filter) -> bool:
        """Whether every field ``filt`` names lies in a ``cluster_by`` key's value."""
        return all(f != filters.ID_FIELD and f.split(".", 1)[0] in self.names for f in _fields(filt))

    def matching(self, filt: Filter, filter_key: str | None = None) -> np.ndarray | None:
        """The groups (ascending) whose rows match ``filt``; None when it names a field
        outside the ``cluster_by`` keys (the groups cannot tell). Remembered under
        ``filter_key`` (the filter's canonical JSON) when given."""
        found = self._matched.get(filter_key, _UNSEEN)  # one lookup: another thread may clear()
        if found is not _UNSEEN:
            return found
        groups = None
        if self.covers(filt):
            groups = np.asarray([g for g, values in enumerate(self._values) if filters.evaluate(filt, "", values)],
                                np.int64)
        if filter_key is not None:
            if len(self._matched) >= _REMEMBERED_FILTERS:
                self._matched.clear()
            self._matched[filter_key] = groups
        return groups

    def rows_in(self, groups: np.ndarray) -> int:
        return int(self.counts[groups].sum())

    def kept(self, groups: np.ndarray) -> np.ndarray:
        """Per group, whether it is one of ``groups`` (index it by :meth:`decode_groups`)."""
        kept = np.zeros(len(self.counts), bool)
        kept[groups] = True
        return kept

    def group_range(self, lo: int, count: int) -> tuple[int, int]:
        """(start, length) in ``clusters.bin`` of the groups of segment rows ``lo`` ..
        ``lo + count - 1`` (:attr:`group_of_row` segments only)."""
        return int(self.offsets[-1]) + lo * _GROUP_OF_ROW.itemsize, count * _GROUP_OF_ROW.itemsize

    def rows_at(self, start: int, length: int) -> tuple[int, int]:
        """The segment rows (first, end) whose groups bytes ``[start, start + length)`` of
        ``clusters.bin`` hold: :meth:`group_range`'s inverse."""
        base = int(self.offsets[-1])
        return (start - base) // _GROUP_OF_ROW.itemsize, (start + length - base) // _GROUP_OF_ROW.itemsize

    @staticmethod
    def decode_groups(data: bytes) -> np.ndarray:
        """The rows' groups read from a :meth:`group_range`."""
        return np.frombuffer(data, _GROUP_OF_ROW)

    def ranges(self, groups: np.ndarray) -> list[tuple[int, int]]:
        """(start, length) in ``clusters.bin`` of each of ``groups``."""
        return [(int(self.offsets[g]), int(self.offsets[g + 1] - self.offsets[g])) for g in groups.tolist()]

    def decode(self, data: bytes, group: int) -> tuple[np.ndarray, np.ndarray]:
        """A group's rows (int64) and vectors (float32) from its bytes."""
        n = int(self.counts[group])
        rows = np.frombuffer(data, np.uint32, n).astype(np.int64)
        vectors = np.frombuffer(data, _STORED, n * self.dims, 4 * n).reshape(n, self.dims).astype(np.float32)
        return rows, vectors

    def to_trailer(self) -> bytes:
        obj = {"names": list(self.names), "dims": self.dims,
               "groups": [[list(k), int(c)] for k, c in zip(self.keys, self.counts.tolist())]}
        if self.group_of_row:
            obj["group_of_row"] = "uint16"
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        return MAGIC + len(body).to_bytes(4, "little") + body

    @classmethod
    def from_body(cls, body: bytes) -> ClusterDirectory:
        obj = json.loads(body)
        groups = obj["groups"]
        stored = obj.get("group_of_row")
        if stored not in (None, "uint16"):
            raise ValueError(f"clusters.bin: unknown group_of_row {stored!r}")
        return cls(tuple(obj["names"]), int(obj["dims"]), tuple(tuple(k) for k, _ in groups),
                   np.array([c for _, c in groups], np.int64), stored is not None)


class ClusterWriter:
    """Collects a segment's rows as the build writes them (in segment order): each row's
    group, its vector as float16 in a spill file; :meth:`finish` writes ``clusters.bin``
    grouped. Memory: 4 bytes a row and the groups' keys while collecting, ~20 bytes a row
    while writing (the rows' order); the spill (2 × dims bytes a row, on disk) holds the
    vectors and is read through a memory map."""

    def __init__(self, names: Sequence[str], dims: int, workdir: Path) -> None:
        self.names, self.dims = tuple(names), dims
        self.spill_path = workdir / "clusters.spill"
        self._spill = open(self.spill_path, "wb")  # noqa: SIM115
        self._groups: dict[tuple[str | None, ...], int] = {}
        self._of_rows: list[np.ndarray] = []
        self._key_bytes = 0
        self.skipped: str | None = None  # why this segment gets no copy

    def add(self, parsed: Sequence[dict], vectors: np.ndarray) -> None:
        """The next rows: their attributes (parsed) and vectors (as ingested)."""
        if self.skipped or not len(parsed):
            return
        if np.abs(vectors).max() > _FLOAT16_MAX:
            self._skip("a vector component is beyond float16's range")
            return
        groups = self._groups
        of_rows = np.empty(len(parsed), np.int32)
        for i, attrs in enumerate(parsed):
            key = tuple(_key_text(attrs[n]) if n in attrs else None for n in self.names)
            g = groups.get(key)
            if g is None:
                g = groups[key] = len(groups)
                self._key_bytes += sum(len(v) for v in key if v is not None)
            of_rows[i] = g
        if len(groups) > MAX_GROUPS:
            self._skip(f"its rows make more than {MAX_GROUPS} groups")
            return
        if self._key_bytes > MAX_KEY_BYTES:
            self._skip(f"its groups' keys take more than {MAX_KEY_BYTES} bytes")
            return
        self._of_rows.append(of_rows)
        self._spill.write(np.ascontiguousarray(vectors, _STORED).tobytes())

    def _skip(self, why: str) -> None:
        self.skipped = why
        self._of_rows, self._groups = [], {}

    def finish(self, path: Path) -> ClusterDirectory | None:
        """Write ``clusters.bin`` at ``path``; its directory, or None (no copy: no rows, or
        :attr:`skipped`). The spill is removed."""
        self._spill.close()
        try:
            if self.skipped or not self._of_rows:
                return None
            of_rows = np.concatenate(self._of_rows)
            keys = sorted(self._groups, key=_sort_key)
            rank = np.empty(len(keys), np.int32)
            rank[[self._groups[k] for k in keys]] = np.arange(len(keys), dtype=np.int32)
            ranked = rank[of_rows]
            order = np.argsort(ranked, kind="stable")  # by group, rows ascending within each
            counts = np.bincount(ranked, minlength=len(keys)).astype(np.int64)
            spilled = np.memmap(self.spill_path, _STORED, "r", shape=(len(of_rows), self.dims))
            with open(path, "wb") as out:
                at = 0
                for count in counts.tolist():
                    rows = order[at : at + count]
                    out.write(rows.astype(np.uint32).tobytes())
                    for lo in range(0, count, _GATHER_ROWS):
                        out.write(np.ascontiguousarray(spilled[rows[lo : lo + _GATHER_ROWS]]).tobytes())
                    at += count
                out.write(ranked.astype(_GROUP_OF_ROW).tobytes())
            del spilled
            return ClusterDirectory(self.names, self.dims, tuple(keys), counts, group_of_row=True)
        finally:
            os.unlink(self.spill_path)
