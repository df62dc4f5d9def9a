"""A namespace created with ``cluster_by`` (vectordb.clusters): each segment keeps its
vectors grouped by those attributes' values in ``clusters.bin``, and a selective filter on
those attributes alone reads the groups it keeps (a few ranges) instead of the attribute
columns and each kept row's vector by range. Its answer is the exact top-k over the
float16 copy: checked against brute force, with deletes, tail overrides, a merge of
segments and garbage collection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.service import Service
from bench.counting import CountingStore
from storage.cache import CachedStore
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from tests.test_selective_filter import check_later_deletes
from vectordb import clusters, segment
from vectordb.errors import InvalidArgument

DIMS = 16
N = 3000
FILTER = {"tenant": "t3", "year": 2011}


def _service(store, **over) -> Service:
    return Service(unit_settings(flat_max_rows=100, rows_per_partition=100, **over), store=store)


def _attrs(i: int) -> dict:
    attrs = {"tenant": f"t{i % 6}", "year": 2000 + (i // 6) % 12, "tags": ["a" if i % 2 else "b"]}
    if i % 97 == 0:
        del attrs["year"]  # a row without one of the keys: its group's year is missing
    return attrs


@pytest.fixture(scope="module", params=["float32", "int8"])
def corpus(request):
    """One segment of ``N`` rows (30 partitions) grouped by tenant and year, some rows of
    ``FILTER`` deleted (the tombstone list), some moved in and out of it by the tail.
    ``live``: id -> (the vector a search scores: float16 of the ingested one for the
    segment's rows, what the WAL holds for the tail's: float32, or float16 in the int8
    namespace, ``vectordb.wal.half_for``; attributes)."""
    store = MemoryStore()
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(N, DIMS)).astype(np.float32)
    attrs = [_attrs(i) for i in range(N)]
    svc = _service(store)
    svc.create_namespace("s", "none", DIMS, "l2", vector_dtype=request.param, cluster_by=["tenant", "year"])
    svc.upsert("s", [{"id": f"r{i}", "vector": v.tolist(), "attributes": a} for i, (v, a) in enumerate(zip(vectors, attrs))])
    svc.index("s")
    kept = [i for i, a in enumerate(attrs) if all(a.get(k) == v for k, v in FILTER.items())]
    deleted = kept[::7]
    svc.delete("s", [f"r{i}" for i in deleted])
    svc.index("s")
    moved = {kept[1]: {"tenant": "t0", "year": 2011}, kept[2]: FILTER}
    new_vectors = {i: rng.normal(size=DIMS).astype(np.float32) for i in moved}
    svc.upsert("s", [{"id": f"r{i}", "vector": new_vectors[i].tolist(), "attributes": a} for i, a in moved.items()])
    svc.close()
    live = {f"r{i}": (vectors[i].astype(np.float16).astype(np.float32), attrs[i]) for i in range(N) if i not in deleted}
    for i, a in moved.items():
        held = new_vectors[i].astype(np.float16).astype(np.float32) if request.param != "float32" else new_vectors[i]
        live[f"r{i}"] = (held, a)
    return store, live


def _matches(attrs: dict, filt: dict) -> bool:
    for field, want in filt.items():
        value = attrs.get(field)
        if isinstance(want, dict):
            if "$in" in want and value not in want["$in"]:
                return False
            if "$gte" in want and not (isinstance(value, int) and value >= want["$gte"]):
                return False
            if "$exists" in want and (field in attrs) != want["$exists"]:
                return False
        elif value != want:
            return False
    return True


def _expected(live: dict, q: np.ndarray, k: int, filt: dict) -> list[str]:
    scored = [(float(np.sum((v - q) ** 2)), i) for i, (v, a) in live.items() if _matches(a, filt)]
    return [i for _, i in sorted(scored)[:k]]


def test_segment_groups_its_vectors_by_the_keys(corpus):
    store, _ = corpus
    view = _service(store)
    seg = view.catalog.latest("s").segments[0]
    directory = view.reader.layout("s", seg).clusters
    assert directory.names == ("tenant", "year")
    assert directory.counts.sum() == seg.rows
    assert ('"t3"', "2011") in directory.keys and ('"t0"', None) in directory.keys  # a row without a year
    assert store.get(segment.file_key("s", seg.id, "clusters.bin"))  # kept by the manifest's segment
    view.close()


@pytest.mark.parametrize("filt", [FILTER, {"tenant": {"$in": ["t1", "t4"]}, "year": {"$gte": 2010}},
                                  {"tenant": "t0", "year": {"$exists": False}}])
def test_filter_on_the_keys_reads_its_groups_not_the_columns(corpus, filt):
    store, live = corpus
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20))
    rng = np.random.default_rng(11)
    q = rng.normal(size=DIMS).astype(np.float32)
    got = [h.id for h in worker.query("s", vector=q.tolist(), top_k=10, filter=filt).hits]
    assert got == _expected(live, q, 10, filt)
    cold = counting.take()
    read = {r.key.rsplit("/", 1)[-1] for r in cold}
    assert "attrs.bin" in read and "vectors.bin" not in read  # ids of the ten best only
    assert len([r for r in cold if r.key.endswith("clusters.bin")]) <= 2
    assert not [r for r in cold if r.key.endswith("attrs.bin") and r.bytes > 64 * 1024]  # no filter column read
    # Another vector, the same filter: nothing read but the newest-manifest probe.
    for seed in range(3):
        q = np.random.default_rng(100 + seed).normal(size=DIMS).astype(np.float32)
        got = [h.id for h in worker.query("s", vector=q.tolist(), top_k=10, filter=filt).hits]
        assert got == _expected(live, q, 10, filt)
        assert all("/manifests/" in r.key for r in counting.take())
    worker.close()


def test_filter_on_another_attribute_reads_the_columns(corpus):
    store, live = corpus
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20))
    filt = {"tenant": "t3", "tags": {"$contains": "a"}}
    q = np.random.default_rng(12).normal(size=DIMS).astype(np.float32)
    got = [h.id for h in worker.query("s", vector=q.tolist(), top_k=5, filter=filt).hits]
    want = [i for _, i in sorted((float(np.sum((v - q) ** 2)), i) for i, (v, a) in live.items()
                                 if a["tenant"] == "t3" and "a" in a.get("tags", ()))]
    assert set(got) <= set(live) and len(got) == 5
    # Scored from the segment's own vectors (int8 codes or float32), not the float16 copy:
    # the same rows as brute force, allowing for the codes' rounding at the 5th place.
    assert len(set(got) & set(want[:7])) >= 5 - 1
    assert not [r for r in counting.take() if r.key.endswith("clusters.bin")]
    worker.close()


BROAD = [{"year": {"$gte": 2006}}, {"tenant": {"$in": ["t1", "t2", "t4"]}},
         {"tenant": {"$ne": "t0"}, "year": {"$exists": True}}]


def _columns_only(monkeypatch) -> None:
    """Segments read as if written before clusters.bin held each row's group."""
    real = clusters.ClusterDirectory.from_body.__func__
    monkeypatch.setattr(clusters.ClusterDirectory, "from_body",
                        classmethod(lambda cls, body: dataclasses.replace(real(cls, body), group_of_row=False)))


@pytest.mark.parametrize("slack", [0, 16])
@pytest.mark.parametrize("filt", BROAD)
def test_broad_filter_on_the_keys_reads_the_probed_rows_groups(corpus, filt, slack, monkeypatch):
    """A filter on the keys that keeps too many rows to search exactly: the IVF search keeps
    the probed partitions' rows whose group it keeps, read beside the partitions (2 bytes a
    row; each partition's apart, or merged with the bytes between them), not the filter's
    columns. Its answers are the column path's (a segment written before the groups of rows
    were stored), and only live rows that match come back."""
    from vectordb import reader

    monkeypatch.setattr(reader, "_GROUPS_SLACK", slack)
    store, live = corpus
    queries = [np.random.default_rng(20 + i).normal(size=DIMS).astype(np.float32) for i in range(4)]
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20), filter_exact_max_rows=50)
    seg = worker.catalog.latest("s").segments[0]
    layout = worker.reader.layout("s", seg)
    assert layout.clusters.group_of_row
    counting.take()
    got = [[h.id for h in worker.query("s", vector=q.tolist(), top_k=10, filter=filt).hits] for q in queries]
    reads = counting.take()
    assert not [r for r in reads if r.key.endswith("attrs.bin")]  # no column, no id footer
    grouped = [r for r in reads if r.key.endswith("clusters.bin")]
    assert grouped and sum(r.bytes for r in grouped) <= 2 * seg.rows  # rows' groups, each read once at most
    assert [[h.id for h in worker.query("s", vector=q.tolist(), top_k=10, filter=filt).hits]
            for q in queries] == got
    assert all("/manifests/" in r.key for r in counting.take())  # the same queries again: held
    worker.close()
    for ids in got:
        assert len(ids) == 10 and all(i in live and _matches(live[i][1], filt) for i in ids)
    _columns_only(monkeypatch)
    by_columns = _service(CachedStore(CountingStore(store), 64 << 20), filter_exact_max_rows=50)
    assert not by_columns.reader.layout("s", seg).clusters.group_of_row
    assert [[h.id for h in by_columns.query("s", vector=q.tolist(), top_k=10, filter=filt).hits]
            for q in queries] == got
    by_columns.close()


def test_warm_hint_holds_the_rows_groups(corpus):
    """A worker warmed by the hint answers a broad filter on the keys reading nothing but
    the newest-manifest probe."""
    from query.warm import warm

    store, _ = corpus
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20), filter_exact_max_rows=50)
    out = warm(worker, "s", budget_bytes=64 << 20, load_embedder=False)
    seg = worker.catalog.latest("s").segments[0]
    assert out["group_bytes"] == 2 * seg.rows
    counting.take()
    for seed in range(3):
        q = np.random.default_rng(40 + seed).normal(size=DIMS).astype(np.float32)
        assert len(worker.query("s", vector=q.tolist(), top_k=10, filter=BROAD[0]).hits) == 10
        assert all("/manifests/" in r.key for r in counting.take())
    worker.close()


def test_directory_says_whether_the_groups_of_rows_follow():
    directory = clusters.ClusterDirectory(("tenant",), 4, (('"a"',), (None,)), np.array([3, 2]), group_of_row=True)
    again = clusters.ClusterDirectory.from_body(directory.to_trailer()[12:])
    assert again.group_of_row and again.keys == directory.keys and again.group_range(3, 2) == (5 * 12 + 2 * 3, 2 * 2)
    older = dataclasses.replace(directory, group_of_row=False)
    assert b"group_of_row" not in older.to_trailer()
    assert not clusters.ClusterDirectory.from_body(older.to_trailer()[12:]).group_of_row
    with pytest.raises(ValueError, match="group_of_row"):
        clusters.ClusterDirectory.from_body(directory.to_trailer()[12:].replace(b'"uint16"', b'"uint32"'))


def test_later_deletes_are_seen(corpus):
    store, live = corpus
    check_later_deletes(_service, store, live, lambda live, q, k: _expected(live, q, k, FILTER), FILTER)


def test_merged_segments_and_garbage_collection_keep_the_copy():
    """Segments built by successive index runs, then compacted into one, then the old
    ones collected: every segment has its clusters.bin, and answers stay exact."""
    store = MemoryStore()
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(900, DIMS)).astype(np.float32)
    svc = _service(store, gc_grace_s=0)
    svc.create_namespace("m", "none", DIMS, "cosine", vector_dtype="int8", cluster_by=["tenant"])
    for lo in range(0, 900, 300):
        svc.upsert("m", [{"id": f"r{i}", "vector": vectors[i].tolist(), "attributes": {"tenant": f"t{i % 5}"}}
                         for i in range(lo, lo + 300)])
        svc.index("m")
    svc.index("m", compact=True)
    svc.collect_garbage("m")
    seg, = svc.catalog.latest("m").segments
    assert svc.reader.layout("m", seg).clusters is not None
    q = rng.normal(size=DIMS).astype(np.float32)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    stored = normed.astype(np.float16).astype(np.float32)
    scores = stored[2::5] @ (q / np.linalg.norm(q))
    want = [f"r{2 + 5 * int(j)}" for j in np.argsort(-scores, kind="stable")[:8]]
    fresh = _service(store)
    assert [h.id for h in fresh.query("m", vector=q.tolist(), top_k=8, filter={"tenant": "t2"}).hits] == want
    fresh.close()
    svc.close()


def _without_copy(ns: str, cluster_by: list[str], vectors: np.ndarray, attrs_of) -> Service:
    """A namespace grouped by ``cluster_by`` whose one segment (``vectors``, row i's
    attributes ``attrs_of(i)``) must get no clusters.bin; its service, to query."""
    store = MemoryStore()
    svc = _service(store)
    svc.create_namespace(ns, "none", DIMS, "l2", cluster_by=cluster_by)
    svc.upsert(ns, [{"id": f"r{i}", "vector": v.tolist(), "attributes": attrs_of(i)} for i, v in enumerate(vectors)])
    svc.index(ns)
    seg, = svc.catalog.latest(ns).segments
    assert svc.reader.layout(ns, seg).clusters is None
    assert store.head(segment.file_key(ns, seg.id, "clusters.bin")) is None
    return svc


def test_a_segment_past_the_group_limit_gets_no_copy(monkeypatch):
    monkeypatch.setattr(clusters, "MAX_GROUPS", 10)
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(200, DIMS)).astype(np.float32)
    svc = _without_copy("g", ["n"], vectors, lambda i: {"n": i % 40})
    q = rng.normal(size=DIMS).astype(np.float32)
    want = sorted(range(3, 200, 40), key=lambda i: float(np.sum((vectors[i] - q) ** 2)))
    assert [h.id for h in svc.query("g", vector=q.tolist(), top_k=5, filter={"n": 3}).hits] == [f"r{i}" for i in want]
    svc.close()


def test_vectors_beyond_float16_get_no_copy():
    vectors = np.random.default_rng(7).normal(size=(150, DIMS)).astype(np.float32)
    vectors[17, 3] = 1e6
    svc = _without_copy("h", ["n"], vectors, lambda i: {"n": i % 3})
    assert svc.query("h", vector=vectors[17].tolist(), top_k=1, filter={"n": 2}).hits[0].id == "r17"
    svc.close()


def test_long_keys_get_no_copy(monkeypatch):
    """The directory rides in ivf.bin, which every cold query reads: keys of more than
    MAX_KEY_BYTES in all make no copy."""
    monkeypatch.setattr(clusters, "MAX_KEY_BYTES", 2000)
    vectors = np.random.default_rng(8).normal(size=(120, DIMS)).astype(np.float32)
    svc = _without_copy("k", ["title"], vectors, lambda i: {"title": f"{i % 12}" + "x" * 300})
    hits = svc.query("k", vector=vectors[5].tolist(), top_k=1, filter={"title": "5" + "x" * 300}).hits
    assert [h.id for h in hits] == ["r5"]
    svc.close()


def test_cluster_by_is_checked_and_described():
    with pytest.raises(InvalidArgument, match="not 'id'"):
        clusters.check_names(["id"])
    with pytest.raises(InvalidArgument, match="at most 4"):
        clusters.check_names(["a", "b", "c", "d", "e"])
    with pytest.raises(InvalidArgument, match="twice"):
        clusters.check_names(["a", "a"])
    with pytest.raises(InvalidArgument, match="list"):
        clusters.check_names("tenant")
    from api.app import create_app

    svc = _service(MemoryStore())
    with TestClient(create_app(svc.settings, service=svc)) as client:
        bad = client.put("/v1/namespaces/c", json={"embedder": "none", "dimensions": 4, "cluster_by": ["a.b"]})
        assert bad.status_code == 400 and "top-level attribute name" in bad.text
        made = client.put("/v1/namespaces/c", json={"embedder": "none", "dimensions": 4, "cluster_by": ["tenant"]})
        assert made.status_code in (200, 201), made.text
        assert made.json()["cluster_by"] == ["tenant"]
        assert client.get("/v1/namespaces/c").json()["cluster_by"] == ["tenant"]
        plain = client.put("/v1/namespaces/p", json={"embedder": "none", "dimensions": 4})
        assert plain.json()["cluster_by"] == []
    svc.close()
