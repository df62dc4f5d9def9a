"""What a WAL merge costs, and what it saves, in one process on the memory store.

For each tail size (``--rows``, written as commits of ``--batch`` 384-d rows with text and
attributes, 3 in 10 of them overwrites):

* ``manifest``: bytes and decode time of the manifest before the merge (one WAL object
  per commit) and after it (one object): what every strong reader pays at each commit;
* ``merge``: the merging process's ``WalMerger.merge`` (its reader follows the namespace,
  so the fold is incremental; then encoding and the PUT, here to memory) and the merged
  object's bytes;
* ``first read after``: a reader that followed the namespace reaching the merged version
  (it goes on from the tail it holds, ``vectordb.tail_reader.continues``) beside one that
  folds it from scratch (a fresh process): the tail, a filter mask and the tail BM25, what
  a vector, filtered or hybrid query needs of the tail;
* ``manifest decode by WAL objects``: what the list costs each strong reader, 64 to 2,000
  objects (the default ``wal_merge_objects`` is 64).

    python bench/wal_merge.py [--rows 2000,10000,20000] [--batch 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.service import Service  # noqa: E402
from storage.memory import MemoryStore  # noqa: E402
from vectordb.filters import parse_filter  # noqa: E402
from vectordb.manifest import Manifest  # noqa: E402
from vectordb.rows import RowBatch, WriteBatch  # noqa: E402
from vectordb.settings import Settings  # noqa: E402

DIMS = 384
NS = "merge"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _timed(fn, repeat: int = 1):
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def _write(svc: Service, rng: np.random.Generator, words: list[str], n: int, batch: int, written: int) -> int:
    for lo in range(0, n, batch):
        k = min(batch, n - lo)
        fresh = max(1, round(k * 0.7))
        ids = [f"d{written + i}" for i in range(fresh)]
        if written:
            ids += [f"d{int(i)}" for i in rng.integers(0, written, k - fresh)]
        written += fresh
        vectors = rng.standard_normal((len(ids), DIMS)).astype(np.float32)
        texts = [" ".join(rng.choice(words, rng.integers(8, 40))) for _ in ids]
        attrs = [json.dumps({"category": f"c{int(c)}"}) for c in rng.integers(0, 20, len(ids))]
        svc.committer.commit_batches(NS, [WriteBatch(RowBatch(ids, vectors, texts, attrs), [])], DIMS)
    return written


def _reads(svc: Service, manifest: Manifest) -> dict:
    filt = parse_filter({"category": {"$in": ["c1", "c8"]}})
    out = {}
    out["tail_ms"] = _ms(_timed(lambda: svc.reader.tail(manifest))[0])
    out["filter_mask_ms"] = _ms(_timed(lambda: svc.reader.tail_filter_mask(manifest, filt, "f"))[0])
    out["bm25_ms"] = _ms(_timed(lambda: svc.reader.tail_bm25(manifest))[0])
    return out


def measure(rows: int, batch: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(3000)]
    store = MemoryStore()
    settings = Settings(store_uri="memory://bench", auto_index=False, wal_merge_objects=0)
    merger, follower = Service(settings, store=store), Service(settings, store=store)
    try:
        merger.create_namespace(NS, "none", dimensions=DIMS)
        _write(merger, rng, words, rows, batch, 0)
        before = merger.catalog.latest(NS)
        merger.reader.tail(before)  # the merging worker follows its namespace
        _reads(follower, before)  # and so does this reader (masks and BM25 too)
        raw = before.to_bytes()
        decode_before = _timed(lambda: Manifest.from_bytes(raw), 5)[0]
        seconds, result = _timed(lambda: merger.merger.merge(NS))
        after = merger.catalog.latest(NS)
        raw_after = after.to_bytes()
        fresh = Service(settings, store=store)
        try:
            return {
                "rows": rows,
                "wal_objects": len(before.wal),
                "manifest": {"bytes_before": len(raw), "decode_before_ms": _ms(decode_before),
                             "bytes_after": len(raw_after),
                             "decode_after_ms": _ms(_timed(lambda: Manifest.from_bytes(raw_after), 5)[0])},
                "merge": {"ms": _ms(seconds), "objects": result.objects, "rows": result.rows,
                          "object_bytes": after.wal[0].bytes},
                "first_read_after": {"followed": _reads(follower, after), "from_scratch": _reads(fresh, after)},
            }
        finally:
            fresh.close()
    finally:
        merger.close()
        follower.close()


def decode_by_objects(counts: list[int]) -> list[dict]:
    """Manifest decode time by the length of its WAL list (typical keys and counts)."""
    from vectordb.manifest import WalRef
    from vectordb.namespace import NamespaceConfig

    out = []
    for n in counts:
        wal = tuple(WalRef(f"{NS}/wal/{v:020d}-{'0' * 32}.parquet", v, 10, 0, 40_000) for v in range(n))
        raw = Manifest(NS, n, NamespaceConfig("none", DIMS), wal=wal).to_bytes()
        out.append({"wal_objects": n, "bytes": len(raw), "decode_ms": _ms(_timed(lambda raw=raw: Manifest.from_bytes(raw), 7)[0])})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2000,10000,20000", help="tail sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=10, help="rows per commit")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for rows in (int(r) for r in args.rows.split(",")):
        print(json.dumps(measure(rows, args.batch, args.seed)))
    for line in decode_by_objects([64, 128, 200, 1000, 2000]):
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
