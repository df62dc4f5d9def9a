"""The client of a running service: :mod:`vectordb.interface` over HTTP (httpx).

Light on purpose: it imports httpx and this package's errors and results, never the
server's dependencies (torch, FAISS, DuckDB, Ray), so ``pip install vectordb`` without the
``server`` extra is enough to use it. pyarrow is needed only to upsert Arrow tables or
pandas DataFrames (sent as an Arrow IPC stream).

Each method builds a :class:`_Call` (method, path, body, how to read the answer); the
sync classes send it with ``httpx.Client``, the async ones with ``httpx.AsyncClient``, so
both speak the same HTTP. Errors come back as the :mod:`vectordb.errors` class whose
``code`` the server sent (or the class of its status), with the server's request id.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vectordb import errors
from vectordb.interface import AsOf, as_of_of
from vectordb.results import (
    Document,
    IndexInfo,
    JobInfo,
    NamespaceInfo,
    Page,
    QueryResult,
    RagResult,
    TagInfo,
    VersionEntry,
    WriteResult,
)

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_BY_STATUS: dict[int, type[errors.VectorDBError]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    410: errors.VersionNotRetained,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    429: errors.TooManyRequests,
    502: errors.UpstreamError,
    503: errors.StorageUnavailable,
}


def _error_classes() -> dict[str, type[errors.VectorDBError]]:
    found: dict[str, type[errors.VectorDBError]] = {}
    stack: list[type[errors.VectorDBError]] = [errors.VectorDBError]
    while stack:
        cls = stack.pop()
        if cls.__module__ == errors.__name__:
            found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found


def error_from_response(status: int, body: Any, headers: dict | None = None) -> errors.VectorDBError:
    """The exception an HTTP error answer stands for: the class of its ``code`` (or of its
    status), carrying the server's code, message and request id."""
    detail = body.get("error", {}) if isinstance(body, dict) else {}
    code = detail.get("code") or "internal"
    message = detail.get("message") or f"HTTP {status}"
    cls = _error_classes().get(code) or _BY_STATUS.get(status, errors.VectorDBError)
    if cls is errors.TooManyRequests:
        retry = float((headers or {}).get("retry-after", 1) or 1)
        exc: errors.VectorDBError = errors.TooManyRequests(message, retry)
    else:
        exc = cls(message)
    exc.code = code  # the server's own code, also where this client has no class for it
    exc.request_id = detail.get("request_id")
    return exc


@dataclass
class _Call:
    method: str
    path: str
    parse: Callable[[Any], Any] = lambda body: body
    params: dict | None = None
    json: Any = None
    content: bytes | None = None
    files: dict | None = None
    data: dict | None = None
    headers: dict = field(default_factory=dict)

    def request_args(self) -> dict:
        args: dict[str, Any] = {"headers": self.headers}
        if self.params:
            args["params"] = {k: v for k, v in self.params.items() if v is not None}
        for name in ("json", "content", "files", "data"):
            value = getattr(self, name)
            if value is not None:
                args[name] = value
        return args


def _answer(call: _Call, response) -> Any:
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_from_response(response.status_code, body, dict(response.headers))
    return call.parse(body)


def _path(name: str) -> str:
    return quote(name, safe="")


class _NamespaceCalls:
    """The namespace's methods as HTTP calls; ``_exec`` sends them (sync or async)."""

    name: str

    def _exec(self, call: _Call) -> Any:  # pragma: no cover - set by the subclasses
        raise NotImplementedError

    @property
    def _base(self) -> str:
        return f"/v1/namespaces/{_path(self.name)}"

    def describe(self):
        return self._exec(_Call("GET", self._base, NamespaceInfo.from_json))

    def upsert(self, documents: Any):
        if isinstance(documents, list):
            call = _Call("POST", f"{self._base}/documents", WriteResult.from_json, json={"documents": documents})
        else:
            call = _Call(
                "POST",
                f"{self._base}/documents",
                WriteResult.from_json,
                content=_arrow_stream(documents),
                headers={"content-type": ARROW_STREAM},
            )
        return self._exec(call)

    def delete(self, ids: list[str] | None = None, filter: dict | None = None):
        body = {k: v for k, v in {"ids": ids, "filter": filter}.items() if v is not None}
        return self._exec(_Call("POST", f"{self._base}/documents/delete", WriteResult.from_json, json=body))

    def get(self, id: str, as_of: AsOf | None = None):
        return self._exec(
            _Call("GET", f"{self._base}/documents/{_path(id)}", Document.from_json, params={"as_of": as_of})
        )

    def get_many(self, ids: list[str], as_of: AsOf | None = None):
        body = {"ids": ids, **({"as_of": as_of} if as_of is not None else {})}
        return self._exec(
            _Call(
                "POST",
                f"{self._base}/documents/get",
                lambda b: {d["id"]: Document.from_json(d) for d in b["documents"]},
                json=body,
            )
        )

    def list(
        self, limit: int = 100, cursor: str | None = None, as_of: AsOf | None = None, include_vectors: bool = False
    ):
        return self._exec(
            _Call(
                "GET",
                f"{self._base}/documents",
                Page.from_json,
                params={"limit": limit, "cursor": cursor, "as_of": as_of, "include_vectors": include_vectors or None},
            )
        )

    def query(
        self,
        vector=None,
        text=None,
        *,
        top_k=10,
        mode="vector",
        filter=None,
        include=(),
        as_of=None,
        consistency="strong",
        nprobe=None,
        rrf_k=60,
        weights=None,
    ):
        body = {
            "vector": vector,
            "text": text,
            "top_k": top_k,
            "mode": mode,
            "filter": filter,
            "include": list(include),
            "as_of": as_of,
            "consistency": consistency,
            "nprobe": nprobe,
            "rrf_k": rrf_k,
            "weights": weights,
        }
        body = {k: v for k, v in body.items() if v is not None}
        if hasattr(vector, "tolist"):
            body["vector"] = vector.tolist()
        return self._exec(_Call("POST", f"{self._base}/query", QueryResult.from_json, json=body))

    def rag(self, question: str, **options: Any):
        return self._exec(
            _Call("POST", f"{self._base}/rag", RagResult.from_json, json={"question": question, **options})
        )

    def upload(
        self,
        file: Any,
        *,
        filename: str | None = None,
        document_id: str | None = None,
        attributes: dict | None = None,
        wait: bool = False,
    ):
        if isinstance(file, (str, Path)):
            path = Path(file)
            filename, data = filename or path.name, path.read_bytes()
        else:
            data = bytes(file)
            if not filename:
                raise errors.InvalidArgument("upload of bytes needs a filename (its extension says how to parse it)")
        form = {
            k: v
            for k, v in {
                "document_id": document_id,
                "attributes": json.dumps(attributes) if attributes is not None else None,
            }.items()
            if v is not None
        }
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return self._exec(
            _Call(
                "POST",
                f"{self._base}/files",
                lambda b: JobInfo.from_json(b["job"]),
                params={"wait": "true" if wait else None},
                files={"file": (filename, data, ctype)},
                data=form or None,
            )
        )

    def job(self, job_id: str):
        return self._exec(_Call("GET", f"/v1/jobs/{_path(job_id)}", lambda b: JobInfo.from_json(b["job"])))

    def cancel_job(self, job_id: str):
        return self._exec(_Call("DELETE", f"/v1/jobs/{_path(job_id)}", lambda b: JobInfo.from_json(b["job"])))

    def index(self, compact: bool = False, gc: bool = False):
        return self._exec(
            _Call("POST", f"{self._base}/index", IndexInfo.from_json, json={"compact": compact, "gc": gc})
        )

    def warm(self, budget_bytes: int | None = None, include_docs: bool = False, load_embedder: bool = True):
        body = {"include_docs": include_docs, "load_embedder": load_embedder}
        if budget_bytes is not None:
            body["budget_bytes"] = budget_bytes
        return self._exec(_Call("POST", f"{self._base}/warm", json=body))

    def versions(self, limit: int = 100, before: int | None = None):
        return self._exec(
            _Call(
                "GET",
                f"{self._base}/versions",
                lambda b: [VersionEntry.from_json(v) for v in b["versions"]],
                params={"limit": limit, "before": before},
            )
        )

    def tags(self):
        return self._exec(_Call("GET", f"{self._base}/tags", lambda b: [TagInfo.from_json(t) for t in b["tags"]]))

    def tag(self, name: str, version: int | None = None, as_of: AsOf | None = None):
        body = {k: v for k, v in {"version": version, "as_of": as_of}.items() if v is not None}
        return self._exec(
            _Call("PUT", f"{self._base}/tags/{_path(name)}", lambda b: TagInfo.from_json(b["tag"]), json=body)
        )

    def untag(self, name: str):
        return self._exec(_Call("DELETE", f"{self._base}/tags/{_path(name)}", lambda b: b["version"]))

    def restore(self, version: int | None = None, tag: str | None = None, as_of: AsOf | None = None):
        body = {k: v for k, v in {"version": version, "tag": tag, "as_of": as_of}.items() if v is not None}
        return self._exec(_Call("POST", f"{self._base}/restore", WriteResult.from_json, json=body))


class _DatabaseCalls:
    def _exec(self, call: _Call) -> Any:  # pragma: no cover - set by the subclasses
        raise NotImplementedError

    def _create_call(self, name, embedder, dimensions, metric, chunking, vector_dtype, cluster_by) -> _Call:
        body = {"embedder": embedder, "metric": metric, "vector_dtype": vector_dtype}
        if cluster_by:
            body["cluster_by"] = list(cluster_by)
        if dimensions is not None:
            body["dimensions"] = dimensions
        if chunking is not None:
            body["chunking"] = chunking
        return _Call("PUT", f"/v1/namespaces/{_path(name)}", NamespaceInfo.from_json, json=body)

    def _branch_call(self, name, source, version, tag, as_of) -> _Call:
        source_ref = {
            "namespace": source,
            **{k: v for k, v in {"version": version, "tag": tag, "as_of": as_of}.items() if v is not None},
        }
        return _Call("PUT", f"/v1/namespaces/{_path(name)}", NamespaceInfo.from_json, json={"from": source_ref})

    def list_namespaces(self):
        return self._exec(_Call("GET", "/v1/namespaces", lambda b: b["namespaces"]))

    def drop_namespace(self, name: str):
        return self._exec(_Call("DELETE", f"/v1/namespaces/{_path(name)}", lambda b: b["version"]))


def _client_headers(api_key: str | None) -> dict:
    # X-Requested-With: a non-simple request, which a server without keys asks of bodyless
    # and multipart POSTs (it stops web pages on other sites from writing).
    headers = {"x-requested-with": "vectordb-python"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


class RemoteNamespace(_NamespaceCalls):
    def __init__(self, db: RemoteDatabase, name: str, info: NamespaceInfo | None = None) -> None:
        """``info``: what creating it answered (``create_namespace``, ``branch``)."""
        self._db, self.name, self.info = db, name, info

    def _exec(self, call: _Call) -> Any:
        return self._db._exec(call)

    def scan(
        self, page_size: int = 1000, as_of: AsOf | None = None, include_vectors: bool = False
    ) -> Iterator[Document]:
        page = self.list(page_size, None, as_of, include_vectors)
        while True:  # every page of one listing reads one version: its cursor names it
            yield from page.documents
            if page.cursor is None:
                return
            page = self.list(page_size, page.cursor, None, include_vectors)


class RemoteDatabase(_DatabaseCalls):
    """``vectordb.connect("http://host:port", api_key=...)``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0, **client_options: Any) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=_client_headers(api_key), **client_options
        )

    def _exec(self, call: _Call) -> Any:
        return _answer(call, self._http.request(call.method, call.path, **call.request_args()))

    def create_namespace(
        self,
        name: str,
        embedder: str = "minilm",
        dimensions: int | None = None,
        metric: str = "cosine",
        chunking: dict | bool | None = None,
        vector_dtype: str = "float32",
        cluster_by: list[str] | None = None,
    ) -> RemoteNamespace:
        info = self._exec(self._create_call(name, embedder, dimensions, metric, chunking, vector_dtype, cluster_by))
        return RemoteNamespace(self, name, info)

    def namespace(self, name: str) -> RemoteNamespace:
        found = RemoteNamespace(self, name)
        found.describe()  # NamespaceNotFound now rather than at first use
        return found

    def branch(self, name: str, source: str, version: int | None = None, tag: str | None = None,
               as_of: AsOf | None = None) -> RemoteNamespace:
        as_of_of(version, tag, as_of)
        info = self._exec(self._branch_call(name, source, version, tag, as_of))
        return RemoteNamespace(self, name, info)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRemoteNamespace(_NamespaceCalls):
    """The same methods as :class:`RemoteNamespace`, as coroutines."""

    def __init__(self, db: AsyncRemoteDatabase, name: str, info: NamespaceInfo | None = None) -> None:
        self._db, self.name, self.info = db, name, info

    def _exec(self, call: _Call) -> Any:
        return self._db._exec(call)

    async def scan(
        self, page_size: int = 1000, as_of: AsOf | None = None, include_vectors: bool = False
    ) -> AsyncIterator[Document]:
        page = await self.list(page_size, None, as_of, include_vectors)
        while True:  # the cursor names the version every page reads
            for document in page.documents:
                yield document
            if page.cursor is None:
                return
            page = await self.list(page_size, page.cursor, None, include_vectors)


class AsyncRemoteDatabase(_DatabaseCalls):
    """``await vectordb.connect_async("http://host:port")`` — the same as coroutines."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0, **client_options: Any) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=_client_headers(api_key), **client_options
        )

    async def _exec(self, call: _Call) -> Any:
        return _answer(call, await self._http.request(call.method, call.path, **call.request_args()))

    async def create_namespace(
        self,
        name: str,
        embedder: str = "minilm",
        dimensions: int | None = None,
        metric: str = "cosine",
        chunking: dict | bool | None = None,
        vector_dtype: str = "float32",
        cluster_by: list[str] | None = None,
    ) -> AsyncRemoteNamespace:
        info = await self._exec(self._create_call(name, embedder, dimensions, metric, chunking, vector_dtype,
                                                  cluster_by))
        return AsyncRemoteNamespace(self, name, info)

    async def namespace(self, name: str) -> AsyncRemoteNamespace:
        found = AsyncRemoteNamespace(self, name)
        await found.describe()
        return found

    async def branch(
        self, name: str, source: str, version: int | None = None, tag: str | None = None, as_of: AsOf | None = None
    ) -> AsyncRemoteNamespace:
        as_of_of(version, tag, as_of)
        info = await self._exec(self._branch_call(name, source, version, tag, as_of))
        return AsyncRemoteNamespace(self, name, info)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRemoteDatabase:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _arrow_stream(data: Any) -> bytes:
    """A pyarrow Table (or a pandas DataFrame) as an Arrow IPC stream body."""
    import pyarrow as pa

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    if "attributes" in table.column_names and not pa.types.is_string(table.schema.field("attributes").type):
        values = [json.dumps(v) if v is not None else None for v in table.column("attributes").to_pylist()]
        table = table.set_column(table.column_names.index("attributes"), "attributes", pa.array(values, pa.string()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
