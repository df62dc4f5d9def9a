"""A segment's stored fields, one record per row, read by row.

``fields.bin`` holds the rows' records back to back in segment row order: each the row's
id, text and attributes (JSON text) as UTF-8, concatenated and compressed alone (raw
deflate), so that a hit reads its own bytes and nothing else (about half of them: prose
and JSON compress ~2x; and an object store that compresses what it stores, as SeaweedFS
does, would otherwise inflate a whole chunk to serve a few hundred bytes). ``rows.bin``
says where: per row a fixed 22-byte entry (little-endian u64 offset of the record, u32
stored bytes, u16 id bytes, u32 text bytes, u32 attribute bytes; a length of
``0xFFFFFFFF`` stands for None), so the entry of row ``r`` is at ``22 * r`` and the
entries of a partition are one contiguous range.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ENTRY = np.dtype([("offset", "<u8"), ("stored", "<u4"), ("id_len", "<u2"), ("text_len", "<u4"), ("attrs_len", "<u4")])
NONE = 0xFFFFFFFF
_LEVEL = 3  # deflate: ~2x on prose at ~17 us a record to write, ~6 us to read


@dataclass(frozen=True)
class Record:
    """One row's stored fields."""

    id: str
    text: str | None
    attributes: str | None  # JSON text

    @property
    def nbytes(self) -> int:
        return 100 + len(self.id) + len(self.text or "") + len(self.attributes or "")


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def encode(ids: Sequence[str], texts: Sequence[str | None], attributes: Sequence[str | None]) -> tuple[bytes, bytes]:
    """(``fields.bin``, ``rows.bin``) of rows in segment order."""
    entries = np.zeros(len(ids), ENTRY)
    parts: list[bytes] = []
    at = 0
    offsets, stored, id_lens, text_lens, attr_lens = [], [], [], [], []
    for doc_id, text, attrs in zip(ids, texts, attributes):
        i, t, a = doc_id.encode(), _bytes(text), _bytes(attrs)
        record = _deflate(i + (t or b"") + (a or b""))
        offsets.append(at)
        stored.append(len(record))
        id_lens.append(len(i))
        text_lens.append(NONE if t is None else len(t))
        attr_lens.append(NONE if a is None else len(a))
        parts.append(record)
        at += len(record)
    entries["offset"], entries["stored"], entries["id_len"] = offsets, stored, id_lens
    entries["text_len"], entries["attrs_len"] = text_lens, attr_lens
    return b"".join(parts), entries.tobytes()


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def decode_entries(data: bytes) -> np.ndarray:
    return np.frombuffer(data, ENTRY, len(data) // ENTRY.itemsize)


def span(entry) -> tuple[int, int]:
    """(offset, length) of an entry's record in ``fields.bin``."""
    return int(entry["offset"]), int(entry["stored"])


def _len(n: int) -> int:
    return 0 if n == NONE else n


def decode_record(stored: bytes, entry) -> Record:
    """The record ``entry`` describes, from the bytes of its :func:`span`."""
    data = zlib.decompress(stored, -15)
    id_len, text_len, attrs_len = int(entry["id_len"]), int(entry["text_len"]), int(entry["attrs_len"])
    at = id_len + _len(text_len)
    text = None if text_len == NONE else data[id_len:at].decode()
    attrs = None if attrs_len == NONE else data[at : at + attrs_len].decode()
    return Record(data[:id_len].decode(), text, attrs)


def decode_all(fields: bytes, entries: np.ndarray) -> list[Record]:
    """Every record (for compaction, which rewrites them all)."""
    out = []
    for entry in entries:
        start, length = span(entry)
        out.append(decode_record(fields[start : start + length], entry))
    return out
