"""The blocked bm25.bin: round trips, on-demand scores equal to the in-memory index's, bytes
a query reads, old segments, corrupt files."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.service import Service
from bench.counting import CountingStore
from storage.cache import CachedStore
from storage.memory import MemoryStore
from tests.fakes import unit_settings
from tests.test_bm25 import PARAMS, WORDS, as_dict, plain_bm25
from vectordb import bm25_blocks, bm25_reader, docs_reader, segment
from vectordb.bm25 import BM25Index, analyze, combine_stats
from vectordb.bm25_blocks import HEAD_BYTES, Head, decode_postings, encode, read_index
from vectordb.bm25_reader import BM25Reader, TermPostings
from vectordb.errors import VectorDBError

POOL = ThreadPoolExecutor(4)
# Words whose terms share long prefixes and span several UTF-8 lengths, so that dictionary
# blocks split inside multi-byte characters' neighbourhoods.
MORE_WORDS = WORDS + ["caféine", "café", "cafés", "naïveté", "日本語", "日本", "x" * 40, "x" * 41, "ab", "abc"]
MANY_TEXTS = st.lists(st.lists(st.sampled_from(MORE_WORDS), max_size=12).map(" ".join), max_size=25)
MANY_QUERIES = st.lists(st.sampled_from(MORE_WORDS), min_size=1, max_size=4).map(" ".join)


def reader_over(files: dict[str, bytes], cache_bytes: int = 1 << 26) -> tuple[BM25Reader, CachedStore]:
    store = MemoryStore()
    for key, data in files.items():
        store.put(key, data)
    cached = CachedStore(store, cache_bytes)
    return BM25Reader(cached, 1 << 26), cached


def assert_same_index(got: BM25Index, want: BM25Index, dtypes: bool = True) -> None:
    assert (got.terms, got.k1, got.b, got.n_docs, got.total_length) == (
        want.terms, want.k1, want.b, want.n_docs, want.total_length)
    for name in ("indptr", "rows", "tfs", "doc_len"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert not dtypes or getattr(got, name).dtype == getattr(want, name).dtype, name


def _entry(data: bytes, term: str) -> bm25_blocks.Entry:
    head = Head.from_bytes(data)
    start, length = head.block_range(head.block_of(term))
    return bm25_blocks.DictBlock(data[start : start + length], head.postings_at).find(term)


# --- the format --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(MANY_TEXTS, st.sampled_from([None, 1, 24, 200]), PARAMS)
def test_round_trip(texts: list[str], block_bytes: int | None, params: tuple[float, float]) -> None:
    index = BM25Index.build(texts, *params)
    data = encode(index, block_bytes)
    assert bm25_blocks.is_blocked(data)
    again = read_index(data)
    assert_same_index(again, index)
    assert encode(again, block_bytes) == data  # deterministic


def test_wide_values_take_escapes_and_widths() -> None:
    """Gaps, frequencies and lengths past 1 and 2 bytes, mixed within one list."""
    n = 200_000
    rows = np.array([0, 1, 2, 300, 70_000, 70_001, n - 1], np.int64)
    tfs = np.array([1, 300, 2, 70_000, 3, 4, 5], np.int64)
    frequent = np.arange(0, n, 3)  # a common term: every third row, gaps of 3
    doc_len = np.zeros(n, np.int64)  # a row's length is the sum of its terms' frequencies
    doc_len[frequent] = 1
    doc_len[rows] += tfs
    index = BM25Index(
        ["common", "rare"],
        np.array([0, len(frequent), len(frequent) + len(rows)]),
        np.concatenate([frequent, rows]),
        np.concatenate([np.ones(len(frequent), np.int64), tfs]),
        doc_len,
    )
    data = encode(index)
    assert_same_index(read_index(data), index, dtypes=False)  # read back in the smallest dtypes
    reader, _ = reader_over({"k": data})
    [view] = reader.fetch(["k"], ["common", "rare"], POOL)
    assert view.postings["rare"].rows.tolist() == rows.tolist()
    assert view.postings["rare"].tfs.tolist() == tfs.tolist()
    assert view.postings["rare"].lengths.tolist() == doc_len[rows].tolist()
    # The common term: one byte per gap, frequency and length, and 4 for the one length
    # (row 300's) that needs more.
    assert doc_len[300] > 0xFF and doc_len[frequent].max() == doc_len[300]
    entry = _entry(data, "common")
    assert entry.length == 3 * len(frequent) + 4
    assert decode_postings(data[entry.start : entry.start + entry.length], entry).rows.tolist() == frequent.tolist()


def test_empty_and_degenerate_indexes() -> None:
    for texts in ([], ["", "the of"], ["cat"]):
        index = BM25Index.build(texts)
        data = encode(index)
        assert_same_index(read_index(data), index)
        reader, _ = reader_over({"k": data})
        [view] = reader.fetch(["k"], ["cat", "dog"], POOL)
        assert view.stats(["cat", "dog"]).doc_freq == index.stats(["cat", "dog"]).doc_freq
        if index.total_length:
            for got, want in zip(view.search("cat dog", 5), index.search("cat dog", 5), strict=True):
                assert got.tolist() == want.tolist()


def test_corrupt_and_foreign_files_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(BM25Index.build(["blue cat", "red dog", "green cat"]))
    for bad in (b"VDBBM25B" + b"\xff" * 40, data[:30]):
        with pytest.raises(VectorDBError, match="corrupt segment"):
            Head.from_bytes(bad)
    entry = _entry(data, "cat")
    with pytest.raises(VectorDBError, match="corrupt segment"):
        decode_postings(data[entry.start : entry.start + entry.length - 1], entry)
    with pytest.raises(VectorDBError, match="corrupt segment"):
        bm25_blocks.DictBlock(b"\x05\x00\x00\x00\x00\x00\x00\x00", 0)
    monkeypatch.setattr("vectordb.bm25.ANALYZER", "another-analyzer")
    with pytest.raises(VectorDBError, match="analyzer"):
        Head.from_bytes(data)


# --- on demand equals in memory ----------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(st.lists(MANY_TEXTS, min_size=1, max_size=4), MANY_TEXTS, MANY_QUERIES, st.sampled_from([1, 3, 10, 100]),
       st.sampled_from([None, 16, 64]), st.sampled_from([HEAD_BYTES, 40]), st.randoms(use_true_random=False))
def test_on_demand_equals_in_memory_over_segments_and_tail(
    segments: list[list[str]], tail: list[str], query: str, k: int, block_bytes: int | None, first_read: int, rnd
) -> None:
    """Several segments read on demand plus a tail, statistics combined: each segment
    answers exactly (rows, float32 scores) as its in-memory index would, and all of them
    together as one index over every text. (A first read of 40 bytes makes every block and
    list a request of its own; with 64 KiB these small files come whole.)"""
    everything = [t for texts in segments for t in texts] + tail
    if not any(analyze(t) for t in everything):
        return
    indexes = [BM25Index.build(texts) for texts in segments]
    files = {f"s{i}/bm25.bin": encode(index, block_bytes) for i, index in enumerate(indexes)}
    reader, _ = reader_over(files)
    terms = analyze(query)
    with mock.patch.object(bm25_reader, "HEAD_BYTES", first_read):
        views = reader.fetch(list(files), terms, POOL)
    tail_index = BM25Index.build(tail)
    stats = combine_stats([v.stats(terms) for v in views] + [tail_index.stats(terms)])
    assert stats == combine_stats([i.stats(terms) for i in indexes] + [tail_index.stats(terms)])

    merged: dict[int, float] = {}
    offset = 0
    for view, index in zip(views, indexes, strict=True):
        assert isinstance(view, TermPostings)
        mask = np.array([rnd.random() < 0.7 for _ in range(len(index))], bool)
        for allowed in (None, mask):
            got = view.search(query, k, allowed_mask=allowed, stats=stats)
            want = index.search(query, k, allowed_mask=allowed, stats=stats)
            assert got[0].tolist() == want[0].tolist()
            assert got[1].tolist() == want[1].tolist()  # the same bits
        rows, scores = view.search(query, len(index), stats=stats)
        merged.update({offset + r: s for r, s in as_dict(rows, scores).items()})
        offset += len(index)
    rows, scores = tail_index.search(query, len(tail), stats=stats)
    merged.update({offset + r: s for r, s in as_dict(rows, scores).items()})

    one = BM25Index.build(everything)
    assert merged == as_dict(*one.search(query, len(everything)))
    assert merged == pytest.approx(plain_bm25(everything, query, one.k1, one.b), rel=1e-5)


def test_a_warm_query_reads_nothing_and_terms_are_memoised() -> None:
    index = BM25Index.build([f"w{i % 50} w{i % 7} text {i}" for i in range(20_000)])
    data = encode(index, 256)
    assert len(data) > 2 * HEAD_BYTES
    reader, cached = reader_over({"k": data}, cache_bytes=0)  # no byte cache: the memo alone
    query = "w3 w4 text"
    first = reader.fetch(["k"], analyze(query), POOL)[0].search(query, 10)
    fetched = cached.stats()["misses"]
    again = reader.fetch(["k"], analyze(query), POOL)[0].search(query, 10)
    assert cached.stats()["misses"] == fetched
    assert [a.tolist() for a in first] == [a.tolist() for a in again]
    head = Head.from_bytes(data)
    [near] = [t for t in index.terms if head.block_of(t) == head.block_of("w3") and t > "w3"][:1]
    reader.fetch(["k"], ["w3", near])  # a new term of a known block: its postings only
    assert cached.stats()["misses"] == fetched + 1


def test_a_held_file_is_read_on_the_calling_thread() -> None:
    """Once the byte cache holds a file whole (the warm hint's ``hold``), its dictionary
    blocks and postings are sliced on the caller's thread: no hand-off to the pool."""

    class NoPool:
        def map(self, *args):
            raise AssertionError("a held file went through the pool")

        submit = map

    index = BM25Index.build([f"w{i % 50} w{i % 7} text {i}" for i in range(5_000)])
    data = encode(index, 256)
    reader, cached = reader_over({"k": data})
    cached.get("k")
    reader.hold("k")
    query = "w3 w4 w5 text"
    got = reader.fetch(["k"], analyze(query), NoPool())[0].search(query, 10)
    want = index.search(query, 10)
    assert [a.tolist() for a in got] == [a.tolist() for a in want]


# --- bytes read --------------------------------------------------------------------------------


def test_a_cold_term_reads_the_head_one_block_and_its_postings() -> None:
    """Three requests, in three rounds; bytes bounded by the head, one dictionary block and
    ~3 bytes a posting, whatever the segment's size."""
    rng = np.random.default_rng(5)
    vocabulary = np.array([f"v{i}" for i in range(20_000)])
    texts = [" ".join(vocabulary[rng.integers(0, len(vocabulary), 40)]) + (" zebra" if i % 3 == 0 else "")
             for i in range(30_000)]
    index = BM25Index.build(texts)
    data = encode(index, 4096)  # sorted blocks (format 2); the hashed layout has its own test below
    head = Head.from_bytes(data[:HEAD_BYTES])
    largest_block = int(np.diff(head.block_offsets).max())
    df = index.stats(["zebra"]).doc_freq["zebra"]
    assert head.block_range(head.block_of("zebra"))[0] > HEAD_BYTES  # not in the first read
    reader, cached = reader_over({"k": data})
    [view] = reader.fetch(["k"], ["zebra"], POOL)
    stats = cached.stats()
    assert stats["misses"] == 3
    assert stats["bytes_fetched"] <= HEAD_BYTES + largest_block + 3 * df
    assert stats["bytes_fetched"] < len(data) / 20
    assert view.search("zebra", 5)[0].tolist() == index.search("zebra", 5)[0].tolist()
    # What the reader holds is bounded too: decoded, and out of the RAM cache.
    assert stats["ram_bytes"] == 0
    assert reader._postings.bytes <= 3 * df + 8 * df + 64  # the bytes fetched, and the rows as int64


def _zebra_corpus(rows: int = 30_000) -> BM25Index:
    rng = np.random.default_rng(5)
    vocabulary = np.array([f"v{i}" for i in range(20_000)])
    return BM25Index.build([" ".join(vocabulary[rng.integers(0, len(vocabulary), 40)])
                            + (" zebra" if i % 3 == 0 else "") for i in range(rows)])


def test_a_hashed_dictionary_round_trips_and_moves_full_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    index = _zebra_corpus()
    data = encode(index)
    head = Head.from_bytes(data[:HEAD_BYTES])
    assert head.slots == bm25_blocks.hashed_slots(index.n_docs) and not head.separators
    assert head.postings_at == HEAD_BYTES + head.slots * bm25_blocks.SLOT_BYTES  # nothing moved
    assert_same_index(read_index(data), index)
    assert encode(index) == data
    # Too few slots for the vocabulary: each slot's block moves past the slots.
    monkeypatch.setattr(bm25_blocks, "hashed_slots", lambda rows: 7)
    crowded = encode(index)
    head = Head.from_bytes(crowded[:HEAD_BYTES])
    assert head.slots == 7 and head.postings_at > HEAD_BYTES + 7 * bm25_blocks.SLOT_BYTES
    assert bm25_blocks.moved(crowded[HEAD_BYTES : HEAD_BYTES + 4096]) is not None
    assert_same_index(read_index(crowded), index)
    reader, cached = reader_over({"k": crowded})
    [view] = reader.fetch(["k"], ["zebra", "v17"], POOL)
    for got, want in zip(view.search("zebra v17", 10), index.search("zebra v17", 10), strict=True):
        assert got.tolist() == want.tolist()
    assert cached.stats()["misses"] == 1 + 2 * 2 + 2  # the head; per term its slot, its block; postings


def test_a_cold_query_reads_the_head_and_its_slots_at_once() -> None:
    """With the hashed dictionary, the prefetch (which knows the segment's row count from
    the manifest) reads the head and the terms' slots in one round; the query then reads
    the postings only: two rounds, not three."""
    index = _zebra_corpus()
    data = encode(index)
    df = index.stats(["zebra"]).doc_freq["zebra"]
    reader, cached = reader_over({"k": data})
    reader.prefetch("k", index.n_docs, ["zebra", "v17", "absent"], POOL)
    deadline = 0
    while cached.stats()["misses"] < 4 and deadline < 500:  # the head and three slots
        deadline += 1
        threading.Event().wait(0.01)
    assert cached.stats()["misses"] == 4
    [view] = reader.fetch(["k"], ["absent", "v17", "zebra"], POOL)
    stats = cached.stats()
    assert stats["misses"] == 4 + 2  # the postings of the two terms found
    assert stats["bytes_fetched"] <= HEAD_BYTES + 3 * bm25_blocks.SLOT_BYTES + 3 * df + 3 * 200
    for got, want in zip(view.search("zebra v17 absent", 10), index.search("zebra v17 absent", 10), strict=True):
        assert got.tolist() == want.tolist()


def test_slots_read_ahead_of_a_sorted_dictionary_are_not_used() -> None:
    """A big segment written before the hashed layout (format 2): the prefetch's slot
    reads land in its sorted blocks or postings; the head says so and they are ignored."""
    index = _zebra_corpus()
    data = encode(index, 4096)
    assert Head.from_bytes(data[:HEAD_BYTES]).slots is None
    reader, _ = reader_over({"k": data})
    reader.prefetch("k", index.n_docs, ["zebra", "v17"], POOL)
    [view] = reader.fetch(["k"], ["v17", "zebra"], POOL)
    for got, want in zip(view.search("zebra v17", 10), index.search("zebra v17", 10), strict=True):
        assert got.tolist() == want.tolist()


def test_a_small_segment_is_one_request() -> None:
    index = BM25Index.build(["blue cat", "red dog", "green cat"] * 100)
    data = encode(index)
    assert len(data) < HEAD_BYTES
    reader, cached = reader_over({"k": data})
    [view] = reader.fetch(["k"], ["cat", "dog", "zebra"], POOL)
    assert cached.stats()["misses"] == 1
    assert view.stats(["cat", "dog", "zebra"]).doc_freq == {"cat": 200, "dog": 100, "zebra": 0}


def test_a_head_longer_than_the_first_read(monkeypatch: pytest.MonkeyPatch) -> None:
    index = BM25Index.build([f"term{i} other{i % 13}" for i in range(3000)])
    data = encode(index, 64)
    assert Head.from_bytes(data).block_offsets[0] > 512
    monkeypatch.setattr(bm25_reader, "HEAD_BYTES", 512)
    reader, cached = reader_over({"k": data})
    [view] = reader.fetch(["k"], ["term7", "other3"], POOL)
    # The first 512 bytes, the rest of the head, then per term a block and its postings.
    assert cached.stats()["misses"] == 2 + 2 + 2
    for got, want in zip(view.search("term7 other3", 5), index.search("term7 other3", 5), strict=True):
        assert got.tolist() == want.tolist()


# --- old segments --------------------------------------------------------------------------------


def test_a_segment_with_the_old_bm25_file_still_answers() -> None:
    """A segment written before the blocked format (its bm25.bin an .npz, from the old
    writer) answers a service's BM25 queries exactly as the same segment in the new one."""
    store = MemoryStore()
    svc = Service(unit_settings("memory://bm25-old"), store=store)
    svc.create_namespace("n", "fake")
    rng = np.random.default_rng(2)
    svc.upsert("n", [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS, 8))} for i in range(300)])
    svc.index("n")
    svc.upsert("n", [{"id": "t1", "text": "cat dog running"}])  # and a tail beside it
    queries = ["cat running", "blue zebra dog", "café hopeful"]
    new = [svc.query("n", text=q, mode="bm25", top_k=20).hits for q in queries]

    [seg] = svc.catalog.latest("n", "strong").segments
    key = segment.file_key("n", seg.id, "bm25.bin")
    assert bm25_blocks.is_blocked(store.get(key))
    texts = svc.reader.docs("n", seg).column("text").to_pylist()
    store.put(key, BM25Index.build(t or "" for t in texts).to_bytes())  # the old writer

    fresh = Service(unit_settings("memory://bm25-old"), store=store)
    old = [fresh.query("n", text=q, mode="bm25", top_k=20).hits for q in queries]
    assert [[(h.id, h.score) for h in hits] for hits in old] == [[(h.id, h.score) for h in hits] for hits in new]
    assert any(new)
    [index] = fresh.reader.bm25("n", [seg], ["cat"])
    assert isinstance(index, BM25Index)


def test_a_big_old_file_is_read_whole_once() -> None:
    index = BM25Index.build([f"w{i % 50} w{i % 7} text {i}" for i in range(20_000)])
    data = index.to_bytes()
    assert len(data) > HEAD_BYTES
    reader, cached = reader_over({"old": data, "new": encode(index)})
    old, new = reader.fetch(["old", "new"], ["w3", "text"], POOL)
    assert isinstance(old, BM25Index) and isinstance(new, TermPostings)
    for got, want in zip(old.search("w3 text", 10), new.search("w3 text", 10), strict=True):
        assert got.tolist() == want.tolist()
    misses = cached.stats()["misses"]
    reader.fetch(["old"], ["w4"], POOL)
    assert cached.stats()["misses"] == misses  # held decoded


def test_segment_files_list_bm25() -> None:
    assert "bm25.bin" in segment.FILES


ROOT = Path(__file__).resolve().parent.parent
NFCORPUS = ROOT.parent / "shared" / "data" / "nfcorpus"  # the benchmark's default --data


@pytest.mark.skipif(not (NFCORPUS / "corpus.jsonl").is_file(), reason="needs shared/data/nfcorpus")
def test_the_benchmark_runs(tmp_path: Path) -> None:
    """bench/bm25_on_demand.py, small: both forms answer alike and the new one reads less."""
    out = tmp_path / "result.json"
    command = [sys.executable, "bench/bm25_on_demand.py", "--docs", "3000", "--store", "file", "--latency-ms", "0",
               "--queries", "5", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["same_answers"]
    assert result["formats"]["new"]["cold"]["bytes"] < result["formats"]["old"]["cold"]["bytes"]


class _Slow:
    """A store whose every read takes 30 ms, so that requests that overlap show as one round."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def get(self, key: str) -> bytes:
        time.sleep(0.03)
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        time.sleep(0.03)
        return self.inner.get_range(key, start, length)


def test_a_cold_worker_answers_bm25_in_four_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """latest.json; the head, the terms' slots, the centroids, the ids' footer (and the
    newest-manifest probe) at once; the postings; the winners' ids."""
    monkeypatch.setattr(docs_reader, "_WHOLE_COLUMN", 0)  # as at 1M rows: the $id column is not read whole
    store = _Slow()
    svc = Service(unit_settings(auto_index=False), store=store)
    svc.create_namespace("t", "fake")
    rng = np.random.default_rng(2)
    words = np.array([f"w{i}" for i in range(3000)])
    for lo in range(0, 21_000, 3000):
        svc.upsert("t", [{"id": f"d{i}", "text": " ".join(words[rng.integers(0, 3000, 12)])} for i in range(lo, lo + 3000)])
    svc.index("t")
    [seg] = svc.catalog.latest("t").segments
    assert bm25_blocks.hashed_slots(seg.rows) is not None
    counting = CountingStore(store)
    worker = Service(unit_settings(), store=CachedStore(counting, 64 << 20))
    hits = worker.query("t", text="w17 w2020", mode="bm25", top_k=5).hits
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in svc.query("t", text="w17 w2020", mode="bm25",
                                                                                   top_k=5).hits]
    requests = counting.take()
    # A round: requests that start together (a request that waits for another's answer
    # starts 30 ms after it; overlapping but later ones, as round_trips would merge them, do not).
    starts = sorted(r.start for r in requests)
    rounds = 1 + sum(1 for a, b in zip(starts, starts[1:]) if b - a >= 0.02)
    assert rounds <= 4, [(r.key.rsplit("/", 1)[1], round(r.start - starts[0], 3)) for r in requests]
