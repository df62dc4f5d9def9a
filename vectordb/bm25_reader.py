"""Fetching what a BM25 query needs of the segments' ``bm25.bin``, and nothing else.

For the query's terms over a list of segments, three rounds of ranged GETs, each round's
in parallel across segments and terms: the heads (the first
:data:`~vectordb.bm25_blocks.HEAD_BYTES`; a small segment's whole file), the dictionary
blocks that would hold the terms, the postings lists of the terms found. A segment with
a hashed dictionary (format 3) lets a cold query fetch its terms' slots beside the head
(:meth:`BM25Reader.prefetch`: where a slot is follows from the segment's row count,
which the manifest gives): two rounds. Heads,
dictionary blocks and postings are immutable, so their decoded forms are memoised here
(byte-bounded, single-flight) and a warm query fetches nothing; their raw bytes leave the
RAM cache once decoded (the decoded forms hold them or copies of them).

What a query gets per segment, a :class:`TermPostings`, answers ``stats`` and ``search``
as the segment's whole in-memory index would. A segment written before this format
(``bm25.bin`` an ``.npz``) is read whole, once, as that :class:`~vectordb.bm25.BM25Index`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TypeVar

import numpy as np

from storage.base import ObjectStore
from vectordb.bm25 import BM25Index, GlobalStats, analyze, shortest, term_scores, top_k
from vectordb.bm25_blocks import (
    HEAD_BYTES,
    DictBlock,
    Entry,
    Head,
    Postings,
    decode_postings,
    hashed_slots,
    is_blocked,
    moved,
    slot_of,
    slot_range,
)
from vectordb.errors import VectorDBError
from vectordb.memo import Memo

K = TypeVar("K")
V = TypeVar("V")


class BM25Reader:
    """Per-query views of segments' BM25 indexes for one store. ``max_bytes`` bounds the
    memoised postings; heads and dictionary blocks get a quarter of it each. Old segments'
    whole indexes are kept by count, as before this format."""

    def __init__(self, store: ObjectStore, max_bytes: int) -> None:
        self.store = store
        self._heads = Memo(1 << 12, max_bytes // 4, _weight)
        self._blocks = Memo(1 << 16, max_bytes // 4, _weight)
        self._postings = Memo(1 << 20, max_bytes, _weight)
        self._whole = Memo(256)
        self._slots = Memo(1 << 14, max_bytes // 16, len)  # (key, slots, i) -> a slot's bytes read ahead
        self._held = Memo(1 << 12)  # keys whose whole file the store's byte cache holds

    def fetch(
        self, keys: Sequence[str], terms: Iterable[str], pool: Executor | None = None
    ) -> list[BM25Index | TermPostings]:
        """For each ``bm25.bin`` key, what queries of ``terms`` (analyzed terms) need: a
        :class:`TermPostings` (or an old segment's whole index). Each round's reads run in
        ``pool`` (one at a time without one; its tasks never wait for other tasks of it).
        Raises ObjectNotFound for a missing object, VectorDBError (or ValueError: old
        format) for a corrupt one."""
        terms = sorted(set(terms))
        if all(key in self._held for key in keys):
            pool = None  # slices of bytes in memory: a hand-off to a thread costs more
        heads = self._each(pool, self._heads, list(keys), self._load_head)
        head_of: dict[str, Head | BM25Index] = dict(zip(keys, heads))
        old = [key for key, head in head_of.items() if head is _OLD]
        loaded = self._each(pool, self._whole, old, lambda key: BM25Index.from_bytes(self.store.get(key)))
        head_of.update(zip(old, loaded))
        located = {  # (key, term) -> its dictionary block, in the blocked segments
            (key, t): b
            for key, head in head_of.items()
            if isinstance(head, Head)
            for t in terms
            if (b := head.block_of(t)) is not None
        }
        needed = sorted({(key, b) for (key, _), b in located.items()})
        blocks = dict(zip(needed, self._each(pool, self._blocks, needed, lambda kb: self._load_block(head_of[kb[0]], *kb))))
        entries = {kt: blocks[kt[0], b].find(kt[1]) for kt, b in located.items()}
        found = [kt for kt, entry in entries.items() if entry is not None]
        lists = dict(zip(found, self._each(pool, self._postings, found,
                                           lambda kt: self._load_list(head_of[kt[0]], *kt, entries[kt]))))
        out: list[BM25Index | TermPostings] = []
        for key, head in head_of.items():
            if isinstance(head, BM25Index):
                out.append(head)
                continue
            doc_freq = {t: (e.df if (e := entries.get((key, t))) else 0) for t in terms}
            out.append(TermPostings(head, doc_freq, {t: lists[key, t] for t in terms if (key, t) in lists}))
        return out

    def hold(self, key: str) -> None:
        """Note that the store's byte cache holds all of ``key`` (the warm hint put it
        there): its reads are then made on the calling thread. At 1M rows, decoding a
        query's postings on the pool's threads took ~1.7 ms at the median, on the caller's
        ~0.5 ms. Only a hint: were the file evicted, the reads would reach the store one
        after the other."""
        self._held.get(key, lambda: True)

    def prefetch_head(self, key: str) -> None:
        """Load the head of ``key`` (what a query of any terms reads first), memoised."""
        self._heads.get(key, lambda: self._load_head(key))

    def prefetch(self, key: str, rows: int, terms: Iterable[str], pool: Executor) -> None:
        """Start loading, on ``pool``, what a query of ``terms`` reads first of ``key``, a
        segment of ``rows`` rows: its head, and (if the segment is big enough to have a
        hashed dictionary, :func:`~vectordb.bm25_blocks.hashed_slots`) the terms' slots at
        once, before the head says the format. Slots of an older segment's file are read
        for nothing (a few KiB) and never used: the format's slots are only taken once its
        head has confirmed them (:meth:`_load_block`)."""
        slots = hashed_slots(rows)
        if slots is not None and key not in self._held and self._heads.peek(key) is None:
            for i in sorted({slot_of(t, slots) for t in terms}):
                if self._slots.peek((key, slots, i)) is None:
                    pool.submit(self._slots.get, (key, slots, i), lambda i=i: self._get(key, *slot_range(slots, i)))
        pool.submit(self.prefetch_head, key)

    @staticmethod
    def _each(pool: Executor | None, memo: Memo, keys: list[K], load: Callable[[K], V]) -> list[V]:
        """``memo``'s values of ``keys``; those missing are loaded in parallel (one round)."""
        values = memo.peek_many(keys)
        missing = [i for i, value in enumerate(values) if value is None]
        if pool is None or len(missing) == 1:
            for i in missing:
                values[i] = memo.get(keys[i], lambda i=i: load(keys[i]))
        elif missing:
            loaded = pool.map(lambda i: memo.get(keys[i], lambda: load(keys[i])), missing)
            for i, value in zip(missing, loaded):
                values[i] = value
        return values

    def _load_head(self, key: str) -> Head | _OldFormat:
        data = self.store.get_range(key, 0, HEAD_BYTES)
        self._discard(key, 0, HEAD_BYTES)
        if not is_blocked(data):  # an older segment's .npz: read it whole
            if len(data) < HEAD_BYTES:  # it is all here
                self._whole.get(key, lambda: BM25Index.from_bytes(data))
            return _OLD
        need = Head.head_length(data)
        if need > len(data):  # a vocabulary whose block index outgrew HEAD_BYTES
            data += self._get(key, len(data), need - len(data))
        return Head.from_bytes(data)

    def _load_block(self, head: Head, key: str, i: int) -> DictBlock:
        start, length = head.block_range(i)
        data = head.local(start, length)
        if data is None and head.slots is not None:  # read ahead by prefetch, or in flight there
            data = self._slots.get((key, head.slots, i), lambda: self._get(key, start, length))
        elif data is None:
            data = self._get(key, start, length)
        if head.slots is not None and (elsewhere := moved(data)) is not None:
            data = self._get(key, *elsewhere)  # a slot whose terms did not fit
        return DictBlock(data, head.postings_at)

    def _load_list(self, head: Head, key: str, term: str, entry: Entry) -> Postings:
        data = head.local(entry.start, entry.length)
        postings = decode_postings(self._get(key, entry.start, entry.length) if data is None else data, entry)
        if len(postings.rows) and int(postings.rows[-1]) >= head.n_docs:
            raise VectorDBError(f"corrupt segment: bm25.bin postings of {term!r} name a row past the end")
        return postings

    def _get(self, key: str, start: int, length: int) -> bytes:
        data = self.store.get_range(key, start, length)
        self._discard(key, start, length)
        return data

    def _discard(self, key: str, start: int, length: int) -> None:
        """Drop a decoded range from the RAM cache: the memo holds it (or what it became)."""
        if hasattr(self.store, "discard"):
            self.store.discard(key, start, length)


def _weight(value) -> int:
    return value.nbytes


class _OldFormat:
    """What the head memo holds for a segment whose ``bm25.bin`` predates this format."""

    nbytes = 0


_OLD = _OldFormat()


class TermPostings:
    """What a query fetched of one segment: its statistics, the document frequency of each
    query term and those terms' postings. Answers ``stats`` and ``search`` as the segment's
    whole :class:`BM25Index` would, with the same float32 scores."""

    def __init__(self, head: Head, doc_freq: Mapping[str, int], postings: Mapping[str, Postings]) -> None:
        self.n_docs, self.total_length = head.n_docs, head.total_length
        self.k1, self.b = head.k1, head.b
        self.avgdl = self.total_length / self.n_docs if self.n_docs else 0.0
        self.doc_freq = dict(doc_freq)
        self.postings = dict(postings)

    def __len__(self) -> int:
        return self.n_docs

    def stats(self, terms: Iterable[str]) -> GlobalStats:
        """This segment's statistics with the document frequencies of ``terms`` (each must
        be one the query fetched; KeyError otherwise)."""
        return GlobalStats(self.n_docs, self.total_length, {t: self.doc_freq[t] for t in set(terms)})

    def search(
        self, query: str, k: int, allowed_mask: np.ndarray | None = None, stats: GlobalStats | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`BM25Index.search`; ``query``'s terms must be those fetched."""
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        if allowed_mask is not None and len(allowed_mask) != self.n_docs:
            raise ValueError(f"allowed_mask has {len(allowed_mask)} entries for {self.n_docs} rows")
        n_docs, avgdl = (self.n_docs, self.avgdl) if stats is None else (stats.n_docs, stats.avgdl)
        scores = np.zeros(self.n_docs, dtype=np.float32)
        scored = []
        for term, count in Counter(analyze(query)).items():
            if not self.doc_freq[term]:
                continue  # no row here contains it
            postings = self.postings[term]
            df = len(postings.rows) if stats is None else stats.doc_freq.get(term)
            if df is None:
                raise ValueError(f"stats lack the document frequency of term {term!r}")
            part = term_scores(postings.tfs, postings.lengths, count, df, n_docs, avgdl, self.k1, self.b)
            if scored:
                scores[postings.rows] += part
            else:  # 0 + x is x: the same bits without reading the rows first
                scores[postings.rows] = part
            scored.append(postings.rows)
        return top_k(scores, k, allowed_mask, shortest(scored, k))
