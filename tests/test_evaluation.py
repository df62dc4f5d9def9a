"""nDCG and recall against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from vectordb.evaluation import ndcg_at_k, ndcg_per_query, recall_at_k

QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1},
    "q2": {"d9": 1},  # no run for q2: it scores 0 and still counts
}
RUN = {"q1": ["d3", "d1", "d5", "d2"], "q3": ["d1"]}  # q3 has no qrels: ignored


def test_ndcg_by_hand() -> None:
    # q1 top 3: d3 (0), d1 (2), d5 (unjudged, 0) -> DCG = 2 / log2(3)
    # ideal: 2, 1, 1 -> 2 / log2(2) + 1 / log2(3) + 1 / log2(4) = 2 + 0.6309 + 0.5
    dcg = 2 / math.log2(3)
    ideal = 2 + 1 / math.log2(3) + 0.5
    assert ndcg_per_query(RUN, QRELS, 3) == pytest.approx({"q1": dcg / ideal, "q2": 0.0})
    assert ndcg_at_k(RUN, QRELS, 3) == pytest.approx((dcg / ideal) / 2)
    assert dcg / ideal == pytest.approx(0.40303, abs=1e-5)


def test_ndcg_perfect_and_linear_gain() -> None:
    qrels = {"q": {"a": 2, "b": 1}}
    assert ndcg_at_k({"q": ["a", "b"]}, qrels, 10) == pytest.approx(1.0)
    # swapped: (1 + 2/log2 3) / (2 + 1/log2 3) with linear, not exponential, gain
    assert ndcg_at_k({"q": ["b", "a"]}, qrels, 10) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_recall_by_hand() -> None:
    assert recall_at_k(RUN, QRELS, 3) == pytest.approx((1 / 3 + 0) / 2)
    assert recall_at_k(RUN, QRELS, 4) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(RUN, QRELS, 100) == pytest.approx((2 / 3 + 0) / 2)


def test_duplicates_count_once_and_k_must_be_positive() -> None:
    qrels = {"q": {"a": 1, "b": 1}}
    assert recall_at_k({"q": ["a", "a", "b"]}, qrels, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ndcg_at_k(RUN, QRELS, 0)
    assert ndcg_at_k({}, {}, 10) == 0.0
