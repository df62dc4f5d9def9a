"""A persisted hash table from string keys to segment rows, read one bucket per lookup.

A segment's ``ids.bin`` (id -> row) and ``doc_ids.bin`` (a chunk's ``doc_id`` -> its rows)
are such tables. A lookup hashes the key, reads the one bucket that can hold it with a
single ranged GET (its offset is ``bucket * stride``, known without reading anything but
the table's :class:`TableInfo`, which ``ivf.bin`` carries), and compares the stored keys
themselves, so a hash collision never returns a wrong row. Cost per lookup: one bucket,
whatever the size of the segment.

Layout (little-endian). ``buckets`` (a power of two) buckets of ``stride`` bytes, then an
overflow area. Bucket ``b`` holds the entries whose 64-bit key hash has ``b`` as its top
bits, so bucket order is hash order::

    u32 count        entries stored in the bucket itself
    u32 spill_bytes  bytes of the bucket's further entries in the overflow area (0: none)
    u64 spill_at     their offset in the file
    count x (u64 hash, u32 row, u16 key bytes, u16 payload bytes)
    per entry: its key (UTF-8), then its payload
    zero padding up to ``stride``

The overflow area holds, per bucket that spilled, the rest of its entries encoded the same
way (a bucket without padding). ``stride`` is chosen so that about one bucket in a
thousand spills, and at most four times the mean bucket (a key with many rows, such as a
long document's ``doc_id``, spills alone); a lookup in a spilled bucket reads its overflow
with a second GET.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Hasher = Callable[[Sequence[str]], np.ndarray]

_HEADER = np.dtype([("count", "<u4"), ("spill_bytes", "<u4"), ("spill_at", "<u8")])
ENTRY = np.dtype([("hash", "<u8"), ("row", "<u4"), ("key_len", "<u2"), ("payload_len", "<u2")])
_TARGET_LOAD = 16  # entries per bucket on average
_SPILL_QUANTILE = 0.999


def blake2b64(keys: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes (BLAKE2b): the same in every process, unlike ``hash``."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
        np.uint64,
        len(keys),
    )


HASHERS: dict[str, Hasher] = {"blake2b64": blake2b64}


@dataclass(frozen=True)
class TableInfo:
    """What a reader needs to find a key's bucket."""

    buckets: int
    stride: int
    hash: str = "blake2b64"

    @property
    def bits(self) -> int:
        return self.buckets.bit_length() - 1

    def bucket_of(self, hashes: np.ndarray) -> np.ndarray:
        if self.bits == 0:
            return np.zeros(len(hashes), np.int64)
        return (hashes >> np.uint64(64 - self.bits)).astype(np.int64)

    def to_json(self) -> dict:
        return {"buckets": self.buckets, "stride": self.stride, "hash": self.hash}

    @classmethod
    def from_json(cls, obj: dict) -> TableInfo:
        return cls(int(obj["buckets"]), int(obj["stride"]), str(obj.get("hash", "blake2b64")))


@dataclass(frozen=True)
class Bucket:
    """A decoded bucket (or a bucket's overflow): entries in hash order."""

    hashes: np.ndarray  # uint64, ascending
    rows: np.ndarray  # uint32
    keys: list[bytes]
    payloads: list[bytes]
    spill: tuple[int, int] | None  # (offset, length) of the rest in the overflow area

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.rows.nbytes + sum(len(k) + len(p) + 66 for k, p in zip(self.keys, self.payloads))

    def find(self, key: bytes, h: int) -> list[tuple[int, bytes]]:
        """(row, payload) of every entry whose key is ``key`` (whose hash is ``h``)."""
        h = np.uint64(h)
        lo, hi = int(np.searchsorted(self.hashes, h, "left")), int(np.searchsorted(self.hashes, h, "right"))
        return [(int(self.rows[i]), self.payloads[i]) for i in range(lo, hi) if self.keys[i] == key]


class Packed:
    """Byte strings as one blob and ``n + 1`` offsets: what a streamed segment build keeps
    of every row's key (a list of ``bytes`` costs ~35 bytes an item more)."""

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = np.asarray(offsets, np.int64)

    @classmethod
    def of(cls, items: Sequence[bytes]) -> Packed:
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(i) for i in items], out=offsets[1:])
        return cls(b"".join(items), offsets)

    @classmethod
    def concat(cls, parts: Sequence[Packed]) -> Packed:
        if not parts:
            return cls(b"", np.zeros(1, np.int64))
        starts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] - p.offsets[0] + s for p, s in zip(parts, starts)])
        return cls(b"".join(p.blob[p.offsets[0] : p.offsets[-1]] for p in parts), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.blob[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return len(self.blob) + self.offsets.nbytes


def build(keys: Sequence[str], rows: np.ndarray, payloads: Sequence[bytes] | None = None,
          hasher: Hasher = blake2b64, hash_name: str = "blake2b64") -> tuple[bytes, TableInfo]:
    """The table of ``keys[i] -> (rows[i], payloads[i])`` (keys may repeat), and its info."""
    n = len(keys)
    hashes = hasher(keys).astype(np.uint64) if n else np.zeros(0, np.uint64)
    out: list[bytes] = []
    info = write(Packed.of([k.encode() for k in keys]), hashes, rows,
                 Packed.of(list(payloads) if payloads is not None else [b""] * n), out.append, hash_name)
    return b"".join(out), info


def write(keys: Packed, hashes: np.ndarray, rows: np.ndarray, payloads: Packed,
          emit: Callable[[bytes], object], hash_name: str = "blake2b64") -> TableInfo:
    """:func:`build` from packed keys and payloads and the keys' ``hashes``, the table's
    bytes handed to ``emit`` in order (a bucket at a time, then the overflow area), so
    a segment build never holds the whole table."""
    n = len(keys)
    buckets = 1 << max(0, int(np.ceil(np.log2(max(1, n / _TARGET_LOAD)))))
    hashes = np.asarray(hashes, np.uint64)
    rows = np.asarray(rows, np.int64)
    which = TableInfo(buckets, 0, hash_name).bucket_of(hashes)
    sizes = ENTRY.itemsize + keys.lengths() + payloads.lengths()
    bucket_bytes = np.bincount(which, weights=sizes, minlength=buckets).astype(np.int64) + _HEADER.itemsize
    order = np.lexsort((rows, hashes))  # hash order (so bucket order), then row order
    bounds = np.searchsorted(which[order], np.arange(buckets + 1))
    del which
    # A few heavy keys (a document of thousands of chunks) must not widen every bucket:
    # past four times the mean a bucket spills instead.
    stride = int(np.quantile(bucket_bytes, _SPILL_QUANTILE, method="higher"))
    stride = min(stride, 4 * int(bucket_bytes.mean()) + 256)
    stride = max(_HEADER.itemsize, (stride + 7) // 8 * 8)
    info = TableInfo(buckets, stride, hash_name)
    del bucket_bytes

    spills: list[bytes] = []
    spill_at = buckets * stride
    for b in range(buckets):
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        picked = order[lo:hi].tolist()
        room = stride - _HEADER.itemsize
        fits = 0
        for size in sizes[picked].tolist():
            if size > room:
                break
            room -= size
            fits += 1
        rest = b""
        if fits < len(picked):
            rest = _encode(picked[fits:], hashes, rows, keys, payloads, 0, 0)
        body = _encode(picked[:fits], hashes, rows, keys, payloads, len(rest), spill_at if rest else 0)
        emit(body + bytes(stride - len(body)))
        if rest:
            spills.append(rest)
            spill_at += len(rest)
    for rest in spills:
        emit(rest)
    return info


def _encode(picked: list[int], hashes, rows, keys: Packed, payloads: Packed, spill_bytes: int, spill_at: int) -> bytes:
    header = np.array([(len(picked), spill_bytes, spill_at)], _HEADER).tobytes()
    fixed = np.empty(len(picked), ENTRY)
    fixed["hash"] = hashes[picked] if picked else []
    fixed["row"] = rows[picked] if picked else []
    fixed["key_len"] = [len(keys[i]) for i in picked]
    fixed["payload_len"] = [len(payloads[i]) for i in picked]
    return header + fixed.tobytes() + b"".join(keys[i] + payloads[i] for i in picked)


def decode(data: bytes) -> Bucket:
    """A bucket (with its padding, or without) or a bucket's overflow."""
    count, spill_bytes, spill_at = (int(x) for x in np.frombuffer(data, _HEADER, 1)[0])
    fixed = np.frombuffer(data, ENTRY, count, _HEADER.itemsize)
    at = _HEADER.itemsize + count * ENTRY.itemsize
    keys, payloads = [], []
    for key_len, payload_len in zip(fixed["key_len"].tolist(), fixed["payload_len"].tolist()):
        keys.append(bytes(data[at : at + key_len]))
        at += key_len
        payloads.append(bytes(data[at : at + payload_len]))
        at += payload_len
    spill = (spill_at, spill_bytes) if spill_bytes else None
    return Bucket(fixed["hash"].copy(), fixed["row"].copy(), keys, payloads, spill)


def decode_all(data: bytes, info: TableInfo) -> Bucket:
    """Every entry of a whole table, as one bucket (overflows included)."""
    parts = []
    for b in range(info.buckets):
        bucket = decode(data[b * info.stride : (b + 1) * info.stride])
        parts.append(bucket)
        if bucket.spill is not None:
            at, length = bucket.spill
            parts.append(decode(data[at : at + length]))
    return Bucket(
        np.concatenate([p.hashes for p in parts]) if parts else np.zeros(0, np.uint64),
        np.concatenate([p.rows for p in parts]) if parts else np.zeros(0, np.uint32),
        [k for p in parts for k in p.keys],
        [x for p in parts for x in p.payloads],
        None,
    )
