"""The JSON filter language of query and delete requests.

A filter is a JSON object. Keys that are field names hold a condition on that field;
keys that start with ``$`` are combinators. All keys of one object must hold (AND)::

    {"year": {"$gte": 2020, "$lt": 2024}, "lang": "en"}          # shorthand: "lang": {"$eq": "en"}
    {"$or": [{"tags": {"$contains": "faq"}}, {"meta.source": {"$in": ["wiki", "kb"]}}]}
    {"$not": {"id": {"$in": ["a", "b"]}}}
    {}                                                           # matches every document

Fields: ``id`` is the document id (a string, always present). Any other name matches
``[A-Za-z_][A-Za-z0-9_.-]{0,63}`` and is a path into the document's attributes; dots always
separate path steps (``meta.year`` is ``attributes["meta"]["year"]``; a key that itself
contains a dot cannot be addressed) and each step must be non-empty.

Semantics (the plain-Python :func:`evaluate` and the DuckDB SQL of :func:`to_sql` agree
exactly; a property test holds them to it). Attribute values are JSON: null, bool, number,
string, array, object. An attribute is *missing* when a step of its path is absent or is not
an object.

* Types never mix: a number only equals or orders against a number, a string against a
  string, a bool against a bool. ``true`` is not ``1``; ``1`` is not ``"1"``.
* Numbers compare as IEEE doubles, so ``1 == 1.0`` (and integers beyond 2**53 round).
  Strings compare by Unicode code point.
* ``$eq v`` -- the attribute is a scalar of v's type equal to v. Arrays and objects equal
  nothing (use ``$contains``). ``$eq null`` means "has no value": the attribute is JSON null
  or missing.
* ``$ne v`` is exactly ``$not {$eq v}``: it matches missing attributes and values of other
  types (MongoDB does the same). ``$ne null`` therefore means "has a non-null value".
* ``$in [v, ...]`` -- ``$eq`` for some listed v; ``$nin`` is exactly its negation.
* ``$gt $gte $lt $lte v`` (v a number or string) -- the attribute has v's type and compares so.
* ``$exists true`` -- the key is present (its value may be null); ``$exists false`` -- missing.
* ``$contains v`` -- the attribute is an array with an element that ``$eq`` v, or v is a string
  and the attribute is a string containing v as a substring (``""`` is in every string).
* On ``id``: string operators behave as on a string attribute; numbers and bools never match;
  ``$eq null`` never matches; ``$exists true`` always matches.

Limits: depth 16 (each combinator nests one level), 1,000 conditions and combinators, 1,000
values per ``$in``/``$nin`` and 10,000 listed values in all. Values must be finite numbers,
bools, valid Unicode strings, or (for ``$eq``/``$ne`` only) null.
"""

from __future__ import annotations

import math
import operator
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from vectordb.errors import InvalidArgument

MAX_DEPTH = 16
MAX_NODES = 1000
MAX_LIST_VALUES = 1000
MAX_TOTAL_VALUES = 10_000
ID_FIELD = "id"

EQUALITY_OPS = ("$eq", "$ne")
LIST_OPS = ("$in", "$nin")
ORDER_OPS = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPS = (*EQUALITY_OPS, *LIST_OPS, *ORDER_OPS, "$exists", "$contains")
COMBINATORS = ("$and", "$or", "$not")

_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Condition:
    """One operator applied to one field. ``value`` is a tuple for ``$in``/``$nin``."""

    field: str
    op: str
    value: Scalar | None | tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Filter


Filter = Condition | And | Or | Not
MATCH_ALL: Filter = And(())


# --- parsing --------------------------------------------------------------------------------


def parse_filter(obj: Any) -> Filter:
    """Validate a filter as decoded from JSON and return its tree.

    Raises InvalidArgument whose message starts with the path of the offending part,
    e.g. ``filter.$and[1].year: $gt needs a number or string``.
    """
    return _Parser().node(obj, "filter", 1)


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0
        self.values = 0

    def node(self, obj: Any, where: str, depth: int) -> Filter:
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"{where}: filter nests deeper than {MAX_DEPTH} levels")
        if not isinstance(obj, dict):
            raise InvalidArgument(f"{where}: a filter must be a JSON object, got {_type_name(obj)}")
        if not obj:
            self._count(where)  # {} matches everything; still a node of the tree
        parts: list[Filter] = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"{where}: keys must be strings")
            if key in COMBINATORS:
                self._count(where)
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise InvalidArgument(f"{where}.{key}: needs a non-empty list of filters")
                children = tuple(self.node(c, f"{where}.{key}[{i}]", depth + 1) for i, c in enumerate(value))
                parts.append(And(children) if key == "$and" else Or(children))
            elif key == "$not":
                parts.append(Not(self.node(value, f"{where}.$not", depth + 1)))
            elif key in FIELD_OPS:
                raise InvalidArgument(f'{where}: {key} applies to a field, as in {{"year": {{"{key}": ...}}}}')
            elif key.startswith("$"):
                raise InvalidArgument(f"{where}: unknown operator {_show(key)}")
            else:
                parts.extend(self._field(key, value, where))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def _field(self, field: str, spec: Any, where: str) -> list[Filter]:
        if not _FIELD_RE.fullmatch(field) or "" in field.split("."):
            raise InvalidArgument(
                f"{where}: invalid field name {_show(field)} (letters, digits, '_', '-', and '.' "
                "between path steps; at most 64 characters, not starting with a digit)"
            )
        where = f"{where}.{field}"
        if isinstance(spec, list):
            raise InvalidArgument(f"{where}: a list is not a value; use $in or $contains")
        if not isinstance(spec, dict):
            return [self._condition(field, "$eq", spec, where)]
        if not spec:
            raise InvalidArgument(f"{where}: empty operator object")
        conditions = []
        for op, value in spec.items():
            if op not in FIELD_OPS:
                if isinstance(op, str) and op.startswith("$"):
                    raise InvalidArgument(f"{where}: unknown operator {_show(op)}")
                raise InvalidArgument(
                    f"{where}: objects are not values; address nested attributes with a dotted name such as 'meta.year'"
                )
            conditions.append(self._condition(field, op, value, where))
        return conditions

    def _condition(self, field: str, op: str, value: Any, where: str) -> Condition:
        self._count(where)
        if op in EQUALITY_OPS:
            if value is not None:
                self._scalar(value, f"{where}: {op} needs a string, number, boolean or null")
        elif op in LIST_OPS:
            if not isinstance(value, list) or not value:
                raise InvalidArgument(f"{where}: {op} needs a non-empty list")
            if len(value) > MAX_LIST_VALUES:
                raise InvalidArgument(f"{where}: {op} lists at most {MAX_LIST_VALUES} values")
            self.values += len(value)
            if self.values > MAX_TOTAL_VALUES:
                raise InvalidArgument(f"{where}: a filter lists at most {MAX_TOTAL_VALUES} values in all")
            for i, item in enumerate(value):
                self._scalar(item, f"{where}: {op}[{i}] must be a string, number or boolean")
            value = tuple(value)
        elif op in ORDER_OPS:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise InvalidArgument(f"{where}: {op} needs a number or string")
            self._scalar(value, f"{where}: {op} needs a number or string")
        elif op == "$exists":
            if not isinstance(value, bool):
                raise InvalidArgument(f"{where}: $exists needs true or false")
        else:  # $contains
            self._scalar(value, f"{where}: $contains needs a string, number or boolean")
        return Condition(field, op, value)

    @staticmethod
    def _scalar(value: Any, message: str) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                raise InvalidArgument(f"{message} (integer out of range)") from None
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(f"{message} (numbers must be finite)")
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(f"{message} (strings must be valid Unicode)") from None
        else:
            raise InvalidArgument(f"{message}, got {_type_name(value)}")

    def _count(self, where: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise InvalidArgument(f"{where}: filter has more than {MAX_NODES} conditions and combinators")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _show(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


# --- reference semantics in Python ----------------------------------------------------------

_MISSING = object()
_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def evaluate(filt: Filter, doc_id: str, attributes: dict[str, Any] | None) -> bool:
    """Whether one document matches: the reference semantics that :func:`to_sql` follows."""
    if isinstance(filt, And):
        return all(evaluate(c, doc_id, attributes) for c in filt.children)
    if isinstance(filt, Or):
        return any(evaluate(c, doc_id, attributes) for c in filt.children)
    if isinstance(filt, Not):
        return not evaluate(filt.child, doc_id, attributes)
    value = doc_id if filt.field == ID_FIELD else _lookup(attributes or {}, filt.field)
    op, target = filt.op, filt.value
    if op == "$eq" and target is None:
        return value is _MISSING or value is None
    if op == "$eq":
        return _equals(value, target)
    if op == "$ne":
        return not evaluate(Condition(filt.field, "$eq", target), doc_id, attributes)
    if op == "$in":
        return any(_equals(value, t) for t in target)  # type: ignore[union-attr]
    if op == "$nin":
        return not any(_equals(value, t) for t in target)  # type: ignore[union-attr]
    if op == "$exists":
        return (value is not _MISSING) == target
    if op == "$contains":
        if isinstance(value, list):
            return any(_equals(item, target) for item in value)
        return isinstance(value, str) and isinstance(target, str) and target in value
    compare = _ORDER[op]
    if isinstance(target, str):
        return isinstance(value, str) and compare(value, target)
    return _is_number(value) and compare(_as_double(value), float(target))  # type: ignore[arg-type]


def _lookup(attributes: dict[str, Any], field: str) -> Any:
    value: Any = attributes
    for step in field.split("."):
        if not isinstance(value, dict) or step not in value:
            return _MISSING
        value = value[step]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_double(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the double range; JSON readers make it infinite
        return math.copysign(math.inf, value)


def _equals(value: Any, target: Scalar) -> bool:
    if isinstance(target, bool):
        return isinstance(value, bool) and value == target
    if isinstance(target, str):
        return isinstance(value, str) and value == target
    return _is_number(value) and _as_double(value) == float(target)


# --- DuckDB SQL -------------------------------------------------------------------------------

# json_type() names of JSON numbers in DuckDB; such a value is read as a DOUBLE from its text.
_NUMBER_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE')"
_AS_DOUBLE = "TRY_CAST(json_extract_string(attributes, {}) AS DOUBLE)"
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
        return _id_condition(filt.op, filt.value)
    return _attribute_condition(filt.field, filt.op, filt.value)


def _id_condition(op: str, target: Any) -> _Sql:
    if op == "$exists":
        return _TRUE if target else _FALSE
    if op == "$eq":
        return _sql("(id = {})", target) if isinstance(target, str) else _FALSE
    if op == "$in":
        strings = [t for t in target if isinstance(t, str)]
        return _sql("list_contains({}, id)", strings) if strings else _FALSE
    if not isinstance(target, str):
        return _FALSE
    if op == "$contains":
        return _sql("contains(id, {})", target)
    return _sql(f"(id {_SQL_ORDER[op]} {{}})", target)


def _attribute_condition(field: str, op: str, target: Any) -> _Sql:
    path = "$." + ".".join(f'"{step}"' for step in field.split("."))
    if op == "$exists":
        return _sql("(json_type(attributes, {}) IS " + ("NOT NULL)" if target else "NULL)"), path)
    if op == "$eq" and target is None:
        return _sql("(coalesce(json_type(attributes, {}), 'NULL') = 'NULL')", path)
    if op == "$eq":
        return _equals_any(path, (target,))
    if op == "$in":
        return _equals_any(path, target)
    if op == "$contains":
        return _contains(path, target)
    if isinstance(target, str):
        comparison = _sql(f"json_extract_string(attributes, {{}}) {_SQL_ORDER[op]} {{}}", path, target)
        return _typed(path, "= 'VARCHAR'", comparison)
    comparison = _sql(f"{_AS_DOUBLE} {_SQL_ORDER[op]} {{}}", path, float(target))
    return _typed(path, f"IN {_NUMBER_TYPES}", comparison)


def _equals_any(path: str, targets: Sequence[Scalar]) -> _Sql:
    """The attribute at ``path`` equals one of ``targets``, type for type."""
    strings = [t for t in targets if isinstance(t, str)]
    numbers = [float(t) for t in targets if _is_number(t)]
    bools = sorted({t for t in targets if isinstance(t, bool)})
    parts = []
    if strings:
        comparison = _sql("list_contains({}, json_extract_string(attributes, {}))", strings, path)
        parts.append(_typed(path, "= 'VARCHAR'", comparison))
    if numbers:
        comparison = _sql(f"list_contains({{}}, {_AS_DOUBLE})", numbers, path)
        parts.append(_typed(path, f"IN {_NUMBER_TYPES}", comparison))
    if bools:
        comparison = _sql("list_contains({}, TRY_CAST(json_extract_string(attributes, {}) AS BOOLEAN))", bools, path)
        parts.append(_typed(path, "= 'BOOLEAN'", comparison))
    return _sql("(" + " OR ".join("{}" for _ in parts) + ")", *parts)


def _contains(path: str, target: Scalar) -> _Sql:
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
        "coalesce(list_contains(list_transform(json_extract(attributes, {}), lambda e: " + element + "), {}), FALSE)",
        path + "[*]",
        target,
    )
    if not isinstance(target, str):
        return in_array
    substring = _typed(path, "= 'VARCHAR'", _sql("contains(json_extract_string(attributes, {}), {})", path, target))
    return _sql("({} OR {})", in_array, substring)


def _typed(path: str, type_test: str, comparison: _Sql) -> _Sql:
    """``comparison``, where the attribute's JSON type passes ``type_test``; else FALSE, never NULL."""
    return _sql(f"coalesce(json_type(attributes, {{}}) {type_test} AND {{}}, FALSE)", path, comparison)


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
    global _connection
    with _connection_lock:
        if _connection is None:
            _connection = duckdb.connect()
        return _connection
