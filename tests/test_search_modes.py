"""Filters, BM25, hybrid fusion, chunked documents and file uploads: unit and API tier."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from api.app import create_app
from api.service import Service
from query.fusion import rrf
from storage.memory import MemoryStore
from tests.fakes import register_fake_embedder
from tests.test_parsers import make_pdf
from vectordb.bm25 import BM25Index
from vectordb.filters import evaluate, parse_filter
from vectordb.settings import Settings

COLORS = ["red", "green", "blue", "black"]
WORDS = "apple river stone cloud music paper garden window engine forest candle silver".split()


def _settings(**over) -> Settings:
    register_fake_embedder()
    base = dict(store_uri="memory://modes", group_commit_ms=1, flat_max_rows=50, rows_per_partition=40,
                auto_index=False, preload_embedder="")
    return Settings(**{**base, **over})


@pytest.fixture(scope="module")
def corpus():
    """600 documents: 450 indexed in two segments, 150 in the tail, some deleted/overwritten."""
    rng = np.random.default_rng(11)
    svc = Service(_settings(), store=MemoryStore())
    svc.create_namespace("c", "none", 16, "l2")
    docs = {}
    for i in range(600):
        words = rng.choice(WORDS, size=6)
        docs[f"d{i}"] = {
            "id": f"d{i}",
            "vector": rng.normal(size=16).round(3).tolist(),
            "text": " ".join(words),
            "attributes": {"color": COLORS[i % 4], "n": int(i % 97), "tags": sorted(set(words[:2].tolist())),
                           **({"rare": True} if i % 50 == 0 else {})},
        }
    ids = list(docs)
    svc.upsert("c", [docs[i] for i in ids[:300]])
    svc.index("c")
    svc.upsert("c", [docs[i] for i in ids[300:450]])
    svc.index("c")
    svc.upsert("c", [docs[i] for i in ids[450:]])
    gone = [f"d{i}" for i in range(0, 600, 7)]
    svc.delete("c", gone)
    for i in (1, 301, 451):  # overwrite rows in both segments and in the tail
        docs[f"d{i}"] = {**docs[f"d{i}"], "vector": rng.normal(size=16).round(3).tolist(), "attributes": {"color": "red", "n": 5, "tags": []}}
        svc.upsert("c", [docs[f"d{i}"]])
    revived = {"d1", "d301", "d451"} & set(gone)  # deleted, then upserted again: alive
    live = {k: v for k, v in docs.items() if k not in set(gone) or k in revived}
    assert len(svc.describe("c")["segments"]) == 2
    return svc, live


def _brute(live: dict, q, k: int, filt=None) -> list[str]:
    rows = [d for d in live.values() if filt is None or evaluate(parse_filter(filt), d["id"], d["attributes"])]
    scored = sorted(rows, key=lambda d: (float(((np.array(d["vector"], np.float32) - q) ** 2).sum()), d["id"]))
    return [d["id"] for d in scored[:k]]


_values = st.sampled_from(COLORS + [0, 5, 50, 96, True, "apple", "river"])
_leaf = st.one_of(
    st.builds(lambda v: {"color": v}, st.sampled_from(COLORS)),
    st.builds(lambda op, v: {"n": {op: v}}, st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$ne"]), st.integers(0, 97)),
    st.builds(lambda vs: {"color": {"$in": vs}}, st.lists(st.sampled_from(COLORS), min_size=1, max_size=3)),
    st.builds(lambda v: {"tags": {"$contains": v}}, st.sampled_from(WORDS)),
    st.builds(lambda b: {"rare": {"$exists": b}}, st.booleans()),
    st.builds(lambda v: {"n": v}, _values),
)
_filters = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda f: {"$not": f}, inner),
    ),
    max_leaves=5,
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filt=_filters, seed=st.integers(0, 10_000))
def test_filtered_vector_search_equals_plain_python_evaluation(corpus, filt, seed):
    svc, live = corpus
    q = np.random.default_rng(seed).normal(size=16).astype(np.float32)
    got = [h.id for h in svc.query("c", vector=q.tolist(), top_k=10, filter=filt).hits]
    assert got == _brute(live, q, 10, filt)


def test_broad_filter_on_the_ann_path_keeps_recall(corpus):
    svc, live = corpus
    svc_ann = Service(_settings(filter_exact_max_rows=10), store=svc.store)  # forces the masked ANN scan
    rng = np.random.default_rng(3)
    found = total = 0
    for _ in range(30):
        q = rng.normal(size=16).astype(np.float32)
        filt = {"color": {"$in": ["red", "green", "blue"]}}
        got = {h.id for h in svc_ann.query("c", vector=q.tolist(), top_k=10, filter=filt).hits}
        truth = set(_brute(live, q, 10, filt))
        found += len(got & truth)
        total += len(truth)
    assert found / total >= 0.9


def test_bm25_over_segments_and_tail_equals_one_index_over_everything(corpus):
    svc, live = corpus
    # Statistics count the rows a segment stores, dead ones too, until compaction drops them;
    # after it, segments plus tail must score exactly like one index over the live rows.
    svc.index("c", compact=True)
    extra = {"id": "z1", "vector": [0.0] * 16, "text": "apple apple zebra", "attributes": {"color": "blue"}}
    svc.upsert("c", [extra])
    live = {**live, "z1": extra}
    ids = sorted(live)
    whole = BM25Index.build(live[i]["text"] for i in ids)
    for query in ["apple river", "zebra", "silver candle engine"]:
        rows, scores = whole.search(query, len(ids))
        truth = {ids[r]: float(s) for r, s in zip(rows, scores)}
        hits = svc.query("c", text=query, mode="bm25", top_k=10).hits
        # Same scores as one index over everything (ties may order differently by float rounding).
        np.testing.assert_allclose([h.score for h in hits], scores[:10], rtol=1e-4)
        np.testing.assert_allclose([truth[h.id] for h in hits], [h.score for h in hits], rtol=1e-4)
    flt = svc.query("c", text="apple", mode="bm25", top_k=50, filter={"color": "blue"}).hits
    assert flt and all(live[h.id]["attributes"]["color"] == "blue" for h in flt)


def test_hybrid_is_reciprocal_rank_fusion_of_both_lists():
    svc = Service(_settings(), store=MemoryStore())
    svc.create_namespace("h", "fake")
    svc.upsert("h", [{"id": f"x{i}", "text": f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} item {i}"} for i in range(80)])
    svc.index("h")
    vec = svc.query("h", text="apple garden", top_k=100).hits
    lex = svc.query("h", text="apple garden", mode="bm25", top_k=100).hits
    hyb = svc.query("h", text="apple garden", mode="hybrid", top_k=10, weights={"vector": 1.0, "bm25": 2.0}).hits
    expected = {}
    for weight, hits in ((1.0, vec), (2.0, lex)):
        for h in hits:  # equal scores share a rank: 1 + how many score higher
            rank = 1 + sum(other.score > h.score for other in hits)
            expected[h.id] = expected.get(h.id, 0.0) + weight / (60 + rank)
    assert len({h.score for h in lex}) < len(lex)  # the BM25 list has ties
    best = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [h.id for h in hyb] == [i for i, _ in best]
    assert [h.score for h in hyb] == pytest.approx([s for _, s in best])
    assert all(set(h.scores) == {"vector", "bm25"} for h in hyb)
    assert rrf({}, {}) == []


def test_long_text_is_chunked_reingest_replaces_and_delete_cascades():
    svc = Service(_settings(), store=MemoryStore())
    svc.create_namespace("k", "fake", chunking={"chunk_tokens": 32, "overlap_tokens": 8})
    long_text = " ".join(f"Sentence number {i} talks about {WORDS[i % 12]}." for i in range(60))
    version, rows = svc.upsert("k", [{"id": "doc", "text": long_text, "attributes": {"owner": "ann"}}])
    assert rows > 5
    chunk_ids = svc.engine.matching_ids("k", {"doc_id": "doc"})
    assert sorted(chunk_ids) == sorted(f"doc#{i}" for i in range(rows))
    hit = svc.query("k", text="Sentence number 7", top_k=1, include=("attributes",)).hits[0]
    assert hit.attributes["doc_id"] == "doc" and hit.attributes["owner"] == "ann" and "chunk" in hit.attributes
    svc.index("k")
    svc.upsert("k", [{"id": "doc", "text": "Now a short text.", "attributes": {"owner": "bob"}}])
    assert svc.engine.matching_ids("k", {"doc_id": "doc"}) == ["doc"]
    svc.upsert("k", [{"id": "other", "text": "unrelated words here"}])
    svc.delete("k", ids=["doc"])
    assert svc.engine.matching_ids("k", {"doc_id": "doc"}) == []
    version, n = svc.delete("k", filter={"doc_id": "other"})
    assert n == 1 and svc.query("k", text="unrelated", top_k=5).hits == []


def test_file_upload_jobs_report_progress_and_carry_citations():
    settings = _settings(embed_batch_size=4)
    app = create_app(settings, "all", Service(settings, store=MemoryStore()))
    # X-Requested-With: an upload a web page could not send cross-site (api/access.py).
    with TestClient(app, headers={"X-Requested-With": "test"}) as c:
        c.put("/v1/namespaces/f", json={"embedder": "fake", "chunking": {"chunk_tokens": 24, "overlap_tokens": 4}})
        md = "# Guide\n\n## Setup\n\n" + "Install the pump carefully. " * 30 + "\n\n## Care\n\nClean the filter weekly.\n"
        r = c.post("/v1/namespaces/f/files", files={"file": ("guide.md", md.encode(), "text/markdown")},
                   data={"attributes": '{"team": "ops"}'})
        assert r.status_code == 202
        job_id = r.json()["job"]["id"]
        for _ in range(200):
            job = c.get(f"/v1/jobs/{job_id}").json()["job"]
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done" and job["chunks_done"] == job["chunks_total"] > 3
        hits = c.post("/v1/namespaces/f/query", json={"text": "clean filter weekly", "top_k": 1,
                                                       "include": ["text", "attributes"]}).json()["results"]
        attrs = hits[0]["attributes"]
        assert attrs["doc_id"] == "guide.md" and attrs["source"] == "guide.md" and attrs["heading"] == "Care"
        assert attrs["title"] == "Guide" and attrs["team"] == "ops"
        pdf = make_pdf(["First page about turbines.", "Second page about solar panels."], title="Energy")
        r = c.post("/v1/namespaces/f/files?wait=true", files={"file": ("energy.pdf", pdf, "application/pdf")},
                   data={"document_id": "energy"})
        assert r.status_code == 200 and r.json()["job"]["status"] == "done"
        hit = c.post("/v1/namespaces/f/query", json={"text": "solar panels", "top_k": 1, "include": ["attributes"],
                                                      "filter": {"doc_id": "energy"}}).json()["results"][0]
        assert hit["attributes"]["page"] == 2 and hit["attributes"]["title"] == "Energy"
        bad = c.post("/v1/namespaces/f/files", files={"file": ("x.exe", b"MZ\x00\x01", "application/octet-stream")})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"
        assert c.get("/v1/jobs/nope").status_code == 404
        bad_filter = c.post("/v1/namespaces/f/query", json={"text": "x", "filter": {"n": {"$gt": [1]}}})
        assert bad_filter.status_code == 400 and "filter" in bad_filter.json()["error"]["message"]
