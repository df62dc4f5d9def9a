"""BM25: the analyzer, scores against a plain implementation, shared statistics, serialisation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectordb.bm25 import BM25Index, GlobalStats, analyze, combine_stats, shortest, top_k
from vectordb.stemmer import stem

# --- the analyzer ------------------------------------------------------------------------------

PORTER = {
    # Porter's own examples, step by step, then whole words through several steps.
    "caresses": "caress", "ponies": "poni", "ties": "ti", "caress": "caress", "cats": "cat",
    "feed": "feed", "agreed": "agre", "plastered": "plaster", "bled": "bled", "motoring": "motor",
    "sing": "sing", "conflated": "conflat", "troubled": "troubl", "sized": "size", "hopping": "hop",
    "tanned": "tan", "falling": "fall", "hissing": "hiss", "fizzed": "fizz", "failing": "fail",
    "filing": "file", "happy": "happi", "sky": "sky", "relational": "relat", "conditional": "condit",
    "rational": "ration", "valenci": "valenc", "digitizer": "digit", "conformabli": "conform",
    "radicalli": "radic", "differentli": "differ", "vileli": "vile", "analogousli": "analog",
    "vietnamization": "vietnam", "predication": "predic", "operator": "oper", "feudalism": "feudal",
    "decisiveness": "decis", "hopefulness": "hope", "callousness": "callous", "formaliti": "formal",
    "sensitiviti": "sensit", "sensibiliti": "sensibl", "triplicate": "triplic", "formative": "form",
    "formalize": "formal", "electriciti": "electr", "electrical": "electr", "hopeful": "hope",
    "goodness": "good", "revival": "reviv", "allowance": "allow", "inference": "infer",
    "airliner": "airlin", "gyroscopic": "gyroscop", "adjustable": "adjust", "defensible": "defens",
    "irritant": "irrit", "replacement": "replac", "adjustment": "adjust", "dependent": "depend",
    "adoption": "adopt", "homologou": "homolog", "communism": "commun", "activate": "activ",
    "angulariti": "angular", "homologous": "homolog", "effective": "effect", "bowdlerize": "bowdler",
    "probate": "probat", "rate": "rate", "cease": "ceas", "controll": "control", "roll": "roll",
    "generalizations": "gener", "oscillators": "oscil", "analogies": "analog", "is": "is",
}  # fmt: skip


@pytest.mark.parametrize(("word", "expected"), PORTER.items())
def test_porter_stemmer(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_analyze() -> None:
    assert analyze("The Cats were RUNNING, and the cat runs!") == ["cat", "run", "cat", "run"]
    assert analyze("Café naïve 3.5mg COVID-19 snake_case") == ["café", "naïve", "3", "5mg", "covid", "19", "snake_case"]
    assert analyze("the of and") == []
    assert analyze("") == []


# --- scores against a plain implementation ----------------------------------------------------


def plain_bm25(texts: list[str], query: str, k1: float, b: float, corpus: list[str] | None = None) -> dict[int, float]:
    """Score of every row of ``texts`` that shares a term with ``query``; statistics come from
    ``corpus`` (default: ``texts``), written as directly as the formula reads."""
    docs = [Counter(analyze(t)) for t in texts]
    stats_docs = [Counter(analyze(t)) for t in (texts if corpus is None else corpus)]
    n = len(stats_docs)
    avgdl = sum(sum(d.values()) for d in stats_docs) / n
    scores = {}
    for row, doc in enumerate(docs):
        length = sum(doc.values())
        score = 0.0
        for term in analyze(query):
            tf = doc[term]
            if tf:
                df = sum(1 for d in stats_docs if term in d)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl))
        if score > 0:
            scores[row] = score
    return scores


WORDS = ["cat", "cats", "dog", "running", "run", "blue", "zebra", "the", "a", "of", "café", "x1", "hopeful"]
TEXTS = st.lists(st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join), min_size=1, max_size=30)
QUERIES = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
PARAMS = st.sampled_from([(0.9, 0.4), (1.2, 0.75), (1.5, 0.75), (2.0, 1.0), (1.2, 0.0)])


def as_dict(rows: np.ndarray, scores: np.ndarray) -> dict[int, float]:
    return dict(zip(rows.tolist(), scores.tolist(), strict=True))


def assert_ranked(rows: np.ndarray, scores: np.ndarray) -> None:
    """Best first; equal scores in ascending row order."""
    for i in range(len(rows) - 1):
        assert scores[i] > scores[i + 1] or (scores[i] == scores[i + 1] and rows[i] < rows[i + 1])


@settings(max_examples=150, deadline=None)
@given(TEXTS, QUERIES, PARAMS)
def test_scores_match_plain_bm25(texts: list[str], query: str, params: tuple[float, float]) -> None:
    k1, b = params
    if not any(analyze(t) for t in texts):
        return  # an empty corpus has no average length; covered by test_degenerate_inputs
    index = BM25Index.build(texts, k1=k1, b=b)
    rows, scores = index.search(query, len(texts))
    expected = plain_bm25(texts, query, k1, b)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert as_dict(rows, scores) == pytest.approx(expected, rel=1e-5)
    assert_ranked(rows, scores)
    top_rows, top_scores = index.search(query, 3)
    assert top_rows.tolist() == rows[:3].tolist()
    assert top_scores.tolist() == scores[:3].tolist()


@settings(max_examples=100, deadline=None)
@given(TEXTS, QUERIES, st.data())
def test_allowed_mask_is_respected(texts: list[str], query: str, data: st.DataObject) -> None:
    if not any(analyze(t) for t in texts):
        return
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(texts), max_size=len(texts))))
    index = BM25Index.build(texts)
    rows, scores = index.search(query, 5, allowed_mask=mask)
    assert all(mask[rows])
    everything = as_dict(*index.search(query, len(texts)))
    allowed = sorted(((-s, r) for r, s in everything.items() if mask[r]))[:5]
    assert rows.tolist() == [r for _, r in allowed]


@settings(max_examples=100, deadline=None)
@given(TEXTS, TEXTS, QUERIES)
def test_shared_stats_make_segments_equal_one_index(first: list[str], second: list[str], query: str) -> None:
    union = first + second
    if not any(analyze(t) for t in union):
        return
    one = BM25Index.build(union)
    parts = [BM25Index.build(first), BM25Index.build(second)]
    terms = analyze(query)
    stats = combine_stats(p.stats(terms) for p in parts)

    assert (stats.n_docs, stats.total_length) == (one.n_docs, one.total_length)
    assert stats.doc_freq == one.stats(terms).doc_freq
    whole = combine_stats(p.stats() for p in parts)
    assert {t: f for t, f in whole.doc_freq.items() if f} == one.stats().doc_freq

    merged: dict[int, float] = {}
    for offset, part in zip((0, len(first)), parts, strict=True):
        rows, scores = part.search(query, len(union), stats=stats)
        merged.update({offset + r: s for r, s in as_dict(rows, scores).items()})
    assert merged == pytest.approx(as_dict(*one.search(query, len(union))), rel=1e-5)
    assert merged == pytest.approx(plain_bm25(union, query, one.k1, one.b), rel=1e-5)


def test_stats_must_cover_query_terms() -> None:
    index = BM25Index.build(["blue cat", "red dog"])
    with pytest.raises(ValueError, match="cat"):
        index.search("cat", 5, stats=GlobalStats(2, 4, {}))
    # A term the index lacks needs no statistics: nothing here could score for it.
    assert index.search("zebra", 5, stats=GlobalStats(2, 4, {}))[0].tolist() == []
    assert index.stats(["cat", "zebra"]) == GlobalStats(2, 4, {"cat": 1, "zebra": 0})


def test_degenerate_inputs() -> None:
    empty = BM25Index.build([])
    assert len(empty) == 0
    for index in (empty, BM25Index.build(["", "the of"]), BM25Index.from_bytes(empty.to_bytes())):
        rows, scores = index.search("cat", 10)
        assert rows.tolist() == [] and scores.tolist() == []
    index = BM25Index.build(["cat", "dog"])
    assert index.search("", 10)[0].tolist() == []
    assert index.search("the", 10)[0].tolist() == []
    assert index.search("cat", 0)[0].tolist() == []
    with pytest.raises(ValueError, match="negative"):
        index.search("cat", -1)
    with pytest.raises(ValueError, match="allowed_mask"):
        index.search("cat", 1, allowed_mask=np.ones(3, dtype=bool))


# --- serialisation ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(TEXTS, QUERIES)
def test_round_trip(texts: list[str], query: str) -> None:
    index = BM25Index.build(texts, k1=0.9, b=0.4)
    data = index.to_bytes()
    again = BM25Index.from_bytes(data)
    assert (again.k1, again.b, again.terms, again.n_docs, again.total_length) == (
        0.9,
        0.4,
        index.terms,
        index.n_docs,
        index.total_length,
    )
    for name in ("indptr", "rows", "tfs", "doc_len"):
        assert np.array_equal(getattr(again, name), getattr(index, name))
        assert getattr(again, name).dtype == getattr(index, name).dtype
    assert again.to_bytes() == data
    if any(analyze(t) for t in texts):
        for got, want in zip(again.search(query, 10), index.search(query, 10), strict=True):
            assert got.tolist() == want.tolist()


def test_serialised_form_is_compact() -> None:
    texts = [f"word{i % 500} common text number {i}" for i in range(5000)]
    index = BM25Index.build(texts)
    assert index.rows.dtype == np.uint16 and index.tfs.dtype == np.uint8
    arrays = sum(getattr(index, name).nbytes for name in ("indptr", "rows", "tfs", "doc_len"))
    terms = len("\n".join(index.terms).encode())
    assert len(index.to_bytes()) < arrays + terms + 2048  # no more than a small header


def test_from_bytes_rejects_other_data(monkeypatch: pytest.MonkeyPatch) -> None:
    index = BM25Index.build(["cat"])
    data = index.to_bytes()
    inconsistent = BM25Index(index.terms + ["dog"], index.indptr, index.rows, index.tfs, index.doc_len).to_bytes()
    for bad in (b"not an index", data[: len(data) // 2], data.replace(b"indptr", b"indptX"), inconsistent):
        with pytest.raises(ValueError, match="not a serialised BM25 index"):
            BM25Index.from_bytes(bad)
    monkeypatch.setattr("vectordb.bm25.ANALYZER", "another-analyzer")
    with pytest.raises(ValueError, match="analyzer"):
        BM25Index.from_bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_sample_bounds_top_k_without_changing_it(data: st.DataObject) -> None:
    """``top_k``'s ``sample`` only narrows the candidates: with few distinct scores (ties),
    zeros, a mask and any sample of distinct rows, the answer is the one without it."""
    n = data.draw(st.integers(1, 60))
    scores = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]), min_size=n, max_size=n)),
                      np.float32)
    mask = data.draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n).map(np.array))
    sample = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1)))), np.int64)
    k = data.draw(st.integers(0, n + 2))
    rows, found = top_k(scores, k, mask, sample)
    expected_rows, expected = top_k(scores, k, mask)
    assert rows.tolist() == expected_rows.tolist()
    assert found.tolist() == expected.tolist()


def test_shortest_picks_the_rarest_list_that_holds_k() -> None:
    lists = [np.arange(50), np.arange(3), np.arange(12)]
    assert shortest(lists, 10) is lists[2]
    assert shortest(lists, 2) is lists[1]
    assert shortest(lists, 51) is None
