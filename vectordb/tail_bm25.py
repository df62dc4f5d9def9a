"""BM25 over the unindexed tail, kept up to date as the tail grows instead of rebuilt.

Building a :class:`BM25Index` over the whole tail costs ~10 µs per row in Python; beside a
writer the tail changes with every commit, and rebuilding it for each version took most
of a hybrid query's time (issue 11). A :class:`TailBM25` is a few *runs* instead, each a
``BM25Index`` over some of the tail's rows, built once: a new version adds a run for the
rows it appended, marks the rows it overrode as gone in the older runs, and merges runs
of similar size from their postings, in numpy (so there are O(log n) runs, each row's
postings are copied O(log n) times, and no text is analysed twice).

It answers exactly as one ``BM25Index`` built over the tail's texts would: the same
statistics (live rows only), the same float32 scores (the same arithmetic, given the
same statistics) and the same order, ties to the lower tail row, because a run's rows
keep the tail's row order.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vectordb.bm25 import BM25Index, GlobalStats, analyze
from vectordb.tail import Tail


class _Run:
    """A BM25 index over some tail rows: ``rows[i]`` is the tail row of its row ``i``
    (ascending), -1 once that row is gone."""

    __slots__ = ("index", "rows", "live", "n_live", "length")

    def __init__(self, index: BM25Index, rows: np.ndarray) -> None:
        self.index = index
        self.rows = rows
        self.live = None if (rows >= 0).all() else rows >= 0  # None: every row is live
        self.n_live = len(rows) if self.live is None else int(self.live.sum())
        lengths = index.doc_len if self.live is None else index.doc_len[self.live]
        self.length = int(lengths.sum(dtype=np.int64))

    @classmethod
    def build(cls, texts: Iterable[str | None], rows: np.ndarray) -> _Run:
        return cls(BM25Index.build(t or "" for t in texts), rows)

    def moved(self, new_row: np.ndarray) -> _Run:
        """This run after the tail's rows moved: ``new_row[old]`` (-1: gone)."""
        rows = np.where(self.rows >= 0, new_row[np.maximum(self.rows, 0)], -1)
        return _Run(self.index, rows)

    def doc_freq(self, term: str) -> int:
        t = self.index.term_ids.get(term)
        if t is None:
            return 0
        lo, hi = int(self.index.indptr[t]), int(self.index.indptr[t + 1])
        return hi - lo if self.live is None else int(self.live[self.index.rows[lo:hi]].sum())

    @property
    def nbytes(self) -> int:
        i = self.index
        return i.indptr.nbytes + i.rows.nbytes + i.tfs.nbytes + i.doc_len.nbytes + 60 * len(i.terms) + 9 * len(self.rows)


class TailBM25:
    """BM25 over a tail's rows; the part of :class:`BM25Index` a query uses (``stats``,
    ``search``, ``len``)."""

    def __init__(self, runs: list[_Run], n_docs: int) -> None:
        self.runs = runs
        self.n_docs = n_docs
        self.total_length = sum(run.length for run in runs)

    @classmethod
    def build(cls, tail: Tail) -> TailBM25:
        n = len(tail.rows)
        return cls([_Run.build(tail.rows.texts, np.arange(n, dtype=np.int64))] if n else [], n)

    def extended(self, tail: Tail) -> TailBM25:
        """The index of ``tail``, made from this one, the index of ``tail.parent``."""
        step = tail.step
        runs = list(self.runs)
        if step.kept is not None:
            new_row = np.full(self.n_docs, -1, np.int64)
            new_row[step.kept] = np.arange(len(step.kept))
            runs = [run.moved(new_row) for run in runs]
            runs = [run for run in runs if run.n_live]
        n_kept = len(tail.rows) - len(step.appended)
        if len(step.appended):
            runs.append(_Run.build(step.appended.texts, np.arange(n_kept, len(tail.rows), dtype=np.int64)))
        # Merge the newest runs while the one before is at most twice as big (a binary
        # counter: O(log n) runs), and rebuild any run that is mostly gone.
        while len(runs) > 1 and len(runs[-2].rows) <= 2 * len(runs[-1].rows):
            runs[-2:] = [_merged(runs[-2:])]
        runs = [_merged([run]) if run.n_live * 2 < len(run.rows) else run for run in runs]
        return TailBM25(runs, len(tail.rows))

    def __len__(self) -> int:
        return self.n_docs

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self.runs)

    def stats(self, terms: Iterable[str] | None = None) -> GlobalStats:
        """Statistics of the live rows, with document frequencies of ``terms`` (or of every
        term), as ``BM25Index.stats`` over the same texts would give."""
        wanted = set(terms) if terms is not None else {t for run in self.runs for t in run.index.terms}
        doc_freq = {t: sum(run.doc_freq(t) for run in self.runs) for t in wanted}
        if terms is None:  # the vocabulary of the live rows only
            doc_freq = {t: n for t, n in doc_freq.items() if n}
        return GlobalStats(self.n_docs, self.total_length, doc_freq)

    def search(
        self, query: str, k: int, allowed_mask: np.ndarray | None = None, stats: GlobalStats | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`BM25Index.search`, rows being tail rows."""
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        if allowed_mask is not None and len(allowed_mask) != self.n_docs:
            raise ValueError(f"allowed_mask has {len(allowed_mask)} entries for {self.n_docs} rows")
        if stats is None:
            stats = self.stats(analyze(query))
        found_rows, found_scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for run in self.runs:
            mask = run.live
            if allowed_mask is not None:
                mask = np.zeros(len(run.rows), bool)
                alive = run.rows >= 0
                mask[alive] = np.asarray(allowed_mask, bool)[run.rows[alive]]
            rows, scores = run.index.search(query, k, allowed_mask=mask, stats=stats)
            found_rows.append(run.rows[rows])
            found_scores.append(scores)
        rows, scores = np.concatenate(found_rows), np.concatenate(found_scores)
        order = np.lexsort((rows, -scores))[:k]
        return rows[order].astype(np.int64), scores[order]


def _merged(runs: list[_Run]) -> _Run:
    """One run over the live rows of ``runs`` (consecutive, so already in row order),
    merged from their postings: no text is analysed again."""
    vocabulary = sorted({t for run in runs for t in run.index.terms})
    position = {t: i for i, t in enumerate(vocabulary)}
    terms, rows, tfs, lengths, tail_rows = [], [], [], [], []
    offset = 0
    for run in runs:
        index = run.index
        live = run.rows >= 0
        new_row = np.cumsum(live) - 1 + offset  # the merged row of each live row
        posting_term = np.repeat(np.array([position[t] for t in index.terms], np.int64), np.diff(index.indptr))
        posting_row = index.rows.astype(np.int64)
        keep = live[posting_row]
        terms.append(posting_term[keep])
        rows.append(new_row[posting_row[keep]])
        tfs.append(index.tfs[keep].astype(np.int64))
        lengths.append(index.doc_len[live].astype(np.int64))
        tail_rows.append(run.rows[live])
        offset += int(live.sum())
    term, row, tf = np.concatenate(terms), np.concatenate(rows), np.concatenate(tfs)
    used, term = np.unique(term, return_inverse=True)  # terms only gone rows had go too
    order = np.lexsort((row, term))
    indptr = np.zeros(len(used) + 1, np.int64)
    np.cumsum(np.bincount(term, minlength=len(used)), out=indptr[1:])
    first = runs[0].index
    index = BM25Index(
        [vocabulary[t] for t in used.tolist()],
        _compact(indptr),
        _compact(row[order]),
        _compact(tf[order]),
        _compact(np.concatenate(lengths)),
        first.k1,
        first.b,
    )
    return _Run(index, np.concatenate(tail_rows))


def _compact(values: np.ndarray) -> np.ndarray:
    """The same non-negative integers in the smallest unsigned dtype that holds them."""
    return values.astype(np.min_scalar_type(int(values.max()) if len(values) else 0))
