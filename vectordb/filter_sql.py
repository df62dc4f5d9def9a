"""Compiling a parsed filter (:mod:`vectordb.filters`) to parameterised DuckDB SQL, and
running it over a segment's rows.

Nothing from the client is ever put into SQL text: values and JSON paths are ``?``
parameters; only fixed fragments are concatenated. The semantics are those documented in
:mod:`vectordb.filters`, and a property test holds this SQL to the Python reference.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vectordb.filters import ID_FIELD, MATCH_ALL, And, Condition, Filter, Not, Or, Scalar, is_number

if TYPE_CHECKING:
    import duckdb

# --- DuckDB SQL -------------------------------------------------------------------------------

# json_type() names of JSON numbers in DuckDB; such a value is read as a DOUBLE from its text.
_NUMBER_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE')"
_AS_DOUBLE = "TRY_CAST(json_extract_string({col}, {{}}) AS DOUBLE)"
_SQL_ORDER = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


@dataclass(frozen=True, slots=True)
class _Sql:
    """A fragment of SQL text and the values of its ``?`` placeholders, in text order."""

    text: str
    params: tuple[Any, ...] = ()


def _sql(template: str, *parts: Any) -> _Sql:
    """Fill the ``{}`` slots of a fixed template in order: a :class:`_Sql` is spliced in,
    anything else becomes a ``?`` placeholder whose value joins the parameters."""
    texts: list[str] = []
    params: list[Any] = []
    for part in parts:
        if isinstance(part, _Sql):
            texts.append(part.text)
            params.extend(part.params)
        else:
            texts.append("?")
            params.append(part)
    return _Sql(template.format(*texts), tuple(params))


_TRUE, _FALSE = _Sql("TRUE"), _Sql("FALSE")


def to_sql(filt: Filter) -> tuple[str, list[Any]]:
    """Compile to a DuckDB boolean expression over columns ``id VARCHAR`` and ``attributes
    VARCHAR`` (JSON text, NULL meaning no attributes), with ``?`` placeholders.

    Every user value and every field path travels as a parameter; the SQL text is built
    only from fixed fragments. The expression is never NULL, so ``NOT`` is exact.
    """
    compiled = _compile(filt)
    return compiled.text, list(compiled.params)


def _compile(filt: Filter) -> _Sql:
    if isinstance(filt, (And, Or)):
        if not filt.children:
            return _TRUE if isinstance(filt, And) else _FALSE
        joiner = " AND " if isinstance(filt, And) else " OR "
        children = [_compile(c) for c in filt.children]
        return _sql("(" + joiner.join("{}" for _ in children) + ")", *children)
    if isinstance(filt, Not):
        return _sql("(NOT {})", _compile(filt.child))
    if filt.op in ("$ne", "$nin"):
        positive = Condition(filt.field, "$eq" if filt.op == "$ne" else "$in", filt.value)
        return _sql("(NOT {})", _compile(positive))
    if filt.field == ID_FIELD:
        return id_condition(filt.op, filt.value)
    return json_condition("attributes", filt.field.split("."), filt.op, filt.value)


def id_condition(op: str, target: Any, col: str = "id") -> _Sql:
    """A positive condition (not ``$ne``/``$nin``) on the id in column ``col`` (one of our
    own identifiers, never client text)."""
    if op == "$exists":
        return _TRUE if target else _FALSE
    if op == "$eq":
        return _sql(f"({col} = {{}})", target) if isinstance(target, str) else _FALSE
    if op == "$in":
        strings = [t for t in target if isinstance(t, str)]
        return _sql(f"list_contains({{}}, {col})", strings) if strings else _FALSE
    if not isinstance(target, str):
        return _FALSE
    if op == "$contains":
        return _sql(f"contains({col}, {{}})", target)
    return _sql(f"({col} {_SQL_ORDER[op]} {{}})", target)


def json_condition(col: str, steps: Sequence[str], op: str, target: Any) -> _Sql:
    """A positive condition on the JSON value at path ``steps`` inside the JSON text of
    column ``col`` (our own identifier; an empty path is the column's value itself)."""
    path = "$" + "".join(f'."{step}"' for step in steps)
    if op == "$exists":
        return _sql(f"(json_type({col}, {{}}) IS " + ("NOT NULL)" if target else "NULL)"), path)
    if op == "$eq" and target is None:
        return _sql(f"(coalesce(json_type({col}, {{}}), 'NULL') = 'NULL')", path)
    if op == "$eq":
        return _equals_any(col, path, (target,))
    if op == "$in":
        return _equals_any(col, path, target)
    if op == "$contains":
        return _contains(col, path, target)
    if isinstance(target, str):
        comparison = _sql(f"json_extract_string({col}, {{}}) {_SQL_ORDER[op]} {{}}", path, target)
        return _typed(col, path, "= 'VARCHAR'", comparison)
    comparison = _sql(f"{_AS_DOUBLE.format(col=col)} {_SQL_ORDER[op]} {{}}", path, float(target))
    return _typed(col, path, f"IN {_NUMBER_TYPES}", comparison)


def _equals_any(col: str, path: str, targets: Sequence[Scalar]) -> _Sql:
    """The value at ``path`` equals one of ``targets``, type for type."""
    strings = [t for t in targets if isinstance(t, str)]
    numbers = [float(t) for t in targets if is_number(t)]
    bools = sorted({t for t in targets if isinstance(t, bool)})
    parts = []
    if strings:
        comparison = _sql(f"list_contains({{}}, json_extract_string({col}, {{}}))", strings, path)
        parts.append(_typed(col, path, "= 'VARCHAR'", comparison))
    if numbers:
        comparison = _sql(f"list_contains({{}}, {_AS_DOUBLE.format(col=col)})", numbers, path)
        parts.append(_typed(col, path, f"IN {_NUMBER_TYPES}", comparison))
    if bools:
        comparison = _sql(f"list_contains({{}}, TRY_CAST(json_extract_string({col}, {{}}) AS BOOLEAN))", bools, path)
        parts.append(_typed(col, path, "= 'BOOLEAN'", comparison))
    return _sql("(" + " OR ".join("{}" for _ in parts) + ")", *parts)


def _contains(col: str, path: str, target: Scalar) -> _Sql:
    # json_extract with a trailing [*] yields the elements of an array (as JSON) and [] for
    # anything else; each element becomes a value of the target's type or NULL.
    if isinstance(target, bool):
        element = "CASE WHEN json_type(e) = 'BOOLEAN' THEN TRY_CAST(json_extract_string(e, '$') AS BOOLEAN) END"
    elif isinstance(target, str):
        element = "CASE WHEN json_type(e) = 'VARCHAR' THEN json_extract_string(e, '$') END"
    else:
        element = f"CASE WHEN json_type(e) IN {_NUMBER_TYPES} THEN TRY_CAST(json_extract_string(e, '$') AS DOUBLE) END"
        target = float(target)
    in_array = _sql(
        f"coalesce(list_contains(list_transform(json_extract({col}, {{}}), lambda e: " + element + "), {}), FALSE)",
        path + "[*]",
        target,
    )
    if not isinstance(target, str):
        return in_array
    substring = _typed(col, path, "= 'VARCHAR'", _sql(f"contains(json_extract_string({col}, {{}}), {{}})", path, target))
    return _sql("({} OR {})", in_array, substring)


def _typed(col: str, path: str, type_test: str, comparison: _Sql) -> _Sql:
    """``comparison``, where the value's JSON type passes ``type_test``; else FALSE, never NULL."""
    return _sql(f"coalesce(json_type({col}, {{}}) {type_test} AND {{}}, FALSE)", path, comparison)


# --- running it -----------------------------------------------------------------------------

_connection_lock = threading.Lock()
_connection: duckdb.DuckDBPyConnection | None = None


def matching_rows(
    filt: Filter,
    ids: Sequence[str] | pa.Array,
    attributes_json: Sequence[str | None] | pa.Array,
) -> np.ndarray:
    """Boolean mask over the rows (``ids[i]``, ``attributes_json[i]``) that match ``filt``.

    ``attributes_json`` holds each row's attributes as JSON text (None: no attributes).
    Runs the SQL of :func:`to_sql` in DuckDB; safe to call from several threads.
    """
    ids_array = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    attrs_array = attributes_json if isinstance(attributes_json, pa.Array) else pa.array(attributes_json, pa.string())
    n = len(ids_array)
    if len(attrs_array) != n:
        raise ValueError(f"{n} ids but {len(attrs_array)} attribute rows")
    if filt == MATCH_ALL or n == 0:
        return np.ones(n, dtype=bool)
    sql, params = to_sql(filt)
    rows = pa.table({"row": pa.array(np.arange(n, dtype=np.int64)), "id": ids_array, "attributes": attrs_array})
    # One cursor per call: cursors share the database but not state, so calls from
    # several threads do not interfere and the registered table stays private.
    cursor = _shared_connection().cursor()
    try:
        cursor.register("filter_rows", rows)
        found = cursor.execute(f"SELECT row FROM filter_rows WHERE {sql}", params).fetchnumpy()["row"]
    finally:
        cursor.close()
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(found, dtype=np.int64)] = True
    return mask


def _shared_connection() -> duckdb.DuckDBPyConnection:
    """The process's DuckDB connection. DuckDB (~0.1 s to import) is imported by the first
    filter that needs it: one over typed columns only never does
    (:func:`vectordb.filter_columns.typed_mask`)."""
    global _connection
    with _connection_lock:
        if _connection is None:
            import duckdb

            _connection = duckdb.connect()
        return _connection
