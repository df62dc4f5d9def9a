"""The one Python interface, in process or over HTTP: ``vectordb.connect(uri)``.

    import vectordb

    db = vectordb.connect("file://./vectordb-data")       # embedded: no server
    db = vectordb.connect("http://127.0.0.1:8080", api_key="vdb_...")   # a running service
    kb = db.create_namespace("kb", embedder="minilm")
    kb.upsert([{"id": "1", "text": "Vitamin D is made in the skin."}])
    kb.query(text="sunlight", top_k=5, include=["text"]).hits

:class:`Database` and :class:`Namespace` say what both implementations do
(``api.embedded`` in process, :mod:`vectordb.remote` over HTTP); one behaviour suite runs
against both. Results are the dataclasses of :mod:`vectordb.results`; failures raise the
:mod:`vectordb.errors` tree (the remote client maps each HTTP error's ``code`` back to its
class). :func:`vectordb.connect_async` gives the same methods as coroutines.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

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

AsOf = int | float | str  # a version, a tag name, or a time (ISO 8601 with a zone, or Unix seconds)


class Namespace(Protocol):
    name: str
    info: NamespaceInfo | None  # what create_namespace or branch answered (its ``created``); else None

    def describe(self) -> NamespaceInfo: ...

    def upsert(self, documents: Any) -> WriteResult:
        """Documents (dicts ``{"id", "text"?, "vector"?, "attributes"?}``), a pyarrow
        Table or a pandas DataFrame with those columns. Long texts become chunks."""

    def delete(self, ids: list[str] | None = None, filter: dict | None = None) -> WriteResult: ...

    def get(self, id: str, as_of: AsOf | None = None) -> Document:
        """One document; a chunked one with its chunks in order. DocumentNotFound."""

    def get_many(self, ids: list[str], as_of: AsOf | None = None) -> dict[str, Document]:
        """The documents of ``ids`` that exist, by id."""

    def list(
        self, limit: int = 100, cursor: str | None = None, as_of: AsOf | None = None, include_vectors: bool = False
    ) -> Page:
        """A page of documents in a stable order (with their vectors if asked); pass
        ``page.cursor`` for the next."""

    def scan(
        self, page_size: int = 1000, as_of: AsOf | None = None, include_vectors: bool = False
    ) -> Iterator[Document]:
        """Every document, page by page, all of one version."""

    def query(
        self,
        vector: list[float] | None = None,
        text: str | None = None,
        *,
        top_k: int = 10,
        mode: str = "vector",
        filter: dict | None = None,
        include: list[str] | tuple[str, ...] = (),
        as_of: AsOf | None = None,
        consistency: str = "strong",
        nprobe: int | None = None,
        rrf_k: int = 60,
        weights: dict[str, float] | None = None,
    ) -> QueryResult: ...

    def rag(self, question: str, **options: Any) -> RagResult: ...

    def upload(
        self,
        file: Any,
        *,
        filename: str | None = None,
        document_id: str | None = None,
        attributes: dict | None = None,
        wait: bool = False,
    ) -> JobInfo:
        """A file (a path, or bytes with ``filename``) parsed, chunked and embedded as a job."""

    def job(self, job_id: str) -> JobInfo: ...

    def cancel_job(self, job_id: str) -> JobInfo: ...

    def index(self, compact: bool = False, gc: bool = False) -> IndexInfo: ...

    def warm(self, budget_bytes: int | None = None, include_docs: bool = False, load_embedder: bool = True) -> dict:
        """Prefetch what queries need (centroids, the biggest partitions within
        ``budget_bytes``, documents too with ``include_docs``); what was fetched."""

    def versions(self, limit: int = 100, before: int | None = None) -> list[VersionEntry]: ...

    def tags(self) -> list[TagInfo]: ...

    def tag(self, name: str, version: int | None = None, as_of: AsOf | None = None) -> TagInfo: ...

    def untag(self, name: str) -> int: ...

    def restore(self, version: int | None = None, tag: str | None = None, as_of: AsOf | None = None) -> WriteResult:
        """A new version with the content of the one named; ``restored`` says which."""


class Database(Protocol):
    def create_namespace(
        self,
        name: str,
        embedder: str = "minilm",
        dimensions: int | None = None,
        metric: str = "cosine",
        chunking: dict | bool | None = None,
        vector_dtype: str = "float32",
        cluster_by: list[str] | None = None,
    ) -> Namespace:
        """Create (or open, if it exists with the same configuration) a namespace.
        ``cluster_by``: attribute keys whose selective filters read a few ranges."""

    def namespace(self, name: str) -> Namespace:
        """An existing namespace (NamespaceNotFound if there is none)."""

    def list_namespaces(self) -> list[str]: ...

    def drop_namespace(self, name: str) -> int: ...

    def branch(self, name: str, source: str, version: int | None = None, tag: str | None = None,
               as_of: AsOf | None = None) -> Namespace:
        """A new namespace from ``source``'s version (default its newest), in O(1)."""

    def close(self) -> None: ...


def as_of_of(version: int | None, tag: str | None, as_of: AsOf | None) -> AsOf | None:
    """At most one way of naming a version; None if none is given."""
    given = [v for v in (version, tag, as_of) if v is not None]
    if len(given) > 1:
        from vectordb.errors import InvalidArgument

        raise InvalidArgument("give at most one of version, tag or as_of")
    return given[0] if given else None
