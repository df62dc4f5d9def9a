"""Retrieval quality measures, computed the way trec_eval (and so BEIR and MTEB) computes them.

``run`` maps a query id to its ranked document ids, best first; ``qrels`` maps a query id to
graded judgments ``{doc_id: relevance}``. A judgment of 0 or less is "not relevant". Every
query in ``qrels`` counts, including one absent from ``run`` or without a relevant document
(it scores 0), and queries found only in ``run`` are ignored, so evaluate a subset by passing
only its qrels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]


def ndcg_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """Mean nDCG@k with linear gain (gain = relevance grade, discount log2(rank + 1))."""
    return _mean(ndcg_per_query(run, qrels, k))


def ndcg_per_query(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """nDCG@k of each query in ``qrels``."""
    _check_k(k)
    scores = {}
    for qid, judged in qrels.items():
        gains = [judged.get(doc_id, 0) for doc_id in _top(run.get(qid, ()), k)]
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
        ideal_dcg = _dcg(ideal)
        scores[qid] = _dcg([max(g, 0) for g in gains]) / ideal_dcg if ideal_dcg > 0 else 0.0
    return scores


def recall_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """Mean fraction of each query's relevant documents found in its top k."""
    _check_k(k)
    scores = []
    for qid, judged in qrels.items():
        relevant = {doc_id for doc_id, grade in judged.items() if grade > 0}
        found = relevant.intersection(_top(run.get(qid, ()), k))
        scores.append(len(found) / len(relevant) if relevant else 0.0)
    return _mean(scores)


def _top(ranked: Sequence[str], k: int) -> list[str]:
    # A document listed twice counts once, at its best rank (as trec_eval reads a run file).
    seen: dict[str, None] = {}
    for doc_id in ranked:
        if len(seen) == k:
            break
        seen.setdefault(doc_id)
    return list(seen)


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def _mean(values: Mapping[str, float] | Sequence[float]) -> float:
    items = list(values.values()) if isinstance(values, Mapping) else list(values)
    return sum(items) / len(items) if items else 0.0


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
