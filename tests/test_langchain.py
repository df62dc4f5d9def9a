"""The LangChain ``VectorStore`` (vectordb.integrations.langchain) through LangChain's standard
suite, sync and async, in process (``memory://``) and through the remote client against a
real uvicorn server; plus the retriever with a search mode and a filter."""

from __future__ import annotations

import uuid

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import vectordb
from api.app import create_app
from tests.fakes import unit_settings
from tests.servers import InProcessServer
from vectordb.integrations.langchain import VectorDBVectorStore

OVERRIDES = dict(group_commit_ms=1, auto_index=False, preload_embedder="")


@pytest.fixture(scope="module")
def embedded_db():
    db = vectordb.connect(f"memory://langchain-{uuid.uuid4().hex}", **OVERRIDES)
    yield db
    db.close()


@pytest.fixture(scope="module")
def server_url():
    app = create_app(unit_settings(f"memory://langchain-{uuid.uuid4().hex}", **OVERRIDES), "all")
    with InProcessServer(app) as url:
        yield url


def _name() -> str:
    return f"lc{uuid.uuid4().hex[:12]}"  # a fresh namespace per test: the suite expects an empty store


class TestEmbedded(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, embedded_db):
        store = VectorDBVectorStore(self.get_embeddings(), _name(), database=embedded_db)
        yield store
        store.close()


class TestRemote(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, server_url):
        store = VectorDBVectorStore(self.get_embeddings(), _name(), uri=server_url)
        yield store
        store.close()


@pytest.fixture(params=["embedded", "remote"])
def store(request, embedded_db, server_url):
    embedding = DeterministicFakeEmbedding(size=8)
    if request.param == "embedded":
        store = VectorDBVectorStore(embedding, _name(), database=embedded_db)
    else:
        store = VectorDBVectorStore(embedding, _name(), uri=server_url)
    yield store
    store.close()


PAPERS = [
    Document(
        id="p1", page_content="vitamin d is made in the skin from sunlight", metadata={"year": 2019, "lang": "en"}
    ),
    Document(
        id="p2", page_content="sunlight exposure and vitamin d levels in winter", metadata={"year": 2022, "lang": "en"}
    ),
    Document(id="p3", page_content="la vitamine d et le soleil", metadata={"year": 2023, "lang": "fr"}),
    Document(id="p4", page_content="iron absorption and tea", metadata={"year": 2021, "lang": "en"}),
]


def test_retriever_with_mode_and_filter(store):
    store.add_documents(PAPERS)
    retriever = store.as_retriever(
        search_kwargs={"k": 3, "mode": "hybrid", "filter": {"$and": [{"year": {"$gte": 2020}}, {"lang": "en"}]}}
    )
    found = retriever.invoke("vitamin d sunlight")
    assert [d.id for d in found][0] == "p2"  # BM25 ranks it first; the filter drops p1 (2019) and p3 (fr)
    assert {d.id for d in found} == {"p2", "p4"}
    assert found[0].metadata == {"year": 2022, "lang": "en"} and found[0].page_content == PAPERS[1].page_content
    lexical = store.as_retriever(search_kwargs={"k": 1, "mode": "bm25"}).invoke("tea")
    assert [d.id for d in lexical] == ["p4"]


async def test_async_retriever_with_mode_and_filter(store):
    await store.aadd_documents(PAPERS)
    retriever = store.as_retriever(search_kwargs={"k": 4, "mode": "hybrid", "filter": {"lang": {"$in": ["fr"]}}})
    assert [d.id for d in await retriever.ainvoke("vitamine soleil")] == ["p3"]


def test_scores_filter_delete_and_mmr(store):
    store.add_documents(PAPERS)
    exact = store.similarity_search_with_score(PAPERS[3].page_content, k=2)
    assert exact[0][0].id == "p4" and exact[0][1] == pytest.approx(1.0, abs=1e-5)  # cosine: same text
    assert exact[0][1] >= exact[1][1]  # higher is better
    relevance = store.similarity_search_with_relevance_scores(PAPERS[3].page_content, k=1)
    assert relevance[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="vector mode only"):
        store.similarity_search_with_relevance_scores("tea", k=1, mode="bm25")
    mmr = store.max_marginal_relevance_search(PAPERS[0].page_content, k=2, fetch_k=4)
    assert mmr[0].id == "p1" and len(mmr) == 2
    store.delete(filter={"lang": "fr"})
    assert [d.id for d in store.get_by_ids(["p4", "p3", "p1"])] == ["p4", "p1"]  # in the order asked
    with pytest.raises(ValueError):
        store.delete()
    # The service answers a GET of an id that is only rows' `doc_id` attribute with those rows
    # as one chunked document; the store does not take it for a document.
    store.add_documents([Document(id="c1", page_content="part", metadata={"doc_id": "parent"})])
    assert store.get_by_ids(["parent", "c1"]) == [Document(id="c1", page_content="part", metadata={"doc_id": "parent"})]


def test_from_texts(embedded_db):
    store = VectorDBVectorStore.from_texts(
        ["alpha", "beta"],
        DeterministicFakeEmbedding(size=8),
        [{"n": 1}, {"n": 2}],
        ids=["a", "b"],
        namespace=_name(),
        database=embedded_db,
    )
    assert store.similarity_search("beta", k=1, filter={"n": 2}) == [
        Document(id="b", page_content="beta", metadata={"n": 2})
    ]
    info = store.handle.namespace().describe()
    assert (info.embedder, info.dimensions, info.metric) == ("none", 8, "cosine")
