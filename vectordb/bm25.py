"""BM25 keyword search over chunk text: the analyzer, the index, and shared corpus statistics.

A segment's index is built as a :class:`BM25Index` and stored in the blocked format of
:mod:`vectordb.bm25_blocks`, which queries read per term; ``to_bytes``/``from_bytes`` is the
older whole-file form (``.npz``), still read for segments written before. Scores from several
indexes (segments plus the unindexed tail) are comparable only when they use the same idf
and average document length, so the caller gathers each index's :class:`GlobalStats` for the
query's terms, adds them up with :func:`combine_stats`, and passes the sum to every search::

    terms = analyze(query)
    stats = combine_stats(index.stats(terms) for index in indexes)
    hits = [index.search(query, k, stats=stats) for index in indexes]

Scoring is Lucene's BM25 (k1, b; idf = ln(1 + (N - df + 0.5) / (df + 0.5))), summed over the
query's tokens, so a word repeated in the query counts again.
"""

from __future__ import annotations

import functools
import io
import json
import re
import zipfile
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vectordb.stemmer import stem

# Measured on BEIR NFCorpus (bench/bm25_nfcorpus.py): nDCG@10 is flat for k1 >= 1.5 and barely
# moves with b (0.331-0.333); k1 = 0.9 / 1.2 lose 0.003-0.005. 1.5 / 0.75 is also bm25s' default.
DEFAULT_K1 = 1.5
DEFAULT_B = 0.75

# Bumped whenever analyze() changes: an index must be queried with the analyzer that built it.
ANALYZER = "en-porter-1"
_FORMAT = 1

_WORD = re.compile(r"\w+")
_ASCII_WORD = re.compile(r"[a-z]+")

# Function words that carry no topic, plus the "s" and "t" that splitting "it's" and "don't"
# leaves. On NFCorpus this list beats Lucene's 33 English stopwords by 0.005 nDCG@10 and no
# list at all by 0.007.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor of off on once only or other our ours ourselves out over own same
    she should so some such than that the their theirs them themselves then there these they this
    those through to too under until up very was we were what when where which while who whom why
    will with would you your yours yourself yourselves s t""".split()
)


def analyze(text: str) -> list[str]:
    """Index terms of ``text`` in order: lowercased ``\\w+`` words (Unicode), stopwords dropped,
    ASCII words Porter-stemmed (``"The cats ran"`` -> ``["cat", "ran"]``)."""
    return [term for term in map(_term, _WORD.findall(text.lower())) if term]


def term_counts(text: str) -> Counter[str]:
    """``Counter(analyze(text))``, faster: each distinct word is analyzed once."""
    counts: Counter[str] = Counter()
    for word, n in Counter(_WORD.findall(text.lower())).items():
        term = _term(word)
        if term:
            counts[term] += n
    return counts


@functools.lru_cache(maxsize=200_000)
def _term(word: str) -> str:
    """The index term of one lowercase word, or "" for a stopword."""
    if word in STOPWORDS:
        return ""
    return stem(word) if _ASCII_WORD.fullmatch(word) else word


@dataclass(frozen=True)
class GlobalStats:
    """Corpus statistics that make scores comparable: document count, total length, and the
    document frequency of (at least) the terms being scored."""

    n_docs: int
    total_length: int
    doc_freq: Mapping[str, int] = field(default_factory=dict)

    @property
    def avgdl(self) -> float:
        return self.total_length / self.n_docs if self.n_docs else 0.0


def combine_stats(parts: Iterable[GlobalStats]) -> GlobalStats:
    """The statistics of the union of disjoint document sets."""
    n_docs = total_length = 0
    doc_freq: Counter[str] = Counter()
    for part in parts:
        n_docs += part.n_docs
        total_length += part.total_length
        doc_freq.update(part.doc_freq)
    return GlobalStats(n_docs, total_length, dict(doc_freq))


class BM25Index:
    """An inverted index over a list of texts; row ``i`` is ``texts[i]``.

    Postings are CSR arrays: the rows containing term ``t`` are
    ``rows[indptr[t]:indptr[t + 1]]`` (ascending) with term frequencies ``tfs`` alongside.
    """

    def __init__(
        self,
        terms: Sequence[str],
        indptr: np.ndarray,
        rows: np.ndarray,
        tfs: np.ndarray,
        doc_len: np.ndarray,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
    ) -> None:
        self.terms = list(terms)
        self.term_ids = {t: i for i, t in enumerate(self.terms)}
        self.indptr, self.rows, self.tfs, self.doc_len = indptr, rows, tfs, doc_len
        self.k1, self.b = float(k1), float(b)
        self.n_docs = len(doc_len)
        self.total_length = int(doc_len.sum(dtype=np.int64))
        self.avgdl = self.total_length / self.n_docs if self.n_docs else 0.0

    @classmethod
    def build(cls, texts: Iterable[str], k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> BM25Index:
        builder = BM25Builder()
        builder.add(texts)
        return builder.finish(k1, b)

    def stats(self, terms: Iterable[str] | None = None) -> GlobalStats:
        """This index's statistics, with document frequencies of ``terms`` (analyzed terms,
        e.g. ``analyze(query)``; absent ones count 0) or of its whole vocabulary."""
        wanted = self.terms if terms is None else set(terms)
        return GlobalStats(self.n_docs, self.total_length, {t: self._doc_freq(t) for t in wanted})

    def search(
        self,
        query: str,
        k: int,
        allowed_mask: np.ndarray | None = None,
        stats: GlobalStats | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for ``query`` as (row indices int64, scores float32), best first;
        ties go to the lower row. Rows that match no query term are never returned.

        ``allowed_mask`` (bool, one per row) restricts the rows. ``stats`` replaces this
        index's own statistics (see the module docstring); it must hold a document frequency
        for every query term, else ValueError.
        """
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        if allowed_mask is not None and len(allowed_mask) != self.n_docs:
            raise ValueError(f"allowed_mask has {len(allowed_mask)} entries for {self.n_docs} rows")
        n_docs, avgdl = (self.n_docs, self.avgdl) if stats is None else (stats.n_docs, stats.avgdl)
        scores = np.zeros(self.n_docs, dtype=np.float32)
        scored = []
        for term, count in Counter(analyze(query)).items():
            t = self.term_ids.get(term)
            if t is None:
                continue  # no row here contains it
            lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
            df = hi - lo if stats is None else stats.doc_freq.get(term)
            if df is None:
                raise ValueError(f"stats lack the document frequency of term {term!r}")
            rows = self.rows[lo:hi]
            scores[rows] += term_scores(
                self.tfs[lo:hi], self.doc_len[rows], count, df, n_docs, avgdl, self.k1, self.b
            )
            scored.append(rows)
        return top_k(scores, k, allowed_mask, shortest(scored, k))

    def _doc_freq(self, term: str) -> int:
        t = self.term_ids.get(term)
        return 0 if t is None else int(self.indptr[t + 1] - self.indptr[t])

    # --- serialisation -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """A compact, self-describing form (an uncompressed .npz; no pickled objects)."""
        meta = {"format": _FORMAT, "analyzer": ANALYZER, "k1": self.k1, "b": self.b}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            terms=np.frombuffer("\n".join(self.terms).encode(), dtype=np.uint8),
            indptr=self.indptr,
            rows=self.rows,
            tfs=self.tfs,
            doc_len=self.doc_len,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BM25Index:
        """Inverse of :meth:`to_bytes`; ValueError if the data is not such an index or was
        built by another analyzer."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                meta = json.loads(arrays["meta"].tobytes())
                text = arrays["terms"].tobytes().decode()
                parts = {name: arrays[name] for name in ("indptr", "rows", "tfs", "doc_len")}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a serialised BM25 index: {exc}") from exc
        if meta.get("format") != _FORMAT or meta.get("analyzer") != ANALYZER:
            raise ValueError(f"unsupported BM25 index (format {meta.get('format')}, analyzer {meta.get('analyzer')})")
        terms = text.split("\n") if text else []
        indptr, n_postings = parts["indptr"], len(parts["rows"])
        if len(indptr) != len(terms) + 1 or indptr[-1] != n_postings or len(parts["tfs"]) != n_postings:
            raise ValueError("not a serialised BM25 index: postings and vocabulary disagree")
        return cls(terms, **parts, k1=meta["k1"], b=meta["b"])

    def __len__(self) -> int:
        return self.n_docs

    @property
    def nbytes(self) -> int:
        """Memory held, about (arrays, and ~60 bytes a term for the vocabulary)."""
        arrays = self.indptr.nbytes + self.rows.nbytes + self.tfs.nbytes + self.doc_len.nbytes
        return arrays + 60 * len(self.terms)


def term_scores(
    tfs: np.ndarray, doc_len: np.ndarray, count: int, df: int, n_docs: int, avgdl: float, k1: float, b: float
) -> np.ndarray:
    """The float32 BM25 contributions of one query term (``count`` times in the query) to
    the rows with term frequencies ``tfs`` and lengths ``doc_len``, under corpus statistics
    ``df``, ``n_docs``, ``avgdl``.

    Every index (in memory, on demand, tail) scores through this one function: the same
    arithmetic in the same order gives bit-identical scores, so results do not depend on
    where a row is stored.
    """
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    tf = tfs.astype(np.float32)
    # k1 * (1 - b + b * dl / avgdl) + tf, then weight * tf / that: float32 throughout, in
    # place (the products and sums in the order they were once written out of place, so
    # the same bits; a query over a million rows spends its time here).
    norm = doc_len.astype(np.float32)
    norm *= b
    norm /= np.float32(avgdl or 1.0)
    norm += 1.0 - b
    norm *= k1
    norm += tf
    tf *= np.float32(count * idf * (k1 + 1.0))
    tf /= norm
    return tf


def top_k(
    scores: np.ndarray, k: int, allowed_mask: np.ndarray | None = None, sample: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows of dense ``scores`` with a positive score (and ``allowed_mask``
    set) as (rows int64, scores float32), best first, ties to the lower row.

    ``sample``: distinct rows whose scores bound the answer from below (e.g. a rare query
    term's postings). Where ``k`` of them are allowed with a positive score, no row scoring
    under their k-th best can be among the ``k`` best, so only rows at or above it are
    candidates: over a million rows ~0.4 ms, against ~3 ms to sort out every positive row.
    """
    allowed = None if allowed_mask is None else np.asarray(allowed_mask, dtype=bool)
    floor = _floor(scores, k, allowed, sample) if sample is not None else None
    if floor is not None:
        candidates = np.flatnonzero(scores >= floor)
        if allowed is not None:
            candidates = candidates[allowed[candidates]]
    else:
        hit = scores > 0
        if allowed is not None:
            hit &= allowed
        candidates = np.flatnonzero(hit)
    if 0 < k < len(candidates):
        # Keep every row that ties with the k-th score so the tie-break below is by row.
        kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))[:k]
    best = candidates[order]
    return best.astype(np.int64), scores[best]


def shortest(row_lists: Iterable[np.ndarray], k: int) -> np.ndarray | None:
    """The shortest of ``row_lists`` (a query's terms' postings) with at least ``k`` rows:
    :func:`top_k`'s ``sample``. The rows of the rarest term, whose idf is the highest, tend
    to score near the top."""
    return min((rows for rows in row_lists if len(rows) >= k), key=len, default=None)


def _floor(scores: np.ndarray, k: int, allowed: np.ndarray | None, sample: np.ndarray) -> np.float32 | None:
    """The k-th best positive score among the allowed rows of ``sample`` (distinct rows);
    None where fewer than ``k`` of them have one."""
    if k <= 0 or len(sample) < k:
        return None
    found = scores[sample]
    keep = found > 0
    if allowed is not None:
        keep &= allowed[sample]
    found = found[keep]
    if len(found) < k:
        return None
    return np.partition(found, len(found) - k)[len(found) - k]


def _compact(values: np.ndarray) -> np.ndarray:
    """The same non-negative integers in the smallest unsigned dtype that holds them."""
    top = int(values.max()) if len(values) else 0
    return values.astype(np.min_scalar_type(top))


class BM25Builder:
    """Builds a :class:`BM25Index` from texts added in row order, a batch at a time (a
    streamed segment build adds each partition's texts as it writes them). Holds the
    postings as 32-bit integers, 12 bytes a posting (a segment's rows, its vocabulary
    and a term's count in one text are below 2**32), and the vocabulary."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        # Postings in order of arrival (a list would cost 8 bytes an entry more).
        self.term_ids, self.rows, self.tfs, self.lengths = array("I"), array("I"), array("I"), array("I")

    @property
    def nbytes(self) -> int:
        return 4 * (len(self.term_ids) * 3 + len(self.lengths)) + 100 * len(self.vocabulary)

    @property
    def postings_bytes(self) -> int:
        """The bytes of the postings held (not the vocabulary nor the lengths)."""
        return 12 * len(self.term_ids)

    def take_postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The postings added since the last call, in order of arrival: term ids (in order
        of the terms' first appearance: :attr:`vocabulary`'s values), rows and term
        frequencies, as uint32 arrays over the builder's own buffers (no copy), which it
        lets go; the vocabulary and the rows' lengths stay. For a writer that spills them
        (:mod:`vectordb.bm25_spill`)."""
        out = tuple(np.frombuffer(a, dtype=np.uint32) for a in (self.term_ids, self.rows, self.tfs))
        self.term_ids, self.rows, self.tfs = array("I"), array("I"), array("I")
        return out

    def add(self, texts: Iterable[str]) -> None:
        vocabulary, term_ids, rows, tfs, lengths = self.vocabulary, self.term_ids, self.rows, self.tfs, self.lengths
        for row, text in enumerate(texts, len(lengths)):
            counts = term_counts(text)
            lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                term_ids.append(vocabulary.setdefault(term, len(vocabulary)))
                rows.append(row)
                tfs.append(tf)

    def finish(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> BM25Index:
        """The index; the builder is emptied on the way (its postings are sorted into it
        one array at a time, so the peak is ~32 bytes a posting, not twice the postings)."""
        vocabulary = self.vocabulary
        # Sort postings by term (stable, so rows stay ascending within a term); the
        # vocabulary is sorted too, which makes the serialised form deterministic.
        terms = sorted(vocabulary)
        rank = np.empty(len(terms), dtype=np.uint32)
        rank[[vocabulary[t] for t in terms]] = np.arange(len(terms), dtype=np.uint32)
        term_arr = rank[np.frombuffer(self.term_ids, dtype=np.uint32)]
        self.term_ids = array("I")
        order = np.argsort(term_arr, kind="stable")
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_arr, minlength=len(terms)), out=indptr[1:])
        del term_arr
        rows = _compact(np.frombuffer(self.rows, dtype=np.uint32)[order])
        self.rows = array("I")
        tfs = _compact(np.frombuffer(self.tfs, dtype=np.uint32)[order])
        self.tfs = array("I")
        del order
        lengths = _compact(np.frombuffer(self.lengths, dtype=np.uint32))
        self.lengths, self.vocabulary = array("I"), {}
        return BM25Index(terms, _compact(indptr), rows, tfs, lengths, k1, b)
