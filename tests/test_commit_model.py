"""The commit protocol, checked by the model of ``tests/commit_model.py``: random
interleavings of several processes' store calls (writers, indexers, compaction, WAL
merges, garbage collection with no grace, drops and re-creations, strong queries,
processes idle for hours with stale caches) against a reference model, on the memory
store (many seeds) and on a real S3 server (fewer). ``VECTORDB_MODEL_SEEDS`` /
``VECTORDB_MODEL_ROUNDS`` run more."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from ingest import gc
from storage import open_raw_store
from storage.memory import MemoryStore
from tests import commit_model

SEEDS = int(os.environ.get("VECTORDB_MODEL_SEEDS", "32"))
ROUNDS = int(os.environ.get("VECTORDB_MODEL_ROUNDS", "40"))


@pytest.mark.parametrize("first", range(0, SEEDS, 8))
def test_protocol_holds_on_the_memory_store(first):
    ran = Counter()
    for seed in range(first, min(first + 8, SEEDS)):
        stats = commit_model.run(seed, MemoryStore(f"memory://model-{seed}"), ROUNDS)
        assert stats.checks > ROUNDS  # the checks ran: every round ends with reads of every namespace
        assert stats.operations["upsert ok"]
        ran.update(stats.operations)
    # Collections and WAL merges ran among the rest (a seed's schedule may drop every
    # namespace a collection picks; eight seeds' do not), and merges not only on empty tails.
    assert ran["gc ok"] and ran["merge folded"]


@pytest.mark.s3
@pytest.mark.parametrize("seed", [1001, 1002, 1003])
def test_protocol_holds_on_s3(s3_settings, seed):
    stats = commit_model.run(seed, open_raw_store(s3_settings), 15)
    assert stats.operations["upsert ok"]


def test_the_model_finds_the_old_garbage_collection(monkeypatch):
    """The check has teeth: with versions deleted instead of pruned to stubs (what garbage
    collection did before), lagging processes answer stale versions and reuse numbers."""
    monkeypatch.setattr(gc, "_prune", lambda store, key, ns, version: store.delete(key))
    for seed in range(20):
        try:
            commit_model.run(seed, MemoryStore(f"memory://model-old-gc-{seed}"), ROUNDS)
        except commit_model.Violation:
            return
    pytest.fail("20 seeds of the old garbage collection went unnoticed")
