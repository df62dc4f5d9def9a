"""What one query is asked to do, validated, and where its candidates come from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from vectordb.filters import Filter
from vectordb.manifest import Manifest, SegmentRef
from vectordb.tail import Tail

TAIL = None  # Candidate.segment for rows of the unindexed tail


@dataclass(frozen=True)
class Candidate:
    """A row that may be a result: ``row`` indexes the segment (or the tail's rows).
    ``id`` None: not read yet (a hybrid query's BM25 candidates, :func:`query.lexical.name`)."""

    score: float
    id: str | None
    segment: SegmentRef | None
    row: int


@dataclass
class Context:
    """Everything searches of one query share: the manifest, its tail, the filter."""

    manifest: Manifest
    tail: Tail
    filter: Filter | None = None
    filter_key: str = ""
    nprobe: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    fields: bool = False  # the query includes text or attributes: fetch where they are early

    @property
    def ns(self) -> str:
        return self.manifest.namespace

    @classmethod
    def of(cls, manifest: Manifest, tail: Tail, filt: Filter | None, raw_filter, nprobe: int | None) -> Context:
        return cls(manifest, tail, filt, filter_key(raw_filter) if filt is not None else "", nprobe)


def row_key(c: Candidate) -> tuple[str, int]:
    """Which row ``c`` is, whether or not its id has been read: live rows are one per id."""
    return (c.segment.id if c.segment is not TAIL else "", c.row)


def filter_key(raw_filter) -> str:
    """What memoised filter masks are keyed by: the filter's canonical JSON."""
    return json.dumps(raw_filter, sort_keys=True, separators=(",", ":"))


def partition_of(part_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The partition holding each segment row."""
    return np.searchsorted(part_rows, rows, side="right") - 1
