"""``bench/ours.py``'s realistic ingest model: the rows it says stay live, and the row each
id's vector comes from, are what the engine holds after those writes (updates of indexed
rows, updates of updates, deletes), so the realistic benchmarks' recall is against the
right ground truth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import vectordb

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ours(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_ours_realistic", ROOT / "bench" / "ours.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_ours_realistic", None)


def test_live_rows_and_row_of_match_what_the_engine_holds(ours, monkeypatch, tmp_path):
    # Scaled down: an update every 20th row from 400 rows on (ids updated up to 4 times),
    # deletes of 10 ids after every 10th batch of 50.
    monkeypatch.setattr(ours, "OVERWRITE_BACK", 400)
    monkeypatch.setattr(ours, "DELETE_IDS", 10)
    rows, batch, dims = 2_000, 50, 8
    vectors = np.random.default_rng(3).standard_normal((rows, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # cosine: stored normalised
    db = vectordb.connect(f"file://{tmp_path}")
    ns = db.create_namespace("realistic", embedder="none", dimensions=dims)
    for n, lo in enumerate(range(0, rows, batch)):
        ns.upsert([{"id": ours.realistic_id(r), "vector": vectors[r].tolist()} for r in range(lo, lo + batch)])
        if n % ours.DELETE_EVERY == ours.DELETE_EVERY - 1:
            ns.delete(ids=ours.realistic_deletes(lo))
        if n == 15:
            ns.index()  # later updates and deletes hit an indexed segment
    ns.index()

    live = ours.realistic_live_rows(rows, batch)
    held = {doc.id: np.asarray(doc.vector, np.float32) for doc in ns.scan(page_size=500, include_vectors=True)}
    assert 0 < len(held) == int(live.sum()) < rows - 60  # updates and deletes both removed rows
    assert {ours.row_of(i) for i in held} == set(np.flatnonzero(live).tolist())
    for doc_id, vector in held.items():
        np.testing.assert_allclose(vector, vectors[ours.row_of(doc_id)], rtol=1e-6, atol=1e-6)
    updated_twice = ours.realistic_id(7 + 2 * 400)
    assert updated_twice == ours.realistic_id(7) and ours.row_of(updated_twice) == 7 + 4 * 400
