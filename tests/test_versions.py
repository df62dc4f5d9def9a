"""Versions as features (vectordb.versions, ingest.backup): reads as of a version, a tag
or a time; the history; tags kept by garbage collection; restore; branches isolated both
ways; backup and restore across stores. Memory store here; the S3 variants are marked."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.service import Service
from ingest.backup import copy_version
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb.errors import AlreadyExists, InvalidArgument, VersionNotFound, VersionNotRetained

DIMS = 4


def _docs(*ids: str, rev: int = 0) -> list[dict]:
    return [{"id": i, "vector": [float(n + rev), 1.0, 0.0, 0.0], "attributes": {"rev": rev}} for n, i in enumerate(ids)]


def _rows(service: Service, ns: str, as_of=None) -> tuple[int, dict[str, int]]:
    result = service.query(ns, vector=[0.0] * DIMS, top_k=100, filter={"rev": {"$gte": 0}},
                           include=("attributes",), as_of=as_of)
    return result.version, {h.id: h.attributes["rev"] for h in result.hits}


def _service(settings=None, **overrides) -> Service:
    settings = settings or unit_settings(f"memory://versions-{uuid.uuid4().hex[:8]}", **overrides)
    return Service(settings, store=MemoryStore() if settings.store_uri.startswith("memory://") else None)


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.s3)])
def service(request):
    """A service on the memory store, and the same on a real S3 server (SeaweedFS)."""
    if request.param == "s3":
        settings = request.getfixturevalue("s3_settings")
        overrides = unit_settings().model_dump(include={"group_commit_ms", "flat_max_rows", "rows_per_partition",
                                                        "auto_index", "gc_grace_s"})
        s = Service(settings.model_copy(update={**overrides, "retain_manifests": 100}))
    else:
        s = _service(retain_manifests=100)
    s.create_namespace("n", embedder="none", dimensions=DIMS, metric="l2")
    yield s
    s.close()


def _history_of_changes(service: Service) -> dict[int, dict[str, int]]:
    """Writes, deletes, overwrites, an index build and a compaction in between; the rows
    after each version, as a client would have seen them."""
    seen = {}
    steps = [
        lambda: service.upsert("n", _docs("a", "b", "c")),
        lambda: service.upsert("n", _docs("b", rev=1)),  # overwrite
        lambda: service.delete("n", ids=["a"]),
        lambda: service.index("n"),
        lambda: service.upsert("n", _docs("a", "d", rev=2)),  # back again
        lambda: service.delete("n", ids=["c"]),
        lambda: service.index("n", compact=True),
        lambda: service.upsert("n", _docs("e", rev=3)),
    ]
    for step in steps:
        step()
        version, rows = _rows(service, "n")
        seen[version] = rows
    return seen


def test_reads_as_of_every_version_answer_exactly_its_rows(service):
    seen = _history_of_changes(service)
    for version, rows in seen.items():
        assert _rows(service, "n", as_of=version) == (version, rows)
        hit = service.get_document("n", next(iter(rows)), as_of=version) if rows else None
        assert hit is None or hit["attributes"]["rev"] == rows[hit["id"]]


def test_as_of_a_time_reads_the_version_committed_then(service):
    seen = _history_of_changes(service)
    for info in service.versions("n"):
        if info.version in seen:
            assert _rows(service, "n", as_of=info.created_at + 1e-6) == (info.version, seen[info.version])
    with pytest.raises(VersionNotFound, match="did not exist"):
        service.query("n", vector=[0.0] * DIMS, as_of=1.0)
    with pytest.raises(InvalidArgument, match="time zone"):
        service.query("n", vector=[0.0] * DIMS, as_of="2026-01-01T00:00:00")


def test_history_says_what_each_version_did(service):
    _history_of_changes(service)
    ops = [(v.version, v.change["op"]) for v in reversed(service.versions("n"))]
    assert [op for _, op in ops] == ["create", "write", "write", "write", "index", "write", "write", "compact", "write"]
    page = service.versions("n", limit=3, before=5)
    assert [v.version for v in page] == [4, 3, 2]


def test_pruned_versions_answer_410_naming_the_oldest_readable_and_tags_stay(service):
    seen = _history_of_changes(service)
    tagged = min(seen)  # the first write
    service.tag("n", "first", tagged)
    service.settings.retain_manifests = 2
    service.collect_garbage("n")
    with pytest.raises(VersionNotRetained, match=r"oldest readable version is \d+") as refused:
        service.query("n", vector=[0.0] * DIMS, as_of=tagged + 1)
    assert "first" in str(refused.value)
    assert _rows(service, "n", as_of="first") == (tagged, seen[tagged])
    # The tag keeps its data however much is collected; removing it lets it go.
    service.index("n", compact=True)
    service.collect_garbage("n")
    assert _rows(_fresh(service), "n", as_of="first") == (tagged, seen[tagged])
    service.untag("n", "first")
    service.collect_garbage("n")
    with pytest.raises(VersionNotFound):
        service.query("n", vector=[0.0] * DIMS, as_of="first")


def _fresh(service: Service) -> Service:
    """Another process on the same store (its own caches)."""
    return Service(service.settings, store=service.store.inner if hasattr(service.store, "inner") else service.store)


def test_restore_commits_a_past_version_and_keeps_the_history(service):
    seen = _history_of_changes(service)
    target = sorted(seen)[2]
    newest_before = service.describe("n")["version"]
    restored = service.restore("n", target)
    assert restored.version > newest_before and restored.change == {"op": "restore", "version": target}
    assert _rows(service, "n") == (restored.version, seen[target])
    assert _rows(service, "n", as_of=newest_before)[1] == seen[max(seen)]  # the history is kept
    service.upsert("n", _docs("z", rev=9))
    service.index("n", compact=True)
    assert _rows(service, "n")[1] == {**seen[target], "z": 9}


def test_branches_are_isolated_both_ways_and_survive_collections(service):
    seen = _history_of_changes(service)
    source_version = max(seen)
    branch = service.branch("b", "n")
    assert branch.origin == {"namespace": "n", "version": source_version}
    assert _rows(service, "b")[1] == seen[source_version]
    # Changes on either side stay there.
    service.upsert("n", _docs("only-n", rev=4))
    service.delete("n", ids=["b"])
    service.upsert("b", _docs("only-b", rev=5))
    service.delete("b", ids=["d"])
    service.index("b", compact=True)
    service.index("n", compact=True)
    n_rows = {**{k: v for k, v in seen[source_version].items() if k != "b"}, "only-n": 4}
    b_rows = {**{k: v for k, v in seen[source_version].items() if k != "d"}, "only-b": 5}
    service.settings.retain_manifests = 1
    for _ in range(2):
        service.collect_garbage("n")
        service.collect_garbage("b")
    other = _fresh(service)
    assert _rows(other, "n")[1] == n_rows
    assert _rows(other, "b")[1] == b_rows
    assert "b" in service.catalog.latest("n").forks


def test_a_branch_outlives_its_dropped_source_and_its_source_collects_after_the_branch_goes(service):
    seen = _history_of_changes(service)
    service.branch("b", "n")
    service.drop_namespace("n")
    assert _rows(_fresh(service), "b")[1] == seen[max(seen)]  # borrowed objects stayed
    service.drop_namespace("b")
    service.collect_garbage("n")
    left = [info.key for info in service.store.list("n/") if "/manifests/" not in info.key and "latest" not in info.key]
    assert left == []


def test_branch_refuses_an_existing_name_and_a_pruned_version(service):
    seen = _history_of_changes(service)
    service.create_namespace("taken", embedder="none", dimensions=DIMS, metric="l2")
    with pytest.raises(AlreadyExists):
        service.branch("taken", "n")
    service.settings.retain_manifests = 1
    service.collect_garbage("n")
    with pytest.raises(VersionNotRetained):
        service.branch("b", "n", min(seen))


def test_backup_to_another_store_and_restore_give_the_same_answers(service, tmp_path):
    seen = _history_of_changes(service)
    service.branch("b", "n")
    service.upsert("b", _docs("in-branch", rev=7))  # the backup of a branch takes its borrowed objects too
    backup = Service(unit_settings(f"file://{tmp_path}/backup"))
    steps = []
    result = copy_version(service.catalog, "b", backup.catalog, "b-copy", progress=lambda *p: steps.append(p))
    assert result.copied == result.objects and steps[-1] == (result.objects, result.objects, result.bytes, result.bytes)
    assert _rows(backup, "b-copy")[1] == {**seen[max(seen)], "in-branch": 7}
    # Run again: it was made already, nothing is copied.
    again = copy_version(service.catalog, "b", backup.catalog, "b-copy")
    assert again.copied == 0 and again.version == result.version
    # Restore into an empty store under a new name.
    target = Service(unit_settings(f"file://{tmp_path}/target"))
    copy_version(backup.catalog, "b-copy", target.catalog, "restored")
    assert _rows(target, "restored")[1] == _rows(service, "b")[1]
    target.upsert("restored", _docs("after", rev=8))
    target.index("restored", compact=True)
    assert _rows(target, "restored")[1]["after"] == 8
    for s in (backup, target):
        s.close()


def test_backup_resumes_after_an_interruption(service, tmp_path):
    _history_of_changes(service)
    backup = Service(unit_settings(f"file://{tmp_path}/backup"))
    inner_put = backup.store.inner.put
    puts = []

    def failing_put(key, data):
        if len(puts) == 2:
            raise OSError("disk unplugged")
        puts.append(key)
        inner_put(key, data)

    backup.store.inner.put = failing_put
    with pytest.raises(OSError):
        copy_version(service.catalog, "n", backup.catalog, "copy")
    assert backup.catalog.newest("copy") is None  # nothing visible of a half-made copy
    backup.store.inner.put = inner_put
    result = copy_version(service.catalog, "n", backup.catalog, "copy")
    assert result.copied == result.objects - 2
    assert _rows(backup, "copy")[1] == _rows(service, "n")[1]
    backup.close()


def test_versions_over_http(service):
    _history_of_changes(service)
    with TestClient(create_app(service.settings, "all", service=service)) as client:
        h = {"X-Requested-With": "test"}
        versions = client.get("/v1/namespaces/n/versions?limit=2").json()["versions"]
        assert [v["change"]["op"] for v in versions] == ["write", "compact"]
        r = client.put("/v1/namespaces/n/tags/good", json={"version": 2})
        assert r.status_code == 200 and r.json()["tag"]["version"] == 2
        assert client.get("/v1/namespaces/n/tags").json()["tags"][0]["name"] == "good"
        q = client.post("/v1/namespaces/n/query", json={"vector": [0, 0, 0, 0], "as_of": "good", "top_k": 10})
        assert q.status_code == 200 and q.json()["version"] == 2
        r = client.post("/v1/namespaces/n/rag", json={"question": "x", "as_of": 2, "generate": False, "mode": "bm25"})
        assert r.status_code == 200 and r.json()["version"] == 2
        assert all(c["version"] == 2 for c in r.json()["citations"])
        assert client.get("/v1/namespaces/n/documents/b?as_of=2").json()["attributes"]["rev"] == 1
        assert client.get("/v1/namespaces/n/documents/b?as_of=good").status_code == 200
        r = client.post("/v1/namespaces/n/restore", json={"tag": "good"})
        assert r.status_code == 200 and r.json()["restored"] == 2
        r = client.put("/v1/namespaces/fork", json={"from": {"namespace": "n", "version": 2}})
        assert r.status_code == 200 and r.json()["origin"] == {"namespace": "n", "version": 2}
        r = client.put("/v1/namespaces/fork2", json={"from": {"namespace": "n"}, "dimensions": 3})
        assert r.status_code == 400 and "only 'from'" in r.json()["error"]["message"]
        r = client.put("/v1/namespaces/n/tags/x", json={"version": 2, "tag": "good"})
        assert r.status_code == 400
        r = client.post("/v1/namespaces/n/query", json={"vector": [0, 0, 0, 0], "as_of": 999})
        assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
        assert client.delete("/v1/namespaces/n/tags/good", headers=h).status_code == 200
        assert client.delete("/v1/namespaces/n/tags/good", headers=h).status_code == 404
        service.settings.retain_manifests = 1
        service.collect_garbage("n")
        r = client.post("/v1/namespaces/n/query", json={"vector": [0, 0, 0, 0], "as_of": 2})
        assert r.status_code == 410 and r.json()["error"]["code"] == "version_not_retained"
        assert "oldest readable version" in r.json()["error"]["message"]


@pytest.mark.s3
def test_backup_into_an_empty_bucket_and_restore_answer_the_same(s3_settings):
    """S3 to an empty bucket and back under a new name: the same answers to vector,
    filtered and BM25 queries, with a segment, deletes and an unindexed tail."""
    settings = s3_settings.model_copy(update={"group_commit_ms": 1, "flat_max_rows": 50, "rows_per_partition": 40})
    source = Service(settings)
    source.create_namespace("kb", embedder="none", dimensions=DIMS, metric="cosine")
    words = ["vitamin", "cancer", "risk", "heart", "sun", "statin"]
    docs = [{"id": f"d{i}", "vector": [1.0, i % 7, i % 3, 1.0 + i], "text": f"{words[i % 6]} {words[(i * 5) % 6]} note {i}",
             "attributes": {"rev": i % 4}} for i in range(120)]
    source.upsert("kb", docs[:100])
    source.index("kb")
    source.delete("kb", ids=[f"d{i}" for i in range(0, 100, 9)])
    source.upsert("kb", docs[100:])
    bucket = f"backup-{uuid.uuid4().hex[:10]}"
    backup = Service(settings.model_copy(update={"store_uri": f"s3://{bucket}/vectordb"}))
    copied = copy_version(source.catalog, "kb", backup.catalog, "kb")
    restored = Service(settings.model_copy(update={"store_uri": f"{settings.store_uri}-restored"}))
    copy_version(backup.catalog, "kb", restored.catalog, "kb-again")
    queries = [
        {"vector": [1.0, 2.0, 1.0, 5.0], "top_k": 20},
        {"vector": [1.0, 2.0, 1.0, 5.0], "top_k": 20, "filter": {"rev": {"$in": [1, 3]}}},
        {"text": "vitamin risk", "mode": "bm25", "top_k": 20},
    ]
    for q in queries:
        expected = [(h.id, round(h.score, 5)) for h in source.query("kb", **q).hits]
        assert [(h.id, round(h.score, 5)) for h in backup.query("kb", **q).hits] == expected
        assert [(h.id, round(h.score, 5)) for h in restored.query("kb-again", **q).hits] == expected
    assert copied.objects == copied.copied > 0
    for s in (source, backup, restored):
        s.close()
