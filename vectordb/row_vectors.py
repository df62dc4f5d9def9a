"""The vectors of single rows of ``vectors.bin``, without their whole partitions.

A selective filter keeps a few rows scattered over many partitions; searching them
exactly by fetching those partitions whole reads most of the segment. A row's vector sits
at a known offset of its partition (after the quantizer in an int8 one), so these reads
fetch each wanted row's vector (neighbours within a few rows as one GET, and the closest
others as one GET too while the bytes between them stay within a small budget: a GET of a
few hundred bytes costs about what one of ~100 KB does) and decode it as the partition
would have been: the scores are the same.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from storage.base import ObjectStore
from vectordb import ranged_reads, segment
from vectordb.int8_rows import dequantize
from vectordb.segment import Layout

_ROW_GAP = 4  # rows: neighbours closer than this are fetched in one GET
# Bytes between rows a plan may read to merge GETs (the closest rows first).
GAP_BUDGET = 2 * 1024 * 1024


def fetch(store: ObjectStore, pool: Executor | None, key: str, layout: Layout, rows: np.ndarray) -> np.ndarray:
    """Float32 vectors (len(rows) x dims) of segment ``rows`` of ``vectors.bin`` at ``key``."""
    return decode(ranged_reads.fetch(store, pool, key, plan(layout, rows), -1), layout, rows)


def _width(layout: Layout) -> int:
    return layout.dims * segment._STORED[layout.vector_dtype].itemsize


def _quantizer(layout: Layout) -> int:
    return 2 * layout.dims * 4 if layout.vector_dtype == "int8" else 0


def gap(layout: Layout) -> int:
    """Rows closer than a few rows apart are fetched in one GET."""
    return _ROW_GAP * _width(layout)


def _starts(layout: Layout, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, np.int64)
    parts = np.searchsorted(layout.part_rows, rows, side="right") - 1
    return layout.part_bytes[parts] + _quantizer(layout) + (rows - layout.part_rows[parts]) * _width(layout), parts


def ranges(layout: Layout, rows: np.ndarray) -> list[tuple[int, int]]:
    """The byte ranges that hold ``rows``' vectors (and their partitions' int8 quantizers)."""
    starts, parts = _starts(layout, rows)
    width, quantizer = _width(layout), _quantizer(layout)
    out = [(int(s), width) for s in starts.tolist()]
    if quantizer:
        out += [(int(layout.part_bytes[p]), quantizer) for p in np.unique(parts).tolist()]
    return out


def plan(layout: Layout, rows: np.ndarray, budget: int = GAP_BUDGET) -> list[tuple[int, int]]:
    """The GETs that fetch ``rows``' vectors: :func:`ranges` merged within :func:`gap`, then
    the closest ones while at most ``budget`` bytes between them are read."""
    return ranged_reads.coalesce_within(ranges(layout, rows), gap(layout), budget)


def decode(spans: ranged_reads.Spans, layout: Layout, rows: np.ndarray) -> np.ndarray:
    """The vectors of ``rows`` from fetched :func:`ranges`, widened or dequantized as
    :func:`vectordb.segment.decode_partition` does."""
    dims, dtype = layout.dims, layout.vector_dtype
    width, quantizer = _width(layout), _quantizer(layout)
    starts, parts = _starts(layout, rows)
    stored = segment._STORED[dtype]
    raw = np.frombuffer(b"".join(spans[(start, width)] for start in starts.tolist()), stored).reshape(len(starts), dims)
    if not quantizer:
        return raw.astype(np.float32)
    out = np.empty((len(starts), dims), np.float32)
    for p in np.unique(parts).tolist():
        at = np.flatnonzero(parts == p)
        q = np.frombuffer(spans[(int(layout.part_bytes[p]), quantizer)], np.float32).reshape(2, dims)
        out[at] = dequantize(raw[at], q)
    return out
