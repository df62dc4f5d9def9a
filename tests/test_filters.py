"""The filter language: validation, the Python reference semantics, and SQL that agrees with it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectordb.errors import InvalidArgument
from vectordb.filter_sql import matching_rows, to_sql
from vectordb.filters import (
    MATCH_ALL,
    MAX_DEPTH,
    And,
    Condition,
    Not,
    Or,
    evaluate,
    parse_filter,
)

DOCS = [
    ("a", {"year": 2021, "lang": "en", "tags": ["faq", "billing"], "meta": {"source": "wiki", "score": 0.5}}),
    ("b", {"year": 2019.0, "lang": "de", "tags": ["faq"], "meta": {"source": "kb"}}),
    ("c", {"year": "2021", "lang": None, "tags": "faq and more", "flag": True}),
    ("d", {"year": True, "tags": [1, 2.5, True, None], "flag": 1}),
    ("e", {}),
]


def run(filter_json: object) -> list[str]:
    """Ids of DOCS that match, checking that SQL and Python agree on the way."""
    filt = parse_filter(filter_json)
    python = [doc_id for doc_id, attrs in DOCS if evaluate(filt, doc_id, attrs)]
    mask = matching_rows(filt, [d[0] for d in DOCS], [json.dumps(d[1]) for d in DOCS])
    assert [d[0] for d, m in zip(DOCS, mask, strict=True) if m] == python
    return python


# --- semantics on hand-picked documents --------------------------------------------------------


@pytest.mark.parametrize(
    ("filter_json", "expected"),
    [
        ({}, ["a", "b", "c", "d", "e"]),
        ({"year": 2021}, ["a"]),  # "2021" is a string and True is not a number
        ({"year": {"$eq": 2019}}, ["b"]),  # 2019 == 2019.0
        ({"year": {"$ne": 2021}}, ["b", "c", "d", "e"]),  # missing matches $ne
        ({"year": {"$gte": 2020}}, ["a"]),
        ({"year": {"$gt": "2000"}}, ["c"]),  # strings order against strings only
        ({"year": {"$in": [2019, "2021", True]}}, ["b", "c", "d"]),
        ({"year": {"$nin": [2019, "2021"]}}, ["a", "d", "e"]),
        ({"lang": None}, ["c", "d", "e"]),  # null or missing
        ({"lang": {"$ne": None}}, ["a", "b"]),
        ({"lang": {"$exists": True}}, ["a", "b", "c"]),  # present, even when null
        ({"lang": {"$exists": False}}, ["d", "e"]),
        ({"tags": {"$contains": "faq"}}, ["a", "b", "c"]),  # array element or substring
        ({"tags": {"$contains": "and"}}, ["c"]),
        ({"tags": {"$contains": 1}}, ["d"]),  # the number 1, not True
        ({"tags": {"$contains": 2.5}}, ["d"]),
        ({"tags": {"$contains": True}}, ["d"]),
        ({"tags": "faq"}, []),  # $eq never matches an array
        ({"flag": True}, ["c"]),  # True is not 1
        ({"flag": 1}, ["d"]),
        ({"meta.source": "kb"}, ["b"]),
        ({"meta.score": {"$lt": 1}}, ["a"]),
        ({"meta.source.x": {"$exists": True}}, []),  # a path through a string is missing
        ({"year.x": None}, ["a", "b", "c", "d", "e"]),
        ({"id": {"$in": ["a", "e", 5]}}, ["a", "e"]),
        ({"id": {"$gt": "b"}}, ["c", "d", "e"]),
        ({"id": 1}, []),
        ({"id": None}, []),
        ({"id": {"$exists": True}}, ["a", "b", "c", "d", "e"]),
        ({"$or": [{"lang": "de"}, {"flag": True}]}, ["b", "c"]),
        ({"$not": {"tags": {"$contains": "faq"}}}, ["d", "e"]),
        ({"$and": [{"year": {"$exists": True}}, {"$not": {"year": 2021}}]}, ["b", "c", "d"]),
        ({"year": {"$gt": 2000, "$lt": 2020}, "lang": "de"}, ["b"]),
    ],
)
def test_semantics(filter_json: object, expected: list[str]) -> None:
    assert run(filter_json) == expected


def test_parse_builds_a_tree() -> None:
    assert parse_filter({}) == MATCH_ALL
    assert parse_filter({"a": 1}) == Condition("a", "$eq", 1)
    assert parse_filter({"a": {"$in": [1, "x"]}, "$not": {"b": {"$exists": False}}}) == And(
        (Condition("a", "$in", (1, "x")), Not(Condition("b", "$exists", False)))
    )
    assert parse_filter({"$or": [{"a": 1}, {"b": 2}]}) == Or((Condition("a", "$eq", 1), Condition("b", "$eq", 2)))


def test_matching_rows_edge_cases() -> None:
    filt = parse_filter({"a": {"$ne": 1}})
    assert matching_rows(filt, [], []).tolist() == []
    assert matching_rows(filt, ["x", "y"], [None, '{"a": 1}']).tolist() == [True, False]
    with pytest.raises(ValueError, match="ids"):
        matching_rows(filt, ["x"], [])


def test_matching_rows_from_many_threads() -> None:
    ids = [str(i) for i in range(200)]
    attrs = [json.dumps({"n": i}) for i in range(200)]

    def count(threshold: int) -> int:
        return int(matching_rows(parse_filter({"n": {"$lt": threshold}}), ids, attrs).sum())

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(count, range(200))) == list(range(200))


def test_matching_rows_100k_rows() -> None:
    n = 100_000
    ids = [f"doc-{i}" for i in range(n)]
    attrs = [
        json.dumps({"year": 1990 + i % 40, "tags": ["a", "b"] if i % 3 else ["c"], "m": {"s": i % 7}}) for i in range(n)
    ]
    filt = parse_filter({"year": {"$gte": 2020}, "$or": [{"tags": {"$contains": "c"}}, {"m.s": {"$in": [1, 2]}}]})
    mask = matching_rows(filt, ids, attrs)
    expected = [(1990 + i % 40 >= 2020) and (i % 3 == 0 or i % 7 in (1, 2)) for i in range(n)]
    assert mask.tolist() == expected


# --- validation --------------------------------------------------------------------------------


def nested_not(depth: int) -> dict:
    filt: dict = {"a": 1}
    for _ in range(depth - 1):
        filt = {"$not": filt}
    return filt


@pytest.mark.parametrize(
    ("filter_json", "message"),
    [
        (None, "filter: a filter must be a JSON object, got null"),
        ([{"a": 1}], "filter: a filter must be a JSON object, got list"),
        ({"a": {"$regex": "x"}}, "filter.a: unknown operator '$regex'"),
        ({"$nor": []}, "filter: unknown operator '$nor'"),
        ({"$eq": 1}, "filter: $eq applies to a field"),
        ({"$and": []}, "filter.$and: needs a non-empty list of filters"),
        ({"$or": {"a": 1}}, "filter.$or: needs a non-empty list of filters"),
        ({"$not": [{"a": 1}]}, "filter.$not: a filter must be a JSON object, got list"),
        ({"$and": [{"a": 1}, {"year": {"$gt": True}}]}, "filter.$and[1].year: $gt needs a number or string"),
        ({"year": {"$gt": None}}, "filter.year: $gt needs a number or string"),
        ({"year": {"$lte": [1]}}, "filter.year: $lte needs a number or string"),
        ({"a": float("nan")}, "filter.a: $eq needs a string, number, boolean or null (numbers must be finite)"),
        ({"a": {"$gt": float("inf")}}, "numbers must be finite"),
        (
            {"a": {"$in": [1, float("-inf")]}},
            "filter.a: $in[1] must be a string, number or boolean (numbers must be finite)",
        ),
        ({"a": 10**400}, "integer out of range"),
        ({"a": "\ud800"}, "strings must be valid Unicode"),
        ({"a": {"$in": []}}, "filter.a: $in needs a non-empty list"),
        ({"a": {"$nin": "x"}}, "filter.a: $nin needs a non-empty list"),
        ({"a": {"$in": [None]}}, "filter.a: $in[0] must be a string, number or boolean, got null"),
        ({"a": {"$in": [[1]]}}, "got list"),
        ({"a": {"$in": list(range(1001))}}, "at most 1000 values"),
        ({"a": {"$exists": 1}}, "filter.a: $exists needs true or false"),
        ({"a": {"$contains": None}}, "filter.a: $contains needs a string, number or boolean"),
        ({"a": {"$contains": [1]}}, "$contains needs"),
        ({"a": [1, 2]}, "filter.a: a list is not a value; use $in or $contains"),
        ({"a": {}}, "filter.a: empty operator object"),
        ({"meta": {"year": 1}}, "filter.meta: objects are not values"),
        ({"a": {"$eq": 1, "b": 2}}, "filter.a: objects are not values"),
        ({"a": {"$eq": {"$eq": 1}}}, "got object"),
        ({"1abc": 1}, "filter: invalid field name '1abc'"),
        ({"": 1}, "invalid field name ''"),
        ({"a..b": 1}, "invalid field name 'a..b'"),
        ({"a.": 1}, "invalid field name 'a.'"),
        ({"a b": 1}, "invalid field name"),
        ({"é": 1}, "invalid field name"),
        ({"x" * 65: 1}, "invalid field name"),
        ({"a'); DROP TABLE docs; --": 1}, "invalid field name"),
        ({'a"].b': 1}, "invalid field name"),
        ({"$and": [{"$or": [{"a": 1}, {"b": {"$in": [1, {}]}}]}]}, "filter.$and[0].$or[1].b: $in[1] must be"),
        (nested_not(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH} levels"),
        ({"$or": [{"a": i} for i in range(1000)]}, "more than 1000 conditions"),
        ({"$or": [{"a": {"$in": list(range(1000))}} for _ in range(11)]}, "10000 values in all"),
    ],
)
def test_invalid_filters_name_the_path(filter_json: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_filter(filter_json)
    assert message in info.value.message
    assert info.value.status == 400


def test_limits_are_inclusive() -> None:
    parse_filter(nested_not(MAX_DEPTH))
    parse_filter({"$or": [{"a": i} for i in range(999)]})  # one combinator and 999 conditions
    parse_filter({"a": {"$in": list(range(1000))}})
    parse_filter({"x" * 64: 1, "a-b_c.d-9": 1})


# --- injection --------------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE docs; --",
    "x' OR '1'='1",
    '"; DELETE FROM docs; --',
    "?",
    "$1",
    "\\'",
    "') OR TRUE --",
    "a\x00b",
    "$.a",
    "*/ SELECT 1 /*",
]


def test_hostile_values_are_only_data() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE docs (id VARCHAR, attributes VARCHAR)")
    rows = [(value, json.dumps({"a": value, "tags": [value]})) for value in HOSTILE] + [("plain", '{"a": "x"}')]
    con.executemany("INSERT INTO docs VALUES (?, ?)", rows)
    for value in HOSTILE:
        for filter_json in (
            {"a": value},
            {"id": {"$in": [value, "plain"]}},
            {"tags": {"$contains": value}},
            {"a": {"$gte": value}},
            {"$not": {"id": value}},
        ):
            filt = parse_filter(filter_json)
            sql, params = to_sql(filt)
            assert value not in sql or value in ("?", "$.a")  # only our own placeholders and paths
            got = [r[0] for r in con.execute(f"SELECT id FROM docs WHERE {sql} ORDER BY rowid", params).fetchall()]
            assert got == [doc_id for doc_id, attrs in rows if evaluate(filt, doc_id, json.loads(attrs))]
    assert con.execute("SELECT count(*) FROM docs").fetchone() == (len(rows),)


def test_field_paths_travel_as_parameters() -> None:
    sql, params = to_sql(parse_filter({"meta.sub-key_1": {"$gt": 3}}))
    assert "meta" not in sql
    assert '$."meta"."sub-key_1"' in params


# --- property: SQL == Python --------------------------------------------------------------------

KEYS = ["a", "b", "meta", "x-y", "0"]
FIELDS = ["a", "b", "meta", "x-y", "meta.a", "meta.b", "a.a", "meta.0", "a.0", "id"]
STRINGS = st.sampled_from(["", "a", "b", "ab", "ba", "A", "1", "é", "😀", "a\x00", "\uffff", "null", "true"])
FILTER_NUMBERS = st.sampled_from([0, 1, 2, -1, 0.5, 1.0, -0.0, 2.5, 10**20, 2**53 + 1])
FILTER_SCALARS = st.one_of(STRINGS, FILTER_NUMBERS, st.booleans())

ATTR_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    FILTER_NUMBERS,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    STRINGS,
    st.text(max_size=5),
)
ATTR_VALUES = st.recursive(
    ATTR_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8,
)
ATTRIBUTES = st.dictionaries(st.sampled_from(KEYS), ATTR_VALUES, max_size=4)
DOC_IDS = st.one_of(STRINGS, st.text(max_size=4))


def conditions() -> st.SearchStrategy[dict]:
    field = st.sampled_from(FIELDS)
    return st.one_of(
        st.builds(lambda f, v: {f: v}, field, st.one_of(st.none(), FILTER_SCALARS)),
        st.builds(
            lambda f, op, v: {f: {op: v}}, field, st.sampled_from(["$eq", "$ne"]), st.one_of(st.none(), FILTER_SCALARS)
        ),
        st.builds(
            lambda f, op, v: {f: {op: v}},
            field,
            st.sampled_from(["$in", "$nin"]),
            st.lists(FILTER_SCALARS, min_size=1, max_size=4),
        ),
        st.builds(
            lambda f, op, v: {f: {op: v}},
            field,
            st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
            st.one_of(STRINGS, FILTER_NUMBERS),
        ),
        st.builds(lambda f, v: {f: {"$exists": v}}, field, st.booleans()),
        st.builds(lambda f, v: {f: {"$contains": v}}, field, FILTER_SCALARS),
    )


FILTERS = st.recursive(
    conditions(),
    lambda inner: st.one_of(
        st.builds(lambda cs: {"$and": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"$or": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"$not": c}, inner),
        st.builds(lambda a, b: {**a, **b}, inner, inner),
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FILTERS, st.lists(st.tuples(DOC_IDS, ATTRIBUTES), min_size=1, max_size=12))
def test_sql_agrees_with_python(filter_json: dict, docs: list[tuple[str, dict]]) -> None:
    filt = parse_filter(filter_json)
    mask = matching_rows(filt, [d[0] for d in docs], [json.dumps(d[1]) for d in docs])
    expected = np.array([evaluate(filt, doc_id, attrs) for doc_id, attrs in docs])
    assert mask.tolist() == expected.tolist()
