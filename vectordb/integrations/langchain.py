"""A LangChain ``VectorStore`` over a vectordb namespace (needs ``vectordb[langchain]``).

    from vectordb.integrations.langchain import VectorDBVectorStore

    store = VectorDBVectorStore(embeddings, "kb", uri="http://127.0.0.1:8080")  # or memory://, file://, s3://
    store.add_documents(docs)
    store.similarity_search("sunlight", k=4, filter={"year": {"$gte": 2020}})
    store.as_retriever(search_kwargs={"k": 4, "mode": "hybrid", "filter": {"lang": "en"}})

A document is one row: ``id`` ↔ id, ``page_content`` ↔ text, ``metadata`` ↔ attributes (JSON).
The namespace is made at the first write (embedder ``"none"``, the embedding's dimensions,
cosine; see :mod:`vectordb.integrations.handle`).

Searches take ``filter`` (the filter language of :mod:`vectordb.filters`, passed through) and
``mode``: ``"vector"`` (the store's default), ``"bm25"`` or ``"hybrid"`` (reciprocal rank
fusion of both; the query text goes to BM25, its embedding to the vector search). Scores are
the service's: higher is better. In vector mode a score is the cosine similarity in [-1, 1]
(relevance scores map it to [0, 1]); BM25 and RRF scores only order hits, so relevance scores
are refused for those modes. Async methods use ``vectordb.connect_async`` over HTTP and a worker
thread in process.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from vectordb.integrations.handle import NamespaceHandle
from vectordb.results import Hit

__all__ = ["VectorDBVectorStore"]

MODES = ("vector", "bm25", "hybrid")


class VectorDBVectorStore(VectorStore):
    """LangChain's ``VectorStore`` over one vectordb namespace.

    ``namespace`` is a name (found in ``database``, or in ``vectordb.connect(uri,
    **connect_options)``) or a namespace object (then async calls run it in a thread unless
    ``async_namespace``, from ``connect_async``, is given). ``mode`` is the default search mode.
    """

    def __init__(
        self,
        embedding: Embeddings,
        namespace: Any = "langchain",
        *,
        uri: str | None = None,
        database: Any = None,
        async_namespace: Any = None,
        mode: str = "vector",
        **connect_options: Any,
    ) -> None:
        _check_mode(mode)
        self._embedding = embedding
        self.mode = mode
        self.handle = NamespaceHandle(
            namespace, uri=uri, database=database, async_namespace=async_namespace, **connect_options
        )

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def close(self) -> None:
        """Close the connection the store opened (from ``uri``)."""
        self.handle.close()

    async def aclose(self) -> None:
        await self.handle.aclose()

    # -- writes -----------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert ``texts``; an id that exists is replaced. Returns the ids (a
        UUID where none was given)."""
        texts = list(texts)
        if not texts:
            return []
        ids = _ids(ids, len(texts))
        vectors = self._embedding.embed_documents(texts)
        self.handle.call("upsert", _rows(ids, texts, vectors, metadatas), dimensions=len(vectors[0]))
        return ids

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        ids = _ids(ids, len(texts))
        vectors = await self._embedding.aembed_documents(texts)
        await self.handle.acall("upsert", _rows(ids, texts, vectors, metadatas), dimensions=len(vectors[0]))
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete ``ids`` and/or the documents matching ``filter=``; absent ids are no error.
        ValueError if neither is given (this store does not delete everything by default)."""
        args = _delete_args(ids, kwargs)
        if args:
            self.handle.call("delete", **args)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        args = _delete_args(ids, kwargs)
        if args:
            await self.handle.acall("delete", **args)
        return True

    # -- reads ------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of ``ids`` that exist, in the order asked."""
        ids = list(ids)
        found = self.handle.call("get_many", ids) if ids else None
        return _in_order(ids, found)

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        ids = list(ids)
        found = await self.handle.acall("get_many", ids) if ids else None
        return _in_order(ids, found)

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, mode: str | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` best documents for ``query`` with their scores (higher is better)."""
        mode = _check_mode(mode or self.mode)
        vector = None if mode == "bm25" else self._embedding.embed_query(query)
        return self._search(vector, query, k, mode, filter, kwargs)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, mode: str | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        mode = _check_mode(mode or self.mode)
        vector = None if mode == "bm25" else await self._embedding.aembed_query(query)
        return await self._asearch(vector, query, k, mode, filter, kwargs)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self._search(embedding, None, k, "vector", filter, kwargs)]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self._asearch(embedding, None, k, "vector", filter, kwargs)]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        embedding = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(embedding, k, fetch_k, lambda_mult, **kwargs)

    async def amax_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        embedding = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(embedding, k, fetch_k, lambda_mult, **kwargs)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``fetch_k`` nearest documents (with their vectors), of which ``k`` picked for
        relevance and diversity (``lambda_mult`` 1: relevance only)."""
        result = self.handle.call("query", **_query_args(embedding, None, fetch_k, "vector", filter, kwargs, True))
        return _mmr(embedding, result, k, lambda_mult)

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        args = _query_args(embedding, None, fetch_k, "vector", filter, kwargs, True)
        return _mmr(embedding, await self.handle.acall("query", **args), k, lambda_mult)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # The service's cosine score is the similarity itself, in [-1, 1].
        return lambda score: (score + 1.0) / 2.0

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        _vector_mode_only(kwargs.get("mode") or self.mode)
        return super()._similarity_search_with_relevance_scores(query, k, **kwargs)

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        _vector_mode_only(kwargs.get("mode") or self.mode)
        return await super()._asimilarity_search_with_relevance_scores(query, k, **kwargs)

    def _search(self, vector, text, k, mode, filter, options) -> list[tuple[Document, float]]:
        return _scored(self.handle.call("query", **_query_args(vector, text, k, mode, filter, options)))

    async def _asearch(self, vector, text, k, mode, filter, options) -> list[tuple[Document, float]]:
        return _scored(await self.handle.acall("query", **_query_args(vector, text, k, mode, filter, options)))

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> VectorDBVectorStore:
        """A store (``kwargs`` as for the constructor: ``namespace``, ``uri``, ...) with
        ``texts`` added."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; not {mode!r}")
    return mode


def _vector_mode_only(mode: str) -> None:
    if mode != "vector":
        raise ValueError(f"relevance scores are cosine similarities: vector mode only, not {mode!r}")


def _ids(ids: list[str | None] | None, n: int) -> list[str]:
    if ids is None:
        ids = [None] * n
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} texts")
    return [str(i) if i is not None else str(uuid.uuid4()) for i in ids]


def _rows(ids: list[str], texts: list[str], vectors: list[list[float]], metadatas: list[dict] | None) -> list[dict]:
    metadatas = metadatas or [{}] * len(texts)
    return [
        {"id": i, "text": t, "vector": [float(x) for x in v], "attributes": dict(m or {})}
        for i, t, v, m in zip(ids, texts, vectors, metadatas, strict=True)
    ]


def _delete_args(ids: list[str] | None, kwargs: dict) -> dict:
    filter = kwargs.get("filter")
    if ids is None and filter is None:
        raise ValueError("give ids or filter= (the filter language of vectordb.filters)")
    args = {"ids": list(ids) if ids else None, "filter": filter}
    return {k: v for k, v in args.items() if v is not None}


def _query_args(vector, text, k, mode, filter, options, vectors: bool = False) -> dict:
    include = ["text", "attributes", "vector"] if vectors else ["text", "attributes"]
    if hasattr(vector, "tolist"):
        vector = vector.tolist()
    return {
        "vector": vector,
        "text": text if mode in ("bm25", "hybrid") else None,
        "top_k": k,
        "mode": mode,
        "filter": filter,
        "include": include,
        **options,
    }


def _document(id: str, text: str | None, attributes: dict | None) -> Document:
    return Document(id=id, page_content=text or "", metadata=dict(attributes or {}))


def _hit_document(hit: Hit) -> Document:
    return _document(hit.id, hit.text, hit.attributes)


def _scored(result) -> list[tuple[Document, float]]:
    return [] if result is None else [(_hit_document(h), h.score) for h in result.hits]


def _in_order(ids: list[str], found: dict | None) -> list[Document]:
    # A document with chunks is one the service assembled from rows whose ``doc_id``
    # attribute is that id (it does so in a namespace without chunking too); this store's
    # rows are never chunks, so it is no document here.
    found = {i: d for i, d in (found or {}).items() if d.chunks is None}
    return [_document(i, found[i].text, found[i].attributes) for i in dict.fromkeys(ids) if i in found]


def _mmr(embedding, result, k: int, lambda_mult: float) -> list[Document]:
    if result is None or not result.hits:
        return []
    picked = maximal_marginal_relevance(
        np.asarray(embedding, np.float32), [h.vector for h in result.hits], lambda_mult=lambda_mult, k=k
    )
    return [_hit_document(result.hits[i]) for i in picked]
