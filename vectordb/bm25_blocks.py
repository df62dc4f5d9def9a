"""A segment's BM25 index laid out for ranged reads: a head, a term dictionary in blocks,
and postings lists that a query fetches per term.

The in-memory :class:`~vectordb.bm25.BM25Index` (``bm25.bin`` of older segments: one
``.npz`` read whole) costs a query the whole index, 77 MB at 200,000 chunks of 80-160
words (bench/bm25_on_demand.py), for the postings of three words. This format lets a cold query read a 64 KiB head, one dictionary
block per query term and the postings of those terms: three rounds of requests (each
round's requests in parallel), their bytes following the query's terms, not the segment.

``bm25.bin`` (magic ``VDBBM25B``), little-endian throughout::

    head        magic, uint32 head_len, uint32 meta_len, uint64 postings_at,
                meta (JSON: format, analyzer, k1, b, docs, length, terms, blocks, postings;
                padded to 8 bytes), uint64 block offsets (blocks + 1, absolute),
                block separators ("\\n"-joined UTF-8)
    dictionary  blocks of consecutive sorted terms, each: uint32 count, uint32 0,
                uint64 postings offsets (count + 1, from postings_at), uint32 df (count),
                uint8 widths (count), the terms ("\\n"-joined UTF-8)
    postings    per term, in term order: gaps, term frequencies, document lengths
                (df values each), then uint32 exceptions

A reader fetches the first :data:`HEAD_BYTES` (the head, and for a small segment all of
it); block ``i`` holds the terms from separator ``i`` (a shortest prefix of its first term
that sorts after the previous block's last) up to separator ``i + 1``. Terms never contain
``"\\n"`` (the analyzer yields ``\\w+`` words).

Segments of :data:`HASHED_MIN_ROWS` rows or more are written in format 3, whose dictionary
is found without the head, so a cold query reads its terms' dictionary entries in the
same round as the head (two rounds before the postings become one)::

    head        as above without the block index (meta adds slots, slot_bytes), zero-padded
                to HEAD_BYTES
    slots       :func:`hashed_slots` (a function of the row count) slots of SLOT_BYTES: slot
                ``crc32(term) % slots`` holds the block of the terms that hash to it (its
                second uint32 is the block's length; zero-padded), or, when the block does
                not fit, uint32 0xFFFFFFFF, 0, uint64 offset and length of it further on
    overflow    the blocks that did not fit in their slots
    postings    per slot, its terms' lists in term order (each block's lists contiguous)

A postings list stores the rows (as gaps: first row + 1, then the difference to the
previous row), the term's frequency in each and each row's length in terms, so scoring
needs no whole-segment norms. All three are >= 1, which frees 0 as an escape: each column
is stored in 1, 2 or 4 bytes (``widths``: 2 bits per column, gaps lowest), whichever is
smallest counting 4 bytes for each value that does not fit, stored as 0 and listed in
the exceptions (gaps' first, in posting order, then frequencies', then lengths'). A common
term's list costs ~3 bytes per posting: the gaps of a term in every tenth row fit a byte
(3.2 bytes a posting over a whole such segment; the ``.npz`` took 5).
Scores are exact: the same integers reach :func:`vectordb.bm25.term_scores` as from an
in-memory index.
"""

from __future__ import annotations

import json
import math
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vectordb import bm25
from vectordb.bm25 import BM25Index
from vectordb.errors import VectorDBError

MAGIC = b"VDBBM25B"
FORMAT = 2  # sorted dictionary blocks, located by the head's separators
HASHED_FORMAT = 3  # the dictionary in slots found by hashing the term (see hashed_slots)
# What a reader fetches first. It holds the head of any segment whose vocabulary keeps
# the block index under it (the writer sizes blocks so that ~2,000 do), and all of a
# small segment, which then needs no other request.
HEAD_BYTES = 64 * 1024
_FIXED = 24  # magic, head_len, meta_len, postings_at
_MIN_BLOCK_BYTES = 4 * 1024
_MAX_BLOCKS = 2048
_CHUNK_POSTINGS = 1 << 22  # postings encoded at once: bounds the writer's scratch memory
# The hashed layout: segments of at least this many rows; each slot this many bytes.
HASHED_MIN_ROWS = 20_000
SLOT_BYTES = 4096
_MOVED = 0xFFFFFFFF  # a slot's count field when its block lives in the overflow area


def hashed_slots(rows: int) -> int | None:
    """How many dictionary slots the ``bm25.bin`` of a segment of ``rows`` rows has (None:
    it has sorted blocks, format 2). A function of the row count alone, which the manifest
    gives, so a cold reader fetches the slots of a query's terms beside the head, before it
    has seen it (:meth:`vectordb.bm25_reader.BM25Reader.prefetch`). Sized for ~100 terms a
    slot at a Heaps'-law vocabulary (40 * tokens ** 0.5) of 120-word chunks: ~4,400 slots
    at 1M rows; a slot whose terms do not fit points to its block further on (one more
    round trip for its terms)."""
    if rows < HASHED_MIN_ROWS:
        return None
    return math.ceil(0.4 * math.sqrt(120 * rows))


def slot_of(term: str, slots: int) -> int:
    """The dictionary slot of ``term`` in a hashed ``bm25.bin`` of ``slots`` slots."""
    return zlib.crc32(term.encode()) % slots


def slot_range(slots: int, i: int) -> tuple[int, int]:
    """(start, length) of slot ``i``: the slots follow the head, padded to HEAD_BYTES."""
    if not 0 <= i < slots:
        raise IndexError(i)
    return HEAD_BYTES + i * SLOT_BYTES, SLOT_BYTES


def is_blocked(data: bytes) -> bool:
    """Whether ``data`` (at least the first 8 bytes of a ``bm25.bin``) is this format; the
    older one is an ``.npz`` (a zip: ``PK``)."""
    return data[:8] == MAGIC


# --- writing ---------------------------------------------------------------------------------


def encode(index: BM25Index, block_bytes: int | None = None) -> bytes:
    """``index`` in the blocked format (deterministic: the same index, the same bytes):
    hashed slots (format 3) for a segment of :data:`HASHED_MIN_ROWS` rows or more, else
    sorted blocks (format 2). ``block_bytes``: sorted blocks of that size (default: 4 KiB,
    or bigger so that about :data:`_MAX_BLOCKS` blocks hold the whole vocabulary)."""
    slots = hashed_slots(index.n_docs) if block_bytes is None else None
    if slots is not None:
        return _encode_hashed(index, slots)
    indptr = index.indptr.astype(np.int64)
    df = np.diff(indptr)
    offsets, width, lists = _postings(index, np.arange(len(df)))

    terms = [t.encode() for t in index.terms]
    entry = np.array([len(t) for t in terms], np.int64) + 14  # offset, df, width, "\n"
    target = block_bytes or max(_MIN_BLOCK_BYTES, int(entry.sum()) // _MAX_BLOCKS + 1)
    ends = _block_ends(np.cumsum(entry), target)
    blocks, separators, lo = [], [], 0
    for hi in ends.tolist():
        blocks.append(_block(terms, df, offsets, width, lo, hi, 0))
        separators.append(_separator(terms[lo - 1] if lo else b"", terms[lo]))
        lo = hi

    meta = head_meta(index.k1, index.b, index.n_docs, index.total_length, FORMAT, len(terms), int(indptr[-1]),
                 blocks=len(blocks))
    sep_bytes = b"\n".join(separators)
    head_len = _FIXED + len(meta) + 8 * (len(blocks) + 1) + len(sep_bytes)
    block_offsets = head_len + np.cumsum([0] + [len(b) for b in blocks], dtype=np.int64)
    postings_at = int(block_offsets[-1])
    head = (
        MAGIC
        + np.array([head_len, len(meta)], np.uint32).tobytes()
        + np.array([postings_at], np.uint64).tobytes()
        + meta
        + block_offsets.astype(np.uint64).tobytes()
        + sep_bytes
    )
    return b"".join([head, *blocks, *lists])


def _encode_hashed(index: BM25Index, slots: int) -> bytes:
    """Format 3: the head padded to :data:`HEAD_BYTES`; ``slots`` slots of
    :data:`SLOT_BYTES`, slot ``i`` holding the block of the terms that hash to it (in
    term order; zero-padded) or, when that block is bigger, ``_MOVED``, 0 and the uint64
    offset and length of the block in the overflow area that follows the slots; then the
    postings, slot by slot, so that each block's lists are contiguous."""
    df = np.diff(index.indptr.astype(np.int64))
    terms = [t.encode() for t in index.terms]
    slot = np.fromiter((zlib.crc32(t) % slots for t in terms), np.int64, len(terms))
    order = np.argsort(slot, kind="stable")  # by slot, in term order within one
    offsets, width, lists = _postings(index, order)
    meta = head_meta(index.k1, index.b, index.n_docs, index.total_length, HASHED_FORMAT, len(terms), int(df.sum()),
                 slots=slots, slot_bytes=SLOT_BYTES)
    front = hashed_front([terms[i] for i in order.tolist()], df[order], slot[order], offsets, width, slots, meta)
    return b"".join([front, *lists])


def hashed_front(terms: list[bytes], df: np.ndarray, slot: np.ndarray, offsets: np.ndarray, width: np.ndarray,
                 slots: int, meta: bytes) -> bytes:
    """What precedes the postings in format 3: head, slots and overflow blocks, for
    ``terms`` in (slot, term) order with their ``df``, ``slot``, postings ``offsets``
    (terms + 1, from the first list) and ``width`` bytes."""
    bounds = np.searchsorted(slot, np.arange(slots + 1))
    area, moved = HEAD_BYTES + slots * SLOT_BYTES, []
    out_slots = []
    for i in range(slots):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        block = _block(terms, df, offsets, width, lo, hi, None)
        if len(block) > SLOT_BYTES:
            out_slots.append(np.array([_MOVED, 0], np.uint32).tobytes()
                             + np.array([area, len(block)], np.uint64).tobytes())
            moved.append(block)
            area += len(block)
        else:
            out_slots.append(block)
    postings_at = area
    head_len = _FIXED + len(meta)
    if head_len > HEAD_BYTES:
        raise ValueError("bm25.bin head outgrew HEAD_BYTES")  # meta is a few hundred bytes
    head = (MAGIC + np.array([head_len, len(meta)], np.uint32).tobytes()
            + np.array([postings_at], np.uint64).tobytes() + meta)
    padded = [head.ljust(HEAD_BYTES, b"\0"), *(b.ljust(SLOT_BYTES, b"\0") for b in out_slots)]
    return b"".join([*padded, *moved])


def head_meta(k1: float, b: float, docs: int, length: int, fmt: int, terms: int, postings: int, **layout) -> bytes:
    meta = json.dumps(
        {"format": fmt, "analyzer": bm25.ANALYZER, "k1": k1, "b": b, "docs": docs,
         "length": length, "terms": terms, "postings": postings, **layout},
        sort_keys=True,
    ).encode()
    return meta + b" " * (-len(meta) % 8)


def _block(terms: list[bytes], df: np.ndarray, offsets: np.ndarray, width: np.ndarray, lo: int, hi: int,
           length) -> bytes:
    """The dictionary block of terms ``[lo, hi)`` (of ``terms``, with their ``df``, postings
    ``offsets`` and ``width`` in the same order): uint32 count, uint32 its own length
    (format 3; 0 in format 2), offsets, df, widths, the terms."""
    body = (offsets[lo : hi + 1].astype(np.uint64).tobytes() + df[lo:hi].astype(np.uint32).tobytes()
            + width[lo:hi].tobytes() + b"\n".join(terms[lo:hi]))
    size = 8 + len(body) if length is None else length
    return np.array([hi - lo, size], np.uint32).tobytes() + body


def _postings(index: BM25Index, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
    """The postings lists of the terms in ``order``, one after the other: each list's offset
    from the first (terms + 1, in that order), its widths byte, the blobs."""
    indptr = index.indptr.astype(np.int64)
    df = np.diff(indptr)[order]
    starts = indptr[:-1][order]
    ordered_ptr = np.zeros(len(order) + 1, np.int64)
    np.cumsum(df, out=ordered_ptr[1:])
    lists, sizes, widths = [], [np.zeros(1, np.int64)], []
    for lo, hi in _term_chunks(ordered_ptr):
        count = df[lo:hi]
        # The postings of terms order[lo:hi], gathered (each term's are contiguous in the index).
        at = np.repeat(starts[lo:hi] - (ordered_ptr[lo:hi] - ordered_ptr[lo]), count) + np.arange(int(count.sum()))
        rows = index.rows[at].astype(np.int64)
        blob, size, width = encode_lists(count, rows, index.tfs[at], index.doc_len[rows])
        lists.append(blob)
        sizes.append(size)
        widths.append(width)
    offsets = np.cumsum(np.concatenate(sizes))
    width = np.concatenate(widths) if widths else np.zeros(0, np.uint8)
    return offsets, width, lists


def _term_chunks(indptr: np.ndarray) -> Iterable[tuple[int, int]]:
    """Consecutive term ranges of about :data:`_CHUNK_POSTINGS` postings (at least one term)."""
    n, lo = len(indptr) - 1, 0
    while lo < n:
        hi = int(np.searchsorted(indptr, indptr[lo] + _CHUNK_POSTINGS, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def _block_ends(cumulative: np.ndarray, target: int) -> np.ndarray:
    """The term index after each block: blocks of about ``target`` dictionary bytes."""
    if not len(cumulative):
        return np.zeros(0, np.int64)
    block = (cumulative - 1) // target
    ends = np.flatnonzero(np.diff(block)) + 1
    return np.append(ends, len(cumulative))


def _separator(previous: bytes, first: bytes) -> bytes:
    """The shortest prefix of ``first`` that sorts after ``previous`` (``previous`` < ``first``).
    Block separators are compared with query terms as ``str``; UTF-8 bytes sort the same."""
    common = 0
    for x, y in zip(previous, first):
        if x != y:
            break
        common += 1
    cut = common + 1
    while cut < len(first) and (first[cut] & 0xC0) == 0x80:
        cut += 1  # not inside a UTF-8 sequence
    return first[:cut]


def encode_lists(df: np.ndarray, rows: np.ndarray, tfs: np.ndarray, lengths: np.ndarray):
    """The postings lists of consecutive terms (``df`` postings each, term-major) as one
    blob, with each list's size and widths byte. Vectorised: a Python loop per term would
    cost seconds on a vocabulary of millions."""
    n_terms = len(df)
    term = np.repeat(np.arange(n_terms), df)
    starts = np.zeros(n_terms + 1, np.int64)
    np.cumsum(df, out=starts[1:])
    gaps = np.diff(rows, prepend=-1)
    firsts = starts[:-1][df > 0]
    gaps[firsts] = rows[firsts] + 1
    columns = [gaps, tfs.astype(np.int64), lengths.astype(np.int64)]

    codes, escapes = [], []
    for values in columns:
        over8 = np.bincount(term[values > 0xFF], minlength=n_terms)
        over16 = np.bincount(term[values > 0xFFFF], minlength=n_terms)
        code = np.argmin(np.stack([df + 4 * over8, 2 * df + 4 * over16, 4 * df]), axis=0)
        codes.append(code)
        escapes.append(np.choose(code, [over8, over16, np.zeros_like(df)]))
    width = [1 << code for code in codes]
    size = df * (width[0] + width[1] + width[2]) + 4 * (escapes[0] + escapes[1] + escapes[2])
    base = np.zeros(n_terms + 1, np.int64)
    np.cumsum(size, out=base[1:])
    out = np.zeros(int(base[-1]), np.uint8)

    column_at = base[:-1].copy()
    exception_at = base[:-1] + df * (width[0] + width[1] + width[2])
    index_in_term = np.arange(len(term)) - starts[term]
    for values, w, escaped in zip(columns, width, escapes):
        wp = w[term]
        fits = values < (np.int64(1) << (8 * wp))
        at = column_at[term] + index_in_term * wp
        for width in (1, 2, 4):
            m = wp == width
            if m.any():  # each value's bytes, little-endian, to its place
                stored = np.where(fits[m], values[m], 0).astype(f"<u{width}")
                out[(at[m, None] + np.arange(width)).ravel()] = stored.view(np.uint8)
        # The exceptions: after the earlier columns' ones of the same term, in posting order.
        spill = np.flatnonzero(~fits)
        if len(spill):
            spill_term = term[spill]
            rank = np.arange(len(spill)) - np.searchsorted(spill_term, spill_term, side="left")
            at = exception_at[spill_term] + 4 * rank
            out[(at[:, None] + np.arange(4)).ravel()] = values[spill].astype("<u4").view(np.uint8)
        exception_at = exception_at + 4 * escaped
        column_at = column_at + df * w
    packed = (codes[0] | (codes[1] << 2) | (codes[2] << 4)).astype(np.uint8)
    return out.tobytes(), size, packed


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """The decoded head of a ``bm25.bin``, with the first bytes of the file it came in."""

    n_docs: int
    total_length: int
    k1: float
    b: float
    n_terms: int
    postings_at: int
    block_offsets: np.ndarray  # blocks + 1 absolute byte offsets (format 2; empty in 3)
    separators: list[str]
    prefix: bytes  # the file's first bytes as fetched (at least the head)
    slots: int | None = None  # format 3: how many dictionary slots (None: sorted blocks)

    @classmethod
    def head_length(cls, data: bytes) -> int:
        """How many bytes the head whose first bytes are ``data`` spans."""
        if len(data) < _FIXED or not is_blocked(data):
            raise VectorDBError("corrupt segment: bad bm25.bin header")
        return int(np.frombuffer(data, np.uint32, 1, 8)[0])

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        """``data``: the file's first bytes, :meth:`head_length` of them or more."""
        head_len = cls.head_length(data)
        meta_len = int(np.frombuffer(data, np.uint32, 1, 12)[0])
        if len(data) < head_len or _FIXED + meta_len > head_len:
            raise VectorDBError("corrupt segment: truncated bm25.bin header")
        postings_at = int(np.frombuffer(data, np.uint64, 1, 16)[0])
        meta = json.loads(data[_FIXED : _FIXED + meta_len])
        if meta.get("format") not in (FORMAT, HASHED_FORMAT) or meta.get("analyzer") != bm25.ANALYZER:
            raise VectorDBError(
                f"unsupported BM25 index (format {meta.get('format')}, analyzer {meta.get('analyzer')})"
            )
        if meta["format"] == HASHED_FORMAT:
            slots = int(meta["slots"])
            if meta.get("slot_bytes") != SLOT_BYTES or slots < 1 or postings_at < HEAD_BYTES + slots * SLOT_BYTES:
                raise VectorDBError("corrupt segment: bm25.bin slots disagree with its header")
            return cls(int(meta["docs"]), int(meta["length"]), float(meta["k1"]), float(meta["b"]),
                       int(meta["terms"]), postings_at, np.zeros(0, np.int64), [], bytes(data), slots)
        blocks = int(meta["blocks"])
        at = _FIXED + meta_len
        block_offsets = np.frombuffer(data, np.uint64, blocks + 1, at).astype(np.int64)
        text = data[at + 8 * (blocks + 1) : head_len].decode()
        separators = text.split("\n") if blocks else []
        if len(separators) != blocks or block_offsets[-1] != postings_at:
            raise VectorDBError("corrupt segment: bm25.bin block index disagrees with its header")
        return cls(int(meta["docs"]), int(meta["length"]), float(meta["k1"]), float(meta["b"]), int(meta["terms"]),
                   postings_at, block_offsets, separators, bytes(data))

    @property
    def blocks(self) -> int:
        return self.slots if self.slots is not None else len(self.separators)

    def block_of(self, term: str) -> int | None:
        """The dictionary block (or slot) that would hold ``term``; None: no term sorts that low."""
        if self.slots is not None:
            return slot_of(term, self.slots)
        i = bisect_right(self.separators, term) - 1
        return None if i < 0 else i

    def block_range(self, i: int) -> tuple[int, int]:
        if self.slots is not None:
            return slot_range(self.slots, i)
        start = int(self.block_offsets[i])
        return start, int(self.block_offsets[i + 1]) - start

    def local(self, start: int, length: int) -> bytes | None:
        """Bytes ``[start, start + length)`` if the prefix already holds them."""
        return self.prefix[start : start + length] if start + length <= len(self.prefix) else None

    @property
    def nbytes(self) -> int:
        return len(self.prefix) + self.block_offsets.nbytes + 60 * len(self.separators)


def moved(slot: bytes) -> tuple[int, int] | None:
    """(start, length) of the block a format-3 slot points to; None: the slot holds it."""
    if len(slot) >= 24 and int(np.frombuffer(slot, np.uint32, 1)[0]) == _MOVED:
        start, length = np.frombuffer(slot, np.uint64, 2, 8).tolist()
        return int(start), int(length)
    return None


@dataclass(frozen=True)
class Entry:
    """Where one term's postings are: ``length`` bytes at ``start``, ``df`` postings."""

    df: int
    start: int
    length: int
    widths: int


class DictBlock:
    """One decoded dictionary block."""

    __slots__ = ("terms", "offsets", "df", "widths", "postings_at")

    def __init__(self, data: bytes, postings_at: int) -> None:
        count = int(np.frombuffer(data, np.uint32, 1)[0]) if len(data) >= 8 else -1
        size = int(np.frombuffer(data, np.uint32, 1, 4)[0]) if len(data) >= 8 else 0
        if count == _MOVED or size > len(data):
            raise VectorDBError("corrupt segment: bad bm25.bin dictionary block")
        if size:  # a slot's block (format 3), padded after its end
            data = data[:size]
        end = 8 + 8 * (count + 1) + 5 * count
        if count < 0 or len(data) < end:
            raise VectorDBError("corrupt segment: truncated bm25.bin dictionary block")
        self.offsets = np.frombuffer(data, np.uint64, count + 1, 8).astype(np.int64)
        self.df = np.frombuffer(data, np.uint32, count, 8 + 8 * (count + 1))
        self.widths = np.frombuffer(data, np.uint8, count, 8 + 8 * (count + 1) + 4 * count)
        self.terms = data[end:].decode().split("\n") if count else []
        self.postings_at = postings_at
        if len(self.terms) != count:
            raise VectorDBError("corrupt segment: bm25.bin dictionary block terms disagree with its count")

    def find(self, term: str) -> Entry | None:
        i = bisect_left(self.terms, term)
        if i == len(self.terms) or self.terms[i] != term:
            return None
        start = self.postings_at + int(self.offsets[i])
        return Entry(int(self.df[i]), start, int(self.offsets[i + 1] - self.offsets[i]), int(self.widths[i]))

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.df.nbytes + self.widths.nbytes + 60 * len(self.terms)


@dataclass(frozen=True)
class Postings:
    """One term's postings in one segment: ascending rows, frequencies, row lengths."""

    rows: np.ndarray  # int64 (intp): numpy converts other index types first, a ~1.5x slower scatter
    tfs: np.ndarray
    lengths: np.ndarray
    nbytes: int  # memory held: the arrays and the fetched bytes they may view


def decode_postings(data: bytes, entry: Entry) -> Postings:
    """A postings list fetched by its :class:`Entry`."""
    df, at, columns = entry.df, 0, []
    for c in range(3):
        width = 1 << ((entry.widths >> (2 * c)) & 3)
        if width > 4 or at + df * width > len(data):
            raise VectorDBError("corrupt segment: bad bm25.bin postings list")
        columns.append(np.frombuffer(data, f"<u{width}", df, at))
        at += df * width
    if (len(data) - at) % 4:
        raise VectorDBError("corrupt segment: bad bm25.bin postings list")
    exceptions = np.frombuffer(data, "<u4", (len(data) - at) // 4, at)
    used = 0
    for c, column in enumerate(columns):
        holes = np.flatnonzero(column == 0)
        if len(holes):
            column = column.astype(np.uint32)
            column[holes] = exceptions[used : used + len(holes)]
            used += len(holes)
            columns[c] = column
    if used != len(exceptions):
        raise VectorDBError("corrupt segment: bad bm25.bin postings list")
    rows = np.cumsum(columns[0], dtype=np.int64)
    rows -= 1
    copied = sum(c.nbytes for c in columns[1:] if c.base is None)
    return Postings(rows, columns[1], columns[2], len(data) + rows.nbytes + copied)


def read_index(data: bytes) -> BM25Index:
    """The whole of a blocked ``bm25.bin`` as an in-memory index (for tools and tests: a
    query fetches only what it needs, see :mod:`vectordb.bm25_reader`)."""
    head = Head.from_bytes(data)
    found = []
    lengths = np.zeros(head.n_docs, np.int64)
    for i in range(head.blocks):
        start, length = head.block_range(i)
        start, length = moved(data[start : start + length]) or (start, length)
        block = DictBlock(data[start : start + length], head.postings_at)
        for term in block.terms:
            entry = block.find(term)
            postings = decode_postings(data[entry.start : entry.start + entry.length], entry)
            found.append((term, postings.rows.astype(np.int64), postings.tfs.astype(np.int64)))
            lengths[found[-1][1]] = postings.lengths
    found.sort(key=lambda f: f[0])  # a hashed dictionary's slots are not in term order
    terms = [term for term, _, _ in found]
    rows = [r for _, r, _ in found]
    tfs = [t for _, _, t in found]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows], dtype=np.int64)])
    empty = np.zeros(0, np.int64)
    return BM25Index(
        terms,
        bm25._compact(indptr.astype(np.int64)),
        bm25._compact(np.concatenate(rows) if rows else empty),
        bm25._compact(np.concatenate(tfs) if tfs else empty),
        bm25._compact(lengths),
        head.k1,
        head.b,
    )
