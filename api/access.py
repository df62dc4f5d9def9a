"""Access control at the HTTP edge: one ASGI middleware that admits or refuses each request
before any route runs, and sets ``request.state.principal``.

In order, for every request:

1. **Host allow-list** (while the server runs open): a ``Host`` outside
   ``VECTORDB_ALLOWED_HOSTS`` is 403. A page on ``evil.example`` that re-points its DNS
   at 127.0.0.1 (DNS rebinding) then reaches nothing.
2. **Credential** (while one is required, :mod:`api.auth`): 401 without a valid one;
   per-key request rate (429 with ``Retry-After``).
3. **Bodies**: a body whose content type the route does not take is 415 (JSON routes
   take ``application/json`` only, the documents upsert also the Arrow stream, the file
   upload ``multipart/form-data``). A POST a web page could send without a CORS
   preflight (no body, or a multipart one) needs an ``Authorization`` or an
   ``X-Requested-With`` header, else 403: so no page on another site can write to an
   open server on loopback, while curl and SDKs just send the header.
4. **Scope** (:mod:`api.rights`): a namespace outside the credential's prefixes is 404
   exactly like one that does not exist, so a key learns nothing about other tenants;
   inside them, a missing right is 403. A job answers for its namespace. Creating a
   namespace checks the key's ``max_namespaces``.
5. **Body size** per key (``max_bytes``, 413); rows per write are checked by the routes
   (:func:`within_row_limit`).

``/metrics`` and ``/docs`` (with its assets and ``/openapi.json``) are ``open``, ``key``
(metrics: a key over every namespace; docs: any key) or ``off`` (404) per settings.
Refusals use the one error shape, with the request id.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import compile_path

from api import errors
from api.apikeys import KeyStore
from api.auth import OPEN, PUBLIC, Authenticator, Principal
from api.docs_page import ASSETS_PATH
from api.limits import BodyLimit
from api.metrics import METRICS_PATH
from api.ratelimit import RateLimiter
from api.rights import RULES, UNLISTED, UNMATCHED, Rule, rule_for
from vectordb.errors import (
    NamespaceNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    TooManyRequests,
    UnsupportedMediaType,
    VectorDBError,
)
from vectordb.settings import Settings

# Content types a browser may POST cross-site without asking first (a CORS "simple" request).
_SIMPLE_TYPES = ("", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_MATCH_CACHE = 4096


class AccessControl:
    """The middleware (see the module docstring). ``fastapi_app`` is the app it guards:
    its routes are read at the first request, when they are all there."""

    def __init__(self, app, fastapi_app: FastAPI, service: Any, settings: Settings, auth: Authenticator) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.service = service
        self.auth = auth
        self.rates = RateLimiter()
        hosts = [h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()]
        self.any_host = "*" in hosts
        self.hosts = {("[::1]" if h == "::1" else h) for h in hosts}
        self.metrics_access = settings.metrics_access
        self.docs_access = settings.docs_access
        self._routes: list[tuple[Any, str, frozenset[str]]] | None = None
        self._operator: dict[str, tuple[str, str]] = {}  # path -> (docs|metrics, open|key|off)
        self._matches: dict[tuple[str, str], tuple[Rule, str, dict]] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            principal = await self._admit(scope)
        except VectorDBError as exc:
            rid = scope.get("state", {}).get("request_id") or uuid.uuid4().hex[:16]
            response = errors.error_response(exc.status, exc.code, exc.message, rid, exc.headers)
            return await response(scope, receive, send)
        scope.setdefault("state", {})["principal"] = principal
        if principal.limits.max_bytes:
            return await BodyLimit(self.app, principal.limits.max_bytes)(scope, receive, send)
        await self.app(scope, receive, send)

    async def _admit(self, scope) -> Principal:
        headers = dict(scope.get("headers") or ())
        method = scope["method"]
        rule, template, params = self._match(scope)
        required = await self.auth.required(_text(headers.get(b"authorization")))
        if not required:
            self._check_host(headers.get(b"host"))
        operator = self._operator.get(template)
        if operator is not None:
            return await self._admit_operator(*operator, required, headers)
        if not required:
            principal = OPEN
        elif rule.right is None:
            principal = PUBLIC
        else:
            principal = await self.auth.authenticate(_text(headers.get(b"authorization")))
            self._check_rate(principal)
        if rule is not UNMATCHED:
            self._check_body(method, template, rule, headers)
        await self._check_scope(method, template, rule, params, principal)
        return principal

    # --- the steps ---------------------------------------------------------------------
    def _check_host(self, raw: bytes | None) -> None:
        if self.any_host or raw is None:
            return
        host = raw.decode("latin-1").strip().lower()
        # "name:port" -> "name"; "[::1]:8080" -> "[::1]"
        name = host[: host.find("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name not in self.hosts:
            raise PermissionDenied(
                f"host {name!r} is not allowed while the server runs without keys "
                "(VECTORDB_ALLOWED_HOSTS; this stops DNS rebinding)"
            )

    async def _admit_operator(self, kind: str, access: str, required: bool, headers: dict) -> Principal:
        if access == "off":
            raise NotFound("not found")
        if not required:
            return OPEN
        if access == "open":
            return PUBLIC
        principal = await self.auth.authenticate(_text(headers.get(b"authorization")))
        self._check_rate(principal)
        if kind == "metrics" and not principal.everywhere:
            raise PermissionDenied("/metrics needs a key whose prefixes cover every namespace ('*')")
        return principal

    def _check_rate(self, principal: Principal) -> None:
        rate = principal.limits.rate_per_s
        if rate:
            wait = self.rates.take(principal.key_id or "", rate, principal.limits.burst)
            if wait > 0:
                raise TooManyRequests(f"key {principal.key_id} is limited to {rate:g} requests/s", wait)

    def _check_body(self, method: str, template: str, rule: Rule, headers: dict) -> None:
        ctype = _text(headers.get(b"content-type")).split(";", 1)[0].strip().lower()
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        if has_body and rule.media and ctype not in rule.media:
            raise UnsupportedMediaType(
                f"{method} {template} takes {' or '.join(rule.media)}, not {ctype or 'a body without a content type'}"
            )
        if method == "POST" and ctype in _SIMPLE_TYPES and b"authorization" not in headers \
                and b"x-requested-with" not in headers:
            body = f"a {ctype} body" if ctype else "no body"
            raise PermissionDenied(
                f"{method} {template} with {body} needs an Authorization or an X-Requested-With header: "
                "a web page on another site could send this request as it is"
            )

    async def _check_scope(self, method: str, template: str, rule: Rule, params: dict, who: Principal) -> None:
        if rule.scope == "public" or who.source == "open":
            return
        if rule.scope == "ns":
            ns = params.get("ns", "")
            if not who.sees(ns):
                raise NamespaceNotFound(f"namespace {ns!r} does not exist")  # as if absent: see the docstring
            self._need(who, rule, method, template, f"namespace {ns!r}")
            if method == "PUT" and who.limits.max_namespaces:
                await self._check_namespace_quota(ns, who)
        elif rule.scope == "job":
            job_id = params.get("job_id", "")
            try:
                job = await run_in_threadpool(self.service.job, job_id)
            except NotFound:
                return  # the route answers its own 404
            if not who.sees(job.namespace):
                from ingest.jobs import JobNotFound

                # Same status and code as an absent job (ids are 64 random bits: a caller
                # learns nothing from one it already holds).
                raise JobNotFound(f"no job {job_id!r}")
            self._need(who, rule, method, template, f"namespace {job.namespace!r}")
        elif rule.scope == "all":
            if not who.everywhere:
                raise PermissionDenied(f"{method} {template} needs a key whose prefixes cover every namespace ('*')")
            self._need(who, rule, method, template, "every namespace")
        else:  # list: any credential with some right
            self._need(who, rule, method, template, "its namespaces")

    @staticmethod
    def _need(who: Principal, rule: Rule, method: str, template: str, where: str) -> None:
        if not who.may(rule.right or "read"):
            raise PermissionDenied(
                f"{method} {template} needs {rule.right} rights; key {who.key_id} has {who.rights} rights on {where}"
            )

    async def _check_namespace_quota(self, ns: str, who: Principal) -> None:
        names = await run_in_threadpool(self.service.list_namespaces)
        held = [n for n in names if who.sees(n)]
        if ns not in names and len(held) >= who.limits.max_namespaces:
            raise QuotaExceeded(
                f"key {who.key_id} may hold at most {who.limits.max_namespaces} namespaces within its prefixes "
                f"({len(held)} exist)"
            )

    # --- routes --------------------------------------------------------------------------
    def _match(self, scope) -> tuple[Rule, str, dict]:
        """The rule of the route the router will pick, its template and path parameters."""
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # as the router sees it (behind a route prefix)
        method = scope["method"]
        hit = self._matches.get((method, path))
        if hit is not None:
            return hit
        if self._routes is None:
            self._build()
        candidates = [
            (rule_for(method, template), template, m.groupdict())
            for regex, template, methods in self._routes
            if method in methods and (m := regex.match(path)) is not None
        ]
        found = candidates[0] if candidates else (UNMATCHED, "", {})
        if len(candidates) > 1:
            # Two routes take this request: which one the router picks is its business, so
            # ask for what covers either (no two routes of this app overlap today).
            found = (UNLISTED, *found[1:])
        if len(self._matches) >= _MATCH_CACHE:
            self._matches.clear()
        self._matches[(method, path)] = found
        return found

    def _build(self) -> None:
        app = self.fastapi_app
        self._routes = [(compile_path(t)[0], t, methods) for t, methods in _routes_of(app)]
        docs = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url,
                app.docs_url and ASSETS_PATH)
        self._operator = {p: ("docs", self.docs_access) for p in docs if p}
        self._operator[METRICS_PATH] = ("metrics", self.metrics_access)


def _routes_of(app: FastAPI) -> list[tuple[str, frozenset[str]]]:
    """(template, methods) of every route, in the router's order.

    Newer FastAPI keeps an included router as one lazy entry of ``app.routes`` and builds
    its routes' request and response models when the router first walks it; reading the
    original routes' path and methods here builds nothing (forcing them cost a query
    worker's first request ~30 ms)."""
    out: list[tuple[str, frozenset[str]]] = []

    def walk(routes, prefix: str) -> None:
        for r in routes:
            inner = getattr(r, "original_router", None)
            if inner is not None:
                walk(inner.routes, prefix + getattr(getattr(r, "include_context", None), "prefix", ""))
                continue
            template, methods = getattr(r, "path", None), getattr(r, "methods", None)
            if template and methods:
                out.append((prefix + template, frozenset(methods)))

    walk(app.routes, "")
    return out


def _text(raw: bytes | None) -> str:
    return raw.decode("latin-1") if raw else ""


def within_row_limit(request, items):
    """``items`` (documents, ids or an Arrow table) if the caller's key may write that many
    rows in one request; raises PayloadTooLarge (413) otherwise."""
    principal = getattr(request.state, "principal", None)
    limit = principal.limits.max_rows if principal is not None else None
    if limit and items is not None and len(items) > limit:
        raise PayloadTooLarge(f"key {principal.key_id} may write at most {limit} rows per request, not {len(items)}")
    return items


def readable(request, ns: str) -> str:
    """``ns`` if the caller may read it (a route that reads a second namespace, such as a
    branch's source, checks it here); NamespaceNotFound otherwise, as for a missing one."""
    principal = getattr(request.state, "principal", None) or OPEN
    if principal.source != "open" and not (principal.sees(ns) and principal.may("read")):
        raise NamespaceNotFound(f"namespace {ns!r} does not exist")
    return ns


def visible(request, names: list[str]) -> list[str]:
    """The namespaces of ``names`` that the caller may see."""
    principal = getattr(request.state, "principal", None) or OPEN
    return names if principal.source == "open" else [n for n in names if principal.sees(n)]


def install(app: FastAPI, service: Any, settings: Settings) -> None:
    """Add access control (and CORS, when origins are configured) to ``app``, and describe
    the bearer scheme in its OpenAPI. Call before the app serves (middleware freezes then),
    after the body limit and before the request-id middleware."""
    # Built here, not when the middleware stack is: a bad JWT setting fails at start-up.
    auth = Authenticator(settings, KeyStore(service.store))
    auth.start()
    app.add_middleware(AccessControl, fastapi_app=app, service=service, settings=settings, auth=auth)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Outside access control: preflights carry no credential and must be answered.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type", "x-requested-with"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    _document_security(app)


def _document_security(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (vdb_<id>_<secret>, `vectordb keys create`) or a JWT with a `vdb` claim. "
                "Not needed while the server runs open (no keys; loopback only).",
            }
        }
        # /openapi.json drops a path parameter's converter ({doc_id:path} -> {doc_id}).
        rules = {(method, re.sub(r":\w+}", "}", template)): rule for (method, template), rule in RULES.items()}
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                rule = rules.get((method.upper(), path))
                if rule is None or rule.right is None:
                    op["security"] = [] if rule is not None else [{"bearer": []}]
                    continue
                op["security"] = [{"bearer": []}]
                where = {"ns": " on the namespace", "job": " on the job's namespace", "all": " on every namespace",
                         "list": " (the answer shows only what the key may see)"}.get(rule.scope, "")
                note = f"Needs a key with `{rule.right}` rights{where}."
                op["description"] = f"{op.get('description', '')}\n\n{note}".strip()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
