"""Which layout a segment's documents have, and writing the one read by ranges.

A segment stores its ids, texts and attributes in one of two layouts:

* **whole** (segments written before issue 12): ``docs.parquet``, read whole for filters,
  fields, ids and live masks. Still read as it is.
* **by range**: ``attrs.bin`` (:mod:`vectordb.attr_columns`), ``fields.bin`` and
  ``rows.bin`` (:mod:`vectordb.doc_fields`), ``ids.bin`` (id -> row) and ``doc_ids.bin``
  (``doc_id`` attribute -> rows and ids), both :mod:`vectordb.key_table`.

Which one is told by ``ivf.bin``, the object every query reads first: a by-range segment
appends to it a trailer, magic ``VDBDOCS2``, a u32 length and a JSON object with what a
reader needs before its first ranged read (the tables' bucket counts and strides, where
each attribute column's file and footer lie in ``attrs.bin``). Older readers ignore the trailer; a segment without
one has the whole layout. No manifest change is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from vectordb import attr_columns, doc_fields, key_table
from vectordb.attr_columns import ColumnInfo
from vectordb.key_table import TableInfo

MAGIC = b"VDBDOCS2"
FILES = ("attrs.bin", "fields.bin", "rows.bin", "ids.bin", "doc_ids.bin")
DOC_ID = "doc_id"  # the attribute naming a chunk's document (ingest.documents)


@dataclass(frozen=True)
class DocsLayout:
    """A by-range segment's documents: what ``ivf.bin``'s trailer says."""

    rows: int
    ids: TableInfo
    doc_ids: TableInfo
    columns: tuple[ColumnInfo, ...]  # attrs.bin's column files, in order

    @property
    def kinds(self) -> dict[str, str]:
        return {c.name: c.kind for c in self.columns}

    def column(self, name: str) -> ColumnInfo:
        return next(c for c in self.columns if c.name == name)

    def to_bytes(self) -> bytes:
        body = json.dumps({
            "rows": self.rows,
            "ids": self.ids.to_json(),
            "doc_ids": self.doc_ids.to_json(),
            "columns": [c.to_json() for c in self.columns],
        }, ensure_ascii=False).encode()
        return MAGIC + len(body).to_bytes(4, "little") + body

    @classmethod
    def from_trailer(cls, data: bytes, at: int) -> DocsLayout | None:
        """The trailer of ``ivf.bin`` starting at ``at``; None if there is none (whole layout)."""
        if data[at : at + len(MAGIC)] != MAGIC:
            return None
        start = at + len(MAGIC) + 4
        length = int.from_bytes(data[at + len(MAGIC) : start], "little")
        obj = json.loads(bytes(data[start : start + length]))
        return cls(
            int(obj["rows"]),
            TableInfo.from_json(obj["ids"]),
            TableInfo.from_json(obj["doc_ids"]),
            tuple(ColumnInfo.from_json(c) for c in obj["columns"]),
        )


def build(ids: list[str], texts: list[str | None], attributes: list[str | None],
          part_rows: np.ndarray) -> tuple[dict[str, bytes], DocsLayout]:
    """The by-range files of rows in segment order, and the trailer that describes them."""
    fields, entries = doc_fields.encode(ids, texts, attributes)
    rows = np.arange(len(ids))
    size = doc_fields.ENTRY.itemsize
    ids_table, ids_info = key_table.build(ids, rows, [entries[i * size : (i + 1) * size] for i in range(len(ids))])
    parsed = attr_columns.parse(attributes)
    # What a {"doc_id": {"$in": [...]}} filter finds: rows whose doc_id is a string.
    chunks = [(a[DOC_ID], row) for row, a in enumerate(parsed) if isinstance(a.get(DOC_ID), str)]
    doc_table, doc_info = key_table.build(
        [parent for parent, _ in chunks],
        np.array([row for _, row in chunks], np.int64),
        [ids[row].encode() for _, row in chunks],
    )
    attrs, columns = attr_columns.build(ids, parsed, part_rows)
    files = {"attrs.bin": attrs, "fields.bin": fields, "rows.bin": entries,
             "ids.bin": ids_table, "doc_ids.bin": doc_table}
    return files, DocsLayout(len(ids), ids_info, doc_info, columns)
