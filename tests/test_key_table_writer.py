"""A key table written in bounded memory (entries waiting on disk in shards by hash) is the
table written at once, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from vectordb import key_table
from vectordb.key_table import Packed, TableWriter


def _entries(rng, n: int, heavy: bool):
    keys = [f"k{i}-" + "x" * int(rng.integers(0, 20)) for i in range(n)]
    if heavy and n:
        keys[: n // 4] = ["one-long-document"] * (n // 4)  # a key with many rows spills its bucket
    rows = rng.permutation(n).astype(np.int64)
    payloads = [bytes(rng.integers(0, 256, int(rng.integers(0, 30)), dtype=np.uint8)) for _ in range(n)]
    return keys, rows, payloads


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 1025, 20_000])
@pytest.mark.parametrize("heavy", [False, True])
def test_a_streamed_table_is_the_table_written_at_once(tmp_path, monkeypatch, n, heavy):
    rng = np.random.default_rng(n)
    keys, rows, payloads = _entries(rng, n, heavy)
    hashes = key_table.blake2b64(keys)
    whole: list[bytes] = []
    info = key_table.write(Packed.of([k.encode() for k in keys]), hashes, rows, Packed.of(payloads), whole.append)
    monkeypatch.setattr(key_table, "_FLUSH_BYTES", 2048)  # many flushes to the shards' files
    writer = TableWriter(tmp_path / "t")
    cuts = np.linspace(0, n, 8).astype(int)
    for lo, hi in zip(cuts, cuts[1:]):
        writer.add(Packed.of([k.encode() for k in keys[lo:hi]]), hashes[lo:hi], rows[lo:hi], Packed.of(payloads[lo:hi]))
    streamed: list[bytes] = []
    assert writer.finish(streamed.append) == info
    assert b"".join(streamed) == b"".join(whole)
    assert not (tmp_path / "t").exists()  # the shards are removed
    data = b"".join(streamed)
    for i in rng.choice(n, min(n, 50), replace=False).tolist() if n else []:
        b = int(info.bucket_of(hashes[i : i + 1])[0])
        bucket = key_table.decode(data[b * info.stride : (b + 1) * info.stride])
        found = bucket.find(keys[i].encode(), int(hashes[i]))
        if bucket.spill is not None:
            at, length = bucket.spill
            found += key_table.decode(data[at : at + length]).find(keys[i].encode(), int(hashes[i]))
        assert (int(rows[i]), payloads[i]) in found
