"""A selective filter is searched exactly (query.exact_filter): the true top-k among the live
rows it keeps, whatever the partitions, in a bounded number of requests; a later query
with the same filter reads nothing but the newest-manifest probe."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.service import Service
from bench.counting import CountingStore
from storage.cache import CachedStore
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import ranged_reads, row_vectors

DIMS = 16
N = 3000
FILTER = {"tenant": "t3", "year": 2011}


def _service(store, **over) -> Service:
    return Service(unit_settings(flat_max_rows=100, rows_per_partition=100, **over), store=store)


@pytest.fixture(scope="module", params=["float32", "int8"])
def corpus(request):
    """A by-range segment of ``N`` rows in 30 partitions (``vector_dtype`` float32 or int8),
    some rows deleted (its tombstone list) and some overridden by the tail; the rows that
    ``FILTER`` keeps are about 1 in 60, scattered over the partitions."""
    store = MemoryStore()
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(N, DIMS)).astype(np.float32)
    attrs = [{"tenant": f"t{i % 6}", "year": 2000 + (i // 6) % 12} for i in range(N)]
    svc = _service(store)
    svc.create_namespace("s", "none", DIMS, "l2", vector_dtype=request.param)
    svc.upsert("s", [{"id": f"r{i}", "vector": v.tolist(), "attributes": a} for i, (v, a) in enumerate(zip(vectors, attrs))])
    svc.index("s")
    kept = [i for i, a in enumerate(attrs) if all(a[k] == v for k, v in FILTER.items())]
    deleted = kept[::7]
    svc.delete("s", [f"r{i}" for i in deleted])
    svc.index("s")  # the deletes become the segment's tombstone list
    # The tail: rows that leave the filter, and rows that join it with new vectors.
    moved = {kept[1]: {"tenant": "t0", "year": 2011}, kept[2]: FILTER}
    new_vectors = {i: rng.normal(size=DIMS).astype(np.float32) for i in moved}
    svc.upsert("s", [{"id": f"r{i}", "vector": new_vectors[i].tolist(), "attributes": a} for i, a in moved.items()])
    svc.close()
    # The live rows as the store holds them (an int8 segment's vectors as decoded).
    view = Service(unit_settings(), store=store)
    seg = view.catalog.latest("s").segments[0]
    stored, ids = view.reader.all_rows("s", seg)
    view.close()
    live = {}
    for v, i, a in zip(stored, ids, (attrs[int(i[1:])] for i in ids)):
        if int(i[1:]) not in deleted:
            live[i] = (v, a)
    for i, a in moved.items():
        live[f"r{i}"] = (new_vectors[i], a)
    return store, live, request.param


def _expected(live: dict, q: np.ndarray, k: int, filt: dict) -> list[str]:
    """Brute force: ids of the top ``k`` by l2 (ties by id) among live rows matching ``filt``."""
    scored = [(-float(np.sum((v - q) ** 2)), i) for i, (v, a) in live.items() if all(a.get(f) == x for f, x in filt.items())]
    return [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))[:k]]


def test_selective_filter_is_exact_and_reads_little(corpus):
    store, live, dtype = corpus
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20))
    rng = np.random.default_rng(11)
    q = rng.normal(size=DIMS).astype(np.float32)
    hits = worker.query("s", vector=q.tolist(), top_k=10, filter=FILTER).hits
    got = [h.id for h in hits]
    assert got == _expected(live, q, 10, FILTER)
    matching = sum(1 for _, a in live.values() if all(a.get(f) == x for f, x in FILTER.items()))
    assert len(got) == 10 < matching
    cold = counting.take()
    vector_gets = [r for r in cold if r.key.endswith("vectors.bin")]
    # The kept rows' vectors are scattered over the partitions, but their GETs are merged
    # within the gap budget: a few GETs, not one per row, and bounded bytes.
    assert 1 <= len(vector_gets) <= 3
    assert sum(r.bytes for r in vector_gets) <= row_vectors.GAP_BUDGET + matching * DIMS * 4 + 30 * 2 * DIMS * 4
    # Another vector, the same filter: nothing read but the newest-manifest probe.
    for seed in range(3):
        q = np.random.default_rng(100 + seed).normal(size=DIMS).astype(np.float32)
        got = [h.id for h in worker.query("s", vector=q.tolist(), top_k=10, filter=FILTER).hits]
        assert got == _expected(live, q, 10, FILTER)
        assert all("/manifests/" in r.key for r in counting.take())


def test_selective_filter_sees_later_deletes(corpus):
    """The kept rows are memoised per filter, but which are live is decided per query."""
    store, live, _ = corpus
    check_later_deletes(_service, store, live, lambda live, q, k: _expected(live, q, k, FILTER), FILTER)


def check_later_deletes(service, store, live: dict, expected, filt: dict) -> None:
    """On a copy of ``store`` (namespace ``s``): the best two rows ``filt`` keeps are
    deleted, and the next answer is ``expected(live, q, k)`` without them, before and after
    an index run writes a new tombstone list (the memo of kept rows is keyed by it)."""
    mine = MemoryStore()
    for info in store.list(""):
        mine.put(info.key, store.get(info.key))
    worker = service(CachedStore(mine, 64 << 20))
    q = np.random.default_rng(5).normal(size=DIMS).astype(np.float32)
    first = [h.id for h in worker.query("s", vector=q.tolist(), top_k=5, filter=filt).hits]
    worker.delete("s", first[:2])
    live = {i: row for i, row in live.items() if i not in first[:2]}
    again = [h.id for h in worker.query("s", vector=q.tolist(), top_k=5, filter=filt).hits]
    assert again == expected(live, q, 5) and not set(first[:2]) & set(again)
    worker.index("s")
    assert [h.id for h in worker.query("s", vector=q.tolist(), top_k=5, filter=filt).hits] == again
    worker.close()


def test_selective_filter_with_fields_reads_records_once(corpus):
    store, live, _ = corpus
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20))
    q = np.random.default_rng(8).normal(size=DIMS).astype(np.float32)
    hits = worker.query("s", vector=q.tolist(), top_k=10, filter=FILTER, include=("attributes",)).hits
    assert [h.id for h in hits] == _expected(live, q, 10, FILTER)
    assert all(h.attributes == live[h.id][1] for h in hits)


RANGES = st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 300)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(RANGES, st.integers(-1, 500), st.integers(0, 5_000))
def test_coalesce_within_covers_every_range_within_the_budget(ranges, gap, budget):
    plain = ranged_reads.coalesce(ranges, gap)
    merged = ranged_reads.coalesce_within(ranges, gap, budget)
    assert len(merged) <= len(plain)
    for start, length in ranges:
        assert any(s <= start and start + length <= s + n for s, n in merged)
    extra = sum(n for _, n in merged) - sum(n for _, n in plain)
    assert 0 <= extra <= budget
    assert merged == sorted(merged) and all(a + n < b for (a, n), (b, _) in zip(merged, merged[1:]))
