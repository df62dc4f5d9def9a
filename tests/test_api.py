"""In-process API tier: routes, the error contract and bad input, on the memory store."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import register_fake_embedder
from vectordb.settings import Settings


@pytest.fixture
def client():
    register_fake_embedder()
    settings = Settings(store_uri="memory://api", group_commit_ms=1, auto_index=False, max_body_bytes=200_000, preload_embedder="",
                        max_batch_docs=100)
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    with TestClient(app) as c:
        yield c


def _error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_quickstart_flow(client):
    r = client.put("/v1/namespaces/docs", json={"embedder": "fake"})
    assert r.status_code == 200 and r.json()["created"] is True
    assert client.put("/v1/namespaces/docs", json={"embedder": "fake"}).json()["created"] is False
    r = client.post("/v1/namespaces/docs/documents", json={"documents": [
        {"id": "1", "text": "solar panels on the roof", "attributes": {"lang": "en", "doc_id": "1"}},
        {"id": "2", "text": "wind turbines at sea"},
    ]})
    assert r.status_code == 200 and r.json()["upserted"] == 2
    version = r.json()["version"]
    r = client.post("/v1/namespaces/docs/query", json={"text": "solar roof", "top_k": 1, "include": ["text", "attributes"]})
    assert r.status_code == 200
    body = r.json()
    assert body["version"] >= version
    assert body["results"][0] == {"id": "1", "score": pytest.approx(body["results"][0]["score"]),
                                  "text": "solar panels on the roof", "attributes": {"lang": "en", "doc_id": "1"}}
    assert client.get("/v1/namespaces/docs/documents/2").json()["text"] == "wind turbines at sea"
    assert client.post("/v1/namespaces/docs/index", json={}).json()["indexed_rows"] == 2
    info = client.get("/v1/namespaces/docs").json()
    assert info["rows"] == {"indexed": 2, "unindexed": 0} and info["dimensions"] == 64
    assert client.get("/v1/namespaces").json() == {"namespaces": ["docs"]}
    r = client.post("/v1/namespaces/docs/documents/delete", json={"ids": ["1"]})
    assert r.json()["deleted"] == 1
    assert [h["id"] for h in client.post("/v1/namespaces/docs/query", json={"text": "solar"}).json()["results"]] == ["2"]
    assert client.delete("/v1/namespaces/docs").status_code == 200
    _error(client.get("/v1/namespaces/docs"), 404, "namespace_not_found")
    assert client.get("/healthz").json()["status"] == "ok"


def test_bad_input_gets_clear_4xx(client):
    client.put("/v1/namespaces/v", json={"embedder": "none", "dimensions": 3, "metric": "l2"})
    ok = client.post("/v1/namespaces/v/documents", json={"documents": [{"id": "keep", "vector": [1, 2, 3]}]})
    assert ok.status_code == 200
    post = lambda body: client.post("/v1/namespaces/v/documents", content=body,  # noqa: E731
                                    headers={"content-type": "application/json"})
    _error(post(b'{"documents": [{"id": "a", "vector": [1, 2]}]}'), 400, "invalid_argument")
    _error(post(b'{"documents": [{"id": "a", "vector": [1, NaN, 2]}]}'), 400, "invalid_argument")
    _error(post(b'{"documents": [{"id": "a", "vector": [1, Infinity, 2]}]}'), 400)
    _error(post(b'{"documents": [{"id": "a", "vector": [1, 2, 3]}, {"id": "a", "vector": [1, 2, 3]}]}'), 400)
    _error(post(b'{"documents": []}'), 400)
    _error(post(b'{"documents": [{"id": 1, "vector": [1, 2, 3]}]}'), 400)
    _error(post(b'{"documents": "x"}'), 400)
    _error(post(b'{"documents": [{"id": "a", "vector": "abc"}]}'), 400)
    _error(post(b'{"documents": [{"id": "a", "vector": [1,2,3]'), 400)  # malformed JSON
    _error(post(b"\xff\xfe"), 400)
    docs = [{"id": str(i), "vector": [1, 2, 3]} for i in range(101)]
    _error(post(json.dumps({"documents": docs}).encode()), 413, "payload_too_large")
    _error(post(b"[" + b"1," * 150_000 + b"1]"), 413, "payload_too_large")
    _error(client.post("/v1/namespaces/nope/documents", json={"documents": [{"id": "a", "vector": [1, 2, 3]}]}),
           404, "namespace_not_found")
    _error(client.post("/v1/namespaces/v/query", json={"vector": [1, 2], "top_k": 3}), 400)
    _error(client.post("/v1/namespaces/v/query", json={"vector": [1, 2, 3], "top_k": 0}), 400)
    _error(client.post("/v1/namespaces/v/query", json={"vector": [1, 2, 3], "top_k": "5"}), 400)
    _error(client.post("/v1/namespaces/v/query", json={"text": "hi"}), 400)  # embedder none
    _error(client.post("/v1/namespaces/v/query", json={"vector": [1, 2, 3], "consistency": "maybe"}), 400)
    _error(client.post("/v1/namespaces/v/query", json={"vector": [1, 2, 3], "filter": "x"}), 400)
    _error(client.post("/v1/namespaces/v/documents/delete", json={"ids": []}), 400)
    _error(client.post("/v1/namespaces/v/documents/delete", json={"ids": ["a", "a"]}), 400)
    for name in ["..", "%2e%2e", "a%2Fb", "x" * 200, "ｎs", "n%D0%B0me", "-x"]:
        r = client.put(f"/v1/namespaces/{name}", json={"embedder": "none", "dimensions": 3})
        assert r.status_code in (400, 404), (name, r.status_code)
        assert "error" in r.json()
    _error(client.put("/v1/namespaces/w", json={"embedder": "none"}), 400)
    _error(client.put("/v1/namespaces/w", json={"embedder": "nope", "dimensions": 3}), 400)
    _error(client.put("/v1/namespaces/w", json={"embedder": "none", "dimensions": 0}), 400)
    _error(client.put("/v1/namespaces/w", json={"embedder": "none", "dimensions": 3, "metric": "hamming"}), 400)
    _error(client.put("/v1/namespaces/v", json={"embedder": "none", "dimensions": 4}), 409, "already_exists")
    _error(client.get("/v1/namespaces/v/documents/missing"), 404, "document_not_found")
    _error(client.get("/v1/nothing-here"), 404, "not_found")
    # Nothing was lost or corrupted by any of that.
    r = client.post("/v1/namespaces/v/query", json={"vector": [1, 2, 3], "top_k": 10})
    assert [h["id"] for h in r.json()["results"]] == ["keep"]


def test_roles_serve_their_routes():
    register_fake_embedder()
    settings = Settings(store_uri="memory://roles", group_commit_ms=1, preload_embedder="")
    service = Service(settings, store=MemoryStore())
    with TestClient(create_app(settings, "ingest", service)) as ingest, \
            TestClient(create_app(settings, "query", service)) as query:
        assert ingest.put("/v1/namespaces/r", json={"embedder": "fake"}).status_code == 200
        assert query.get("/v1/namespaces/r").status_code == 200


def test_a_route_of_another_role_answers_421_naming_both_roles():
    # Before: a write to a query worker met the slash redirect (307), then a bare 405.
    register_fake_embedder()
    settings = Settings(store_uri="memory://wrong-role", group_commit_ms=1, preload_embedder="")
    service = Service(settings, store=MemoryStore())
    headers = {"X-Requested-With": "tests"}
    with TestClient(create_app(settings, "ingest", service), headers=headers) as ingest, \
            TestClient(create_app(settings, "query", service), headers=headers) as query:
        assert ingest.put("/v1/namespaces/r", json={"embedder": "fake"}).status_code == 200
        writes = [
            ("post", "/v1/namespaces/r/documents", {"json": {"documents": [{"id": "a", "text": "x"}]}}),
            ("post", "/v1/namespaces/r/documents/delete", {"json": {"ids": ["a"]}}),
            ("post", "/v1/namespaces/r/files", {"files": {"file": ("a.txt", b"hello", "text/plain")}}),
            ("post", "/v1/namespaces/r/index", {"json": {}}),
            ("put", "/v1/namespaces/r2", {"json": {"embedder": "fake"}}),
            ("delete", "/v1/namespaces/r", {}),
        ]
        for method, path, kwargs in writes:
            resp = getattr(query, method)(path, follow_redirects=False, **kwargs)
            err = _error(resp, 421, "wrong_role")
            assert "'query'" in err["message"] and "'ingest'" in err["message"], err
        for path in ("/v1/namespaces/r/query", "/v1/namespaces/r/warm"):
            err = _error(ingest.post(path, json={"text": "x"} if path.endswith("query") else {},
                                     follow_redirects=False), 421, "wrong_role")
            assert "'ingest'" in err["message"] and "'query'" in err["message"]
        assert query.get("/v1/namespaces/r").json()["version"] == 0  # nothing was written
        paths = query.get("/openapi.json").json()["paths"]
        assert "post" not in paths.get("/v1/namespaces/{ns}/documents", {})  # refusals are not documented


def test_delete_counts_the_rows_it_deleted_and_commits_nothing_when_none_matched(client):
    # Before: every id asked was counted, and a delete of absent ids committed a version.
    client.put("/v1/namespaces/d", json={"embedder": "fake", "chunking": {"chunk_tokens": 16, "overlap_tokens": 2}})
    long_text = " ".join(f"Sentence number {n} is about pumps." for n in range(12))
    written = client.post("/v1/namespaces/d/documents", json={"documents": [
        {"id": "long", "text": long_text}, {"id": "a", "text": "apple"}, {"id": "b", "text": "banana"}]}).json()
    chunks = written["chunks"] - 2
    assert chunks > 1
    version = written["version"]
    r = client.post("/v1/namespaces/d/documents/delete", json={"ids": ["nope", "also-nope"]})
    assert r.status_code == 200 and r.json() == {"version": version, "deleted": 0}
    assert client.post("/v1/namespaces/d/documents/delete", json={"filter": {"x": 1}}).json()["deleted"] == 0
    assert client.get("/v1/namespaces/d").json()["version"] == version  # no version was committed
    assert client.post("/v1/namespaces/d/documents/delete", json={"ids": ["a", "nope"]}).json() == {
        "version": version + 1, "deleted": 1}
    r = client.post("/v1/namespaces/d/documents/delete", json={"ids": ["long"]}).json()
    assert r == {"version": version + 2, "deleted": chunks}  # a document's rows: its chunks
    assert client.post("/v1/namespaces/d/documents/delete", json={"ids": ["a", "long"]}).json()["deleted"] == 0


def test_an_upsert_reports_documents_and_chunks(client):
    # Before: only "upserted", the rows written, which a chunked document multiplies.
    client.put("/v1/namespaces/c", json={"embedder": "fake", "chunking": {"chunk_tokens": 16, "overlap_tokens": 2}})
    long_text = " ".join(f"Sentence number {n} is about pumps." for n in range(12))
    r = client.post("/v1/namespaces/c/documents", json={"documents": [
        {"id": "long", "text": long_text}, {"id": "short", "text": "a short one"}]})
    body = r.json()
    assert r.status_code == 200 and body["documents"] == 2 and body["chunks"] == body["upserted"] > 2
    chunk_rows = len(client.get("/v1/namespaces/c/documents/long").json()["chunks"])
    assert body["chunks"] == chunk_rows + 1
    client.put("/v1/namespaces/v", json={"embedder": "none", "dimensions": 3})
    table = _arrow_stream(["x", "y"], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = client.post("/v1/namespaces/v/documents", content=table,
                    headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert r.json()["documents"] == r.json()["chunks"] == r.json()["upserted"] == 2


def _arrow_stream(ids: list[str], vectors: list[list[float]]) -> bytes:
    import pyarrow as pa

    table = pa.table({"id": ids, "vector": pa.array(vectors, type=pa.list_(pa.float32(), 3))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert scripts and all(u.startswith("/docs/assets/") for u in scripts), scripts  # no CDN
    for url in scripts:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
    _error(client.get("/docs/assets/index.html"), 404, "not_found")
    _error(client.get("/docs/assets/..%2Fswagger_ui_bundle%2F__init__.py"), 404)
    assert client.get("/redoc").status_code == 404  # its script exists only on a CDN


def test_generate_without_an_llm_is_a_400_not_an_upstream_failure(client):
    client.put("/v1/namespaces/kb", json={"embedder": "fake"})
    client.post("/v1/namespaces/kb/documents", json={"documents": [{"id": "a", "text": "vitamin d and sunlight"}]})
    err = _error(client.post("/v1/namespaces/kb/rag", json={"question": "sunlight", "generate": True}), 400,
                 "invalid_argument")
    assert "VECTORDB_LLM_URL" in err["message"]
    assert client.post("/v1/namespaces/kb/rag", json={"question": "sunlight"}).json()["answer"] is None


def test_the_role_route_lists_match_the_routers():
    from fastapi import APIRouter

    from api.app import INGEST_ROUTES, QUERY_ROUTES, _query_routes, _write_routes
    from api.embedded import EmbeddedDatabase
    from api.warm import warm_routes

    svc = Service(Settings(store_uri="memory://roles", preload_embedder=""))
    db = EmbeddedDatabase(service=svc)
    try:
        def table(*routers):
            return sorted((m, r.path) for router in routers for r in router.routes for m in r.methods)

        assert table(_write_routes(APIRouter(), db)) == sorted(INGEST_ROUTES)
        assert table(_query_routes(APIRouter(), db), warm_routes(APIRouter(), db)) == sorted(QUERY_ROUTES)
    finally:
        svc.close()
