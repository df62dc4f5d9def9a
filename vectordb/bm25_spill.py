"""A segment's ``bm25.bin`` written in bounded memory: postings spilled to disk in sorted
runs, then merged into the file a few million postings at a time.

:class:`~vectordb.bm25.BM25Builder` holds every posting (12 bytes) until the end, and
:func:`vectordb.bm25_blocks.encode` makes the whole file in memory, so a text-heavy
segment's build grew with its postings (~100 a 120-word chunk: 1.2 GB of them at 1M
chunks, ~32 bytes a posting while sorting) past ``build_memory_bytes``. Here the
postings held stay under ``max_bytes``: past that they are sorted into a run on disk in
the order the hashed format (format 3) lays them out, by dictionary slot, then term,
then row (rows come in ascending order, so a stable sort keeps them so). The merge takes
a range of slots at a time from every run (each run's piece of it is contiguous), orders
it by term (stable: the runs' rows follow each other), encodes those terms' lists and
appends them to a postings file; the head, slots and overflow blocks, which need every
list's offset, are written in front of it at the end. What stays in memory grows with
the vocabulary (the builder's dictionary, a slot and a count a term) and with the rows
(4 bytes each), not with the postings. The file is byte for byte what
:func:`~vectordb.bm25_blocks.encode` makes of the same texts. A segment under
:data:`~vectordb.bm25_blocks.HASHED_MIN_ROWS` rows (sorted blocks, format 2) is small and
is encoded in memory, as are postings that never outgrow ``max_bytes``.
"""

from __future__ import annotations

import itertools
import shutil
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectordb import bm25, bm25_blocks

_MERGE_POSTINGS = 1 << 22  # postings merged and encoded at once: ~100 MB of scratch


@dataclass(frozen=True)
class _Run:
    path: Path  # term ids, rows, term frequencies: uint32 each, one array after the other
    postings: int
    bounds: np.ndarray  # int64, slots + 1: where each slot's postings start in the run


class PostingsWriter:
    """BM25 over a segment's texts added in row order, spilling postings past
    ``max_bytes`` to runs in ``workdir``; :meth:`write` makes ``bm25.bin``. ``rows``: the
    segment's row count (it decides the layout), which the texts added must make up."""

    def __init__(self, rows: int, workdir: Path, max_bytes: int,
                 k1: float = bm25.DEFAULT_K1, b: float = bm25.DEFAULT_B) -> None:
        self.rows, self.workdir, self.max_bytes = rows, workdir, max(max_bytes, 1 << 20)
        self.k1, self.b = k1, b
        self.slots = bm25_blocks.hashed_slots(rows)
        self.builder = bm25.BM25Builder()
        self.runs: list[_Run] = []
        self._names: list[str] = []  # term id -> term, for the terms the runs have met
        self._slot = np.zeros(0, np.int64)  # term id -> its dictionary slot
        self._df = np.zeros(0, np.int64)  # term id -> its postings spilled so far

    def add(self, texts: Iterable[str]) -> None:
        self.builder.add(texts)
        if self.slots is not None and self.builder.postings_bytes >= self.max_bytes:
            self._spill()

    def write(self, path: Path) -> None:
        """Write ``bm25.bin`` to ``path``; the runs are removed, the builder emptied."""
        if len(self.builder.lengths) != self.rows:
            raise ValueError(f"BM25 of {len(self.builder.lengths)} rows for a segment of {self.rows}")
        if not self.runs:
            path.write_bytes(bm25_blocks.encode(self.builder.finish(self.k1, self.b)))
            return
        self._spill()
        try:
            self._merge(path)
        finally:
            for run in self.runs:
                run.path.unlink(missing_ok=True)
            self.runs = []

    def _terms(self) -> None:
        """Extend the id -> term, slot and count arrays to the builder's vocabulary."""
        vocabulary = self.builder.vocabulary
        if len(vocabulary) == len(self._names):
            return
        fresh = list(itertools.islice(vocabulary, len(self._names), None))  # ids in order of first appearance
        self._names += fresh
        slots = np.fromiter((zlib.crc32(t.encode()) % self.slots for t in fresh), np.int64, len(fresh))
        self._slot = np.concatenate([self._slot, slots])
        self._df = np.concatenate([self._df, np.zeros(len(fresh), np.int64)])

    def _order(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` (term ids) in the file's order: by slot, then term."""
        by_term = np.array(sorted(ids.tolist(), key=self._names.__getitem__), np.int64)
        return by_term[np.argsort(self._slot[by_term], kind="stable")]

    def _spill(self) -> None:
        terms, rows, tfs = self.builder.take_postings()
        if not len(terms):
            return
        self._terms()
        counts = np.bincount(terms, minlength=len(self._names))
        self._df += counts
        rank = np.empty(len(self._names), np.int64)
        present = self._order(np.flatnonzero(counts))
        rank[present] = np.arange(len(present))
        order = np.argsort(rank[terms], kind="stable")
        path = self.workdir / f"bm25-run-{len(self.runs)}.spill"
        with open(path, "wb") as out:
            for values in (terms, rows, tfs):
                values[order].tofile(out)
        bounds = np.searchsorted(self._slot[terms[order]], np.arange(self.slots + 1))
        self.runs.append(_Run(path, len(terms), bounds.astype(np.int64)))

    def _merge(self, path: Path) -> None:
        slots, runs = self.slots, self.runs
        final = self._order(np.arange(len(self._names)))
        rank = np.empty(len(final), np.int64)
        rank[final] = np.arange(len(final))
        df, slot = self._df[final], self._slot[final]
        term_bounds = np.searchsorted(slot, np.arange(slots + 1))
        per_slot = np.zeros(slots + 1, np.int64)
        for run in runs:
            per_slot[1:] += np.diff(run.bounds)
        cumulative = np.cumsum(per_slot)
        lengths = np.frombuffer(self.builder.lengths, dtype=np.uint32)
        maps = [np.memmap(run.path, np.uint32, "r", shape=(3, run.postings)) for run in runs]
        postings_path = self.workdir / "bm25-postings.spill"
        sizes, widths = [np.zeros(1, np.int64)], []
        with open(postings_path, "wb") as out:
            lo = 0
            while lo < slots:
                hi = int(np.searchsorted(cumulative, cumulative[lo] + _MERGE_POSTINGS, side="right")) - 1
                hi = min(max(hi, lo + 1), slots)
                t0, t1 = int(term_bounds[lo]), int(term_bounds[hi])
                if t1 > t0:
                    piece = np.concatenate([m[:, run.bounds[lo]:run.bounds[hi]] for m, run in zip(maps, runs)], axis=1)
                    order = np.argsort(rank[piece[0]], kind="stable")  # runs in row order: rows stay ascending
                    got = piece[1][order].astype(np.int64)
                    blob, size, width = bm25_blocks.encode_lists(df[t0:t1], got, piece[2][order], lengths[got])
                    out.write(blob)
                    sizes.append(size)
                    widths.append(width)
                    del piece, order, got, blob
                lo = hi
        del maps
        offsets = np.cumsum(np.concatenate(sizes))
        width = np.concatenate(widths) if widths else np.zeros(0, np.uint8)
        meta = bm25_blocks.head_meta(self.k1, self.b, len(lengths), int(lengths.sum(dtype=np.int64)),
                                     bm25_blocks.HASHED_FORMAT, len(final), int(df.sum()),
                                     slots=slots, slot_bytes=bm25_blocks.SLOT_BYTES)
        front = bm25_blocks.hashed_front([self._names[i].encode() for i in final.tolist()], df, slot, offsets, width,
                                         slots, meta)
        try:
            with open(path, "wb") as out, open(postings_path, "rb") as postings:
                out.write(front)
                del front
                shutil.copyfileobj(postings, out, 8 << 20)
        finally:
            postings_path.unlink(missing_ok=True)
        self.builder = bm25.BM25Builder()
