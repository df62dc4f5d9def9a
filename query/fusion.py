"""Reciprocal rank fusion of several ranked lists."""

from __future__ import annotations

from query.plan import Candidate


def rrf(lists: dict[str, list[Candidate]], weights: dict[str, float], k: int = 60) -> list[tuple[float, Candidate, dict]]:
    """Fuse ranked lists (best first) by sum of ``weight / (k + rank)``, rank from 1.

    Returns (fused score, a candidate for the row, {list name: its own score}), best first.
    """
    fused: dict[str, list] = {}
    for name, ranked in lists.items():
        weight = weights.get(name, 1.0)
        for rank, cand in enumerate(ranked, start=1):
            entry = fused.setdefault(cand.id, [0.0, cand, {}])
            entry[0] += weight / (k + rank)
            entry[2][name] = cand.score
    return sorted(((s, c, per) for s, c, per in fused.values()), key=lambda t: (-t[0], t[1].id))
