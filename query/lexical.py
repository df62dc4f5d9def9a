"""BM25 search over the segments and the tail, with statistics shared across them so
scores from different segments are comparable."""

from __future__ import annotations

import numpy as np

from query.plan import TAIL, Candidate, Context
from vectordb.bm25 import analyze, combine_stats
from vectordb.reader import NamespaceReader


def search(reader: NamespaceReader, ctx: Context, text: str, k: int) -> list[Candidate]:
    terms = analyze(text)
    if not terms:
        return []
    segments = list(ctx.manifest.segments)
    indexes = [reader.bm25(ctx.ns, seg) for seg in segments]
    tail_index = reader.tail_bm25(ctx.manifest) if len(ctx.tail) else None
    parts = indexes + ([tail_index] if tail_index is not None else [])
    stats = combine_stats(index.stats(terms) for index in parts)
    out: list[Candidate] = []
    for seg, index in zip(segments, indexes):
        allowed = reader.live_mask(ctx.ns, seg, ctx.tail)
        if ctx.filter is not None:
            fmask = reader.filter_mask(ctx.ns, seg, ctx.filter, ctx.filter_key)
            allowed = fmask if allowed is None else allowed & fmask
        rows, scores = index.search(text, k, allowed_mask=allowed, stats=stats)
        ids = reader.ids(ctx.ns, seg)
        out += [Candidate(float(s), ids[r], seg, int(r)) for r, s in zip(rows, scores)]
    if tail_index is not None:
        allowed = None
        if ctx.filter is not None:
            allowed = reader.tail_filter_mask(ctx.manifest, ctx.filter, ctx.filter_key)
        rows, scores = tail_index.search(text, k, allowed_mask=allowed, stats=stats)
        ids = ctx.tail.rows.ids
        out += [Candidate(float(s), ids[r], TAIL, int(r)) for r, s in zip(rows, np.asarray(scores))]
    return out
