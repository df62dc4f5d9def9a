"""bm25.bin written in bounded memory (vectordb.bm25_spill): postings spilled in sorted
runs and merged make the same bytes as the in-memory encode, whatever the bound, with
terms of every UTF-8 length, overflowing slots, escaped widths and rows added in
batches; and the postings held never pass the bound."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_bm25_blocks import MORE_WORDS
from vectordb import bm25_blocks, bm25_spill
from vectordb.bm25 import BM25Index
from vectordb.bm25_blocks import encode, read_index


def _texts(rows: int, seed: int = 3) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(6_000)] + MORE_WORDS)
    out = []
    for i in range(rows):
        words = vocabulary[rng.zipf(1.3, rng.integers(5, 60)) % len(vocabulary)].tolist()
        if i % 997 == 0:
            words += ["repeated"] * 300  # a term frequency past one byte
        out.append(" ".join(words) if i % 101 else "")  # some empty texts
    return out


def _spilled(texts: list[str], tmp_path, max_bytes: int, batch: int = 1_000) -> tuple[bytes, int, int]:
    writer = bm25_spill.PostingsWriter(len(texts), tmp_path, max_bytes)
    peak = 0
    for lo in range(0, len(texts), batch):
        writer.add(texts[lo : lo + batch])
        peak = max(peak, writer.builder.postings_bytes)
    runs = len(writer.runs)
    writer.write(tmp_path / "bm25.bin")
    assert not list(tmp_path.glob("*.spill"))  # runs and the postings file removed
    return (tmp_path / "bm25.bin").read_bytes(), runs, peak


@pytest.mark.parametrize("max_bytes", [1 << 20, 3 << 20, 1 << 30])
@pytest.mark.parametrize("merge_postings", [1 << 22, 5_000])
def test_spilled_runs_merge_to_the_in_memory_bytes(tmp_path, monkeypatch, max_bytes, merge_postings):
    monkeypatch.setattr(bm25_spill, "_MERGE_POSTINGS", merge_postings)  # slots merged a few at a time
    texts = _texts(24_000)
    want = encode(BM25Index.build(texts))
    got, runs, peak = _spilled(texts, tmp_path, max_bytes)
    assert got == want
    if max_bytes < 1 << 30:
        assert runs >= (3 if max_bytes == 1 << 20 else 1)  # and the last, spilled by write
        assert peak < max_bytes + 12 * 60 * 1_300  # at most one batch's postings past the bound
    else:
        assert runs == 0


def test_overflowing_slots_and_small_segments(tmp_path, monkeypatch):
    texts = _texts(21_000, seed=8)
    monkeypatch.setattr(bm25_blocks, "hashed_slots", lambda rows: 5)  # every slot's block moves
    got, runs, _ = _spilled(texts, tmp_path, 1 << 20)
    assert runs >= 2 and got == encode(BM25Index.build(texts))
    assert bm25_blocks.moved(got[bm25_blocks.HEAD_BYTES : bm25_blocks.HEAD_BYTES + 4096]) is not None
    monkeypatch.undo()
    small = _texts(500)  # sorted blocks (format 2): encoded in memory, no runs
    got, runs, _ = _spilled(small, tmp_path, 1 << 20, batch=100)
    assert runs == 0 and got == encode(BM25Index.build(small))
    index = read_index(got)
    assert index.n_docs == 500


def test_a_row_count_that_does_not_match_is_refused(tmp_path):
    writer = bm25_spill.PostingsWriter(10, tmp_path, 1 << 20)
    writer.add(["a b", "c"])
    with pytest.raises(ValueError, match="2 rows for a segment of 10"):
        writer.write(tmp_path / "bm25.bin")
