"""Documents by id: ``GET`` by id, a chunked document's chunks, ids by filter.

Each answers from one manifest: the tail first (its rows override the segments), then the
segments, all asked at once (a by-range segment answers from one bucket of its ``ids.bin``
/ ``doc_ids.bin`` and the records it names, each step one round of parallel GETs over all
segments, so the cost does not grow with the namespace). A segment row is live unless its
segment's tombstones or the tail name its id.

A chunked document has no row of its own: ``GET`` of its id answers its live chunks in
order (by their ``chunk`` attribute), their texts joined where the chunker made them
overlap, and the attributes all of them share.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

import numpy as np

from vectordb.doc_fields import Record
from vectordb.errors import InvalidArgument
from vectordb.filters import Filter
from vectordb.manifest import Manifest
from vectordb.reader import NamespaceReader

CHUNK = "chunk"  # a chunk's index among its document's (ingest.documents)


@dataclass(frozen=True)
class Document:
    """A stored row, or a chunked document assembled from its chunks (``chunks`` set)."""

    id: str
    text: str | None
    attributes: dict
    chunks: list[Document] | None = field(default=None)

    def to_json(self) -> dict:
        out = {"id": self.id, "text": self.text, "attributes": self.attributes}
        if self.chunks is not None:
            out["chunks"] = [c.to_json() for c in self.chunks]
        return out

    @classmethod
    def of(cls, record: Record) -> Document:
        attrs = json.loads(record.attributes) if record.attributes else {}
        return cls(record.id, record.text, attrs if isinstance(attrs, dict) else {})

    @classmethod
    def assembled(cls, parent: str, chunks: list[Record]) -> Document:
        """Document ``parent`` from its chunks (in order): their texts joined where they
        overlap (the chunker repeats a few words), the attributes all of them share."""
        from query.rag import join_overlapping  # rag imports the engine, which imports us

        parts = [cls.of(r) for r in chunks]
        text = None
        for part in parts:
            if part.text is not None:
                text = part.text if text is None else join_overlapping(text, part.text)
        shared = dict(parts[0].attributes)
        for part in parts[1:]:
            shared = {k: v for k, v in shared.items() if k in part.attributes and part.attributes[k] == v}
        shared.pop(CHUNK, None)
        return cls(parent, text, shared, parts)


def document(reader: NamespaceReader, manifest: Manifest, doc_id: str) -> Document | None:
    """The live row ``doc_id``; else, in a chunking namespace, the live chunks of a
    document ``doc_id`` assembled; else None."""
    record = find(reader, manifest, doc_id)
    if record is not None:
        return Document.of(record)
    if not manifest.config.chunk_tokens:  # rows here are never chunks, whatever their doc_id says
        return None
    parts = chunks(reader, manifest, doc_id)
    return Document.assembled(doc_id, parts) if parts else None


def find(reader: NamespaceReader, manifest: Manifest, doc_id: str) -> Record | None:
    """The live record of ``doc_id``, or None."""
    ns, tail = manifest.namespace, reader.tail(manifest)
    if doc_id in tail.touched:
        if doc_id in tail.deleted:
            return None
        r = tail.row_of[doc_id]
        return Record(doc_id, tail.rows.texts[r], tail.rows.attributes[r])
    segments = [seg for seg in manifest.segments if doc_id not in reader.tombstones(ns, seg)]
    for record in reversed(reader.find(ns, segments, doc_id)):  # a live id is in one segment
        if record is not None:
            return record
    return None


def live_ids(reader: NamespaceReader, manifest: Manifest, ids: list[str]) -> list[str]:
    """Those of ``ids`` that name a live row: the tail decides the ids it touched (from
    its WAL objects' ids alone, unless this process holds it folded:
    ``TailReader.last_ops``), each segment the rest through its id lookup (``ids.bin``: a
    bucket per id), less its tombstones."""
    ns, last = manifest.namespace, reader.tails.last_ops(manifest, ids)
    live = [i for i in ids if last.get(i)]
    rest = [i for i in ids if i not in last]
    for seg in manifest.segments:
        if not rest:
            break
        dead = reader.tombstones(ns, seg)
        live += [i for i in reader.stored_ids(ns, seg, rest) if i not in dead]
    return live


def chunk_ids(reader: NamespaceReader, manifest: Manifest, parents: list[str]) -> list[str]:
    """Ids of the live rows whose string ``doc_id`` attribute is one of ``parents``. The
    tail's from the folded tail where this process holds it, else from the WAL objects'
    ids, operations and attributes alone (``TailReader.chunk_ids``), so a chunked upsert
    on an ingest worker does not fold the tail; each segment's through ``doc_ids.bin``,
    less its tombstones and the ids the tail touched (``TailReader.last_ops``)."""
    if reader.tails.has(manifest):
        return [i for i, _ in _chunks(reader, manifest, parents, with_records=False)]
    ns, segments = manifest.namespace, list(manifest.segments)
    out = reader.tails.chunk_ids(manifest, parents)
    found = reader.chunks(ns, segments, parents)
    touched = reader.tails.last_ops(manifest, [i for rows in found for _, i in rows])
    for seg, rows in zip(segments, found):
        dead = reader.tombstones(ns, seg)
        out += [i for _, i in rows if i not in dead and i not in touched]
    return out


def chunks(reader: NamespaceReader, manifest: Manifest, parent: str) -> list[Record]:
    """The live chunks of document ``parent``, in chunk order (their ``chunk`` attribute,
    then id)."""
    records = [record for _, record in _chunks(reader, manifest, [parent], with_records=True)]

    def order(record: Record):
        attrs = json.loads(record.attributes) if record.attributes else {}
        index = attrs.get(CHUNK) if isinstance(attrs, dict) else None
        number = isinstance(index, (int, float)) and not isinstance(index, bool)
        return (0, index, record.id) if number else (1, 0, record.id)

    return sorted(records, key=order)


def _chunks(reader, manifest, parents, with_records: bool) -> list[tuple[str, Record | None]]:
    ns, tail = manifest.namespace, reader.tail(manifest)
    out: list[tuple[str, Record | None]] = []
    for doc_id in reader.tail_doc_ids.ids_of(tail, parents):
        r = tail.row_of[doc_id]
        out.append((doc_id, Record(doc_id, tail.rows.texts[r], tail.rows.attributes[r]) if with_records else None))
    segments = list(manifest.segments)
    live = []
    for seg, found in zip(segments, reader.chunks(ns, segments, parents)):
        dead = reader.tombstones(ns, seg)
        live.append([(row, i) for row, i in found if i not in dead and i not in tail.touched])
    if not with_records:
        return out + [(i, None) for found in live for _, i in found]
    found_in = [(seg, found) for seg, found in zip(segments, live) if found]
    records = reader.records_many(ns, [(seg, [row for row, _ in found]) for seg, found in found_in])
    for (_, found), got in zip(found_in, records):
        out += [(i, record) for (_, i), record in zip(found, got)]
    return out


def matching_ids(reader: NamespaceReader, manifest: Manifest, filt: Filter, filter_key: str) -> list[str]:
    """Ids of every live row that matches ``filt``: the tail's, then each segment's in row
    order."""
    ns, tail = manifest.namespace, reader.tail(manifest)
    ids = [tail.rows.ids[r] for r in np.flatnonzero(reader.tail_filter_mask(manifest, filt, filter_key))]
    for seg in manifest.segments:
        rows = np.flatnonzero(reader.filter_mask(ns, seg, filt, filter_key))
        dead = reader.tombstones(ns, seg)
        ids += [i for i in reader.row_ids(ns, seg, rows) if i not in dead and i not in tail.touched]
    return ids


def page(reader: NamespaceReader, manifest: Manifest, start: tuple[int, int], limit: int, vectors: bool = False
         ) -> tuple[list[Record], list[np.ndarray] | None, tuple[int, int] | None]:
    """Up to ``limit`` live rows of ``manifest`` from position ``start`` = (segment index,
    row), in a stable order: each segment's rows in row order, then the tail's (segment
    index ``len(manifest.segments)``). Returns their records, their vectors (with
    ``vectors``: as stored, so an int8 segment's are its decoded int8 values) and the
    position after the last (None: the end). Reads the live masks of the segments it walks
    and the records (and vectors) it returns."""
    ns, tail = manifest.namespace, reader.tail(manifest)
    segments = list(manifest.segments)
    wanted: list[tuple[int, list[int]]] = []
    (s, row), count = start, 0
    while s < len(segments) and count < limit:
        seg = segments[s]
        mask = reader.live_mask(ns, seg, tail)
        live = np.arange(row, seg.rows) if mask is None else row + np.flatnonzero(mask[row:])
        take = live[: limit - count].tolist()
        if take:
            wanted.append((s, take))
            count += len(take)
        if len(take) < len(live):
            row = take[-1] + 1
            break
        s, row = s + 1, 0
    records = [r for got in reader.records_many(ns, [(segments[i], rows) for i, rows in wanted]) for r in got]
    found = [v for i, rows in wanted for v in reader.row_vectors(ns, segments[i], rows)] if vectors else None
    after: tuple[int, int] | None = (s, row)
    if count < limit and s >= len(segments):
        first = row if s == len(segments) else 0
        end = min(len(tail.rows.ids), first + limit - count)
        rows = tail.rows
        records += [Record(rows.ids[r], rows.texts[r], rows.attributes[r]) for r in range(first, end)]
        if found is not None:
            found += list(rows.vectors[first:end])
        after = (len(segments), end) if end < len(rows.ids) else None
    return records, found, after


def encode_cursor(version: int, position: tuple[int, int]) -> str:
    """An opaque listing cursor: the version listed and the position after the last row."""
    raw = json.dumps([version, *position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, tuple[int, int]]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, s, row = json.loads(raw)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (version, s, row)):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument("cursor is not one this service gave") from None
    return version, (s, row)
