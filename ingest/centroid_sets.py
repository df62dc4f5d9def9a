"""Which centroids a single-process index build clusters its rows on: a set that segments
of the namespace already use, or a new one.

A query ranks every set of centroids in the namespace together and probes at least
``MIN_PROBES_PER_SET`` partitions of each (:mod:`query.vector_search`): the sets overlap in
space. So a namespace grown by many builds, each with centroids of its own, scans about two
partitions more per segment than the same rows compacted (1M rows grown by 100 batches into
10 segments: warm p50 2.67x the compacted one's). Segments that share a set count once: a
probe of its centroid ``p`` scans partition ``p`` of each of them, which together are the
partition one segment of all their rows would have.

So a build *joins* the finest set (most centroids) of the segments it keeps that has room
for its rows: the set's live rows plus the build's at most ``CAPACITY`` x nlist x
``rows_per_partition``. With none, it trains a new set on its own rows, sized for the whole
namespace after the build (so the builds after it can join it), with at least
``MIN_TRAINING_ROWS`` rows per centroid. A build of at most ``flat_max_rows`` rows stays one
exact partition, as before. Sets are named in ``ivf.bin`` (the ``VDBCSET1`` trailer: a hash
of the centroids), so segments written before, which name none, stay sets alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vectordb import ivf

# A set takes builds until its partitions average this many times rows_per_partition.
CAPACITY = 2.0
# k-means needs points per centroid; FAISS warns below 39.
MIN_TRAINING_ROWS = 39


@dataclass(frozen=True)
class CentroidSet:
    centroids: np.ndarray  # as stored in ivf.bin, widened to float32
    live_rows: int  # of the segments the build keeps that use it


def choose(sets: list[CentroidSet], rows: int, namespace_rows: int, rows_per_partition: int,
           flat_max_rows: int) -> tuple[np.ndarray | None, int]:
    """(centroids to join, or None; else how many to train) for a build of ``rows`` rows
    in a namespace of ``namespace_rows`` live rows once it is committed."""
    if rows <= flat_max_rows:
        return None, 1
    roomy = [s for s in sets if len(s.centroids) > 1
             and s.live_rows + rows <= CAPACITY * len(s.centroids) * rows_per_partition]
    if roomy:
        best = max(roomy, key=lambda s: (len(s.centroids), s.live_rows))
        return best.centroids, len(best.centroids)
    own = ivf.choose_nlist(rows, rows_per_partition, flat_max_rows)
    wanted = ivf.choose_nlist(max(rows, namespace_rows), rows_per_partition, flat_max_rows)
    return None, max(own, min(wanted, rows // MIN_TRAINING_ROWS))
