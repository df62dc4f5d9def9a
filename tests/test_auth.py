"""Access control in process: two tenants' keys against every route, revocation across
workers, 401/403/404/415/429, hosts, CORS, limits, JWTs, the OpenAPI scheme, operator
endpoints and the refusal to serve open on a public address."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pydantic
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from api import access, cli
from api.access import _routes_of
from api.apikeys import KeyStore, Limits
from api.app import create_app
from api.exposure import check_bind, is_loopback
from api.rights import RULES
from api.service import Service
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings
from vectordb.testing import ROOT, free_port

CONFIG = {"embedder": "fake"}
TENANTS = {"a": "acme-", "b": "beta-"}


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _app(store: MemoryStore, **overrides):
    settings = unit_settings(preload_embedder="", **overrides)
    service = Service(settings, store=store)
    return create_app(settings, "all", service), service


# --- the isolation matrix ---------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    """One store; per tenant a read, a write and an admin key over its prefix, a namespace
    with a document, a namespace to drop, and a finished upload job; an operator key."""
    store = MemoryStore()
    keys = KeyStore(store)
    app, service = _app(store)
    tokens = {t: {r: keys.create(r, [p], name=f"{t}-{r}")[1] for r in ("read", "write", "admin")}
              for t, p in TENANTS.items()}
    root = keys.create("admin", ["*"], name="operator")[1]
    jobs = {}
    with TestClient(app) as client:
        for t, p in TENANTS.items():
            h = _bearer(tokens[t]["admin"])
            assert client.put(f"/v1/namespaces/{p}docs", json=CONFIG, headers=h).status_code == 200
            r = client.post(f"/v1/namespaces/{p}docs/documents", headers=h,
                            json={"documents": [{"id": "d1", "text": f"alpha secret of {t}"}]})
            assert r.status_code == 200, r.text
            r = client.post(f"/v1/namespaces/{p}docs/files?wait=true", headers=h,
                            files={"file": ("note.txt", f"a note of {t}".encode(), "text/plain")})
            assert r.status_code == 200, r.text
            jobs[t] = r.json()["job"]["id"]
        yield {"client": client, "service": service, "tokens": tokens, "root": root, "jobs": jobs, "app": app}


def _routes(p: str, job: str, has_cancel: bool, me: str) -> list[tuple[str, str, str, dict, str]]:
    """(name, method, path, request kwargs, right needed) for namespace prefix ``p``, as
    tenant ``me`` sends them (what they write carries ``me`` in its ids)."""
    ns = f"{p}docs"
    routes = [
        ("describe", "GET", f"/v1/namespaces/{ns}", {}, "read"),
        ("create", "PUT", f"/v1/namespaces/{ns}", {"json": CONFIG}, "admin"),
        ("upsert", "POST", f"/v1/namespaces/{ns}/documents",
         {"json": {"documents": [{"id": f"m1-{me}", "text": "matrix row"}]}}, "write"),
        ("delete", "POST", f"/v1/namespaces/{ns}/documents/delete", {"json": {"ids": ["absent"]}}, "write"),
        ("get", "GET", f"/v1/namespaces/{ns}/documents/d1", {}, "read"),
        ("get many", "POST", f"/v1/namespaces/{ns}/documents/get", {"json": {"ids": ["d1"]}}, "read"),
        ("list", "GET", f"/v1/namespaces/{ns}/documents?limit=5", {}, "read"),
        ("upload", "POST", f"/v1/namespaces/{ns}/files?wait=true",
         {"files": {"file": (f"m-{me}.txt", b"matrix upload", "text/plain")}}, "write"),
        ("index", "POST", f"/v1/namespaces/{ns}/index", {"json": {}}, "write"),
        ("query", "POST", f"/v1/namespaces/{ns}/query", {"json": {"text": "alpha", "top_k": 3}}, "read"),
        ("rag", "POST", f"/v1/namespaces/{ns}/rag", {"json": {"question": "alpha", "generate": False}}, "read"),
        ("warm", "POST", f"/v1/namespaces/{ns}/warm", {"json": {}}, "read"),
        ("job", "GET", f"/v1/jobs/{job}", {}, "read"),
        ("versions", "GET", f"/v1/namespaces/{ns}/versions", {}, "read"),
        ("tags", "GET", f"/v1/namespaces/{ns}/tags", {}, "read"),
        ("tag", "PUT", f"/v1/namespaces/{ns}/tags/m-{me}", {"json": {"version": 1}}, "write"),
        ("untag", "DELETE", f"/v1/namespaces/{ns}/tags/m-{me}", {}, "write"),
        ("restore", "POST", f"/v1/namespaces/{ns}/restore", {"json": {"version": 1}}, "admin"),
        ("branch", "PUT", f"/v1/namespaces/{p}branch", {"json": {"from": {"namespace": ns, "version": 1}}}, "admin"),
        ("drop", "DELETE", f"/v1/namespaces/{p}drop", {}, "admin"),
    ]
    if has_cancel:  # DELETE /v1/jobs/{id}, where the app has it
        routes.append(("cancel", "DELETE", f"/v1/jobs/{job}", {}, "write"))
    return routes


RANK = {"read": 1, "write": 2, "admin": 3}


def _snapshot(service: Service, p: str) -> dict:
    """What a tenant has: its namespaces and their versions (every write makes a new one)."""
    return {ns: service.describe(ns)["version"] for ns in service.list_namespaces() if ns.startswith(p)}


@pytest.mark.parametrize("tenant", ["a", "b"])
@pytest.mark.parametrize("rights", ["read", "write", "admin"])
def test_isolation_matrix(world, tenant, rights):
    client, service, tokens = world["client"], world["service"], world["tokens"]
    other = "b" if tenant == "a" else "a"
    mine, theirs = TENANTS[tenant], TENANTS[other]
    has_cancel = any(t == "/v1/jobs/{job_id}" and "DELETE" in m for t, m in _routes_of(world["app"]))
    key = _bearer(tokens[tenant][rights])
    for p in TENANTS.values():  # something to drop, re-made for each run
        service.create_namespace(f"{p}drop", "fake")
    before = _snapshot(service, theirs)

    # No credential, a bad one: 401 everywhere, with the challenge header.
    for _, method, path, kwargs, _ in _routes(mine, world["jobs"][tenant], has_cancel, tenant):
        r = client.request(method, path, **kwargs)
        _error(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == "Bearer"
        _error(client.request(method, path, headers=_bearer("vdb_0123456789abcdef_" + "0" * 64), **kwargs), 401)

    # Own namespace: 2xx with the right, 403 without.
    for name, method, path, kwargs, needed in _routes(mine, world["jobs"][tenant], has_cancel, tenant):
        r = client.request(method, path, headers=key, **kwargs)
        if RANK[rights] >= RANK[needed]:
            assert 200 <= r.status_code < 300 or (name == "cancel" and r.status_code == 409), (name, r.text)
        else:
            _error(r, 403, "permission_denied")

    # The other tenant's namespace: 404 exactly as for one that does not exist, whatever the rights.
    for name, method, path, kwargs, _ in _routes(theirs, world["jobs"][other], has_cancel, tenant):
        r = client.request(method, path, headers=key, **kwargs)
        if name in ("job", "cancel"):
            _error(r, 404, "job_not_found")
            absent = client.request(method, "/v1/jobs/0123456789abcdef", headers=key)
            assert absent.json()["error"]["code"] == "job_not_found"
        else:
            err = _error(r, 404, "namespace_not_found")
            ns = path.split("/")[3]
            assert err["message"] == f"namespace {ns!r} does not exist"
            absent = client.get(f"/v1/namespaces/{mine}absent", headers=key).json()["error"]
            assert absent["message"] == f"namespace '{mine}absent' does not exist"

    # Nothing of the other tenant listed, and nothing of it changed.
    listed = client.get("/v1/namespaces", headers=key).json()["namespaces"]
    assert listed and all(ns.startswith(mine) for ns in listed)
    assert _snapshot(service, theirs) == before
    root = _bearer(world["root"])
    assert set(client.get("/v1/namespaces", headers=root).json()["namespaces"]) >= {f"{mine}docs", f"{theirs}docs"}
    doc = client.get(f"/v1/namespaces/{theirs}docs/documents/d1", headers=root).json()
    assert doc["text"] == f"alpha secret of {other}"
    hits = client.post(f"/v1/namespaces/{theirs}docs/query", headers=root,
                       json={"text": "matrix", "top_k": 10}).json()["results"]
    assert not any(h["id"].endswith(f"-{tenant}") or f"-{tenant}.txt" in h["id"] for h in hits)


def test_every_route_has_a_rule():
    app, _ = _app(MemoryStore())
    operator = {"/metrics", "/docs", "/docs/assets/{name}", "/openapi.json"}
    missing = [(t, sorted(m)) for t, m in _routes_of(app) if t not in operator
               and not any((method, t) in RULES for method in m)]
    assert not missing, f"routes without an entry in api/rights.py: {missing}"


def test_a_route_without_a_rule_needs_an_operator_admin_key():
    store = MemoryStore()
    keys = KeyStore(store)
    scoped = keys.create("admin", ["acme-"])[1]
    root = keys.create("admin", ["*"])[1]
    app, _ = _app(store)


    @app.get("/v1/principal")
    def principal(request: Request) -> dict:
        p = request.state.principal
        return {"key_id": p.key_id, "rights": p.rights, "source": p.source}

    with TestClient(app) as client:
        _error(client.get("/v1/principal"), 401)
        _error(client.get("/v1/principal", headers=_bearer(scoped)), 403, "permission_denied")
        body = client.get("/v1/principal", headers=_bearer(root)).json()
        assert body == {"key_id": root.split("_")[1], "rights": "admin", "source": "key"}


def test_open_server_sets_an_anonymous_principal():
    app, _ = _app(MemoryStore())

    @app.get("/v1/principal")
    def principal(request: Request) -> dict:
        p = request.state.principal
        return {"key_id": p.key_id, "source": p.source}

    with TestClient(app) as client:
        assert client.get("/v1/principal").json() == {"key_id": None, "source": "open"}


# --- credentials ----------------------------------------------------------------------------


def test_bad_credentials_are_401_in_the_error_shape():
    store = MemoryStore()
    record, token = KeyStore(store).create("read", ["*"])
    app, _ = _app(store)
    with TestClient(app) as client:
        assert client.get("/v1/namespaces", headers=_bearer(token)).status_code == 200
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, _bearer("nonsense"), {"Authorization": "Bearer"},
                        _bearer(token[:-1] + ("0" if token[-1] != "0" else "1")),
                        _bearer(f"vdb_{'f' * 16}_{token.split('_')[2]}")):
            r = client.get("/v1/namespaces", headers=headers)
            _error(r, 401, "unauthenticated")
        # A wrong secret and an unknown key read the same.
        wrong = client.get("/v1/namespaces", headers=_bearer(token[:-1] + ("0" if token[-1] != "0" else "1")))
        unknown = client.get("/v1/namespaces", headers=_bearer(f"vdb_{'f' * 16}_{'0' * 64}"))
        assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200  # probes need no key


def test_store_keeps_only_a_hash():
    store = MemoryStore()
    record, token = KeyStore(store).create("write", ["acme-", "*"], name="ci", limits=Limits(rate_per_s=5))
    raw = store.get(f".sys/keys/{record.id}.json").decode()
    assert token.split("_")[2] not in raw and record.secret_sha256 in raw
    assert json.loads(raw)["prefixes"] == ["acme-", "*"]
    with pytest.raises(InvalidArgument):
        KeyStore(store).create("owner", ["*"])
    with pytest.raises(InvalidArgument):
        KeyStore(store).create("read", ["../x"])
    with pytest.raises(InvalidArgument):
        KeyStore(store).create("read", [])


def test_key_records_are_not_namespaces():
    store = MemoryStore()
    KeyStore(store).create("admin", ["*"])
    service = Service(unit_settings(preload_embedder=""), store=store)
    service.create_namespace("docs", "fake")
    assert service.list_namespaces() == ["docs"]


def test_revocation_reaches_every_worker_within_the_cache_time(monkeypatch):
    # The workers' clock is a counter the test moves, so the cache time is checked at its
    # edges, not raced against a loaded machine.
    now = [1000.0]
    monkeypatch.setattr(access, "Authenticator", functools.partial(access.Authenticator, clock=lambda: now[0]))
    store = MemoryStore.named("auth-revocation")  # what the CLI opens for memory://auth-revocation
    ttl = 1.0
    workers = [_app(store, auth_cache_s=ttl)[0] for _ in range(2)]
    code, out = _cli(["--store", "memory://auth-revocation", "keys", "create", "--prefix", "*", "--rights", "read"])
    assert code == 0
    created = json.loads(out)
    with TestClient(workers[0]) as one, TestClient(workers[1]) as two:
        for client in (one, two):
            assert client.get("/v1/namespaces", headers=_bearer(created["token"])).status_code == 200
        code, out = _cli(["--store", "memory://auth-revocation", "keys", "revoke", created["id"]])
        assert code == 0 and json.loads(out)["revoked_at"] is not None
        # Each worker still has the record it read a moment ago: that is what the cache buys.
        now[0] += ttl * 0.9
        for client in (one, two):
            assert client.get("/v1/namespaces", headers=_bearer(created["token"])).status_code == 200
        # Once the cache time has passed, every worker reads the record again and refuses.
        now[0] += ttl * 0.2
        for client in (one, two):
            _error(client.get("/v1/namespaces", headers=_bearer(created["token"])), 401)


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    real = sys.stdout
    sys.stdout = out
    try:
        code = cli.main(argv)
    finally:
        sys.stdout = real
    return code, out.getvalue()


def test_cli_lists_without_secrets_and_refuses_unknown_keys(capsys):
    MemoryStore.named("auth-cli")
    assert cli.main(["--store", "memory://auth-cli", "keys", "create", "--prefix", "acme-", "--prefix", "docs",
                     "--rights", "write", "--name", "ingest", "--rate", "5", "--max-rows", "100"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["token"].startswith(f"vdb_{created['id']}_")
    assert created["prefixes"] == ["acme-", "docs"] and created["limits"] == {"rate_per_s": 5.0, "max_rows": 100}
    assert cli.main(["--store", "memory://auth-cli", "keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert created["id"] in listed and created["token"].split("_")[2] not in listed and "sha256" not in listed
    assert cli.main(["--store", "memory://auth-cli", "keys", "revoke", "0000000000000000"]) == 2
    assert "no API key" in capsys.readouterr().err


def test_auto_turns_on_with_the_first_key_and_stays_on():
    store = MemoryStore()
    app, _ = _app(store, auth_cache_s=0)
    with TestClient(app) as client:
        assert client.get("/v1/namespaces").status_code == 200  # open: no keys yet
        record, token = KeyStore(store).create("read", ["*"])
        _error(client.get("/v1/namespaces"), 401)
        assert client.get("/v1/namespaces", headers=_bearer(token)).status_code == 200
        KeyStore(store).revoke(record.id)
        _error(client.get("/v1/namespaces"), 401)  # revoking every key closes, never reopens
        store.delete(f".sys/keys/{record.id}.json")
        _error(client.get("/v1/namespaces"), 401)


class _CountingStore(MemoryStore):
    """Counts LISTs of the key records."""

    def __init__(self) -> None:
        super().__init__()
        self.key_lists = 0

    def list(self, prefix: str, start_after: str | None = None):
        if prefix.startswith(".sys/"):
            self.key_lists += 1
        return super().list(prefix, start_after)


def test_a_fresh_worker_asks_whether_keys_exist_before_its_first_request():
    store = _CountingStore()
    app, _ = _app(store, auth_cache_s=60)  # the LIST starts here, in the background
    with TestClient(app) as c:
        assert c.get("/v1/namespaces").status_code == 200
        assert c.get("/v1/namespaces").status_code == 200
    assert store.key_lists == 1


def test_auth_keys_without_keys_refuses_and_auth_off_ignores_them():
    with TestClient(_app(MemoryStore(), auth="keys")[0]) as client:
        _error(client.get("/v1/namespaces"), 401)
    store = MemoryStore()
    KeyStore(store).create("read", ["*"])
    with TestClient(_app(store, auth="off")[0]) as client:
        assert client.get("/v1/namespaces").status_code == 200
    with pytest.raises(pydantic.ValidationError):  # a Literal: a typo fails at start-up
        Settings(auth="none")


# --- JWT --------------------------------------------------------------------------------------

SECRET = "s" * 40


def _jwt(claims: dict, key=SECRET, algorithm="HS256") -> str:
    import jwt

    return jwt.encode({"sub": "svc", "exp": int(time.time()) + 60, **claims}, key, algorithm=algorithm)


def test_jwt_carries_the_same_scopes():
    store = MemoryStore()
    app, service = _app(store, jwt_secret=SECRET, jwt_audience="vectordb")
    service.create_namespace("acme-docs", "fake")
    service.create_namespace("beta-docs", "fake")
    grant = {"aud": "vectordb", "vdb": {"prefixes": ["acme-"], "rights": "read"}}
    with TestClient(app) as client:
        _error(client.get("/v1/namespaces"), 401)  # a JWT key configured: credentials required
        ok = _bearer(_jwt(grant))
        assert client.get("/v1/namespaces", headers=ok).json() == {"namespaces": ["acme-docs"]}
        assert client.get("/v1/namespaces/acme-docs", headers=ok).status_code == 200
        _error(client.get("/v1/namespaces/beta-docs", headers=ok), 404, "namespace_not_found")
        _error(client.post("/v1/namespaces/acme-docs/documents", headers=ok,
                           json={"documents": [{"id": "x", "text": "y"}]}), 403, "permission_denied")
        _error(client.get("/v1/namespaces", headers=_bearer(_jwt({**grant, "exp": int(time.time()) - 120}))), 401)
        _error(client.get("/v1/namespaces", headers=_bearer(_jwt(grant, key="t" * 40))), 401)
        _error(client.get("/v1/namespaces", headers=_bearer(_jwt({**grant, "aud": "other"}))), 401)
        _error(client.get("/v1/namespaces", headers=_bearer(_jwt({"aud": "vectordb"}))), 403)
        _error(client.get("/v1/namespaces", headers=_bearer(_jwt({"aud": "vectordb", "vdb": {
            "prefixes": ["../"], "rights": "read"}}))), 403)
        # alg=none and an HS token signed with something else are never accepted.
        import jwt

        unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, **grant}, None, algorithm="none")
        _error(client.get("/v1/namespaces", headers=_bearer(unsigned)), 401)


def test_jwt_with_a_public_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "key.pem").write_bytes(pem)
    app, service = _app(MemoryStore(), jwt_public_key=str(tmp_path / "key.pem"), jwt_algorithm="ES256")
    service.create_namespace("acme-docs", "fake")
    with TestClient(app) as client:
        token = _jwt({"vdb": {"prefixes": ["*"], "rights": "admin"}}, key=private, algorithm="ES256")
        assert client.get("/v1/namespaces", headers=_bearer(token)).json() == {"namespaces": ["acme-docs"]}
        _error(client.get("/v1/namespaces", headers=_bearer(_jwt({"vdb": {"prefixes": ["*"], "rights": "admin"}}))), 401)


def test_jwt_settings_are_checked_at_start_up():
    for bad in ({"jwt_secret": "short"}, {"jwt_secret": SECRET, "jwt_algorithm": "RS256"},
                {"jwt_public_key": "/nonexistent.pem", "jwt_algorithm": "RS256"},
                {"jwt_public_key": "-----BEGIN PUBLIC KEY-----", "jwt_algorithm": "HS256"}):
        with pytest.raises(InvalidArgument):
            _app(MemoryStore(), **bad)


# --- what browsers may do -------------------------------------------------------------------


@pytest.fixture
def open_client():
    app, _ = _app(MemoryStore())
    with TestClient(app) as client:
        assert client.put("/v1/namespaces/docs", json=CONFIG).status_code == 200
        yield client


def test_json_routes_refuse_other_content_types(open_client):
    c = open_client
    body = json.dumps({"documents": [{"id": "1", "text": "hello"}]}).encode()
    # What a web page may send cross-site without a preflight: text/plain, forms.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        headers = {"content-type": ctype} if ctype else {}
        _error(c.post("/v1/namespaces/docs/documents", content=body, headers=headers), 415, "unsupported_media_type")
        _error(c.post("/v1/namespaces/docs/query", content=b'{"text": "x"}', headers=headers), 415)
        _error(c.post("/v1/namespaces/docs/documents/delete", content=b'{"ids": ["1"]}', headers=headers), 415)
    _error(c.put("/v1/namespaces/other", content=json.dumps(CONFIG), headers={"content-type": "text/plain"}), 415)
    _error(c.post("/v1/namespaces/docs/files", content=b"x", headers={"content-type": "application/json",
                                                                       "x-requested-with": "t"}), 415)
    assert c.get("/v1/namespaces/docs").json()["rows"] == {"indexed": 0, "unindexed": 0}  # nothing was ingested
    ok = c.post("/v1/namespaces/docs/documents", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200
    table = pa.table({"id": ["v"], "text": ["arrow row"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    r = c.post("/v1/namespaces/docs/documents", content=sink.getvalue().to_pybytes(),
               headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert r.status_code != 415


def test_simple_posts_need_a_header_that_pages_cannot_send(open_client):
    c = open_client
    upload = {"files": {"file": ("a.txt", b"uploaded text", "text/plain")}}
    err = _error(c.post("/v1/namespaces/docs/files", **upload), 403, "permission_denied")
    assert "X-Requested-With" in err["message"]
    _error(c.post("/v1/namespaces/docs/index"), 403)
    _error(c.post("/v1/namespaces/docs/warm"), 403)
    assert c.get("/v1/namespaces/docs").json()["rows"] == {"indexed": 0, "unindexed": 0}
    assert c.post("/v1/namespaces/docs/files?wait=true", headers={"X-Requested-With": "x"}, **upload).status_code == 200
    assert c.post("/v1/namespaces/docs/index", headers={"X-Requested-With": "x"}).status_code == 200
    assert c.post("/v1/namespaces/docs/index", json={}).status_code == 200  # application/json: preflighted


def test_host_allow_list_stops_dns_rebinding():
    default = Settings.model_fields["allowed_hosts"].default
    app, _ = _app(MemoryStore(), allowed_hosts=default)
    with TestClient(app) as c:
        for host in ("testserver", "evil.example", "evil.example:8080", "127.0.0.1.evil.example", "[::2]:80"):
            err = _error(c.get("/v1/namespaces", headers={"host": host}), 403, "permission_denied")
            assert "VECTORDB_ALLOWED_HOSTS" in err["message"]
        for host in ("localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST"):
            assert c.get("/v1/namespaces", headers={"host": host}).status_code == 200, host
    with TestClient(_app(MemoryStore(), allowed_hosts="*")[0]) as c:
        assert c.get("/v1/namespaces", headers={"host": "anything.example"}).status_code == 200
    # With keys, a page cannot hold one, so any Host may carry a valid key (a proxy's domain).
    store = MemoryStore()
    token = KeyStore(store).create("read", ["*"])[1]
    with TestClient(_app(store, allowed_hosts=default)[0]) as c:
        assert c.get("/v1/namespaces", headers={"host": "search.example.com", **_bearer(token)}).status_code == 200


def test_cors_is_off_unless_origins_are_configured():
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    with TestClient(_app(MemoryStore())[0]) as c:
        r = c.options("/v1/namespaces/docs/query", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/v1/namespaces", headers={"Origin": preflight["Origin"]}).headers
    with TestClient(_app(MemoryStore(), cors_origins="https://app.example.com")[0]) as c:
        r = c.options("/v1/namespaces/docs/query", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = c.get("/v1/namespaces", headers={"Origin": "https://app.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = c.options("/v1/namespaces/docs/query", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


# --- per-key limits ---------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after():
    store = MemoryStore()
    keys = KeyStore(store)
    slow = keys.create("read", ["*"], limits=Limits(rate_per_s=0.5, burst=2))[1]
    other = keys.create("read", ["*"])[1]
    with TestClient(_app(store)[0]) as c:
        assert [c.get("/v1/namespaces", headers=_bearer(slow)).status_code for _ in range(2)] == [200, 200]
        r = c.get("/v1/namespaces", headers=_bearer(slow))
        _error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) == 2  # one token at 0.5/s
        assert c.get("/v1/namespaces", headers=_bearer(other)).status_code == 200  # per key


def test_namespace_row_and_byte_limits():
    store = MemoryStore()
    keys = KeyStore(store)
    token = keys.create("admin", ["acme-"], limits=Limits(max_namespaces=2, max_rows=2, max_bytes=2000))[1]
    h = _bearer(token)
    app, service = _app(store)
    service.create_namespace("beta-x", "fake")  # outside the key's prefixes: not counted
    with TestClient(app) as c:
        assert c.put("/v1/namespaces/acme-1", json=CONFIG, headers=h).status_code == 200
        assert c.put("/v1/namespaces/acme-2", json=CONFIG, headers=h).status_code == 200
        err = _error(c.put("/v1/namespaces/acme-3", json=CONFIG, headers=h), 403, "quota_exceeded")
        assert "at most 2 namespaces" in err["message"]
        assert c.put("/v1/namespaces/acme-2", json=CONFIG, headers=h).status_code == 200  # exists: idempotent
        docs = [{"id": str(i), "text": "x"} for i in range(3)]
        _error(c.post("/v1/namespaces/acme-1/documents", json={"documents": docs}, headers=h), 413, "payload_too_large")
        assert c.post("/v1/namespaces/acme-1/documents", json={"documents": docs[:2]}, headers=h).status_code == 200
        _error(c.post("/v1/namespaces/acme-1/documents/delete", json={"ids": ["0", "1", "2"]}, headers=h), 413)
        table = pa.table({"id": ["a", "b", "c"], "text": ["x", "y", "z"]})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        _error(c.post("/v1/namespaces/acme-1/documents", content=sink.getvalue().to_pybytes(), headers={
            **h, "content-type": "application/vnd.apache.arrow.stream"}), 413)
        big = [{"id": "1", "text": "y" * 3000}]
        _error(c.post("/v1/namespaces/acme-1/documents", json={"documents": big}, headers=h), 413, "payload_too_large")
        assert c.get("/v1/namespaces/acme-1", headers=h).json()["rows"]["unindexed"] == 2


# --- the OpenAPI description and operator endpoints ---------------------------------------------


def test_openapi_describes_the_bearer_scheme():
    with TestClient(_app(MemoryStore())[0]) as c:
        spec = c.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    assert spec["paths"]["/v1/namespaces/{ns}/query"]["post"]["security"] == [{"bearer": []}]
    assert "`read` rights" in spec["paths"]["/v1/namespaces/{ns}/query"]["post"]["description"]
    assert "`admin` rights" in spec["paths"]["/v1/namespaces/{ns}"]["put"]["description"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_healthz_does_not_reveal_the_store():
    app, service = _app(MemoryStore(), store_uri="memory://secret-bucket-name")
    with TestClient(app) as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and "store" not in r.json() and "secret-bucket-name" not in r.text


def test_metrics_and_docs_can_be_closed_or_keyed():
    store = MemoryStore()
    keys = KeyStore(store)
    scoped, root = keys.create("read", ["acme-"])[1], keys.create("read", ["*"])[1]
    with TestClient(_app(store)[0]) as c:  # default: open, even with keys
        assert c.get("/metrics").status_code == 200 and c.get("/docs").status_code == 200
    with TestClient(_app(store, metrics_access="off", docs_access="off")[0]) as c:
        for path in ("/metrics", "/docs", "/docs/assets/swagger-ui.css", "/openapi.json"):
            _error(c.get(path, headers=_bearer(root)), 404, "not_found")
    with TestClient(_app(store, metrics_access="key", docs_access="key")[0]) as c:
        _error(c.get("/metrics"), 401)
        _error(c.get("/metrics", headers=_bearer(scoped)), 403)
        assert c.get("/metrics", headers=_bearer(root)).status_code == 200
        _error(c.get("/openapi.json"), 401)
        _error(c.get("/docs/assets/swagger-ui-bundle.js"), 401)
        assert c.get("/openapi.json", headers=_bearer(scoped)).status_code == 200


# --- where the server may listen --------------------------------------------------------------


def test_check_bind():
    store = MemoryStore()
    keys = KeyStore(store)
    open_settings = unit_settings()
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host) and check_bind(open_settings, host, keys) is open_settings
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""):
        assert not is_loopback(host)
        with pytest.raises(InvalidArgument, match="refusing to listen"):
            check_bind(open_settings, host, keys)
    assert check_bind(open_settings, "0.0.0.0", keys, insecure=True) is open_settings
    assert check_bind(unit_settings(insecure=True), "0.0.0.0", keys).auth == "auto"
    assert check_bind(unit_settings(jwt_secret=SECRET), "0.0.0.0", keys).auth == "auto"
    assert check_bind(unit_settings(auth="keys"), "0.0.0.0", keys).auth == "keys"
    keys.create("read", ["*"])
    assert check_bind(open_settings, "0.0.0.0", keys).auth == "keys"  # stays closed even if records vanish
    with pytest.raises(InvalidArgument, match="VECTORDB_AUTH=off"):
        check_bind(unit_settings(auth="off"), "0.0.0.0", keys)


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    """The real command (and the container entrypoint, which execs it with 0.0.0.0):
    a non-zero exit and a clear message, checked before anything is bound."""
    env = {**os.environ, "VECTORDB_STORE_URI": f"file://{tmp_path}/data", "VECTORDB_PRELOAD_EMBEDDER": ""}
    port = str(free_port())
    r = subprocess.run([sys.executable, "-m", "api.cli", "serve", "--host", "0.0.0.0", "--port", port],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr, r.stderr
    entry_env = {**env, "PATH": f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}", "PORT": port}
    entry_env.pop("VECTORDB_HOST", None)
    r = subprocess.run(["sh", str(ROOT / "deploy" / "entrypoint.sh"), "serve"],
                       cwd=ROOT, env=entry_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr, r.stderr


def test_a_branch_cannot_read_another_tenants_namespace(world):
    """Branching is a read of the source: an admin of tenant a may not branch b's data into
    its own prefix (404, as if b's namespace did not exist), nor learn that it exists."""
    client, service, tokens = world["client"], world["service"], world["tokens"]
    key = _bearer(tokens["a"]["admin"])
    theirs = f"{TENANTS['b']}docs"
    r = client.put(f"/v1/namespaces/{TENANTS['a']}stolen", headers=key, json={"from": {"namespace": theirs}})
    _error(r, 404, "namespace_not_found")
    absent = client.put(f"/v1/namespaces/{TENANTS['a']}stolen", headers=key,
                        json={"from": {"namespace": f"{TENANTS['b']}nothing"}})
    assert absent.json()["error"]["message"].replace("nothing", "docs") == r.json()["error"]["message"]
    assert f"{TENANTS['a']}stolen" not in service.list_namespaces()
