"""One behaviour suite for the Python API, run against both implementations:
``vectordb.connect("file://...")`` (embedded, in process) and ``vectordb.connect("http://...")``
(the remote client, against a real uvicorn server on 127.0.0.1 serving the same store
layout). Same calls, same typed results, same errors."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

import vectordb
from api.app import create_app
from tests.fakes import unit_settings
from tests.servers import InProcessServer
from vectordb import errors
from vectordb.results import Document, JobInfo, NamespaceInfo, QueryResult, WriteResult

DIMS = 4
OVERRIDES = dict(group_commit_ms=1, flat_max_rows=50, rows_per_partition=40, auto_index=False, gc_grace_s=0,
                 retain_manifests=2, preload_embedder="")


@pytest.fixture(params=["embedded", "remote"])
def uri_and_db(request, tmp_path):
    store = f"file://{tmp_path}/store"
    unit_settings()  # registers the fake embedder in this process (the server's too: same process)
    if request.param == "embedded":
        db = vectordb.connect(store, **OVERRIDES)
        yield store, db
        db.close()
        return
    app = create_app(unit_settings(store, **OVERRIDES), "all")
    with InProcessServer(app) as url:
        db = vectordb.connect(url)
        yield url, db
        db.close()


@pytest.fixture
def db(uri_and_db):
    return uri_and_db[1]


def _docs(n: int, start: int = 0, rev: int = 0) -> list[dict]:
    return [{"id": f"d{i}", "vector": [1.0, float(i), float(i % 3), 0.5], "text": f"note {i} about vitamins",
             "attributes": {"rev": rev, "k": i % 2}} for i in range(start, start + n)]


def test_namespaces(db):
    kb = db.create_namespace("kb", embedder="none", dimensions=DIMS, metric="l2")
    assert kb.name == "kb" and db.list_namespaces() == ["kb"]
    assert kb.info.created and kb.info.version == 0 and kb.info.dimensions == DIMS and kb.info.origin is None
    assert db.create_namespace("kb", embedder="none", dimensions=DIMS, metric="l2").info.created is False
    assert db.namespace("kb").info is None  # opened, not created
    info = db.namespace("kb").describe()
    assert isinstance(info, NamespaceInfo) and info.dimensions == DIMS and info.embedder == "none"
    with pytest.raises(errors.NamespaceNotFound):
        db.namespace("absent")
    with pytest.raises(errors.AlreadyExists):
        db.create_namespace("kb", embedder="none", dimensions=8, metric="l2")
    assert db.create_namespace("kb", embedder="none", dimensions=DIMS, metric="l2").describe().version == 0
    assert db.drop_namespace("kb") > 0 and db.list_namespaces() == []


def test_write_query_get_delete(db):
    kb = db.create_namespace("kb", embedder="none", dimensions=DIMS, metric="l2")
    written = kb.upsert(_docs(30))
    assert written == WriteResult(written.version, upserted=30, documents=30)
    table = pa.table({"id": ["t1", "t2"], "vector": [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]],
                      "attributes": ['{"rev": 5}', '{"rev": 5}']})
    assert kb.upsert(table).upserted == 2
    found = kb.query([1.0, 3.0, 0.0, 0.5], top_k=3, include=["attributes", "text"])
    assert isinstance(found, QueryResult) and found.hits[0].id == "d3" and found.hits[0].attributes["rev"] == 0
    filtered = kb.query([1.0, 3.0, 0.0, 0.5], top_k=50, filter={"rev": 5})
    assert {h.id for h in filtered.hits} == {"t1", "t2"}
    lexical = kb.query(text="note 7", mode="bm25", top_k=1)
    assert lexical.hits[0].id == "d7"
    assert kb.get("d5") == Document("d5", "note 5 about vitamins", {"rev": 0, "k": 1})
    assert set(kb.get_many(["d1", "nope", "t2"])) == {"d1", "t2"}
    gone = kb.delete(filter={"k": 1})
    assert gone.deleted == 15 and gone.version > written.version
    with pytest.raises(errors.DocumentNotFound):
        kb.get("d5")
    assert kb.get("d5", as_of=written.version).id == "d5"  # the past is still there


def test_errors_are_typed_and_keep_their_code(db):
    kb = db.create_namespace("kb", embedder="none", dimensions=DIMS, metric="l2")
    with pytest.raises(errors.InvalidArgument) as bad:
        kb.upsert([{"id": "x", "vector": [1.0, 2.0]}])
    assert bad.value.code == "invalid_argument" and "4" in bad.value.message
    with pytest.raises(errors.VersionNotFound):
        kb.query([0.0] * DIMS, as_of=999)
    db.drop_namespace("kb")
    with pytest.raises(errors.NamespaceNotFound):
        kb.describe()


def test_listing_pages_through_one_version(db):
    kb = db.create_namespace("kb", embedder="none", dimensions=DIMS, metric="l2")
    kb.upsert(_docs(60))
    kb.index()
    kb.upsert(_docs(10, start=100))
    first = kb.list(limit=25)
    assert len(first.documents) == 25 and first.cursor is not None
    kb.upsert(_docs(5, start=200))  # a write between pages does not change the listing
    ids = [d.id for d in first.documents] + [d.id for d in kb.scan(page_size=25, as_of=first.version)][25:]
    assert sorted(ids) == sorted(f"d{i}" for i in [*range(60), *range(100, 110)])
    assert len({d.id for d in kb.scan(page_size=7)}) == 75
    with_vectors = {d.id: d.vector for d in kb.scan(page_size=40, include_vectors=True)}
    assert with_vectors["d7"] == [1.0, 7.0, 1.0, 0.5] and with_vectors["d204"] == [1.0, 204.0, 0.0, 0.5]
    assert first.documents[0].vector is None
    with pytest.raises(errors.InvalidArgument):
        kb.list(cursor="not-a-cursor")
    with pytest.raises(errors.InvalidArgument):
        kb.list(limit=0)


def test_uploads_jobs_index_versions_tags_branches(db, tmp_path):
    kb = db.create_namespace("kb", embedder="fake")
    note = tmp_path / "note.txt"
    note.write_text("Statins lower LDL cholesterol. Vitamin D is made in the skin under sunlight.")
    job = kb.upload(note, wait=True, attributes={"team": "test"})
    assert isinstance(job, JobInfo) and job.status == "done" and job.chunks_done >= 1
    assert kb.job(job.id).status == "done"
    hits = kb.query(text="cholesterol", top_k=1, include=["attributes"]).hits
    assert hits and hits[0].attributes["team"] == "test"
    v1 = kb.upsert([{"id": "x", "text": "first text"}]).version
    kb.index(compact=True, gc=True)
    tag = kb.tag("before", version=v1)
    assert tag.version == v1 and [t.name for t in kb.tags()] == ["before"]
    kb.upsert([{"id": "x", "text": "second text"}])
    assert kb.get("x").text == "second text"
    assert kb.get("x", as_of="before").text == "first text"
    restored = kb.restore(tag="before")
    assert kb.get("x").text == "first text" and restored.version > v1 and restored.restored == v1
    # a restore commits under a protection first (vectordb.versions), then the restore
    assert [v.change["op"] for v in kb.versions(limit=3)] == ["restore", "protect", "write"]
    branch = db.branch("kb2", "kb", tag="before")
    assert branch.info.created and branch.info.origin == {"namespace": "kb", "version": v1}
    branch.upsert([{"id": "y", "text": "only in the branch"}])
    at_restore = db.branch("kb3", "kb", as_of=restored.version)  # a version given as as_of
    assert at_restore.info.origin["version"] == restored.version and at_restore.get("x").text == "first text"
    assert kb.restore(as_of=v1).restored == v1
    assert branch.get("y").id == "y"
    with pytest.raises(errors.DocumentNotFound):
        kb.get("y")
    assert kb.untag("before") > v1


def test_rag(db):
    kb = db.create_namespace("kb", embedder="fake")
    kb.upsert([{"id": "a", "text": "Vitamin D is made in the skin under sunlight."},
               {"id": "b", "text": "Statins lower LDL cholesterol."}])
    answer = kb.rag("how is vitamin D made", generate=False, top_k=2)
    assert answer.answer is None and answer.citations and "sunlight" in answer.prompt


def test_async_clients(uri_and_db):
    uri, _ = uri_and_db

    async def run() -> list[str]:
        options = {} if uri.startswith("http") else OVERRIDES
        db = vectordb.connect_async(uri, **options)
        kb = await db.create_namespace("akb", embedder="none", dimensions=DIMS, metric="l2")
        await kb.upsert(_docs(12))
        result = await kb.query([1.0, 3.0, 0.0, 0.5], top_k=2)
        ids = [d.id async for d in kb.scan(page_size=5)]
        await db.close()
        return [h.id for h in result.hits] + [str(len(ids))]

    assert asyncio.run(run()) == ["d3", "d4", "12"]  # [1,4,1,.5] is nearer than [1,2,2,.5]


def test_a_doc_id_attribute_makes_no_document_without_chunking(db):
    plain = db.create_namespace("plain", embedder="none", dimensions=2, metric="l2", chunking=False)
    plain.upsert([{"id": "n1", "vector": [1.0, 0.0], "attributes": {"doc_id": "doc-a"}},
                  {"id": "n2", "vector": [0.0, 1.0], "attributes": {"doc_id": "doc-a"}}])
    with pytest.raises(errors.DocumentNotFound):
        plain.get("doc-a")
    assert set(plain.get_many(["doc-a", "n1"])) == {"n1"}
