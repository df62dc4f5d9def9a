"""Filters over a segment's attribute columns (:mod:`vectordb.attr_columns`).

Two things, both exact under the semantics of :mod:`vectordb.filters` (a property test
holds them to :func:`vectordb.filters.evaluate`):

* :func:`row_groups` -- from the column footers' statistics alone, which row groups (partitions)
  hold no match, which match in every row, and which must be read. Each condition gives,
  per row group, whether some row *may* satisfy it and whether some row *may not*; ``$and``,
  ``$or`` and ``$not`` combine those, so a group is skipped only when no row can match.
* :func:`matching_rows` -- the rows that match, over the columns a filter names, read for
  the groups that need it. Where every condition is on a typed column, by numpy and
  pyarrow.compute (:func:`typed_mask`); else by DuckDB SQL (:func:`sql_mask`), where typed
  columns compare typed values and ``json`` and ``$rest`` columns use the JSON SQL of
  :mod:`vectordb.filter_sql` on a path relative to the column.

A field whose top-level key the segment lacks is missing in every row: its conditions are
constants. Column identifiers in the SQL are our own (``c0``, ``c1``, ...), never keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vectordb.attr_columns import ID_COLUMN, REST_COLUMN, TYPED, ColumnSet
from vectordb.filter_sql import _FALSE, _TRUE, _shared_connection, _Sql, _sql, id_condition, json_condition
from vectordb.filters import ID_FIELD, MATCH_ALL, And, Condition, Filter, Not, Or, evaluate, is_number


@dataclass(frozen=True)
class _Target:
    """Where a field's values are: a column and the path inside it, or nowhere (missing)."""

    column: str | None  # None: the segment has no such key
    kind: str = ""
    steps: tuple[str, ...] = ()


def _target(field: str, kinds: dict[str, str]) -> _Target:
    if field == ID_FIELD:
        return _Target(ID_COLUMN, "id")
    steps = field.split(".")
    kind = kinds.get(steps[0])
    if kind is not None:
        return _Target(steps[0], kind, tuple(steps[1:]))
    if REST_COLUMN in kinds:
        return _Target(REST_COLUMN, "object", tuple(steps))
    return _Target(None)


def columns(filt: Filter, kinds: dict[str, str]) -> list[str]:
    """The columns ``filt`` reads, in a fixed order."""
    found: set[str] = set()

    def walk(node: Filter) -> None:
        if isinstance(node, (And, Or)):
            for child in node.children:
                walk(child)
        elif isinstance(node, Not):
            walk(node.child)
        else:
            target = _target(node.field, kinds)
            if target.column is not None and not (target.kind in TYPED and target.steps):
                found.add(target.column)

    walk(filt)
    return sorted(found)


def _missing_value(cond: Condition) -> bool:
    """What ``cond`` says of a row that lacks the field."""
    return evaluate(cond, "", {})


def _positive(cond: Condition) -> tuple[Condition, bool]:
    """``$ne``/``$nin`` as the negation of ``$eq``/``$in``: (positive condition, negated)."""
    if cond.op == "$ne":
        return Condition(cond.field, "$eq", cond.value), True
    if cond.op == "$nin":
        return Condition(cond.field, "$in", cond.value), True
    return cond, False


# --- which row groups to read -----------------------------------------------------------------


def row_groups(filt: Filter, cols: ColumnSet) -> tuple[np.ndarray, np.ndarray]:
    """(``read``, ``every``): per row group, whether it must be read, and whether every
    row of it matches without reading. Groups in neither hold no match."""
    may_true, may_false = _verdict(filt, cols)
    nonempty = np.diff(cols.starts) > 0
    read = may_true & may_false & nonempty
    every = may_true & ~may_false & nonempty
    return read, every


def _verdict(filt: Filter, cols: ColumnSet) -> tuple[np.ndarray, np.ndarray]:
    n = cols.groups
    if isinstance(filt, (And, Or)):
        parts = [_verdict(c, cols) for c in filt.children]
        if not parts:
            return (np.ones(n, bool), np.zeros(n, bool)) if isinstance(filt, And) else (np.zeros(n, bool), np.ones(n, bool))
        trues, falses = np.array([p[0] for p in parts]), np.array([p[1] for p in parts])
        if isinstance(filt, And):
            return trues.all(axis=0), falses.any(axis=0)
        return trues.any(axis=0), falses.all(axis=0)
    if isinstance(filt, Not):
        may_true, may_false = _verdict(filt.child, cols)
        return may_false, may_true
    cond, negated = _positive(filt)
    may_true, may_false = _condition_verdict(cond, cols)
    return (may_false, may_true) if negated else (may_true, may_false)


def _constant(value: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, value), np.full(n, not value)


def _condition_verdict(cond: Condition, cols: ColumnSet) -> tuple[np.ndarray, np.ndarray]:
    n = cols.groups
    target = _target(cond.field, cols.kinds)
    if target.column is None or (target.kind in TYPED and target.steps):
        return _constant(_missing_value(cond), n)  # missing everywhere (a path through a scalar too)
    if target.kind not in TYPED:
        return np.ones(n, bool), np.ones(n, bool)  # json, $rest and id: no statistics
    stats = cols.stats(target.column)
    unknown_nulls = stats.nulls < 0
    some_missing = unknown_nulls | (stats.nulls > 0)
    some_present = unknown_nulls | (stats.nulls < stats.rows)
    op, value = cond.op, cond.value
    if op == "$exists":
        return (some_present, some_missing) if value else (some_missing, some_present)
    if op == "$eq" and value is None:
        return some_missing, some_present
    if op in ("$eq", "$in"):
        values = (value,) if op == "$eq" else value
        matching = [v for v in values if _kind_of(v) == target.kind]  # type: ignore[union-attr]
        if not matching:
            return _constant(False, n)
        may_true, may_false = np.zeros(n, bool), np.ones(n, bool)
        for v in matching:
            t, f = _equals_verdict(stats, _typed_value(v, target.kind), some_present, some_missing)
            may_true |= t
            may_false &= f
        return may_true, may_false
    if op == "$contains":
        if target.kind == "string" and isinstance(value, str):
            return some_present, np.ones(n, bool)
        return _constant(False, n)
    # $gt $gte $lt $lte: a number or string target
    if _kind_of(value) != target.kind:
        return _constant(False, n)
    v = _typed_value(value, target.kind)
    low, high, known = stats.low, stats.high, stats.known
    with np.errstate(invalid="ignore"):
        if op == "$gt":
            some, every = _compare(known, high, v, ">"), _compare(known, low, v, ">")
        elif op == "$gte":
            some, every = _compare(known, high, v, ">="), _compare(known, low, v, ">=")
        elif op == "$lt":
            some, every = _compare(known, low, v, "<"), _compare(known, high, v, "<")
        else:
            some, every = _compare(known, low, v, "<="), _compare(known, high, v, "<=")
    may_true = some_present & (~known | some)
    may_false = some_missing | ~known | ~every
    return may_true, may_false


def _compare(known: np.ndarray, bound: np.ndarray, v: Any, op: str) -> np.ndarray:
    """``bound <op> v`` where the bound is known (False elsewhere)."""
    out = np.zeros(len(bound), bool)
    for g in np.flatnonzero(known).tolist():
        b = bound[g]
        out[g] = b > v if op == ">" else b >= v if op == ">=" else b < v if op == "<" else b <= v
    return out


def _equals_verdict(stats, v, some_present, some_missing) -> tuple[np.ndarray, np.ndarray]:
    known = stats.known
    inside = _compare(known, stats.low, v, "<=") & _compare(known, stats.high, v, ">=")
    only = _compare(known, stats.low, v, ">=") & _compare(known, stats.high, v, "<=")  # low == high == v
    return some_present & (~known | inside), some_missing | ~known | ~only


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _typed_value(value: Any, kind: str) -> Any:
    return float(value) if kind == "number" else value


# --- SQL over the columns ---------------------------------------------------------------------


def to_sql(filt: Filter, kinds: dict[str, str], identifiers: dict[str, str]) -> tuple[str, list[Any]]:
    """A DuckDB boolean expression over the columns (named by ``identifiers``: column ->
    our identifier), never NULL, with ``?`` placeholders for every value and path."""
    compiled = _compile(filt, kinds, identifiers)
    return compiled.text, list(compiled.params)


def _compile(filt: Filter, kinds, identifiers) -> _Sql:
    if isinstance(filt, (And, Or)):
        if not filt.children:
            return _TRUE if isinstance(filt, And) else _FALSE
        joiner = " AND " if isinstance(filt, And) else " OR "
        children = [_compile(c, kinds, identifiers) for c in filt.children]
        return _sql("(" + joiner.join("{}" for _ in children) + ")", *children)
    if isinstance(filt, Not):
        return _sql("(NOT {})", _compile(filt.child, kinds, identifiers))
    cond, negated = _positive(filt)
    positive = _condition_sql(cond, kinds, identifiers)
    return _sql("(NOT {})", positive) if negated else positive


def _condition_sql(cond: Condition, kinds, identifiers) -> _Sql:
    target = _target(cond.field, kinds)
    if target.column is None or (target.kind in TYPED and target.steps):
        return _TRUE if _missing_value(cond) else _FALSE
    col = identifiers[target.column]
    if target.kind == "id":
        return id_condition(cond.op, cond.value, col)
    if target.kind not in TYPED:
        return json_condition(col, target.steps, cond.op, cond.value)
    op, value = cond.op, cond.value
    if op == "$exists":
        return _sql(f"({col} IS NOT NULL)" if value else f"({col} IS NULL)")
    if op == "$eq" and value is None:
        return _sql(f"({col} IS NULL)")
    if op in ("$eq", "$in"):
        values = (value,) if op == "$eq" else value
        matching = [_typed_value(v, target.kind) for v in values if _kind_of(v) == target.kind]  # type: ignore[union-attr]
        if not matching:
            return _FALSE
        if len(matching) == 1:
            return _sql(f"coalesce({col} = {{}}, FALSE)", matching[0])
        return _sql(f"coalesce(list_contains({{}}, {col}), FALSE)", sorted(set(matching)))
    if op == "$contains":
        if target.kind == "string" and isinstance(value, str):
            return _sql(f"coalesce(contains({col}, {{}}), FALSE)", value)
        return _FALSE
    if _kind_of(value) != target.kind:
        return _FALSE
    symbol = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    return _sql(f"coalesce({col} {symbol} {{}}, FALSE)", _typed_value(value, target.kind))


def matching_rows(filt: Filter, kinds: dict[str, str], names: Sequence[str], table) -> np.ndarray:
    """Boolean mask over the rows of ``table`` (a pyarrow table whose columns are
    ``names``, the columns :func:`columns` asked for) that match ``filt``: by array
    operations when every condition is on a typed column (:func:`typed_mask`), else by
    DuckDB."""
    n = table.num_rows
    if filt == MATCH_ALL or n == 0:
        return np.ones(n, dtype=bool)
    mask = typed_mask(filt, kinds, names, table)
    return mask if mask is not None else sql_mask(filt, kinds, names, table)


def sql_mask(filt: Filter, kinds: dict[str, str], names: Sequence[str], table) -> np.ndarray:
    """:func:`matching_rows` by DuckDB, whatever the conditions."""
    import pyarrow as pa

    n = table.num_rows
    identifiers = {name: f"c{i}" for i, name in enumerate(names)}
    sql, params = to_sql(filt, kinds, identifiers)
    arrays = [pa.array(np.arange(n, dtype=np.int64))] + [table.column(i) for i in range(len(names))]
    rows = pa.table(arrays, names=["row", *identifiers.values()])
    cursor = _shared_connection().cursor()
    try:
        cursor.register("filter_rows", rows)
        found = cursor.execute(f"SELECT row FROM filter_rows WHERE {sql}", params).fetchnumpy()["row"]
    finally:
        cursor.close()
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(found, dtype=np.int64)] = True
    return mask


# --- the same, by array operations -----------------------------------------------------------


def typed_mask(filt: Filter, kinds: dict[str, str], names: Sequence[str], table) -> np.ndarray | None:
    """:func:`matching_rows` by numpy and pyarrow.compute, where every condition of ``filt``
    compares a typed column with values of its type (or names a field the segment lacks);
    None where one does not (``json``, ``$rest`` and id columns): DuckDB answers those. A
    year filter over a million rows takes ~0.5 ms here against ~13 ms through DuckDB. Same
    results as :func:`to_sql`'s SQL (a property test holds both to
    :func:`vectordb.filters.evaluate`)."""
    if not _all_typed(filt, kinds):
        return None
    arrays: dict[str, Any] = {}

    def column(name: str):
        if name not in arrays:
            chunked = table.column(list(names).index(name))
            arrays[name] = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        return arrays[name]

    return _typed(filt, kinds, column, table.num_rows)


def _all_typed(filt: Filter, kinds) -> bool:
    if isinstance(filt, (And, Or)):
        return all(_all_typed(c, kinds) for c in filt.children)
    if isinstance(filt, Not):
        return _all_typed(filt.child, kinds)
    target = _target(filt.field, kinds)
    return target.column is None or target.kind in TYPED


def _typed(filt: Filter, kinds, column, n: int) -> np.ndarray:
    if isinstance(filt, (And, Or)):
        parts = [_typed(c, kinds, column, n) for c in filt.children]
        if not parts:
            return np.full(n, isinstance(filt, And))
        out = parts[0].copy()
        for part in parts[1:]:
            if isinstance(filt, And):
                out &= part
            else:
                out |= part
        return out
    if isinstance(filt, Not):
        return ~_typed(filt.child, kinds, column, n)
    cond, negated = _positive(filt)
    mask = _typed_condition(cond, kinds, column, n)
    return ~mask if negated else mask


def _typed_condition(cond: Condition, kinds, column, n: int) -> np.ndarray:
    import pyarrow as pa

    target = _target(cond.field, kinds)
    if target.column is None or (target.kind in TYPED and target.steps):
        return np.full(n, _missing_value(cond))
    array = column(target.column)  # typed: _all_typed said so
    valid = np.ones(n, bool) if array.null_count == 0 else array.is_valid().to_numpy(zero_copy_only=False)
    op, value = cond.op, cond.value
    if op == "$exists":
        return valid.copy() if value else ~valid
    if op == "$eq" and value is None:
        return ~valid
    # Numbers by numpy alone; strings and booleans by pyarrow.compute (imported here, ~0.09 s
    # the first time: a fresh worker's first filter on numbers does not wait for it).
    if op == "$contains":
        if target.kind == "string" and isinstance(value, str):
            import pyarrow.compute as pc

            return _bools(pc.match_substring(array, value))
        return np.zeros(n, bool)
    if op in ("$eq", "$in"):
        values = (value,) if op == "$eq" else value
        matching = [_typed_value(v, target.kind) for v in values if _kind_of(v) == target.kind]  # type: ignore[union-attr]
        if not matching:
            return np.zeros(n, bool)
        if target.kind == "number":
            return valid & np.isin(array.to_numpy(zero_copy_only=False), np.asarray(matching, np.float64))
        import pyarrow.compute as pc

        return _bools(pc.is_in(array, value_set=pa.array(matching, type=array.type)))
    if _kind_of(value) != target.kind:
        return np.zeros(n, bool)
    v = _typed_value(value, target.kind)
    if target.kind == "number":
        numbers = array.to_numpy(zero_copy_only=False)  # nulls are NaN: no comparison holds
        with np.errstate(invalid="ignore"):
            held = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op](numbers, v)
        return valid & held
    import pyarrow.compute as pc

    compare = {"$gt": pc.greater, "$gte": pc.greater_equal, "$lt": pc.less, "$lte": pc.less_equal}[op]
    return _bools(compare(array, pa.scalar(v, type=array.type)))


def _bools(array) -> np.ndarray:
    """A pyarrow boolean array as numpy, null as False."""
    import pyarrow.compute as pc

    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)
