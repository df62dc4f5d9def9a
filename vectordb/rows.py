"""Batches of rows as they move through the write path: columnar, numpy + lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RowBatch:
    """Documents with vectors. ``attributes`` holds JSON text (or None) per row."""

    ids: list[str]
    vectors: np.ndarray  # float32, shape (n, d)
    texts: list[str | None]
    attributes: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dims: int) -> RowBatch:
        return cls([], np.zeros((0, dims), np.float32), [], [])

    def take(self, rows) -> RowBatch:
        rows = list(rows)
        return RowBatch(
            [self.ids[i] for i in rows],
            self.vectors[rows] if rows else self.vectors[:0],
            [self.texts[i] for i in rows],
            [self.attributes[i] for i in rows],
        )

    @classmethod
    def concat(cls, batches: list[RowBatch], dims: int) -> RowBatch:
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty(dims)
        return cls(
            [i for b in batches for i in b.ids],
            np.concatenate([b.vectors for b in batches]).astype(np.float32, copy=False),
            [t for b in batches for t in b.texts],
            [a for b in batches for a in b.attributes],
        )


@dataclass
class WriteBatch:
    """One write: upserts, then deletes, applied in that order."""

    upserts: RowBatch
    deletes: list[str]
