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
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    bytes handed to ``emit`` in order (a bucket at a time, then the overflow area)."""
    writer = TableWriter(None, hash_name)
    writer.add(keys, hashes, rows, payloads)
    return writer.finish(emit)


_SHARD_BITS = 6  # a table's entries wait in 2**6 shards by the top bits of their hash
_SHARDS = 1 << _SHARD_BITS
_FLUSH_BYTES = 32 * 1024**2


class TableWriter:
    """A table of entries added in any order, written in bounded memory.

    Entries wait in ``directory`` (None: in memory) in 64 shards by the top bits of their
    hash, so the shards are in hash order; :meth:`finish` sizes the buckets from all the
    entries' hashes and sizes, then loads, sorts and emits one shard at a time. A segment
    build of 10M rows used to hold every row's id, hash and record entry and their sort
    at once (~1.4 GB at the end of the build); this holds a 64th of them.
    """

    def __init__(self, directory: Path | None, hash_name: str = "blake2b64") -> None:
        self.hash_name = hash_name
        self.count = 0
        self._dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._fixed: list[list[np.ndarray]] = [[] for _ in range(_SHARDS)]  # not yet flushed
        self._var: list[list[bytes]] = [[] for _ in range(_SHARDS)]  # each entry's key, then its payload
        self._buffered = 0

    def add(self, keys: Packed, hashes: np.ndarray, rows: np.ndarray, payloads: Packed) -> None:
        """Entries ``keys[i] -> (rows[i], payloads[i])``; ``hashes`` the keys' hashes."""
        n = len(keys)
        if not n:
            return
        hashes = np.asarray(hashes, np.uint64)
        shard = (hashes >> np.uint64(64 - _SHARD_BITS)).astype(np.int64)
        order = np.argsort(shard, kind="stable")  # by shard, in arrival order within one
        fixed = np.empty(n, ENTRY)
        fixed["hash"] = hashes[order]
        fixed["row"] = np.asarray(rows, np.int64)[order]
        fixed["key_len"] = keys.lengths()[order]
        fixed["payload_len"] = payloads.lengths()[order]
        # Each entry's key then its payload, in that order, gathered from the two blobs.
        key_blob = np.frombuffer(keys.blob, np.uint8)[keys.offsets[0] : keys.offsets[-1]]
        payload_blob = np.frombuffer(payloads.blob, np.uint8)[payloads.offsets[0] : payloads.offsets[-1]]
        starts = np.empty(2 * n, np.int64)
        starts[0::2] = (keys.offsets[:-1] - keys.offsets[0])[order]
        starts[1::2] = (payloads.offsets[:-1] - payloads.offsets[0])[order] + len(key_blob)
        lengths = np.empty(2 * n, np.int64)
        lengths[0::2], lengths[1::2] = fixed["key_len"], fixed["payload_len"]
        var = _gather(np.concatenate([key_blob, payload_blob]), starts, lengths)
        bounds = np.searchsorted(shard[order], np.arange(_SHARDS + 1))
        var_at = np.concatenate([[0], np.cumsum(lengths[0::2] + lengths[1::2])])
        for s in np.flatnonzero(np.diff(bounds)).tolist():
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            self._fixed[s].append(fixed[lo:hi])
            self._var[s].append(var[var_at[lo] : var_at[hi]].tobytes())
        self.count += n
        self._buffered += fixed.nbytes + len(var)
        if self._dir is not None and self._buffered >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        for s in range(_SHARDS):
            if self._fixed[s]:
                with open(self._dir / f"{s}.entries", "ab") as out:
                    for part in self._fixed[s]:
                        out.write(part.tobytes())
                with open(self._dir / f"{s}.bytes", "ab") as out:
                    for part in self._var[s]:
                        out.write(part)
                self._fixed[s], self._var[s] = [], []
        self._buffered = 0

    def _shard(self, s: int, with_bytes: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        if self._dir is None:
            fixed = np.concatenate(self._fixed[s]) if self._fixed[s] else np.zeros(0, ENTRY)
            var = np.frombuffer(b"".join(self._var[s]), np.uint8) if with_bytes else None
            return fixed, var
        path = self._dir / f"{s}.entries"
        if not path.exists():
            return np.zeros(0, ENTRY), np.zeros(0, np.uint8)
        fixed = np.fromfile(path, ENTRY)
        return fixed, np.fromfile(self._dir / f"{s}.bytes", np.uint8) if with_bytes else None

    def finish(self, emit: Callable[[bytes], object]) -> TableInfo:
        """Hand the table's bytes to ``emit`` in order (a bucket at a time, then the
        overflow area); its info. Removes the shards' files."""
        if self._dir is not None:
            self._flush()
        buckets = 1 << max(0, int(np.ceil(np.log2(max(1, self.count / _TARGET_LOAD)))))
        sized = TableInfo(buckets, 0, self.hash_name)
        bucket_bytes = np.full(buckets, _HEADER.itemsize, np.int64)
        for s in range(_SHARDS):
            fixed, _ = self._shard(s, with_bytes=False)
            if len(fixed):
                sizes = ENTRY.itemsize + fixed["key_len"].astype(np.int64) + fixed["payload_len"]
                bucket_bytes += np.bincount(sized.bucket_of(fixed["hash"]), weights=sizes, minlength=buckets).astype(np.int64)
        # A few heavy keys (a document of thousands of chunks) must not widen every bucket:
        # past four times the mean a bucket spills instead.
        stride = int(np.quantile(bucket_bytes, _SPILL_QUANTILE, method="higher"))
        stride = min(stride, 4 * int(bucket_bytes.mean()) + 256)
        stride = max(_HEADER.itemsize, (stride + 7) // 8 * 8)
        info = TableInfo(buckets, stride, self.hash_name)
        del bucket_bytes

        spills: list[bytes] = []
        spill_at = buckets * stride
        # Shards in hash order, so their buckets in bucket order: each shard's own buckets,
        # or (fewer buckets than shards) each bucket's shards together.
        per = max(1, _SHARDS // buckets)
        for first in range(0, _SHARDS, per):
            loaded = [self._shard(s) for s in range(first, first + per)]
            fixed = np.concatenate([f for f, _ in loaded])
            var = np.concatenate([v for _, v in loaded])
            sizes = fixed["key_len"].astype(np.int64) + fixed["payload_len"]
            order = np.lexsort((fixed["row"], fixed["hash"]))  # hash order (so bucket order), then row order
            var = _gather(var, (np.cumsum(sizes) - sizes)[order], sizes[order])
            fixed, sizes = fixed[order], sizes[order]
            var_at = np.concatenate([[0], np.cumsum(sizes)])
            entry_at = np.concatenate([[0], np.cumsum(sizes + ENTRY.itemsize)])
            lo_bucket = first * buckets // _SHARDS
            hi_bucket = max(lo_bucket + 1, (first + per) * buckets // _SHARDS)
            bounds = np.searchsorted(info.bucket_of(fixed["hash"]), np.arange(lo_bucket, hi_bucket + 1))
            for b in range(hi_bucket - lo_bucket):
                lo, hi = int(bounds[b]), int(bounds[b + 1])
                # The longest prefix of the bucket's entries that fits its stride.
                fits = int(np.searchsorted(entry_at[lo : hi + 1] - entry_at[lo], stride - _HEADER.itemsize, "right")) - 1
                mid = lo + fits
                rest = b""
                if mid < hi:
                    rest = _encode(fixed[mid:hi], var[var_at[mid] : var_at[hi]], 0, 0)
                body = _encode(fixed[lo:mid], var[var_at[lo] : var_at[mid]], len(rest), spill_at if rest else 0)
                emit(body + bytes(stride - len(body)))
                if rest:
                    spills.append(rest)
                    spill_at += len(rest)
        for rest in spills:
            emit(rest)
        self._remove()
        return info

    def _remove(self) -> None:
        self._fixed = [[] for _ in range(_SHARDS)]
        self._var = [[] for _ in range(_SHARDS)]
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The byte ranges ``data[starts[i] : starts[i] + lengths[i]]``, back to back."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.uint8)
    ends = np.cumsum(lengths)
    return data[np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)]


def _encode(fixed: np.ndarray, var: np.ndarray, spill_bytes: int, spill_at: int) -> bytes:
    header = np.array([(len(fixed), spill_bytes, spill_at)], _HEADER).tobytes()
    return header + fixed.tobytes() + var.tobytes()


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
