"""The FastAPI application. ``create_app(settings, role)`` builds the ingest role, the
query role, or both; the same image runs any of them.

Handlers are plain ``def`` functions: FastAPI runs them in its thread pool, so blocking
work (object storage, FAISS, the embedding model) does not hold up the event loop. The
exception is a query that is alone and of a kind that has answered before: it runs on
the loop's thread (:class:`InlineGate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Hashable
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from api import access, errors
from api import openapi as api_openapi
from api.access import readable, visible, within_row_limit
from api.docs_page import install_docs
from api.embedded import EmbeddedDatabase
from api.limits import BodyLimit
from api.metrics import install_metrics
from api.models import (
    AS_OF,
    Deleted,
    DeleteRequest,
    DeleteResponse,
    DocId,
    DocumentOut,
    DocumentPage,
    DocumentsUpsert,
    GetManyRequest,
    GetManyResponse,
    Health,
    IndexRequest,
    IndexResponse,
    JobAccepted,
    JobErrorResponse,
    JobId,
    JobResponse,
    Namespace,
    NamespaceCreate,
    NamespaceCreated,
    NamespaceDescription,
    NamespaceList,
    QueryRequest,
    QueryResponse,
    RagRequest,
    RagResponse,
    RestoreResponse,
    TagList,
    TagName,
    TagResponse,
    UpsertResponse,
    VersionList,
    VersionRef,
)
from api.openapi import error_responses, request_body
from api.service import Service
from api.warm import install_warm
from vectordb.errors import InvalidArgument, WrongRole
from vectordb.results import WriteResult
from vectordb.settings import Settings
from vectordb.settings import load as load_settings

ROLES = ("ingest", "query", "all")

# Error statuses for the routes' OpenAPI `responses` (api/openapi.py). Every route behind
# access control may answer _KEYED (credential, right, rate; and the store may be down);
# every route with a body _BODY (size, content type); a role's own routes 421 on a
# worker of the other role.
_KEYED = (401, 403, 429, 503)
_BODY = (413, 415, 421)
# Dict-returning routes validate against their model; unset keys stay out, as before.
_TYPED = {"response_model_exclude_unset": True}


def _write_routes(r: APIRouter, db: EmbeddedDatabase) -> APIRouter:
    """The ingest role's routes, added to ``r``: each parses, calls the interface
    (:mod:`api.embedded` over this server's Service) and renders its typed result."""

    @r.put("/v1/namespaces/{ns}", status_code=200, response_model=NamespaceCreated, **_TYPED,
           responses=error_responses(400, 404, 409, 410, *_BODY, *_KEYED))
    def create_namespace(ns: Namespace, body: NamespaceCreate, request: Request) -> Any:
        if body.from_ is not None:
            if body.model_fields_set - {"from_"}:
                raise InvalidArgument("a branch takes its source's configuration: send only 'from'")
            source = readable(request, body.from_.namespace)
            return _created(db.branch(ns, source, as_of=body.from_.resolve()).info)
        chunking = body.chunking.model_dump() if isinstance(body.chunking, BaseModel) else body.chunking
        kb = db.create_namespace(ns, body.embedder, body.dimensions, body.metric, chunking, body.vector_dtype,
                                 body.cluster_by)
        return _created(kb.info)

    @r.put("/v1/namespaces/{ns}/tags/{name}", response_model=TagResponse,
           responses=error_responses(400, 404, 409, 410, *_BODY, *_KEYED))
    def put_tag(ns: Namespace, name: TagName, body: VersionRef) -> Any:
        return {"tag": db.open(ns).tag(name, as_of=body.resolve()).to_json()}

    @r.delete("/v1/namespaces/{ns}/tags/{name}", response_model=Deleted,
              responses=error_responses(400, 404, 409, 421, *_KEYED))
    def delete_tag(ns: Namespace, name: TagName) -> Any:
        return {"name": name, "deleted": True, "version": db.open(ns).untag(name)}

    @r.post("/v1/namespaces/{ns}/restore", response_model=RestoreResponse,
            responses=error_responses(400, 404, 409, 410, *_BODY, *_KEYED))
    def restore(ns: Namespace, body: VersionRef) -> Any:
        result = db.open(ns).restore(as_of=body.resolve())
        return {"version": result.version, "restored": result.restored}

    @r.delete("/v1/namespaces/{ns}", response_model=Deleted,
              responses=error_responses(400, 404, 409, 421, *_KEYED))
    def drop_namespace(ns: Namespace) -> Any:
        return {"name": ns, "deleted": True, "version": db.drop_namespace(ns)}

    @r.post("/v1/namespaces/{ns}/documents", response_model=UpsertResponse,
            responses=error_responses(400, 404, 409, *_BODY, *_KEYED), openapi_extra=_UPSERT_BODY)
    async def upsert(ns: Namespace, request: Request) -> Any:
        # Parsed by hand, not by the pydantic model: a batch of 10,000 vectors is
        # millions of floats, and validate.prepare_upserts checks them in numpy.
        raw = await request.body()

        def write() -> WriteResult:
            if request.headers.get("content-type", "").startswith(ARROW_STREAM):
                return db.open(ns).upsert(within_row_limit(request, _arrow_table(raw)))
            return db.open(ns).upsert(within_row_limit(request, _documents(raw)))

        result = await run_in_threadpool(write)
        # Every document sent is one or more rows (a long text's chunks); all or none are written.
        return {"version": result.version, "upserted": result.upserted, "documents": result.documents,
                "chunks": result.upserted}

    @r.post("/v1/namespaces/{ns}/documents/delete", response_model=DeleteResponse,
            responses=error_responses(400, 404, 409, *_BODY, *_KEYED))
    def delete(ns: Namespace, body: DeleteRequest, request: Request) -> Any:
        result = db.open(ns).delete(within_row_limit(request, body.ids), body.filter)
        return {"version": result.version, "deleted": result.deleted}

    @r.post("/v1/namespaces/{ns}/files", status_code=202, response_model=JobAccepted,
            response_description="The job started: poll status_url (GET) for its progress.",
            responses={200: {"model": JobResponse, "description": "With ?wait=true: the job is done."},
                       **error_responses(400, 404, 409, *_BODY, *_KEYED, model=JobErrorResponse)})
    async def upload(
        ns: Namespace,
        request: Request,
        file: UploadFile,
        document_id: str | None = Form(None, description="Parent id of the file's chunks (default: file name)."),
        attributes: str | None = Form(None, description="JSON object merged into every chunk's attributes."),
        wait: bool = Query(False, description="Answer when the job has finished (200) instead of at once (202)."),
    ) -> Any:
        data = await file.read()
        attrs = _json_object(attributes, "attributes") if attributes else None
        # The key the job counts against (max_jobs_per_key); None on an open server.
        owner = getattr(getattr(request.state, "principal", None), "key_id", None)
        kb = db.open(ns)
        job = await run_in_threadpool(
            functools.partial(kb.upload, data, filename=file.filename or "upload", document_id=document_id,
                              attributes=attrs, content_type=file.content_type, owner=owner)
        )
        if wait:
            while not job.finished:  # followed here, not in a thread that blocks while it runs
                await asyncio.sleep(0.05)
                job = await run_in_threadpool(kb.job, job.id)
            if job.status == "done":
                return JSONResponse({"job": job.to_json()})
            # A failure answers as the synchronous route would (its status and the error
            # shape, 413 for a limit), a cancelled job 409; the job comes with it.
            error = job.error or {"code": "cancelled", "message": f"job {job.id} was cancelled; nothing was written"}
            body = {"error": {"code": error["code"], "message": error["message"], "request_id": errors.request_id(request)},
                    "job": job.to_json()}
            return JSONResponse(body, status_code=job.http_status)
        return {"job": job.to_json(), "status_url": f"/v1/jobs/{job.id}"}

    # A job's id names it whatever its namespace: these take no namespace.
    jobs = db.open("")

    @r.get("/v1/jobs/{job_id}", response_model=JobResponse, responses=error_responses(404, 421, *_KEYED))
    def job_status(job_id: JobId) -> Any:
        return {"job": jobs.job(job_id).to_json()}

    @r.delete("/v1/jobs/{job_id}", response_model=JobResponse, description="200: the job had already finished.",
              responses={202: {"model": JobResponse, "description": "The job stops at its next checkpoint."},
                         **error_responses(404, 421, *_KEYED)})
    def cancel_job(job_id: JobId) -> JSONResponse:
        # 202: the job stops at its next checkpoint; 200: it had already finished.
        job = jobs.cancel_job(job_id)
        return JSONResponse({"job": job.to_json()}, status_code=200 if job.finished else 202)

    @r.post("/v1/namespaces/{ns}/index", response_model=IndexResponse, **_TYPED,
            responses=error_responses(400, 404, 409, *_BODY, *_KEYED))
    def index(ns: Namespace, body: IndexRequest | None = None) -> Any:
        body = body or IndexRequest()
        return _present(db.open(ns).index(compact=body.compact, gc=body.gc).to_json())

    return r


def _created(info) -> dict:
    """A create or branch answer: the namespace's configuration, version and ``created``
    (and a branch's ``origin``)."""
    out = info.to_json()
    for counted in ("rows", "segments", "wal_objects", "bytes"):  # a description's, not a creation's
        del out[counted]
    if out["origin"] is None:
        del out["origin"]
    return out


def _present(json: dict) -> dict:
    """``json`` without its None fields: the routes leave out what does not apply."""
    return {k: v for k, v in json.items() if v is not None}


def _metadata_routes(r: APIRouter, db: EmbeddedDatabase) -> APIRouter:
    @r.get("/v1/namespaces", response_model=NamespaceList, responses=error_responses(*_KEYED))
    def list_namespaces(request: Request) -> Any:
        return {"namespaces": visible(request, db.list_namespaces())}

    @r.get("/v1/namespaces/{ns}", response_model=NamespaceDescription, responses=error_responses(400, 404, *_KEYED))
    def describe(ns: Namespace) -> Any:
        return db.open(ns).describe().to_json()

    @r.get("/v1/namespaces/{ns}/documents/{doc_id:path}", response_model=DocumentOut, **_TYPED,
           responses=error_responses(400, 404, 410, *_KEYED))
    def get_document(
        ns: Namespace, doc_id: DocId, as_of: str | None = Query(None, description=AS_OF + " A number is a version.")
    ) -> Any:
        return _document(db.open(ns).get(doc_id, as_of=_as_of_param(as_of)))

    @r.get("/v1/namespaces/{ns}/documents", response_model=DocumentPage,
           responses=error_responses(400, 404, 410, *_KEYED))
    def list_documents(
        ns: Namespace,
        limit: int = Query(100, description="How many documents in this page (1..max_top_k).",
                           json_schema_extra={"minimum": 1}),
        cursor: str | None = Query(None, description="The previous page's cursor: the listing goes on at its version."),
        as_of: str | None = Query(None, description=AS_OF + " A number is a version. Not with a cursor."),
        include_vectors: bool = Query(False, description="Also return each document's vector (as stored)."),
    ) -> Any:
        page = db.open(ns).list(limit, cursor, _as_of_param(as_of), include_vectors)
        return {"documents": [_document(d) for d in page.documents], "cursor": page.cursor, "version": page.version}

    @r.post("/v1/namespaces/{ns}/documents/get", response_model=GetManyResponse,
            responses=error_responses(400, 404, 410, 413, 415, *_KEYED))
    def get_documents(ns: Namespace, body: GetManyRequest) -> Any:
        found = db.open(ns).get_many(body.ids, as_of=body.as_of)
        return {"documents": [_document(d) for d in found.values()]}

    @r.get("/v1/namespaces/{ns}/versions", response_model=VersionList, responses=error_responses(400, 404, *_KEYED))
    def list_versions(
        ns: Namespace,
        limit: int = Query(100, description="How many versions, newest first (1..1000).",
                           json_schema_extra={"minimum": 1, "maximum": 1000}),
        before: int | None = Query(None, description="Only versions older than this one (paging)."),
    ) -> Any:
        return {"versions": [v.to_json() for v in db.open(ns).versions(limit, before)]}

    @r.get("/v1/namespaces/{ns}/tags", response_model=TagList, responses=error_responses(400, 404, *_KEYED))
    def list_tags(ns: Namespace) -> Any:
        return {"tags": [t.to_json() for t in db.open(ns).tags()]}

    return r


def _document(doc) -> dict:
    """A document as the routes answer it: no ``vector`` or ``chunks`` where it has none."""
    return _present(doc.to_json())


def _as_of_param(text: str | None):
    """A query-string ``as_of``: digits are a version number; anything else a tag or a time."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _query_routes(r: APIRouter, db: EmbeddedDatabase) -> APIRouter:
    gate = InlineGate(enabled=db.service.settings.query_inline)

    @r.post(
        "/v1/namespaces/{ns}/query",
        response_model=QueryResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, 404, 410, *_BODY, *_KEYED),
        # The body is read by hand; the schema still documents it in /openapi.json.
        openapi_extra=request_body(QueryRequest),
    )
    async def query(ns: Namespace, request: Request) -> Any:
        # The hot path, kept lean: the body is validated by pydantic-core straight from its
        # bytes (no json.loads, no dependency solving), the search runs where the gate
        # says, and the answer is orjson bytes.
        raw = await request.body()
        try:
            body = QueryRequest.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        search = functools.partial(
            db.open(ns).query,
            vector=body.vector,
            text=body.text,
            top_k=body.top_k,
            include=body.include,
            consistency=body.consistency,
            nprobe=body.nprobe,
            mode=body.mode,
            filter=body.filter,
            rrf_k=body.rrf_k,
            weights=body.weights,
            as_of=body.as_of,
        )
        # What the query needs loaded: the model for text, postings for bm25, docs for
        # include and filters (a past version: its own segments).
        kind = (ns, body.mode, body.text is not None, tuple(sorted(body.include)), body.filter is not None,
                body.as_of)
        result = await gate.run(kind, search)
        return Response(orjson.dumps(result.to_json()), media_type="application/json")

    @r.post("/v1/namespaces/{ns}/rag", response_model=RagResponse, **_TYPED,
            responses=error_responses(400, 404, 410, *_BODY, 502, *_KEYED))
    def rag_answer(ns: Namespace, body: RagRequest) -> Any:
        return db.open(ns).rag(body.question, **body.model_dump(exclude={"question"})).to_json()

    return r


class InlineGate:
    """Where a query runs: on the event loop's own thread, or in the thread pool.

    The pool buys concurrency, at the price of two thread hand-offs per query (to the
    pool and back), each a wake-up of a sleeping thread. On the 2-core machine of
    deploy/README.md they cost about 0.25 ms per vector query and 0.4 ms per text query
    in process, and more inside a Ray replica. A query that is alone needs no
    concurrency, so it runs inline when no other query is in flight and a query of its
    kind (namespace, mode, text or vector, include, filter or not) has answered here
    before: then what it needs is loaded (the model, the manifest and centroids, docs
    where it includes or filters), so it does little or no object-store I/O while it
    holds the loop. The first query of a kind, every query that overlaps another and
    every query within :data:`QUIET_S` of such an overlap go to the pool, so that under
    load queries run side by side as before (bench/inline_gate.py); a request that
    arrives during an inline query waits for it to end.
    """

    # After two queries overlapped, this long without inline queries: under load the next
    # query is seldom alone for long, and one held on the loop would stall the others.
    QUIET_S = 0.1

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # False: every query in the pool (settings.query_inline)
        self.in_flight = 0
        self.answered: set[Hashable] = set()
        self.busy_until = 0.0

    async def run(self, kind: Hashable, search: Callable[[], Any]) -> Any:
        self.in_flight += 1  # only ever touched on the event loop's thread
        try:
            inline = self.enabled and self._alone() and kind in self.answered
            if inline:
                # Let requests that are already read reach this gate first: after a busy
                # spell several arrive in one loop turn, and none of them is alone.
                await asyncio.sleep(0)
                inline = self._alone()
            result = search() if inline else await run_in_threadpool(search)
        finally:
            self.in_flight -= 1
        self.answered.add(kind)
        return result

    def _alone(self) -> bool:
        now = time.monotonic()
        if self.in_flight > 1:
            self.busy_until = now + self.QUIET_S
        return self.in_flight == 1 and now >= self.busy_until


# (method, path) of each role's own routes: what the other role refuses (tests/test_api.py
# holds them equal to the routers). Listed, not read from the routers, so that a worker
# does not build the other role's routes (tens of ms of its start) only to refuse them.
INGEST_ROUTES = (
    ("PUT", "/v1/namespaces/{ns}"), ("PUT", "/v1/namespaces/{ns}/tags/{name}"),
    ("DELETE", "/v1/namespaces/{ns}/tags/{name}"), ("POST", "/v1/namespaces/{ns}/restore"),
    ("DELETE", "/v1/namespaces/{ns}"), ("POST", "/v1/namespaces/{ns}/documents"),
    ("POST", "/v1/namespaces/{ns}/documents/delete"), ("POST", "/v1/namespaces/{ns}/files"),
    ("GET", "/v1/jobs/{job_id}"), ("DELETE", "/v1/jobs/{job_id}"), ("POST", "/v1/namespaces/{ns}/index"),
)
QUERY_ROUTES = (
    ("POST", "/v1/namespaces/{ns}/query"), ("POST", "/v1/namespaces/{ns}/rag"), ("POST", "/v1/namespaces/{ns}/warm"),
)


def _add_refusals(app: FastAPI, routes, role: str, serves: str) -> None:
    """``routes`` (another role's (method, path)), each answering 421 ``wrong_role``.

    Without them a write sent to a query worker met the router's slash redirect (307) and
    then a 405 naming nothing; now the client hears which role it reached and which it
    needs. Same paths and methods, so access control applies its rules first. Plain
    Starlette routes: nothing to validate, so no request or response models to build at
    a worker's start.
    """

    async def refuse(request: Request) -> None:
        raise WrongRole(
            f"{request.method} {request.url.path} is served by workers with role {serves!r} or 'all'; "
            f"this worker runs role {role!r} (VECTORDB_ROLE)"
        )

    for method, path in routes:
        app.router.routes.append(Route(path, refuse, methods=[method], include_in_schema=False))


def _json_object(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must be a JSON object")
    return value


ARROW_STREAM = "application/vnd.apache.arrow.stream"
_UPSERT_BODY = request_body(
    DocumentsUpsert,
    description="Documents to write, as JSON or, for bulk loads, as an Arrow IPC stream (" + ARROW_STREAM + ") "
    "of one table with the columns `id` (string, required), `vector` (list or fixed-size list of "
    "`dimensions` floats), `text` (string) and `attributes` (JSON object text), all but `id` optional. "
    "A table's texts are embedded when it has no `vector` column, and stored whole (not chunked). "
    "Rows replace those with the same id; all or none are written.",
    others={ARROW_STREAM: {"schema": {"type": "string", "format": "binary",
                                      "description": "An Arrow IPC stream: id, vector, text, attributes."}}},
)


def _arrow_table(raw: bytes):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(raw).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"body is not an Arrow IPC stream: {exc}") from exc


def _documents(raw: bytes) -> list:
    try:
        body = orjson.loads(raw)  # several times faster than json on large vector batches
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or set(body) != {"documents"}:
        raise InvalidArgument('body must be {"documents": [...]}')
    return body["documents"]


def create_app(
    settings: Settings | None = None,
    role: str | None = None,
    service: Service | None = None,
    cold_start=None,
) -> FastAPI:
    """The app for ``role``. ``cold_start`` (a ``vectordb.coldstart.ColdStart``) defaults to
    the process's clock; tests that share a process pass their own."""
    settings = settings or load_settings()
    role = role or settings.role
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    service = service or Service(settings)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.preload(documents=role in ("ingest", "all"))
        yield
        service.close()

    app = FastAPI(
        title="vectordb",
        version="0.1.0",
        description="Serverless vector search and RAG on object storage.",
        lifespan=lifespan,
        docs_url=None,  # served from local files below, not from a CDN
        redoc_url=None,
    )
    install_docs(app)
    app.state.service = service
    app.state.role = role
    errors.install(app)
    api_openapi.install(app)  # before access.install, whose wrapper adds security on top

    @app.get("/healthz", response_model=Health, responses=error_responses(403))
    def healthz() -> Any:
        # Public even with keys (probes), so nothing about the store: not its URI.
        return {"status": "ok", "role": role, "stats": service.stats()}

    # Both roles answer namespace metadata; only the ingest role writes, only the query
    # role searches. The routes go on the app's own router, not through include_router:
    # FastAPI builds an included router's request and response models a second time when
    # a request first walks past it (tens of ms of a query worker's first answer).
    db = EmbeddedDatabase(service=service)
    if role in ("query", "all"):
        _query_routes(app.router, db)
        install_warm(app, service)
    else:
        _add_refusals(app, QUERY_ROUTES, role, "query")
    _metadata_routes(app.router, db)
    if role in ("ingest", "all"):
        _write_routes(app.router, db)
    else:
        _add_refusals(app, INGEST_ROUTES, role, "ingest")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    access.install(app, service, settings)  # keys, scopes, hosts, media types, CORS (api/access.py)
    app.add_middleware(errors.RequestId)
    install_metrics(app, service, cold_start)  # outermost: it times and counts everything, refusals included
    return app
