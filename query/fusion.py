"""Reciprocal rank fusion of several ranked lists."""

from __future__ import annotations

from query.plan import Candidate, row_key


def rrf(lists: dict[str, list[Candidate]], weights: dict[str, float], k: int = 60) -> list[tuple[float, Candidate, dict]]:
    """Fuse ranked lists (best first) by sum of ``weight / (k + rank)``.

    A candidate's rank in a list is 1 + how many of the list score higher: candidates that
    tie share a rank ("1224"), so which of them a list names first changes no fused score,
    and a list's candidates need no ids to be ordered. Rows are told apart by where they
    are (:func:`query.plan.row_key`); the candidate kept for a row is one with its id if
    any list has it.

    Returns (fused score, a candidate for the row, {list name: its own score}), best first,
    equal scores by id; those without an id after those with one (a caller that names
    them orders those ties again: ``query.engine``).
    """
    fused: dict[tuple, list] = {}
    for name, ranked in lists.items():
        weight = weights.get(name, 1.0)
        rank = 0
        for at, cand in enumerate(ranked, start=1):
            if at == 1 or cand.score != ranked[at - 2].score:
                rank = at
            entry = fused.setdefault(row_key(cand), [0.0, cand, {}])
            if entry[1].id is None:
                entry[1] = cand
            entry[0] += weight / (k + rank)
            entry[2][name] = cand.score
    return sorted(((s, c, per) for s, c, per in fused.values()), key=lambda t: (-t[0], t[1].id is None, t[1].id or ""))
