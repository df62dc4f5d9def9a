"""``layouts.bin`` (vectordb.layout_hint): the indexer writes copies of the segments'
``ivf.bin`` under one key; a cold worker reads it beside ``latest.json`` and reads its
partitions in its second round trip, not its third. A stale, missing or corrupt hint
changes no answer: the worker reads the ``ivf.bin`` of the segments it lacks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from api.service import Service
from bench.counting import CountingStore, round_trips
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb import keys, layout_hint, segment
from vectordb.catalog import get_fresh

DIMS = 16


class _SlowStore(MemoryStore):
    """A memory store whose reads take a few milliseconds, as a network's would: round
    trips then show as requests that do or do not overlap in time."""

    def get(self, key: str) -> bytes:
        time.sleep(0.02)
        return super().get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        time.sleep(0.02)
        return super().get_range(key, start, length)


def _rows(rng, n: int, start: int = 0) -> list[dict]:
    vectors = rng.normal(size=(n, DIMS))
    return [{"id": f"r{start + i}", "vector": v.tolist()} for i, v in enumerate(vectors)]


def _cold_query(store, q, **kwargs):
    """A fresh worker's first query: its hits, and the requests it made."""
    counting = CountingStore(store)
    worker = Service(unit_settings(preload_embedder=""), store=counting)
    try:
        hits = [(h.id, round(h.score, 5)) for h in worker.query("h", vector=q.tolist(), top_k=10, **kwargs).hits]
    finally:
        worker.close()
    return hits, counting.take()


def _starts(requests, key_part: str) -> list[float]:
    return [r.start for r in requests if key_part in r.key]


def _ends(requests, key_part: str) -> list[float]:
    return [r.end for r in requests if key_part in r.key]


def _ivf_reads(requests) -> list[str]:
    return sorted(r.key.split("/")[2] for r in requests if r.key.endswith("/ivf.bin"))


@pytest.fixture
def indexed():
    rng = np.random.default_rng(5)
    store = _SlowStore()
    writer = Service(unit_settings(preload_embedder=""), store=store)
    writer.create_namespace("h", "none", DIMS, "l2")
    writer.upsert("h", _rows(rng, 400))
    writer.index("h")
    writer.upsert("h", _rows(rng, 300, 400))
    writer.index("h")
    yield store, writer, rng
    writer.close()


def test_the_indexer_writes_each_segments_ivf_bin(indexed):
    store, writer, _ = indexed
    manifest = writer.catalog.latest("h")
    assert len(manifest.segments) == 2
    copies = layout_hint.decode(store.get(keys.layout_hint_key("h")))
    assert copies == {seg.id: store.get(segment.file_key("h", seg.id, "ivf.bin")) for seg in manifest.segments}


@pytest.mark.parametrize("consistency", ["strong", "eventual"])
@pytest.mark.parametrize("tail", [False, True])
def test_a_cold_query_reads_partitions_in_its_second_round_trip(indexed, tail, consistency):
    store, writer, rng = indexed
    if tail:  # unindexed rows: the answer includes them; their WAL object is read first
        writer.upsert("h", _rows(rng, 20, 700))
    for q in rng.normal(size=(3, DIMS)):
        hits, requests = _cold_query(store, q, consistency=consistency)
        assert _ivf_reads(requests) == []
        # latest.json and layouts.bin together, then the partitions beside the probe (with a
        # tail, after its WAL object). Requests that overlap count as one round trip here.
        first = _ends(requests, "latest.json") + _ends(requests, "layouts.bin")
        assert min(_starts(requests, "latest.json") + _starts(requests, "layouts.bin")) < min(first)
        partitions = _starts(requests, "vectors.bin")
        assert min(partitions) >= max(first)
        if not tail:
            assert min(partitions) < max(_ends(requests, "/manifests/"))
            assert round_trips(requests) <= 2
        # Without the hint: the same answer, but each ivf.bin is read once latest.json named
        # it, and the partitions only after that: a step more.
        saved = store.get(keys.layout_hint_key("h"))
        store.delete(keys.layout_hint_key("h"))
        plain, plain_requests = _cold_query(store, q, consistency=consistency)
        store.put(keys.layout_hint_key("h"), saved)
        assert hits == plain
        assert len(_ivf_reads(plain_requests)) == 2
        assert min(_starts(plain_requests, "ivf.bin")) >= max(_ends(plain_requests, "latest.json"))
        assert min(_starts(plain_requests, "vectors.bin")) >= max(_ends(plain_requests, "ivf.bin"))
        # The answer of the writer, which holds the tail and read everything itself.
        assert hits == [(h.id, round(h.score, 5)) for h in writer.query("h", vector=q.tolist(), top_k=10).hits]


def test_a_cold_query_reads_tombstones_beside_its_partitions(indexed):
    """A segment's tombstone list is read beside the partitions, not before them: the
    hint holds the layouts, and the query asks for dead rows only once a partition has
    landed (two round trips, as without deletes)."""
    store, writer, rng = indexed
    writer.delete("h", ids=[f"r{i}" for i in range(0, 700, 3)])
    writer.index("h")
    manifest = writer.catalog.latest("h")
    assert all(seg.tombstones_key for seg in manifest.segments) and not manifest.wal
    for q in rng.normal(size=(3, DIMS)):
        hits, requests = _cold_query(store, q)
        assert _ivf_reads(requests) == []
        tombs = [r for r in requests if "/tomb-" in r.key]
        assert tombs and min(_starts(requests, "vectors.bin")) < max(r.end for r in tombs)
        assert round_trips(requests) <= 2
        assert not {h for h, _ in hits} & {f"r{i}" for i in range(0, 700, 3)}
        assert hits == [(h.id, round(h.score, 5)) for h in writer.query("h", vector=q.tolist(), top_k=10).hits]


def test_a_stale_hint_costs_only_the_missing_segments_ivf_bin(indexed):
    store, writer, rng = indexed
    stale = store.get(keys.layout_hint_key("h"))
    writer.upsert("h", _rows(rng, 300, 700))
    writer.index("h")  # a third segment; another indexer's older hint wins the race
    store.put(keys.layout_hint_key("h"), stale)
    newest = writer.catalog.latest("h")
    assert len(newest.segments) == 3
    q = rng.normal(size=DIMS)
    hits, requests = _cold_query(store, q)
    assert _ivf_reads(requests) == [newest.segments[-1].id]
    assert hits == [(h.id, round(h.score, 5)) for h in writer.query("h", vector=q.tolist(), top_k=10).hits]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad copy"])
def test_a_corrupt_hint_changes_no_answer(indexed, damage):
    store, writer, rng = indexed
    manifest = writer.catalog.latest("h")
    good = store.get(keys.layout_hint_key("h"))
    if damage == "garbage":
        bad = b"not a layout hint at all"
    elif damage == "truncated":
        bad = good[: len(good) // 2]
    else:  # decodes, but one segment's copy is no ivf.bin
        bad = layout_hint.encode([(manifest.segments[0].id, b"VDBIVF02" + b"\0" * 3)])
    store.put(keys.layout_hint_key("h"), bad)
    q = rng.normal(size=DIMS)
    hits, requests = _cold_query(store, q)
    assert len(_ivf_reads(requests)) == 2
    assert hits == [(h.id, round(h.score, 5)) for h in writer.query("h", vector=q.tolist(), top_k=10).hits]


def test_decode_rejects_what_it_did_not_write():
    entries = [("00000000000000000003-ab", b"\x01\x02\x03"), ("00000000000000000009-cd", b"")]
    data = layout_hint.encode(entries)
    assert layout_hint.decode(data) == dict(entries)
    for bad in (b"", b"VDBLAYT1", data[:-1], data[:20], b"VDBLAYT2" + data[8:]):
        with pytest.raises(ValueError):
            layout_hint.decode(bad)


def test_garbage_collection_of_a_dropped_namespace_deletes_the_hint(indexed):
    store, writer, _ = indexed
    assert store.head(keys.layout_hint_key("h")) is not None
    writer.drop_namespace("h")
    writer.collect_garbage("h")
    assert store.head(keys.layout_hint_key("h")) is None


S3_QUERIES = [{"vector": [0.3] * DIMS, "top_k": 10}, {"vector": [-0.5, 0.2] * (DIMS // 2), "top_k": 10},
              {"vector": [0.1, -0.4] * (DIMS // 2), "top_k": 10, "filter": {"year": {"$gte": 2008}}}]


def _docs(lo: int, hi: int, rng) -> list[dict]:
    return [{"id": f"d{i}", "vector": rng.normal(size=DIMS).round(4).tolist(), "attributes": {"year": 2000 + i % 25}}
            for i in range(lo, hi)]


@pytest.mark.s3
@pytest.mark.integration
def test_cold_and_idle_query_workers_in_their_own_processes_answer_from_fresh_stale_and_no_hints(s3_endpoint, tmp_path):
    """An ingest worker builds segments (and rewrites the hint); a query worker started cold
    after each change, a process of its own, answers as an in-process reader of the same
    store does: with the hint fresh, stale (an older build's set), and gone. Dropping the
    namespace and collecting it removes the hint. A query worker started at the beginning
    sits idle with what it cached through all of it, and answers as a fresh reader does
    after the changes, and after the drop, collection and re-creation (whose first build
    writes a new hint) sees only the new namespace."""
    from tests.s3server import s3_env
    from tests.test_lagging_workers import _gc
    from vectordb.settings import Settings
    from vectordb.testing import start_server

    env = s3_env(s3_endpoint, "layout-hint", VECTORDB_AUTO_INDEX="false", VECTORDB_GROUP_COMMIT_MS="5",
                 VECTORDB_FLAT_MAX_ROWS="200", VECTORDB_ROWS_PER_PARTITION="100")
    settings = Settings(store_uri=env["VECTORDB_STORE_URI"], s3_endpoint=s3_endpoint,
                        s3_access_key=env["VECTORDB_S3_ACCESS_KEY"], s3_secret_key=env["VECTORDB_S3_SECRET_KEY"],
                        preload_embedder="", flat_max_rows=200, rows_per_partition=100)
    rng = np.random.default_rng(9)
    ingest = start_server(env, tmp_path, "ingest")
    helper = Service(settings)
    workers = []
    try:
        with ingest.client() as w:
            r = w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"})
            assert r.status_code in (200, 201), r.text

            def grow(lo: int, hi: int) -> None:
                assert w.post("/v1/namespaces/n/documents", json={"documents": _docs(lo, hi, rng)}).status_code == 200
                assert w.post("/v1/namespaces/n/index", json={}).status_code == 200

            def check_worker(query) -> None:
                fresh = Service(settings)
                try:
                    with query.client() as q:
                        for body in S3_QUERIES:
                            r = q.post("/v1/namespaces/n/query", json={**body, "consistency": "strong"})
                            assert r.status_code == 200, r.text
                            got = [(h["id"], round(h["score"], 4)) for h in r.json()["results"]]
                            want = [(h.id, round(h.score, 4)) for h in fresh.query("n", **body).hits]
                            assert got and got == want, body
                finally:
                    fresh.close()

            def check_cold_worker() -> None:
                query = start_server(env, tmp_path, "query")
                try:
                    check_worker(query)
                finally:
                    query.stop()

            grow(0, 1500)
            idle = start_server(env, tmp_path, "query")  # holds version 1's segment, then idles
            workers.append(idle)
            check_worker(idle)
            grow(1500, 3000)
            store = helper.store
            hint_key = keys.layout_hint_key("n")
            manifest = helper.catalog.latest("n")
            copies = layout_hint.decode(get_fresh(store, hint_key))
            assert sorted(copies) == sorted(seg.id for seg in manifest.segments)
            check_cold_worker()  # fresh hint

            stale = get_fresh(store, hint_key)
            grow(3000, 4500)
            store.put(hint_key, stale)  # an older build's set won the race
            check_cold_worker()

            store.delete(hint_key)
            check_cold_worker()  # no hint at all

            grow(4500, 5000)  # rewritten by the next build
            assert len(layout_hint.decode(get_fresh(store, hint_key))) == 4
            check_worker(idle)  # idle since the first build: four segments and a new hint since
            assert w.delete("/v1/namespaces/n").status_code == 200
            _gc(env, "n")
            assert store.head(hint_key) is None

            # Re-created: the idle worker knows only a dropped version, so it starts cold
            # again, from the new incarnation's latest.json and hint.
            r = w.put("/v1/namespaces/n", json={"embedder": "none", "dimensions": DIMS, "metric": "l2"})
            assert r.status_code in (200, 201), r.text
            grow(9000, 9400)
            assert len(layout_hint.decode(get_fresh(store, hint_key))) == 1
            check_worker(idle)
            with idle.client() as q:
                r = q.post("/v1/namespaces/n/query", json={"vector": [0.3] * DIMS, "top_k": 50})
                assert r.status_code == 200, r.text
                got = {h["id"] for h in r.json()["results"]}
                assert len(got) == 50 and got <= {f"d{i}" for i in range(9000, 9400)}
    finally:
        for worker in workers:
            worker.stop()
        ingest.stop()
        helper.close()


def test_a_burst_of_queries_at_a_cold_worker_reads_the_hint_once(indexed):
    store, writer, rng = indexed
    queries = rng.normal(size=(8, DIMS))
    counting = CountingStore(store)
    worker = Service(unit_settings(preload_embedder=""), store=counting)
    barrier = threading.Barrier(len(queries))

    def ask(q):
        barrier.wait()
        return [h.id for h in worker.query("h", vector=q.tolist(), top_k=5, consistency="eventual").hits]

    try:
        with ThreadPoolExecutor(len(queries)) as pool:
            got = list(pool.map(ask, queries))
    finally:
        worker.close()
    requests = counting.take()
    assert sum(r.key.endswith("layouts.bin") for r in requests) == 1
    assert sum(r.key.endswith("latest.json") for r in requests) == 1
    assert _ivf_reads(requests) == []
    assert got == [[h.id for h in writer.query("h", vector=q.tolist(), top_k=5).hits] for q in queries]
