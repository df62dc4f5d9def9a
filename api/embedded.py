"""The embedded implementation of :mod:`vectordb.interface`: the service in this process,
on a store given by URI (``file://``, ``s3://``, ``memory://``), no server.

``vectordb.connect(uri)`` reaches it by name (the core package never imports the server
side). Every method is a thin translation of :class:`api.service.Service` (the application
rules: validation, chunk replacement, jobs) into the typed results of
:mod:`vectordb.results`, so the embedded and the remote client answer alike; the async
variant runs the same methods in worker threads. The HTTP routes (``api.app``) call this
same interface over the server's own Service and render its results, so what a remote
client reads back is what the embedded one returns.
"""

from __future__ import annotations

import asyncio
import functools
import mimetypes
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from api.service import Service
from vectordb.errors import InvalidArgument
from vectordb.interface import AsOf, as_of_of
from vectordb.results import (
    Document,
    Hit,
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
from vectordb.settings import Settings

# How often ``upload(wait=True)`` looks at its job.
_JOB_POLL_S = 0.05


class EmbeddedNamespace:
    def __init__(self, service: Service, name: str, info: NamespaceInfo | None = None) -> None:
        """``info``: what creating it answered (``create_namespace``, ``branch``)."""
        self._service, self.name, self.info = service, name, info

    def describe(self) -> NamespaceInfo:
        return NamespaceInfo.from_json(self._service.describe(self.name))

    def upsert(self, documents: Any) -> WriteResult:
        table = _arrow_table(documents)
        if table is None:  # documents, or what the write refuses ("documents must be a non-empty list")
            version, count = self._service.upsert(self.name, documents)
            sent = len(documents)
        else:
            version, count = self._service.upsert_table(self.name, table)
            sent = table.num_rows
        return WriteResult(version, upserted=count, documents=sent)

    def delete(self, ids: list[str] | None = None, filter: dict | None = None) -> WriteResult:
        version, count = self._service.delete(self.name, ids, filter)
        return WriteResult(version, deleted=count)

    def get(self, id: str, as_of: AsOf | None = None) -> Document:
        return Document.from_json(self._service.get_document(self.name, id, as_of=as_of))

    def get_many(self, ids: list[str], as_of: AsOf | None = None) -> dict[str, Document]:
        found = self._service.get_documents(self.name, ids, as_of=as_of)
        return {d["id"]: Document.from_json(d) for d in found}

    def list(self, limit: int = 100, cursor: str | None = None, as_of: AsOf | None = None,
             include_vectors: bool = False) -> Page:
        return Page.from_json(self._service.list_documents(self.name, limit, cursor, as_of, include_vectors))

    def scan(self, page_size: int = 1000, as_of: AsOf | None = None, include_vectors: bool = False) -> Iterator[Document]:
        page = self.list(page_size, None, as_of, include_vectors)
        while True:
            yield from page.documents
            if page.cursor is None:
                return
            page = self.list(page_size, page.cursor, None, include_vectors)  # the cursor names the version

    def query(self, vector=None, text=None, *, top_k=10, mode="vector", filter=None, include=(), as_of=None,
              consistency="strong", nprobe=None, rrf_k=60, weights=None) -> QueryResult:
        result = self._service.query(self.name, vector=vector, text=text, top_k=top_k, mode=mode, filter=filter,
                                     include=tuple(include), as_of=as_of, consistency=consistency, nprobe=nprobe,
                                     rrf_k=rrf_k, weights=weights)
        return QueryResult([Hit(**h.__dict__) for h in result.hits], result.version)

    def rag(self, question: str, **options: Any) -> RagResult:
        return RagResult.from_json(self._service.rag(self.name, question, **options))

    def upload(self, file: Any, *, filename: str | None = None, document_id: str | None = None,
               attributes: dict | None = None, wait: bool = False, content_type: str | None = None,
               owner: str | None = None) -> JobInfo:
        """``content_type``: the file's media type (default: guessed from its name);
        ``owner``: the API key the job counts against (``max_jobs_per_key``)."""
        if isinstance(file, (str, Path)):
            path = Path(file)
            filename, data = filename or path.name, path.read_bytes()
        else:
            data = bytes(file)
            if not filename:
                raise InvalidArgument("upload of bytes needs a filename (its extension says how to parse it)")
        ctype = content_type or mimetypes.guess_type(filename)[0]
        job = self._service.ingest_file(self.name, filename, data, ctype, document_id, attributes, owner)
        while wait and not job.finished:
            time.sleep(_JOB_POLL_S)
            job = self._service.job(job.id)
        return JobInfo.from_json(job.to_json())

    def job(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(self._service.job(job_id).to_json())

    def cancel_job(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(self._service.cancel_job(job_id).to_json())

    def index(self, compact: bool = False, gc: bool = False) -> IndexInfo:
        result = self._service.index(self.name, compact=compact)
        return IndexInfo(result.version, result.indexed_rows, result.segments, result.compacted,
                         round(result.seconds, 3), self._service.collect_garbage(self.name) if gc else None)

    def warm(self, budget_bytes: int | None = None, include_docs: bool = False, load_embedder: bool = True) -> dict:
        """Prefetch what queries need (:func:`query.warm.warm`); what was fetched."""
        from query import warm as warming

        budget = warming.DEFAULT_BUDGET_BYTES if budget_bytes is None else budget_bytes
        return warming.warm(self._service, self.name, budget_bytes=budget, include_docs=include_docs,
                            load_embedder=load_embedder)

    def versions(self, limit: int = 100, before: int | None = None) -> list[VersionEntry]:
        return [VersionEntry.from_json(v.to_json()) for v in self._service.versions(self.name, limit, before)]

    def tags(self) -> list[TagInfo]:
        return [TagInfo(t.name, t.version, t.created_at) for t in self._service.tags(self.name)]

    def tag(self, name: str, version: int | None = None, as_of: AsOf | None = None) -> TagInfo:
        named = as_of_of(version, None, as_of)
        if named is None:
            raise InvalidArgument("give the version to tag: version or as_of")
        ref = self._service.tag(self.name, name, named)
        return TagInfo(ref.name, ref.version, ref.created_at)

    def untag(self, name: str) -> int:
        return self._service.untag(self.name, name)

    def restore(self, version: int | None = None, tag: str | None = None, as_of: AsOf | None = None) -> WriteResult:
        named = as_of_of(version, tag, as_of)
        if named is None:
            raise InvalidArgument("give the version, tag or as_of to restore")
        manifest = self._service.restore(self.name, named)
        return WriteResult(manifest.version, restored=manifest.change["version"])


class EmbeddedDatabase:
    """``vectordb.connect("file://DIR" | "s3://BUCKET/PREFIX" | "memory://NAME", **settings)``:
    ``settings`` are :class:`vectordb.settings.Settings` fields (``s3_endpoint=...``)."""

    def __init__(self, uri: str | None = None, *, service: Service | None = None, **settings: Any) -> None:
        """``service``: the application layer to wrap (the HTTP server passes its own);
        otherwise one is opened on ``uri``."""
        if service is None:
            if uri is None:
                raise InvalidArgument("connect needs a store URI")
            service = Service(Settings(store_uri=uri, **settings))
        self.service = service

    def create_namespace(self, name: str, embedder: str = "minilm", dimensions: int | None = None,
                         metric: str = "cosine", chunking: dict | bool | None = None,
                         vector_dtype: str = "float32", cluster_by: list[str] | None = None) -> EmbeddedNamespace:
        manifest, created = self.service.create_namespace(name, embedder, dimensions, metric, chunking, vector_dtype,
                                                          cluster_by)
        info = NamespaceInfo.from_json({"name": name, "version": manifest.version, **manifest.config.to_json(),
                                        "created": created})
        return EmbeddedNamespace(self.service, name, info)

    def namespace(self, name: str) -> EmbeddedNamespace:
        self.service.describe(name)  # NamespaceNotFound now rather than at first use
        return EmbeddedNamespace(self.service, name)

    def open(self, name: str) -> EmbeddedNamespace:
        """``name`` without looking it up first: each call reports NamespaceNotFound itself
        (what a server's routes use, saving a manifest read per request)."""
        return EmbeddedNamespace(self.service, name)

    def list_namespaces(self) -> list[str]:
        return self.service.list_namespaces()

    def drop_namespace(self, name: str) -> int:
        return self.service.drop_namespace(name)

    def branch(self, name: str, source: str, version: int | None = None, tag: str | None = None,
               as_of: AsOf | None = None) -> EmbeddedNamespace:
        manifest = self.service.branch(name, source, as_of_of(version, tag, as_of))
        info = NamespaceInfo.from_json({"name": name, "version": manifest.version, **manifest.config.to_json(),
                                        "created": True, "origin": manifest.origin})
        return EmbeddedNamespace(self.service, name, info)

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> EmbeddedDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Async:
    """Every method of the wrapped object as a coroutine run in a worker thread; what it
    returns is wrapped too when it is a namespace."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value
        if name == "scan":
            return functools.partial(self._scan, value)

        @functools.wraps(value)
        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await asyncio.to_thread(value, *args, **kwargs)
            return _Async(result) if isinstance(result, EmbeddedNamespace) else result

        return call

    @staticmethod
    async def _scan(scan, *args: Any, **kwargs: Any):
        pages = scan(*args, **kwargs)
        done = object()
        while (document := await asyncio.to_thread(next, pages, done)) is not done:
            yield document

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self._inner.close)


def connect_async(uri: str, **settings: Any) -> _Async:
    return _Async(EmbeddedDatabase(uri, **settings))


def _arrow_table(data: Any):
    """``data`` as an Arrow table if it is one (or a pandas frame); None otherwise."""
    if isinstance(data, list) or not type(data).__module__.startswith(("pyarrow", "pandas")):
        return None
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if type(data).__name__ == "DataFrame":
        return pa.Table.from_pandas(data, preserve_index=False)
    return None
