"""Exact search among the rows a selective filter keeps in one segment.

A filter that keeps at most ``filter_exact_max_rows`` rows of a segment is searched
exactly: every kept row is scored, so the answer is the true top-k among them whatever
the partitions. The kept rows' vectors are gathered once per segment, tombstone list
and filter (:class:`MatchedRows`, memoised by the reader): from partitions already
held or where the filter keeps many rows, else row by row by range (a selective filter's
rows are scattered over most partitions); or, for a filter on a namespace's
``cluster_by`` keys alone, from the groups of ``clusters.bin`` it keeps (a few contiguous
ranges). A later query with the same filter and another vector reads at most the
``$id`` of the best rows' partitions, and only once per partition (memoised), and scans
one matrix. Which kept rows are dead (tombstoned, or overridden by
the tail) is decided per query, from the segment's live mask (by row).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from query.plan import Candidate, Context, partition_of
from vectordb import ivf
from vectordb.manifest import SegmentRef
from vectordb.reader import NamespaceReader
from vectordb.segment import Layout

# A partition is scanned whole when the filter keeps at least one row in this many of it
# (or it is held already); below that its kept rows are fetched alone.
WHOLE_PARTITION_SHARE = 8
# Rows asked beyond k where ties at the k-th score must be kept.
TIE_ROOM = 16


@dataclass
class MatchedRows:
    """The rows of a segment a filter keeps (ascending) and their vectors. ``ids``: theirs,
    where a whole-docs segment holds them anyway (a by-range segment's come for the best
    rows only, after the scan: decoding the ``$id`` of every partition with a kept row
    cost more than the search); then ``dead`` says which of them the segment's tombstone
    list deletes (None: none). ``entries``: the ``rows.bin`` entries of ``entry_rows``
    (rows fetched alone for a query that included fields), so the records of the best
    need one round trip and give their ids."""

    rows: np.ndarray
    vectors: np.ndarray
    ids: list[str] | None = None
    dead: np.ndarray | None = None
    entry_rows: np.ndarray | None = None
    entries: np.ndarray | None = None
    _positions: dict[str, int] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def nbytes(self) -> int:
        return self.vectors.nbytes + self.rows.nbytes + 80 * len(self.ids or ())

    def live(self, reader: NamespaceReader, ctx: Context, seg: SegmentRef) -> np.ndarray | None:
        """Which rows are neither tombstoned nor overridden by the tail (None: all): by
        their ids where held, else from the segment's live mask (by row)."""
        if self.ids is None:
            mask = reader.live_mask(ctx.ns, seg, ctx.tail)
            return None if mask is None else mask[self.rows]
        touched = ctx.tail.touched
        if not touched and self.dead is None:
            return None
        mask = np.ones(len(self.rows), bool) if self.dead is None else ~self.dead
        if touched:
            if len(touched) < len(self.ids):
                positions = self._index()
                hit = [positions[i] for i in touched if i in positions]
                mask[hit] = False
            else:
                mask &= np.fromiter((i not in touched for i in self.ids), bool, len(self.ids))
        return mask

    def _index(self) -> dict[str, int]:
        with self._lock:
            if self._positions is None:
                self._positions = {i: n for n, i in enumerate(self.ids or ())}
            return self._positions


def search(reader: NamespaceReader, ctx: Context, seg: SegmentRef, layout: Layout, allowed: np.ndarray | None,
           q: np.ndarray, k: int, metric: str, memo_key: tuple, groups: np.ndarray | None = None) -> list[Candidate]:
    """The top k (and rows tied with the k-th) of the live rows among ``allowed``, or
    among the rows of ``groups`` of the segment's ``clusters.bin`` (:mod:`vectordb.clusters`)."""
    if groups is not None:
        matched = reader.matched_rows(memo_key, lambda: gather_groups(reader, ctx, seg, layout, groups))
    else:
        matched = reader.matched_rows(memo_key, lambda: gather(reader, ctx, seg, layout, allowed))
    live = matched.live(reader, ctx, seg)
    idx = np.arange(len(matched.rows)) if live is None else np.flatnonzero(live)
    if not len(idx):
        return []
    vectors = matched.vectors if live is None else matched.vectors[idx]
    scores, sub = ivf.scan(vectors, q, k + TIE_ROOM, metric)
    if len(sub) > k:  # the top k, and rows tied with the k-th (the engine breaks ties by id)
        tied = scores >= scores[k - 1]
        scores, sub = scores[tied], sub[tied]
    best = idx[sub]
    ids = _ids(reader, ctx, seg, matched, best)
    return [Candidate(float(s), i, seg, int(matched.rows[b])) for s, i, b in zip(scores.tolist(), ids, best.tolist())]


def _ids(reader: NamespaceReader, ctx: Context, seg: SegmentRef, matched: MatchedRows, best: np.ndarray) -> list[str]:
    """The ids of ``best`` (positions in ``matched``): held, or from the records of those
    whose entries came with their vectors (a query that includes fields: memoised for the
    hits), or from the ``$id`` column of their partitions (one round of parallel GETs)."""
    if matched.ids is not None:
        return [matched.ids[b] for b in best.tolist()]
    rows = matched.rows[best]
    ids: list[str | None] = [None] * len(rows)
    if ctx.fields and matched.entries is not None and len(rows):
        at = np.searchsorted(matched.entry_rows, rows)
        have = (at < len(matched.entry_rows)) & (matched.entry_rows[np.minimum(at, len(matched.entry_rows) - 1)] == rows)
        if have.any():
            records = reader.records(ctx.ns, seg, rows[have], matched.entries[at[have]])
            for j, record in zip(np.flatnonzero(have).tolist(), records):
                ids[j] = record.id
    rest = [j for j, i in enumerate(ids) if i is None]
    if rest:
        for j, i in zip(rest, reader.row_ids(ctx.ns, seg, rows[rest])):
            ids[j] = i
    return ids  # type: ignore[return-value]


def gather_groups(reader: NamespaceReader, ctx: Context, seg: SegmentRef, layout: Layout,
                  groups: np.ndarray) -> MatchedRows:
    """The rows of ``groups`` of the segment's ``clusters.bin`` and their (float16) vectors:
    one round of parallel GETs, a range per run of adjacent groups."""
    rows, vectors = reader.group_rows(ctx.ns, seg, layout, groups)
    order = np.argsort(rows, kind="stable")  # ascending, as gather's: ties go to the lower row
    rows, vectors = rows[order], vectors[order]
    vectors.flags.writeable = False
    return MatchedRows(rows, vectors)


def gather(reader: NamespaceReader, ctx: Context, seg: SegmentRef, layout: Layout, allowed: np.ndarray) -> MatchedRows:
    """Every allowed row's vector (and, in a whole-docs segment, id): the rows of
    partitions held or dense in matches from those partitions, the others' by range, both
    at once."""
    by_range = layout.docs is not None
    rows = np.flatnonzero(allowed)
    part_of_row = partition_of(layout.part_rows, rows)
    parts, counts = np.unique(part_of_row, return_counts=True)
    held = reader.held_partitions(ctx.ns, seg, parts)
    whole = np.array([h or c * WHOLE_PARTITION_SHARE >= layout.rows_in(int(p))
                      for p, c, h in zip(parts.tolist(), counts.tolist(), held)], bool)
    in_whole = np.isin(part_of_row, parts[whole])
    single = rows[~in_whole]
    whole_parts = parts[whole]
    if ctx.fields and len(whole_parts):
        reader.prefetch_fields(ctx.ns, seg, layout, whole_parts)
    fetched: dict = {}

    def fetch_parts() -> None:
        fetched["parts"] = reader.partitions(ctx.ns, seg, layout, whole_parts)

    # Partitions and single rows are fetched at the same time (their own parallel reads).
    helper = None
    if len(whole_parts) and len(single) and not all(h for h, w in zip(held, whole) if w):
        helper = threading.Thread(target=fetch_parts, daemon=True)
        helper.start()
    elif len(whole_parts):
        fetch_parts()
    entries, single_ids = None, None
    if len(single):
        single_vectors, single_ids, entries = reader.rows_for_search(
            ctx.ns, seg, layout, single, with_entries=ctx.fields, with_ids=not by_range)
    else:
        single_vectors = np.zeros((0, layout.dims), np.float32)
    if helper is not None:
        helper.join()
    vectors = np.empty((len(rows), layout.dims), np.float32)
    ids: list[str] | None = None if by_range else [""] * len(rows)
    at_single = np.flatnonzero(~in_whole)
    vectors[at_single] = single_vectors
    if ids is not None and single_ids is not None:
        for n, i in zip(at_single.tolist(), single_ids):
            ids[n] = i
    for p, part in zip(whole_parts.tolist(), fetched.get("parts", [])):
        at = np.flatnonzero(part_of_row == p)
        local = rows[at] - int(layout.part_rows[p])
        vectors[at] = part.vectors[local]
        if ids is not None:
            for n, r in zip(at.tolist(), local.tolist()):
                ids[n] = part.ids[r]
    vectors.flags.writeable = False
    dead = None
    if ids is not None and (dead_ids := reader.tombstones(ctx.ns, seg)):
        dead = np.fromiter((i in dead_ids for i in ids), bool, len(ids))
        dead = dead if dead.any() else None
    return MatchedRows(rows, vectors, ids, dead, single if entries is not None else None, entries)
