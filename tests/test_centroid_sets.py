"""Builds that join a set of centroids the namespace already uses (``ingest.centroid_sets``).

A namespace grown by many index builds keeps several segments; when each trains centroids
of its own, a query probes at least two partitions of every one. With ``share_centroids``
a build clusters its rows on the finest set its kept segments use while that set has room,
else trains one sized for the whole namespace; the sets are named in ``ivf.bin``."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from ingest import centroid_sets
from ingest.centroid_sets import CentroidSet
from storage.memory import MemoryStore
from tests.fakes import unit_settings

DIMS = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((60, DIMS)).astype(np.float32)
    v = centres[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, DIMS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- the choice -------------------------------------------------------------------------------


def test_a_build_joins_the_finest_set_with_room():
    coarse, fine = np.zeros((10, DIMS), np.float32), np.ones((40, DIMS), np.float32)
    sets = [CentroidSet(coarse, 5_000), CentroidSet(fine, 60_000)]
    joined, nlist = centroid_sets.choose(sets, 10_000, 75_000, rows_per_partition=1000, flat_max_rows=2048)
    assert joined is fine and nlist == 40  # 70,000 rows <= 2 x 40 x 1000
    joined, nlist = centroid_sets.choose(sets, 25_000, 90_000, 1000, 2048)
    assert joined is None and nlist == 90  # no room anywhere: a new set for the namespace's 90,000 rows
    full = [CentroidSet(coarse, 5_000), CentroidSet(fine, 75_000)]
    joined, nlist = centroid_sets.choose(full, 10_000, 90_000, 1000, 2048)
    assert joined is coarse and nlist == 10  # the fine set is full (85,000 > 80,000); the coarse one is not


def test_a_new_set_is_sized_for_the_namespace_but_trainable_on_the_builds_rows():
    joined, nlist = centroid_sets.choose([], 20_000, 1_000_000, rows_per_partition=1000, flat_max_rows=2048)
    assert joined is None and nlist == 20_000 // centroid_sets.MIN_TRAINING_ROWS  # 512, not 1,000
    joined, nlist = centroid_sets.choose([], 300_000, 400_000, 1000, 2048)
    assert nlist == 400
    joined, nlist = centroid_sets.choose([], 50_000, 50_000, 1000, 2048)
    assert nlist == 50  # the first build: as without sharing


def test_a_small_build_stays_one_exact_partition():
    sets = [CentroidSet(np.ones((40, DIMS), np.float32), 1_000)]
    assert centroid_sets.choose(sets, 2_000, 50_000, 1000, 2048) == (None, 1)


# --- builds that share, end to end --------------------------------------------------------------


def _grow(share: bool, batches: int = 6, per_batch: int = 3_000):
    store = MemoryStore()
    service = Service(unit_settings(preload_embedder="", share_centroids=share, rows_per_partition=100,
                                    flat_max_rows=500, compact_max_segments=4, auto_index=False), store=store)
    service.create_namespace("g", "none", dimensions=DIMS)
    everything = []
    for b in range(batches):
        vectors = _vectors(per_batch, seed=b + 1)
        everything.append(vectors)
        service.upsert("g", [{"id": f"b{b}-{i}", "vector": v.tolist()} for i, v in enumerate(vectors)])
        service.index("g")
    return service, np.concatenate(everything)


def _sets(service) -> dict:
    manifest = service.catalog.latest("g")
    return {seg.id: service.reader.layout("g", seg).centroid_set for seg in manifest.segments}


@pytest.mark.parametrize("share", [True, False])
def test_grown_segments_share_a_set_and_answer_as_exact_search(share):
    service, vectors = _grow(share)
    try:
        sets = _sets(service)
        assert len(sets) >= 2  # several segments (tiered merges, no compaction)
        named = [s for s in sets.values() if s is not None]
        if share:
            assert len(named) == len(sets) and len(set(named)) < len(sets)  # some segments share a set
        else:
            assert not named  # centroids of their own, unnamed, as before
        ids = [f"b{b}-{i}" for b in range(6) for i in range(3_000)]
        queries = _vectors(50, seed=99)
        found = 0
        for q in queries:
            exact = {ids[i] for i in np.argsort(-(vectors @ q))[:10]}
            hits = service.query("g", vector=q.tolist(), top_k=10, nprobe=12).hits
            found += len(exact & {h.id for h in hits})
        assert found / (10 * len(queries)) >= 0.9
    finally:
        service.close()


def test_a_full_compaction_trains_centroids_for_all_rows():
    service, _ = _grow(True)
    try:
        before = set(_sets(service).values())
        service.index("g", compact=True)
        manifest = service.catalog.latest("g")
        (seg,) = manifest.segments
        layout = service.reader.layout("g", seg)
        assert layout.nlist == 180 and layout.centroid_set not in before  # 18,000 rows / 100
    finally:
        service.close()
