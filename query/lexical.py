"""BM25 search over the segments and the tail, with statistics shared across them so
scores from different segments are comparable.

A segment contributes only what the query's terms touch (``NamespaceReader.bm25``: its
statistics, the terms' document frequencies and postings), and the ids of its winners
only. A segment where no query term occurs scores no row, so its live and filter masks
are not read for it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from query.plan import TAIL, Candidate, Context
from vectordb.bm25 import analyze, combine_stats
from vectordb.reader import NamespaceReader


def search(reader: NamespaceReader, ctx: Context, text: str, k: int, named: bool = True) -> list[Candidate]:
    """The top ``k`` rows of each segment and of the tail by BM25. ``named``: with their
    ids; else a segment row's id is None (:func:`name` gives the ones a caller keeps:
    a hybrid query names the winners of its fusion only, not all its candidates)."""
    terms = analyze(text)
    if not terms:
        return []
    segments = list(ctx.manifest.segments)
    indexes = reader.bm25(ctx.ns, segments, terms)
    tail_index = reader.tail_bm25(ctx.manifest) if len(ctx.tail) else None
    parts = [index.stats(terms) for index in indexes]
    if tail_index is not None:
        parts.append(tail_index.stats(terms))
    stats = combine_stats(parts)
    out: list[Candidate] = []
    for seg, index, own in zip(segments, indexes, parts):
        if k == 0 or not any(own.doc_freq.values()):
            continue
        allowed = reader.live_mask(ctx.ns, seg, ctx.tail)
        if ctx.filter is not None:
            fmask = reader.filter_mask(ctx.ns, seg, ctx.filter, ctx.filter_key)
            allowed = fmask if allowed is None else allowed & fmask
        rows, scores = index.search(text, k, allowed_mask=allowed, stats=stats)
        if len(rows):
            ids = reader.row_ids(ctx.ns, seg, rows) if named else [None] * len(rows)
            out += [Candidate(float(s), i, seg, int(r)) for i, r, s in zip(ids, rows, scores)]
    if tail_index is not None:
        allowed = None
        if ctx.filter is not None:
            allowed = reader.tail_filter_mask(ctx.manifest, ctx.filter, ctx.filter_key)
        rows, scores = tail_index.search(text, k, allowed_mask=allowed, stats=stats)
        ids = ctx.tail.rows.ids
        out += [Candidate(float(s), ids[r], TAIL, int(r)) for r, s in zip(rows, np.asarray(scores))]
    return out


def name(reader: NamespaceReader, ns: str, candidates: list[Candidate], pool) -> list[Candidate]:
    """``candidates`` with the ids of those that have none read (each segment's in one
    round of ranged reads, the segments' rounds at once on ``pool``)."""
    wanted: dict[str, tuple] = {}
    for c in candidates:
        if c.id is None:
            wanted.setdefault(c.segment.id, (c.segment, []))[1].append(c.row)
    if not wanted:
        return candidates
    found = list(pool.map(lambda sr: reader.row_ids(ns, sr[0], sr[1]), wanted.values()))
    ids = {(seg.id, row): i for (seg, rows), got in zip(wanted.values(), found) for row, i in zip(rows, got)}
    return [c if c.id is not None else replace(c, id=ids[(c.segment.id, c.row)]) for c in candidates]
