"""``<ns>/layouts.bin``: the ``ivf.bin`` of each segment of a recent version, in one object.

A cold query worker needs a namespace's manifest (``latest.json``) and then each segment's
``ivf.bin`` (centroids and partition offsets) before it knows which partitions to read:
two sequential round trips before the first partition. This object holds copies of those
``ivf.bin`` files under a fixed key, so the worker reads it beside ``latest.json``, and its
first query reads partitions in its second round trip (``query.engine``).

It is only a hint, and a stale one is harmless: segments are immutable and their ids never
reused, so a copy held here for a segment id is that segment's ``ivf.bin`` whatever version
wrote it. A reader takes the entries of the segments its manifest names and reads the
others' ``ivf.bin`` as before. The indexer rewrites it after each commit it makes (a
build or a compaction; last writer wins: two indexers racing may leave the older set,
which costs a cold worker one round trip until the next build); garbage collection
deletes it with a dropped namespace.

Format: magic ``VDBLAYT1``, u32 entry count, then per entry u32 id length, the segment id
(UTF-8), u64 length, the ``ivf.bin`` bytes. Entries past ``MAX_BYTES`` are left out.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping

from storage.base import ObjectStore
from storage.errors import ObjectNotFound
from vectordb import keys, segment
from vectordb.catalog import get_fresh
from vectordb.manifest import Manifest

log = logging.getLogger(__name__)

MAGIC = b"VDBLAYT1"
# A cold worker reads the whole object in its first round trip: 32 MiB holds the float16
# centroids (and offsets) of ~42,000 partitions of 384 dimensions, about 42M rows at the
# default 1,000 rows a partition; a bigger namespace's other segments are read as before.
MAX_BYTES = 32 << 20


def encode(entries: list[tuple[str, bytes]]) -> bytes:
    parts = [MAGIC, struct.pack("<I", len(entries))]
    for seg_id, data in entries:
        name = seg_id.encode()
        parts += [struct.pack("<I", len(name)), name, struct.pack("<Q", len(data)), data]
    return b"".join(parts)


def decode(data: bytes) -> dict[str, bytes]:
    """Segment id -> its ``ivf.bin``. Raises ValueError on anything but this format."""
    if data[:8] != MAGIC or len(data) < 12:
        raise ValueError("not a layouts.bin")
    (count,) = struct.unpack_from("<I", data, 8)
    at, out = 12, {}
    for _ in range(count):
        if at + 4 > len(data):
            raise ValueError("layouts.bin is truncated")
        (n,) = struct.unpack_from("<I", data, at)
        if at + 4 + n + 8 > len(data):
            raise ValueError("layouts.bin is truncated")
        seg_id = data[at + 4 : at + 4 + n].decode()
        (length,) = struct.unpack_from("<Q", data, at + 4 + n)
        at += 12 + n
        if at + length > len(data):
            raise ValueError("layouts.bin is truncated")
        out[seg_id] = bytes(data[at : at + length])
        at += length
    return out


def read(store: ObjectStore, ns: str) -> dict[str, bytes]:
    """The hint's entries; empty when there is none or it cannot be decoded (a reader then
    reads each ``ivf.bin``, as without a hint)."""
    try:
        data = get_fresh(store, keys.layout_hint_key(ns))  # rewritten in place: never from a cache
    except ObjectNotFound:
        return {}
    try:
        return decode(data)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("ignoring %s: %s", keys.layout_hint_key(ns), exc)
        return {}


def write(store: ObjectStore, manifest: Manifest, held: Mapping[str, bytes], pool_map: Callable = map) -> int:
    """Write the hint for ``manifest``'s segments: the ``ivf.bin`` bytes in ``held`` (segment
    id -> bytes) where given, else read from the store (``pool_map`` maps the reads, e.g. a
    thread pool's ``map``). Returns the bytes written (0: no segment, nothing written)."""
    ns = manifest.namespace
    segments = list(manifest.segments)
    if not segments:
        return 0
    wanted = [seg.id for seg in segments if seg.id not in held]
    fetched = dict(zip(wanted, pool_map(lambda seg_id: store.get(segment.file_key(ns, seg_id, "ivf.bin")), wanted)))
    entries, total = [], 12
    for seg in segments:
        data = held.get(seg.id, fetched.get(seg.id))
        size = 12 + len(seg.id.encode()) + len(data)
        if total + size > MAX_BYTES:
            continue
        entries.append((seg.id, data))
        total += size
    body = encode(entries)
    store.put(keys.layout_hint_key(ns), body)
    return len(body)
