"""A LlamaIndex vector store over a vectordb namespace (needs ``vectordb[llamaindex]``).

    from llama_index.core import VectorStoreIndex
    from vectordb.integrations.llama_index import VectorDBVectorStore

    store = VectorDBVectorStore("kb", uri="http://127.0.0.1:8080")  # or memory://, file://, s3://
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    index.as_retriever(similarity_top_k=4, vector_store_query_mode="hybrid").retrieve("sunlight")

A node is one row: its id, its text (``stores_text``), its embedding, and as attributes its
metadata plus what LlamaIndex keeps to rebuild it (``_node_content``, ``_node_type``,
``ref_doc_id``/``doc_id``/``document_id``: the usual ``node_to_metadata_dict`` layout), so
``delete(ref_doc_id)`` is a delete by filter. The namespace is made at the first write
(embedder ``"none"``, the embeddings' dimensions, cosine; see
:mod:`vectordb.integrations.handle`).

Query modes: ``default`` (vector), ``hybrid`` (RRF of vector and BM25; ``alpha`` weighs the
vector list, ``1 - alpha`` the BM25 one), ``text_search``/``sparse`` (BM25). Similarities are the
service's scores, higher is better (cosine similarity in vector mode). ``MetadataFilters``
become the filter language of :mod:`vectordb.filters`; a metadata key named ``id`` would address
the node id there, and ``is_empty`` matches null, ``""`` or a missing key but not ``[]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from vectordb.integrations.handle import NamespaceHandle

__all__ = ["VectorDBVectorStore", "to_filter"]

MODES = {
    VectorStoreQueryMode.DEFAULT: "vector",
    VectorStoreQueryMode.HYBRID: "hybrid",
    VectorStoreQueryMode.TEXT_SEARCH: "bm25",
    VectorStoreQueryMode.SPARSE: "bm25",
}
QUERY_OPTIONS = ("as_of", "consistency", "nprobe", "rrf_k", "weights")
_OPS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.CONTAINS: "$contains",
    FilterOperator.TEXT_MATCH: "$contains",  # a substring of a string attribute
}


class VectorDBVectorStore(BasePydanticVectorStore):
    """LlamaIndex's ``BasePydanticVectorStore`` over one vectordb namespace.

    ``namespace`` is a name (found in ``database``, or in ``vectordb.connect(uri,
    **connect_options)``) or a namespace object (async calls then run in a thread unless
    ``async_namespace``, from ``connect_async``, is given).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    namespace_name: str

    _handle: NamespaceHandle = PrivateAttr()

    def __init__(
        self,
        namespace: Any = "llama_index",
        *,
        uri: str | None = None,
        database: Any = None,
        async_namespace: Any = None,
        **connect_options: Any,
    ) -> None:
        handle = NamespaceHandle(
            namespace, uri=uri, database=database, async_namespace=async_namespace, **connect_options
        )
        super().__init__(namespace_name=handle.name)
        self._handle = handle

    @classmethod
    def class_name(cls) -> str:
        return "VectorDBVectorStore"

    @property
    def client(self) -> Any:
        """The vectordb namespace (None until the first write made it)."""
        return self._handle.namespace()

    def close(self) -> None:
        self._handle.close()

    async def aclose(self) -> None:
        await self._handle.aclose()

    # -- writes -----------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Upsert ``nodes`` (each with its embedding); returns their ids."""
        rows = [self._row(node) for node in nodes]
        if rows:
            self._handle.call("upsert", rows, dimensions=len(rows[0]["vector"]))
        return [row["id"] for row in rows]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        rows = [self._row(node) for node in nodes]
        if rows:
            await self._handle.acall("upsert", rows, dimensions=len(rows[0]["vector"]))
        return [row["id"] for row in rows]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        self._handle.call("delete", filter={"ref_doc_id": ref_doc_id})

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await self._handle.acall("delete", filter={"ref_doc_id": ref_doc_id})

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete the nodes of ``node_ids`` that also match ``filters`` (either may be None)."""
        self._handle.call("delete", filter=_nodes_filter(node_ids, filters))

    async def adelete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        await self._handle.acall("delete", filter=_nodes_filter(node_ids, filters))

    def clear(self) -> None:
        """Delete every node (the namespace stays, with its history)."""
        self._handle.call("delete", filter={})

    async def aclear(self) -> None:
        await self._handle.acall("delete", filter={})

    # -- reads ------------------------------------------------------------------------------

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The nodes of ``node_ids`` that exist, in that order (by id only: NotImplementedError
        for ``filters``)."""
        if filters is not None or node_ids is None:
            raise NotImplementedError("get_nodes by node_ids only; query with filters instead")
        found = self._handle.call("get_many", list(node_ids)) if node_ids else None
        # A document with chunks was assembled by the service from the nodes whose ``doc_id``
        # attribute (LlamaIndex's ref doc id) is that id: a source document, not a node.
        found = {i: d for i, d in (found or {}).items() if d.chunks is None}
        return [_node(found[i].attributes, found[i].text) for i in node_ids if i in found]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` best nodes for the query's embedding and/or text."""
        return _result(self._handle.call("query", **_query_args(query, kwargs)))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return _result(await self._handle.acall("query", **_query_args(query, kwargs)))

    def _row(self, node: BaseNode) -> dict:
        attributes = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
        return {
            "id": node.node_id,
            "text": node.get_content(metadata_mode=MetadataMode.NONE),
            "vector": [float(x) for x in node.get_embedding()],
            "attributes": attributes,
        }


def to_filter(filters: MetadataFilters) -> dict:
    """LlamaIndex ``MetadataFilters`` (nested ones too) as a :mod:`vectordb.filters` filter.
    NotImplementedError for an operator the filter language cannot say."""
    parts = [to_filter(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    condition = FilterCondition(filters.condition or FilterCondition.AND)
    if condition == FilterCondition.AND:
        return {"$and": parts} if len(parts) != 1 else parts[0]
    if condition == FilterCondition.OR:
        return {"$or": parts}
    return {"$not": {"$or": parts}}  # NOT: none of them holds (as LlamaIndex's own stores read it)


def _condition(f: MetadataFilter) -> dict:
    op, key, value = FilterOperator(f.operator), f.key, f.value
    if op in _OPS:
        return {key: {_OPS[op]: value}}
    if op in (FilterOperator.ANY, FilterOperator.ALL):
        values = value if isinstance(value, list) else [value]
        return {"$or" if op == FilterOperator.ANY else "$and": [{key: {"$contains": v}} for v in values]}
    if op == FilterOperator.IS_EMPTY:
        return {"$or": [{key: {"$eq": None}}, {key: {"$eq": ""}}]}
    raise NotImplementedError(f"filter operator {op.value!r} is not supported by vectordb's filter language")


def _and(*filters: dict | None) -> dict | None:
    given = [f for f in filters if f is not None]
    return None if not given else given[0] if len(given) == 1 else {"$and": given}


def _nodes_filter(node_ids: list[str] | None, filters: MetadataFilters | None) -> dict:
    if node_ids is None and filters is None:
        raise ValueError("give node_ids and/or filters (clear() deletes every node)")
    ids = {"id": {"$in": list(node_ids)}} if node_ids is not None else None
    return _and(ids, to_filter(filters) if filters is not None else None)


def _query_args(query: VectorStoreQuery, options: dict) -> dict:
    if query.mode not in MODES:
        raise NotImplementedError(f"query mode {query.mode.value!r}; this store does {[m.value for m in MODES]}")
    mode = MODES[query.mode]
    filt = _and(
        to_filter(query.filters) if query.filters is not None else None,
        {"ref_doc_id": {"$in": list(query.doc_ids)}} if query.doc_ids else None,
        {"id": {"$in": list(query.node_ids)}} if query.node_ids else None,
    )
    args: dict[str, Any] = {
        "vector": None if mode == "bm25" else query.query_embedding,
        "text": query.query_str if mode != "vector" else None,
        "top_k": (query.hybrid_top_k if mode == "hybrid" else None) or query.similarity_top_k,
        "mode": mode,
        "filter": filt,
        "include": ["text", "attributes"],
    }
    if mode == "hybrid" and query.alpha is not None:
        args["weights"] = {"vector": query.alpha, "bm25": 1.0 - query.alpha}
    unknown = set(options) - set(QUERY_OPTIONS)
    if unknown:  # a retriever's vector_store_kwargs
        raise TypeError(f"unknown query options {sorted(unknown)}; this store takes {list(QUERY_OPTIONS)}")
    return {**args, **options}


def _node(attributes: dict | None, text: str | None) -> BaseNode:
    return metadata_dict_to_node(dict(attributes or {}), text=text)


def _result(found) -> VectorStoreQueryResult:
    hits = found.hits if found is not None else []
    return VectorStoreQueryResult(
        nodes=[_node(h.attributes, h.text) for h in hits],
        similarities=[h.score for h in hits],
        ids=[h.id for h in hits],
    )
