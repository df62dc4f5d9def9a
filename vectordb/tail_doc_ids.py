"""Which tail rows are chunks of given documents, without a pass over the whole tail.

Re-ingesting a document replaces its chunks, so every upsert in a chunking namespace asks
which rows carry ``doc_id`` in the documents it writes; segments answer from
``doc_ids.bin``. For the tail this keeps, per tail version, each row's ``doc_id`` (a string,
or null) as an Arrow column, made from the previous version's like the tail itself (rows
kept, then the appended rows' own attributes parsed), so a write costs the rows written
since, and the question is one vectorised ``is_in`` in C.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import numpy as np

from vectordb.docs_format import DOC_ID
from vectordb.memo import Memo
from vectordb.tail import Tail

_MAX_STEPS = 256  # versions back to look for a column to extend


def doc_id_of(attributes: str | None) -> str | None:
    """A row's string ``doc_id`` attribute (its attributes as JSON text), or None."""
    if not attributes:
        return None
    value = json.loads(attributes)
    parent = value.get(DOC_ID) if isinstance(value, dict) else None
    return parent if isinstance(parent, str) else None


class TailDocIds:
    """Per tail version, the ``doc_id`` column of its rows (byte-bounded memo)."""

    def __init__(self, max_bytes: int) -> None:
        self._columns = Memo(1 << 12, max_bytes, lambda column: column.nbytes)

    def column(self, tail: Tail):
        """A pyarrow string array: the ``doc_id`` of each of ``tail``'s rows (null: none)."""
        import pyarrow as pa

        def make():
            chain, version = [], tail
            for _ in range(_MAX_STEPS):
                parent = version.parent
                if parent is None or version.step is None:
                    break
                chain.append(version)
                held = self._columns.peek(parent.serial)
                if held is not None:
                    column = held
                    for later in reversed(chain):
                        step = later.step
                        kept = column if step.kept is None else column.take(pa.array(step.kept))
                        fresh = pa.array([doc_id_of(a) for a in step.appended.attributes], pa.string())
                        column = pa.concat_arrays([kept, fresh])
                    return column
                version = parent
            return pa.array([doc_id_of(a) for a in tail.rows.attributes], pa.string())

        return self._columns.get(tail.serial, make)

    def ids_of(self, tail: Tail, parents: Collection[str]) -> list[str]:
        """Ids of the tail's rows whose ``doc_id`` is one of ``parents``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not parents or not len(tail):
            return []
        found = pc.is_in(self.column(tail), value_set=pa.array(list(parents), pa.string()))
        rows = np.flatnonzero(found.to_numpy(zero_copy_only=False))
        ids = tail.rows.ids
        return [ids[r] for r in rows.tolist()]
