"""Folding write-ahead-log batches into the state they describe.

Later writes win: replaying every row in commit order, the last operation on an id
decides whether it is live (and with which vector, text and attributes) or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vectordb.rows import RowBatch
from vectordb.wal import DELETE


@dataclass
class Tail:
    """The unindexed state: live upserted rows, and every id the tail touched."""

    rows: RowBatch  # the last upsert of each id whose last operation is an upsert
    touched: frozenset[str]  # ids upserted or deleted in the tail: they override segments
    deleted: frozenset[str]  # ids whose last operation is a delete

    def __len__(self) -> int:
        return len(self.rows)


def fold(batches: list[tuple[np.ndarray, RowBatch]], dims: int) -> Tail:
    """Replay decoded WAL batches (oldest first) into a Tail."""
    last: dict[str, tuple[int, int]] = {}  # id -> (batch index, row index) of its last op
    for b, (_, rows) in enumerate(batches):
        for r, doc_id in enumerate(rows.ids):
            last[doc_id] = (b, r)
    deleted = set()
    keep: list[list[int]] = [[] for _ in batches]
    for doc_id, (b, r) in last.items():
        if batches[b][0][r] == DELETE:
            deleted.add(doc_id)
        else:
            keep[b].append(r)
    live = RowBatch.concat([rows.take(sorted(k)) for (_, rows), k in zip(batches, keep)], dims)
    return Tail(live, frozenset(last), frozenset(deleted))
