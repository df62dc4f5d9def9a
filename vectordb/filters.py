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
from dataclasses import dataclass
from typing import Any

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
    return is_number(value) and compare(_as_double(value), float(target))  # type: ignore[arg-type]


def _lookup(attributes: dict[str, Any], field: str) -> Any:
    value: Any = attributes
    for step in field.split("."):
        if not isinstance(value, dict) or step not in value:
            return _MISSING
        value = value[step]
    return value


def is_number(value: Any) -> bool:
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
    return is_number(value) and _as_double(value) == float(target)
