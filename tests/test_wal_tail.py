"""An index build's streamed fold of the WAL tail (ingest.build_input.WalTail: id
hashes sorted, vectorized) yields the rows, in the order, that folding the decoded batches in
memory (vectordb.tail.fold) gives, and the same touched ids where a build needs them."""

from __future__ import annotations

import numpy as np
import pytest

from api.service import Service
from ingest.build_input import WalTail
from storage.memory import MemoryStore
from vectordb import tail as tail_mod
from vectordb import wal
from vectordb.settings import Settings


@pytest.mark.parametrize("seed", range(6))
def test_the_streamed_fold_is_the_in_memory_fold(seed):
    rng = np.random.default_rng(seed)
    store = MemoryStore()
    svc = Service(Settings(store_uri="memory://fold", group_commit_ms=1, auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        pool = [f"id-{i}" for i in range(int(rng.integers(5, 300)))] + ["é/ü#1", "x" * 200]
        writes = int(rng.integers(2, 12))
        for n in range(writes):
            if seed % 2 and n == writes // 2:
                svc.index("ns")  # a segment under the tail: the build must know what the tail touches
            ids = list(dict.fromkeys(rng.choice(pool, int(rng.integers(1, 60))).tolist()))
            svc.upsert("ns", [{"id": i, "vector": rng.standard_normal(4).tolist(), "attributes": {"n": int(rng.integers(9))}}
                              for i in ids])
            if rng.random() < 0.6:
                svc.delete("ns", ids=list(dict.fromkeys(rng.choice(pool, int(rng.integers(1, 20))).tolist())))
        manifest = svc.catalog.latest("ns")
        held = tail_mod.fold([wal.decode(store.get(ref.key), 4) for ref in manifest.wal], 4)
        streamed = WalTail.read(store, manifest)
        rows = [batch for batch in streamed.chunks(7)]
        ids = [i for batch in rows for i in batch.ids]
        assert ids == held.rows.ids and streamed.rows == len(held.rows)
        assert np.array_equal(np.concatenate([b.vectors for b in rows]) if rows else np.zeros((0, 4)), held.rows.vectors)
        assert [a for b in rows for a in b.attributes] == held.rows.attributes
        # Only a build over segments needs the touched ids (they override those segments' rows).
        assert frozenset(streamed.touched) == (held.touched if manifest.segments else frozenset())
        assert bool(manifest.segments) == bool(seed % 2)
    finally:
        svc.close()


def test_an_empty_tail_folds_to_nothing():
    store = MemoryStore()
    svc = Service(Settings(store_uri="memory://fold", auto_index=False), store=store)
    try:
        svc.create_namespace("ns", embedder="none", dimensions=4, metric="l2")
        streamed = WalTail.read(store, svc.catalog.latest("ns"))
        assert streamed.rows == 0 and list(streamed.chunks(10)) == [] and frozenset(streamed.touched) == frozenset()
    finally:
        svc.close()
