"""Documents read by range (issue 12): attribute columns, fields by row, id and doc_id
lookups, chunked documents, and the whole-docs layout that older segments keep."""

from __future__ import annotations

import functools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.service import Service
from bench.counting import CountingStore
from query import documents
from storage.cache import CachedStore
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from tests.test_filters import ATTR_SCALARS, ATTR_VALUES, FILTER_NUMBERS, FILTER_SCALARS, KEYS, STRINGS
from vectordb import doc_fields, docs_format, docs_reader, filter_columns, key_table, segment
from vectordb.attr_columns import ColumnSet
from vectordb.docs_reader import DocsReader
from vectordb.errors import DocumentNotFound
from vectordb.filters import evaluate, parse_filter

POOL = ThreadPoolExecutor(8)


def _docs_reader(ids, attributes, part_rows, texts=None):
    """A by-range segment's document files in a memory store, and a reader over them."""
    texts = texts if texts is not None else [None] * len(ids)
    files, layout = docs_format.build(list(ids), list(texts), list(attributes), np.asarray(part_rows, np.int64))
    store = MemoryStore()
    for name, data in files.items():
        store.put("seg/" + name, data)
    return DocsReader(store, POOL, 1 << 26), "seg/", layout


# --- filters over attribute columns == the Python reference -----------------------------------

NUMBERS = st.one_of(FILTER_NUMBERS, st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))
FIELDS = ["n", "s", "b", "m", "meta", "meta.a", "n.x", "a", "x-y", "a.0", "id", "absent"]


@st.composite
def segments(draw):
    """Rows whose keys are typed in some examples (a column of numbers, strings, bools) and
    mixed in others, sorted by ``n`` into row groups of random sizes (empty ones too), so
    groups' statistics differ and some can be skipped."""
    n = draw(st.integers(1, 30))
    typed = draw(st.booleans())
    rows = []
    for i in range(n):
        attrs = draw(st.dictionaries(st.sampled_from(KEYS), ATTR_VALUES, max_size=2))
        if draw(st.booleans()):
            attrs["n"] = draw(NUMBERS if typed else ATTR_SCALARS)
        if draw(st.booleans()):
            attrs["s"] = draw(STRINGS if typed else ATTR_VALUES)
        if draw(st.booleans()):
            attrs["b"] = draw(st.booleans() if typed else ATTR_SCALARS)
        if draw(st.booleans()):
            attrs["m"] = draw(ATTR_VALUES)
        rows.append((f"d{i}", attrs))
    rows.sort(key=lambda r: (type(r[1].get("n")).__name__, str(r[1].get("n"))))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return rows, [0, *cuts, n]


def _conditions() -> st.SearchStrategy[dict]:
    field = st.sampled_from(FIELDS)
    return st.one_of(
        st.builds(lambda f, v: {f: v}, field, st.one_of(st.none(), FILTER_SCALARS, NUMBERS)),
        st.builds(lambda f, op, v: {f: {op: v}}, field, st.sampled_from(["$ne", "$eq"]), st.one_of(st.none(), FILTER_SCALARS)),
        st.builds(lambda f, op, v: {f: {op: v}}, field, st.sampled_from(["$in", "$nin"]),
                  st.lists(st.one_of(FILTER_SCALARS, NUMBERS), min_size=1, max_size=4)),
        st.builds(lambda f, op, v: {f: {op: v}}, field, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
                  st.one_of(STRINGS, NUMBERS)),
        st.builds(lambda f, v: {f: {"$exists": v}}, field, st.booleans()),
        st.builds(lambda f, v: {f: {"$contains": v}}, field, FILTER_SCALARS),
    )


FILTERS = st.recursive(
    _conditions(),
    lambda inner: st.one_of(
        st.builds(lambda cs: {"$and": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"$or": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"$not": c}, inner),
    ),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments(), st.lists(FILTERS, min_size=1, max_size=3), st.booleans())
def test_column_filters_agree_with_python_and_skip_only_groups_without_matches(segment_rows, filters, whole):
    rows, part_rows = segment_rows
    reader, base, layout = _docs_reader([r[0] for r in rows], [json.dumps(r[1]) for r in rows], part_rows)
    # Columns read whole with their footers, or by row group after them.
    reader._whole_column = docs_reader._WHOLE_COLUMN if whole else 0
    for raw in filters:
        filt = parse_filter(raw)
        expected = [evaluate(filt, doc_id, attrs) for doc_id, attrs in rows]
        assert reader.filter_mask(base, layout, part_rows, filt).tolist() == expected
        names = filter_columns.columns(filt, layout.kinds)
        cols = ColumnSet(layout.kinds, np.asarray(part_rows), reader.footers(base, layout, names))
        read, every = filter_columns.row_groups(filt, cols)
        for g in range(len(part_rows) - 1):
            group = expected[part_rows[g] : part_rows[g + 1]]
            if every[g]:
                assert all(group)
            elif not read[g]:
                assert not any(group)  # skipped: statistics ruled every row out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments(), st.lists(FILTERS, min_size=1, max_size=3))
def test_array_operations_agree_with_duckdb_and_python(segment_rows, filters):
    rows, part_rows = segment_rows
    reader, base, layout = _docs_reader([r[0] for r in rows], [json.dumps(r[1]) for r in rows], part_rows)
    for raw in filters:
        filt = parse_filter(raw)
        names = filter_columns.columns(filt, layout.kinds)
        if not names:
            continue  # no column to read: the statistics answer (filter_mask reads nothing)
        table = reader.columns(base, layout, names, range(len(part_rows) - 1))
        expected = [evaluate(filt, doc_id, attrs) for doc_id, attrs in rows]
        assert filter_columns.sql_mask(filt, layout.kinds, names, table).tolist() == expected
        typed = filter_columns.typed_mask(filt, layout.kinds, names, table)
        assert typed is None or typed.tolist() == expected


def test_typed_filters_take_array_operations():
    ids = [f"r{i}" for i in range(300)]
    attrs = [json.dumps({"year": 1990 + i % 30, "tenant": f"t{i % 7}", "ok": i % 2 == 0, **({"x": i} if i % 3 else {})})
             for i in range(300)]
    reader, base, layout = _docs_reader(ids, attrs, [0, 100, 200, 300])
    for raw in ({"year": {"$gte": 2013}}, {"tenant": "t3", "year": 2000}, {"tenant": {"$in": ["t1", "t2"]}},
                {"$or": [{"ok": True}, {"x": {"$exists": False}}]}, {"tenant": {"$gt": "t4"}},
                {"$not": {"year": {"$in": [1991, 1992.0]}}}, {"tenant": {"$contains": "5"}}, {"absent": None, "ok": False},
                {"x": {"$ne": 4}}, {"year": "1990"}):
        filt = parse_filter(raw)
        names = filter_columns.columns(filt, layout.kinds)
        table = reader.columns(base, layout, names, range(3))
        typed = filter_columns.typed_mask(filt, layout.kinds, names, table)
        assert typed is not None, raw
        assert typed.tolist() == [evaluate(filt, i, json.loads(a)) for i, a in zip(ids, attrs)], raw
    for raw in ({"id": "r1"}, {"x": {"$exists": True}, "id": {"$in": ["r2", "r4"]}}):  # left to DuckDB
        filt = parse_filter(raw)
        names = filter_columns.columns(filt, layout.kinds)
        assert filter_columns.typed_mask(filt, layout.kinds, names, reader.columns(base, layout, names, range(3))) is None


def test_typed_columns_and_rest():
    ids = [f"r{i}" for i in range(600)]
    attrs = [json.dumps({"year": 1990 + i % 30, "tenant": f"t{i % 7}", "ok": i % 2 == 0, "tags": ["a", i % 3],
                         **{f"k{j}": j for j in range(i % 4)}, **({f"rare{i}": i} if i % 100 == 0 else {})})
             for i in range(600)]
    reader, base, layout = _docs_reader(ids, attrs, [0, 200, 400, 600])
    kinds = layout.kinds
    assert kinds["year"] == "number" and kinds["tenant"] == "string" and kinds["ok"] == "bool" and kinds["tags"] == "json"
    for raw in ({"rare200": 200}, {"rare300": {"$exists": True}}, {"k2": 2, "year": {"$lt": 2000}}):
        filt = parse_filter(raw)
        expected = [evaluate(filt, i, json.loads(a)) for i, a in zip(ids, attrs)]
        assert reader.filter_mask(base, layout, [0, 200, 400, 600], filt).tolist() == expected


def test_column_count_is_capped_and_the_rest_stays_filterable(monkeypatch):
    from vectordb import attr_columns

    monkeypatch.setattr(attr_columns, "MAX_COLUMNS", 2)
    ids = [f"r{i}" for i in range(50)]
    attrs = [json.dumps({"a": i, "b": "x", "c": i % 5, "d": {"e": i}}) for i in range(50)]
    reader, base, layout = _docs_reader(ids, attrs, [0, 25, 50])
    assert "$rest" in layout.kinds
    for raw in ({"c": 3}, {"d.e": {"$gte": 45}}, {"c": {"$exists": False}}, {"zz": None}):
        filt = parse_filter(raw)
        expected = [evaluate(filt, i, json.loads(a)) for i, a in zip(ids, attrs)]
        assert reader.filter_mask(base, layout, [0, 25, 50], filt).tolist() == expected


def test_statistics_skip_row_groups_and_their_bytes(monkeypatch):
    n, groups = 4000, 20
    ids = [f"r{i}" for i in range(n)]
    attrs = [json.dumps({"year": 2000 + i * groups // n, "tenant": f"t{i % 9}", "blob": "x" * 50}) for i in range(n)]
    part_rows = np.linspace(0, n, groups + 1).astype(int)
    reader, base, layout = _docs_reader(ids, attrs, part_rows)
    counting = CountingStore(reader.store)
    reader = DocsReader(counting, POOL, 1 << 26)
    reader._whole_column = 0  # these columns are small: read them by row group all the same
    reader.footers(base, layout, ["tenant", "year", "$id"])
    counting.take()
    mask = reader.filter_mask(base, layout, part_rows, parse_filter({"year": {"$gte": 2018}, "tenant": "t1"}))
    assert mask.sum() == sum(1 for i in range(n) if 2000 + i * groups // n >= 2018 and i % 9 == 1)
    requests = counting.take()
    # Only row groups 18 and 19 can hold a year >= 2018: one GET per column, far less than
    # the file (the other groups, ``$id`` and ``blob`` are not read).
    attrs_bytes = sum(c.size for c in layout.columns)
    assert len(requests) == 2 and sum(r.bytes for r in requests) < attrs_bytes / 10
    mask = reader.filter_mask(base, layout, part_rows, parse_filter({"year": {"$gt": 3000}}))
    assert not mask.any() and counting.take() == []  # ruled out by the footer alone
    # Small columns are read whole with their footers: then the chunks cost no request.
    small = DocsReader(counting, POOL, 1 << 26)
    small.filter_mask(base, layout, part_rows, parse_filter({"year": {"$gte": 2018}, "tenant": "t1"}))
    assert sorted(r.bytes for r in counting.take()) == sorted(
        c.size for c in layout.columns if c.name in ("year", "tenant", "$id"))


def test_records_round_trip_none_empty_and_unicode():
    ids = ["a", "é😀", "c"]
    texts = [None, "", "naïve café " * 50]
    attrs = ['{"x": 1}', None, '{"y": "ü"}']
    fields, entries = doc_fields.encode(ids, texts, attrs)
    decoded = doc_fields.decode_all(fields, doc_fields.decode_entries(entries))
    assert [(r.id, r.text, r.attributes) for r in decoded] == list(zip(ids, texts, attrs))
    assert len(fields) < len(texts[2].encode())  # records are stored compressed


# --- the key tables ----------------------------------------------------------------------------


def _weak(keys):
    """A hash that collides all the time (but is a valid uint64 per key)."""
    return np.array([len(k) % 3 for k in keys], np.uint64) << np.uint64(62)


def test_key_table_is_exact_under_hash_collisions(monkeypatch):
    monkeypatch.setitem(key_table.HASHERS, "weak", _weak)
    keys = [f"k{i}" for i in range(300)] + ["dup"] * 40
    rows = np.arange(len(keys))
    payloads = [f"p{i}".encode() for i in range(len(keys))]
    data, info = key_table.build(keys, rows, payloads, hasher=_weak, hash_name="weak")
    store = MemoryStore()
    store.put("seg/ids.bin", data)
    reader = DocsReader(store, POOL, 1 << 20)
    found = reader.lookup("seg/", "ids.bin", info, ["k7", "k299", "dup", "absent", "k7x", "zz"])
    assert found["k7"] == [(7, b"p7")] and found["k299"] == [(299, b"p299")]
    assert found["dup"] == [(300 + i, f"p{300 + i}".encode()) for i in range(40)]
    assert "absent" not in found and "k7x" not in found and "zz" not in found
    every = key_table.decode_all(data, info)
    assert sorted(every.rows.tolist()) == list(range(len(keys)))


def test_key_table_spills_heavy_keys_and_reads_them_back():
    keys = [f"doc{i}" for i in range(2000)] + ["heavy"] * 500
    data, info = key_table.build(keys, np.arange(len(keys)), [b"x" * 20] * len(keys))
    assert info.stride < 2000  # the heavy key did not widen every bucket
    store = MemoryStore()
    store.put("seg/t", data)
    found = DocsReader(store, POOL, 1 << 20).lookup("seg/", "t", info, ["heavy", "doc5", "nope"])
    assert [r for r, _ in found["heavy"]] == list(range(2000, 2500)) and found["doc5"] == [(5, b"x" * 20)]
    empty, info = key_table.build([], np.zeros(0, np.int64))
    store.put("seg/e", empty)
    assert DocsReader(store, POOL, 1 << 20).lookup("seg/", "e", info, ["a"]) == {}


# --- a namespace in both layouts ----------------------------------------------------------------

DIMS = 16
WORDS = "apple river stone cloud music paper garden window engine forest candle silver".split()


def _service(store, **over) -> Service:
    return Service(unit_settings(**over), store=store)


def _corpus(n=500, seed=4):
    rng = np.random.default_rng(seed)
    return [
        {"id": f"d{i}", "vector": rng.normal(size=DIMS).round(3).tolist(),
         "text": " ".join(rng.choice(WORDS, 5)),
         "attributes": {"year": 2000 + i % 25, "tenant": f"t{i % 10}", "tags": [WORDS[i % 12]],
                        **({"rare": True} if i % 60 == 0 else {})}}
        for i in range(n)
    ]


def _fill(svc: Service, ns: str, docs: list[dict]) -> None:
    svc.create_namespace(ns, "none", DIMS, "l2")
    svc.upsert(ns, docs[:250])
    svc.index(ns)
    svc.upsert(ns, docs[250:450])
    svc.index(ns)
    svc.upsert(ns, docs[450:])
    svc.delete(ns, [f"d{i}" for i in range(0, 500, 9)])
    svc.upsert(ns, [{**docs[3], "text": "overwritten apple", "attributes": {"year": 1999}}])


@pytest.fixture(scope="module")
def both_layouts():
    """The same writes into a by-range namespace and into one whose segments have the
    whole-docs layout of older versions (built by the old writer)."""
    store = MemoryStore()
    docs = _corpus()
    svc = _service(store)
    _fill(svc, "new", docs)
    original = segment.build
    segment.build = functools.partial(original, docs="whole")
    try:
        _fill(svc, "old", docs)
    finally:
        segment.build = original
    for ns, layout in (("new", "by_range"), ("old", "whole")):
        for seg in svc.catalog.latest(ns).segments:
            has = (svc.reader.by_range(ns, seg) is not None)
            assert has == (layout == "by_range")
    return store, docs


QUERIES = [
    dict(top_k=7),
    dict(top_k=5, include=("text", "attributes")),
    dict(top_k=5, filter={"year": {"$gte": 2013}}, include=("attributes",)),
    dict(top_k=5, filter={"tenant": "t7", "year": 2017}, include=("text",)),
    dict(top_k=5, filter={"rare": True}),
    dict(top_k=5, filter={"tags": {"$contains": "apple"}, "$not": {"id": "d12"}}, include=("text", "attributes")),
    dict(top_k=5, filter={"year": {"$gte": 2001}}, nprobe=1, include=("text",)),
    dict(top_k=5, mode="bm25", text="apple river", include=("text", "attributes")),
    dict(top_k=5, mode="hybrid", text="stone music", include=("attributes",), filter={"year": {"$lt": 2010}}),
]


def test_old_and_new_layouts_answer_every_query_kind_alike(both_layouts):
    store, docs = both_layouts
    fresh = _service(CachedStore(store, 64 << 20))  # a worker that holds nothing yet
    rng = np.random.default_rng(9)
    for query in QUERIES:
        for _ in range(3):
            args = dict(query)
            if args.get("mode", "vector") != "bm25":
                args["vector"] = rng.normal(size=DIMS).tolist()
            new = fresh.query("new", **args).hits
            old = fresh.query("old", **args).hits
            assert [(h.id, h.score, h.text, h.attributes) for h in new] == \
                [(h.id, h.score, h.text, h.attributes) for h in old], query
            assert new
    for doc_id in ("d1", "d3", "d460", "d498"):
        assert fresh.get_document("new", doc_id) == fresh.get_document("old", doc_id)
    assert fresh.get_document("new", "d3")["text"] == "overwritten apple"
    for gone in ("d9", "d0"):
        with pytest.raises(DocumentNotFound):
            fresh.get_document("new", gone)
        with pytest.raises(DocumentNotFound):
            fresh.get_document("old", gone)
    for raw in ({"tenant": "t3"}, {"year": {"$in": [2001, 1999]}}):
        assert fresh.engine.matching_ids("new", raw) == fresh.engine.matching_ids("old", raw)


def test_filtered_queries_equal_brute_force_on_the_new_layout(both_layouts):
    store, docs = both_layouts
    fresh = _service(CachedStore(store, 64 << 20))
    live = {d["id"]: d for d in docs if int(d["id"][1:]) % 9 != 0}
    live["d3"] = {**docs[3], "text": "overwritten apple", "attributes": {"year": 1999}}
    rng = np.random.default_rng(5)
    for raw in ({"tenant": "t7", "year": 2017}, {"rare": True}, {"year": {"$lte": 2003}}, {"tenant": {"$in": ["t1", "t2"]}}):
        filt = parse_filter(raw)
        for _ in range(4):
            q = rng.normal(size=DIMS).astype(np.float32)
            allowed = [d for d in live.values() if evaluate(filt, d["id"], d["attributes"])]
            truth = sorted(allowed, key=lambda d: (float(((np.array(d["vector"], np.float32) - q) ** 2).sum()), d["id"]))
            got = [h.id for h in fresh.query("new", vector=q.tolist(), top_k=6, filter=raw).hits]
            assert got == [d["id"] for d in truth[:6]]


def test_compaction_rewrites_old_segments_in_the_new_layout(both_layouts):
    store, _ = both_layouts
    svc = _service(store)
    exact = dict(vector=[0.1] * DIMS, top_k=10, include=("text",), nprobe=1000)  # every partition
    before = [(h.id, h.text) for h in svc.query("old", **exact).hits]
    svc.index("old", compact=True)
    manifest = svc.catalog.latest("old")
    assert all(svc.reader.by_range("old", seg) is not None for seg in manifest.segments)
    assert [(h.id, h.text) for h in svc.query("old", **exact).hits] == before


def test_bytes_read_for_a_filtered_query_are_bounded():
    """A fresh worker's filtered query reads the filter's columns and the probed
    partitions: not the texts, not the other attributes."""
    store = MemoryStore()
    rng = np.random.default_rng(1)
    svc = _service(store, flat_max_rows=100, rows_per_partition=200)
    svc.create_namespace("b", "none", DIMS, "l2")
    n = 4000
    svc.upsert("b", [{"id": f"x{i}", "vector": rng.normal(size=DIMS).tolist(), "text": "word " * 120,
                      "attributes": {"year": 2000 + i % 20, "tenant": f"t{i % 10}", "note": "n" * 200}}
                     for i in range(n)])
    svc.index("b")
    seg = svc.catalog.latest("b").segments[0]
    sizes = {name: len(store.get(segment.file_key("b", seg.id, name))) for name in docs_format.FILES}
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20))
    worker.query("b", vector=rng.normal(size=DIMS).tolist(), top_k=10)  # the manifest, centroids, tail
    counting.take()
    hits = worker.query("b", vector=rng.normal(size=DIMS).tolist(), top_k=10, filter={"year": {"$gte": 2013}}).hits
    assert len(hits) == 10
    requests = counting.take()
    by_file: dict[str, int] = {}
    for r in requests:
        by_file[r.key.rsplit("/", 1)[1]] = by_file.get(r.key.rsplit("/", 1)[1], 0) + r.bytes
    assert "fields.bin" not in by_file and "rows.bin" not in by_file and "ids.bin" not in by_file
    # The year column (and the ids' footer, or the ids when they are this few): not the
    # tenant and note columns.
    columns = {c.name: c.size for c in svc.reader.by_range("b", seg).columns}
    assert by_file["attrs.bin"] <= columns["year"] + columns["$id"] < sizes["attrs.bin"] / 2
    # Fields of the hits: their entries and records, a few hundred bytes each.
    counting.take()
    worker.query("b", vector=rng.normal(size=DIMS).tolist(), top_k=10, include=("text", "attributes"))
    fields = sum(r.bytes for r in counting.take() if r.key.endswith(("fields.bin", "rows.bin")))
    assert 0 < fields < 10 * 2000 + 40 * 200 * 18
    # GET by id: one bucket of ids.bin and one record.
    worker.get_document("b", "x17")
    got = {r.key.rsplit("/", 1)[1]: r.bytes for r in counting.take()}
    assert got.get("ids.bin", 0) <= svc.reader.by_range("b", seg).ids.stride and got["fields.bin"] < 2000


# --- chunked documents -------------------------------------------------------------------------

LONG = " ".join(f"Sentence number {i} talks about {WORDS[i % 12]}." for i in range(60))


@pytest.mark.parametrize("layout", ["by_range", "whole"])
def test_get_of_a_chunked_document_returns_its_chunks_in_order(layout, monkeypatch):
    monkeypatch.setattr(segment, "build", functools.partial(segment.build, docs=layout))
    svc = _service(MemoryStore())
    svc.create_namespace("k", "fake", chunking={"chunk_tokens": 32, "overlap_tokens": 8})
    _, rows = svc.upsert("k", [{"id": "doc", "text": LONG, "attributes": {"owner": "ann"}}])
    assert rows > 5
    for where in ("tail", "segment"):
        got = svc.get_document("k", "doc")
        assert [c["id"] for c in got["chunks"]] == [f"doc#{i}" for i in range(rows)], where
        assert [c["attributes"]["chunk"] for c in got["chunks"]] == list(range(rows))
        assert got["attributes"] == {"owner": "ann", "doc_id": "doc"}
        assert got["text"].split() == LONG.split()  # overlaps joined back
        assert svc.get_document("k", "doc#2")["attributes"]["chunk"] == 2
        svc.index("k")
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(svc.settings, "all", svc)) as client:
        body = client.get("/v1/namespaces/k/documents/doc").json()
        assert body["id"] == "doc" and [c["id"] for c in body["chunks"]] == [f"doc#{i}" for i in range(rows)]
    svc.delete("k", ["doc"])
    with pytest.raises(DocumentNotFound):
        svc.get_document("k", "doc")


def test_chunk_replacement_on_a_worker_without_the_folded_tail_finds_the_same_chunks():
    """An ingest worker that serves no query (it holds no folded tail) finds a
    re-ingested document's old chunks from the WAL objects' ids, operations and
    attributes (TailReader.chunk_ids) and never folds the tail; it finds what a worker
    holding the folded tail finds: chunks in a segment, deleted in the tail, only in the
    tail, rewritten there with fewer chunks, and a document deleted whole."""
    store = MemoryStore()
    writer, other = _service(store), _service(store)  # two workers on one store
    try:
        writer.create_namespace("c", "fake", chunking={"chunk_tokens": 32, "overlap_tokens": 8})
        _, seg_rows = writer.upsert("c", [{"id": "s", "text": LONG}, {"id": "a", "text": "apple"},
                                         {"id": "gone", "text": "pear"}])
        writer.index("c")  # s#0.., a and gone in a segment
        writer.upsert("c", [{"id": "t", "text": LONG.replace("Sentence", "Line")}])
        writer.delete("c", ids=["s#1", "gone"])
        half = " ".join(LONG.split()[: len(LONG.split()) // 2])
        _, t_rows = writer.upsert("c", [{"id": "t", "text": half.replace("Sentence", "Line")}])  # fewer chunks
        manifest = other.catalog.latest("c")
        asked = ["s", "t", "a", "gone", "nobody"]
        writer.reader.tail(manifest)  # the writer finds them through the folded tail
        assert writer.reader.tails.has(manifest)
        want = sorted(documents.chunk_ids(writer.reader, manifest, asked))
        got = sorted(other.engine.chunk_ids("c", asked))
        assert not other.reader.tails.has(manifest)
        assert got == want
        assert "s#1" not in got and "s#0" in got and "a" in got and not any(i.startswith("gone") for i in got)
        assert sorted(i for i in got if i.startswith("t#")) == sorted(f"t#{n}" for n in range(t_rows))
        assert len([i for i in got if i.startswith("s#")]) == seg_rows - 3  # s#1 deleted; a and gone not s's
        # Re-ingesting on the worker without the tail deletes the old chunks it does not overwrite.
        _, rows = other.upsert("c", [{"id": "s", "text": "Now a short text."}])
        assert rows == 1 and not other.reader.tails.has(other.catalog.latest("c"))
        assert writer.engine.chunk_ids("c", ["s"]) == other.engine.chunk_ids("c", ["s"]) == ["s"]
        assert writer.get_document("c", "s")["text"] == "Now a short text."
    finally:
        writer.close()
        other.close()


@pytest.mark.parametrize("layout", ["by_range", "whole"])
def test_chunk_replacement_over_several_segments_uses_the_lookup(layout, monkeypatch):
    monkeypatch.setattr(segment, "build", functools.partial(segment.build, docs=layout))
    svc = _service(MemoryStore())
    svc.create_namespace("r", "fake", chunking={"chunk_tokens": 32, "overlap_tokens": 8})
    _, first = svc.upsert("r", [{"id": "doc", "text": LONG}, {"id": "a", "text": "apple"}])
    svc.index("r")
    svc.upsert("r", [{"id": "other", "text": LONG.replace("Sentence", "Line")}])
    svc.index("r")
    svc.upsert("r", [{"id": "b", "text": "river"}])
    svc.index("r")
    assert len(svc.catalog.latest("r").segments) == 3

    def no_scans(*args, **kwargs):
        raise AssertionError("chunk replacement must not run a filter over the segments")

    if layout == "by_range":  # the old layout has no doc_id lookup: it filters, as before
        monkeypatch.setattr(svc.reader, "filter_mask", no_scans)
    shorter = " ".join(LONG.split()[: len(LONG.split()) // 2])
    _, second = svc.upsert("r", [{"id": "doc", "text": shorter}])
    assert 1 < second < first - 1
    assert svc.engine.chunk_ids("r", ["doc"]) == [f"doc#{i}" for i in range(second)]  # the rest deleted
    _, third = svc.upsert("r", [{"id": "doc", "text": "Now a short text."}])
    assert third == 1 and svc.engine.chunk_ids("r", ["doc"]) == ["doc"]
    assert sorted(svc.engine.chunk_ids("r", ["other"]))[:2] == ["other#0", "other#1"]
    svc.index("r")
    assert svc.engine.chunk_ids("r", ["doc"]) == ["doc"]
    monkeypatch.setattr(svc.reader, "filter_mask", type(svc.reader).filter_mask.__get__(svc.reader))
    assert svc.engine.matching_ids("r", {"doc_id": "doc"}) == ["doc"]
    assert svc.get_document("r", "doc")["text"] == "Now a short text."
    hits = svc.query("r", text="Sentence number 7", top_k=50, include=("attributes",)).hits
    assert {h.attributes["doc_id"] for h in hits} <= {"other", "a", "b", "doc"}
    assert not any(h.id.startswith("doc#") for h in hits)
    svc.delete("r", ["other"])
    assert svc.engine.chunk_ids("r", ["other"]) == []


def test_indexer_tombstones_follow_upserts_over_stored_ids():
    svc = _service(MemoryStore())
    svc.create_namespace("u", "none", DIMS, "l2")
    docs = _corpus(300)
    svc.upsert("u", docs)
    svc.index("u")
    seg = svc.catalog.latest("u").segments[0]
    assert svc.reader.stored_ids("u", seg, ["d1", "d299", "nope"]) == {"d1", "d299"}


def test_hybrid_reads_the_ids_of_its_winners_only():
    """A hybrid query fuses ~100 candidates per list but reads the ids of the BM25 rows it
    returns (their partitions' ``$id`` blocks), not of every BM25 candidate."""
    store = MemoryStore()
    rng = np.random.default_rng(3)
    svc = _service(store, flat_max_rows=100, rows_per_partition=100)
    svc.create_namespace("h", "none", DIMS, "l2")
    vocabulary = WORDS + [f"v{j}" for j in range(500)]  # BM25 scores rarely tie
    # Ids that make an $id column too big to be read whole with its footer.
    svc.upsert("h", [{"id": f"x{i}-{rng.bytes(240).hex()}", "vector": rng.normal(size=DIMS).tolist(),
                      "text": " ".join(rng.choice(vocabulary, rng.integers(5, 60)))} for i in range(8000)])
    svc.index("h")
    seg = svc.catalog.latest("h").segments[0]
    id_column = {c.name: c.size for c in svc.reader.by_range("h", seg).columns}["$id"]
    counting = CountingStore(store)
    worker = _service(CachedStore(counting, 64 << 20))
    worker.query("h", mode="bm25", text="v5", top_k=1)  # the manifest, bm25 head, the ids' footer
    for _ in range(3):
        counting.take()
        args = dict(vector=rng.normal(size=DIMS).tolist(), text="apple river stone", top_k=3, candidates=100)
        hits = worker.query("h", mode="hybrid", **args).hits
        id_bytes = sum(r.bytes for r in counting.take() if r.key.endswith("attrs.bin"))
        named = len([h for h in hits if h.scores["vector"] is None])  # the others' ids came with their vectors
        assert id_bytes <= named * id_column / 80 * 1.5  # 80 partitions
        assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in svc.query("h", mode="hybrid", **args).hits]
