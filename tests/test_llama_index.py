"""The LlamaIndex vector store (vectordb.integrations.llama_index) through the real service (the
remote client against uvicorn in this process) and in process (``memory://``): nodes in, top-k,
metadata filters, delete by source document, and a ``VectorStoreIndex`` retrieval end to end
with llama-index-core's ``MockEmbedding`` (no network, no model)."""

from __future__ import annotations

import uuid

import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import vectordb
from api.app import create_app
from tests.fakes import unit_settings
from tests.servers import InProcessServer
from vectordb.integrations.llama_index import VectorDBVectorStore, to_filter

OVERRIDES = dict(group_commit_ms=1, auto_index=False, preload_embedder="")


@pytest.fixture(scope="module")
def embedded_db():
    db = vectordb.connect(f"memory://llama-{uuid.uuid4().hex}", **OVERRIDES)
    yield db
    db.close()


@pytest.fixture(scope="module")
def server_url():
    app = create_app(unit_settings(f"memory://llama-{uuid.uuid4().hex}", **OVERRIDES), "all")
    with InProcessServer(app) as url:
        yield url


@pytest.fixture(params=["remote", "embedded"])
def store(request, embedded_db, server_url):
    name = f"li{uuid.uuid4().hex[:12]}"
    if request.param == "remote":
        store = VectorDBVectorStore(name, uri=server_url)
    else:
        store = VectorDBVectorStore(name, database=embedded_db)
    yield store
    store.close()


def _node(node_id: str, text: str, vector: list[float], source: str, **metadata) -> TextNode:
    return TextNode(
        id_=node_id,
        text=text,
        embedding=vector,
        metadata=metadata,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=source)},
    )


NODES = [
    _node("n1", "vitamin d is made in the skin", [1.0, 0.0, 0.0], "doc-a", year=2019, tags=["health"]),
    _node("n2", "sunlight raises vitamin d in winter", [0.9, 0.1, 0.0], "doc-a", year=2022, tags=["health", "sun"]),
    _node("n3", "iron absorption and tea", [0.0, 1.0, 0.0], "doc-b", year=2021, tags=["food"]),
    _node("n4", "green tea and sleep", [0.0, 0.9, 0.1], "doc-c", year=2023, tags=["food", "sleep"]),
]


def _ids(result) -> list[str]:
    return [n.node_id for n in result.nodes]


def test_add_and_query_top_k(store):
    assert store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2)).nodes == []  # empty
    assert store.add(NODES) == ["n1", "n2", "n3", "n4"]
    result = store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2))
    assert _ids(result) == ["n1", "n2"] and result.ids == ["n1", "n2"]
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-6) and result.similarities[0] > result.similarities[1]
    node = result.nodes[0]
    assert node.get_content() == "vitamin d is made in the skin" and node.ref_doc_id == "doc-a"
    assert node.metadata == {"year": 2019, "tags": ["health"]}
    lexical = store.query(
        VectorStoreQuery(query_str="tea sleep", similarity_top_k=1, mode=VectorStoreQueryMode.TEXT_SEARCH)
    )
    assert _ids(lexical) == ["n4"]
    assert [n.node_id for n in store.get_nodes(["n3", "absent", "n1", "doc-a"])] == ["n3", "n1"]  # doc-a: a source


def test_metadata_filters(store):
    store.add(NODES)
    query = [1.0, 0.0, 0.0]

    def ids(*filters, condition=FilterCondition.AND, k=10):
        found = store.query(
            VectorStoreQuery(
                query_embedding=query,
                similarity_top_k=k,
                filters=MetadataFilters(filters=list(filters), condition=condition),
            )
        )
        return sorted(_ids(found))

    assert ids(MetadataFilter(key="year", value=2021, operator=FilterOperator.GTE)) == ["n2", "n3", "n4"]
    assert ids(
        MetadataFilter(key="year", value=2021, operator=FilterOperator.GTE),
        MetadataFilter(key="tags", value="food", operator=FilterOperator.CONTAINS),
    ) == ["n3", "n4"]
    assert ids(
        MetadataFilter(key="year", value=2019), MetadataFilter(key="year", value=2023), condition=FilterCondition.OR
    ) == ["n1", "n4"]
    assert ids(MetadataFilter(key="tags", value=["sun", "sleep"], operator=FilterOperator.ANY)) == ["n2", "n4"]
    assert ids(MetadataFilter(key="year", value=[2019, 2021], operator=FilterOperator.NIN)) == ["n2", "n4"]
    assert ids(MetadataFilter(key="year", value=2022, operator=FilterOperator.LT), condition=FilterCondition.NOT) == [
        "n2",
        "n4",
    ]
    nested = MetadataFilters(
        filters=[MetadataFilter(key="year", value=2019), MetadataFilter(key="year", value=2021)],
        condition=FilterCondition.OR,
    )
    assert ids(nested, MetadataFilter(key="tags", value="food", operator=FilterOperator.CONTAINS)) == ["n3"]
    by_doc = store.query(VectorStoreQuery(query_embedding=query, similarity_top_k=10, doc_ids=["doc-b", "doc-c"]))
    assert sorted(_ids(by_doc)) == ["n3", "n4"]
    with pytest.raises(NotImplementedError):
        to_filter(
            MetadataFilters(
                filters=[MetadataFilter(key="t", value="x", operator=FilterOperator.TEXT_MATCH_INSENSITIVE)]
            )
        )


def test_delete_by_ref_doc_and_nodes(store):
    store.add(NODES)
    store.delete("doc-a")
    everything = VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=10)
    assert sorted(_ids(store.query(everything))) == ["n3", "n4"]
    store.delete("doc-absent")  # no error
    store.delete_nodes(["n3"])
    assert _ids(store.query(everything)) == ["n4"]
    store.clear()
    assert store.query(everything).nodes == []


async def test_async_add_query_delete(store):
    await store.async_add(NODES)
    found = await store.aquery(VectorStoreQuery(query_embedding=[0.0, 1.0, 0.0], similarity_top_k=2))
    assert _ids(found) == ["n3", "n4"]
    await store.adelete("doc-b")
    found = await store.aquery(VectorStoreQuery(query_embedding=[0.0, 1.0, 0.0], similarity_top_k=2))
    assert _ids(found) == ["n4", "n2"]


def test_vector_store_index_end_to_end(store):
    embed_model = MockEmbedding(embed_dim=8)  # one constant vector: the ranking comes from BM25 and filters
    nodes = [TextNode(id_=n.node_id, text=n.text, metadata=n.metadata, relationships=n.relationships) for n in NODES]
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)

    hybrid = index.as_retriever(similarity_top_k=2, vector_store_query_mode="hybrid").retrieve("green tea sleep")
    assert hybrid[0].node.node_id == "n4" and hybrid[0].node.get_content() == "green tea and sleep"
    assert hybrid[0].score >= hybrid[1].score

    filtered = index.as_retriever(
        similarity_top_k=5,
        filters=MetadataFilters(filters=[MetadataFilter(key="tags", value="health", operator=FilterOperator.CONTAINS)]),
    ).retrieve("vitamin")
    assert sorted(n.node.node_id for n in filtered) == ["n1", "n2"]
    assert {n.node.ref_doc_id for n in filtered} == {"doc-a"}

    index.delete_ref_doc("doc-a")
    assert {n.node.node_id for n in index.as_retriever(similarity_top_k=5).retrieve("vitamin")} == {"n3", "n4"}
