"""Cold and warm BM25 on one big segment: the blocked ``bm25.bin`` beside the old whole
``.npz``, same index, same store, same run.

    python bench/bm25_on_demand.py [--docs 200000] [--store s3|file] [--latency-ms 5] [--queries 50]

The corpus follows shared/BENCHMARKS.md's text-heavy workload: ``--docs`` documents of
80-160 words drawn from NFCorpus's word frequencies (stopwords included, as in text). The
index is made straight from the sampled words (analyzed once per distinct word, no text
is built): a million documents take about a minute on two cores.

Both forms are written under one store. A cold query is a fresh :class:`BM25Reader` over
a fresh read cache with a :class:`CountingStore` below it: time to the top 10 (the
segment's statistics, as a query combines them, and the search), bytes and requests that
reached the store, sequential round trips (requests overlapping in time are one). Warm:
p50 / p99 over ``--queries`` NFCorpus test queries after one pass over them. The rows
of both forms' answers are compared (they must be equal).

``--store s3`` (default) starts a SeaweedFS of its own (``s3.py``; ``--endpoint`` names
another); ``--store file`` a temporary directory whose requests each take
``--latency-ms`` more (without it, parallel local reads hardly overlap in time and every
request looks like its own round trip). The segment's ids and docs (``docs.parquet``) are
not part of this: only what BM25 itself reads. Writes
``bench/results/<time>-bm25-on-demand-<docs>-<store>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import docs_on_demand  # noqa: E402
from beir import read_queries  # noqa: E402
from counting import CountingStore, describe_requests  # noqa: E402

from storage import CachedStore  # noqa: E402
from vectordb import bm25, bm25_blocks  # noqa: E402
from vectordb.bm25 import BM25Index, analyze, combine_stats  # noqa: E402
from vectordb.bm25_reader import BM25Reader  # noqa: E402

COLD_QUERY = "vitamin cancer risk"
POOL = ThreadPoolExecutor(16, thread_name_prefix="fetch")  # as a worker's reader has
_BLOCK_DOCS = 50_000  # documents sampled at once: bounds the scratch memory


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the corpus


def word_frequencies(data: Path) -> tuple[list[str], np.ndarray]:
    """NFCorpus's lowercase ``\\w+`` words and their relative frequencies."""
    counts: Counter[str] = Counter()
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            counts.update(bm25._WORD.findall(f"{doc.get('title', '')} {doc.get('text', '')}".lower()))
    words = sorted(counts)
    freq = np.array([counts[w] for w in words], np.float64)
    return words, freq / freq.sum()


def synthetic_index(n_docs: int, words: list[str], p: np.ndarray, seed: int) -> BM25Index:
    """The BM25 index of ``n_docs`` documents of 80-160 words drawn with probabilities ``p``."""
    term_of_word = [bm25._term(w) for w in words]
    vocabulary = sorted({t for t in term_of_word if t})
    rank = {t: i for i, t in enumerate(vocabulary)}
    word_term = np.array([rank[t] if t else -1 for t in term_of_word], np.int64)
    rng = np.random.default_rng(seed)
    terms, rows, tfs, lengths = [], [], [], []
    for lo in range(0, n_docs, _BLOCK_DOCS):
        hi = min(n_docs, lo + _BLOCK_DOCS)
        size = rng.integers(80, 161, hi - lo)
        term = word_term[rng.choice(len(words), int(size.sum()), p=p)]
        doc = np.repeat(np.arange(lo, hi), size)
        kept = term >= 0
        term, doc = term[kept], doc[kept]
        lengths.append(np.bincount(doc - lo, minlength=hi - lo))
        pair, tf = np.unique(term * n_docs + doc, return_counts=True)  # sorted by term, then row
        terms.append(pair // n_docs)
        rows.append(pair % n_docs)
        tfs.append(tf)
    term, row, tf = np.concatenate(terms), np.concatenate(rows), np.concatenate(tfs)
    order = np.argsort(term, kind="stable")  # blocks come in row order: rows stay ascending
    used, term = np.unique(term[order], return_inverse=True)
    indptr = np.zeros(len(used) + 1, np.int64)
    np.cumsum(np.bincount(term, minlength=len(used)), out=indptr[1:])
    return BM25Index(
        [vocabulary[t] for t in used.tolist()],
        bm25._compact(indptr),
        bm25._compact(row[order]),
        bm25._compact(tf[order]),
        bm25._compact(np.concatenate(lengths)),
    )


# --------------------------------------------------------------------------- stores


@contextlib.contextmanager
def raw_store(args: argparse.Namespace, tmp: Path):
    """The store the index is written to and read through (``docs_on_demand.raw_store``'s)."""
    with docs_on_demand.raw_store(args, tmp) as (_, read):
        yield read


# --------------------------------------------------------------------------- measuring


def answer(reader: BM25Reader, key: str, query: str) -> list[int]:
    """The top 10 rows, as a query over this one segment computes them."""
    terms = analyze(query)
    [index] = reader.fetch([key], terms, POOL)
    stats = combine_stats([index.stats(terms)])
    rows, _ = index.search(query, 10, stats=stats)
    return rows.tolist()


def cold(raw, key: str, query: str) -> tuple[dict, list[int]]:
    counting = CountingStore(raw)
    reader = BM25Reader(CachedStore(counting, 4 * 1024**3), 1024**3)
    started = time.perf_counter()
    rows = answer(reader, key, query)
    elapsed = time.perf_counter() - started
    requests = describe_requests(counting.take())
    return {"ms": round(elapsed * 1000, 1), **{k: requests[k] for k in ("bytes", "requests", "round_trips")}}, rows


def warm(raw, key: str, queries: list[str]) -> tuple[dict, list[list[int]]]:
    reader = BM25Reader(CachedStore(raw, 4 * 1024**3), 1024**3)
    answers = [answer(reader, key, q) for q in queries]
    times = []
    for q in queries:
        started = time.perf_counter()
        answer(reader, key, q)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2)}, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nfcorpus")
    parser.add_argument("--store", choices=("s3", "file"), default="s3")
    parser.add_argument("--endpoint", help="an S3 endpoint host:port (default: a SeaweedFS started here)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="added to each read of --store file")
    parser.add_argument("--queries", type=int, default=50, help="NFCorpus test queries for the warm pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="the JSON results (default: results/<time>-bm25-on-demand-<docs>-<store>.json)")
    args = parser.parse_args(argv)

    started_at = datetime.datetime.now()
    words, p = word_frequencies(args.data)
    started = time.perf_counter()
    index = synthetic_index(args.docs, words, p, args.seed)
    log(f"{args.docs} documents, {len(index.terms)} terms, {len(index.rows)} postings "
        f"({time.perf_counter() - started:.1f} s)")
    started = time.perf_counter()
    files = {"old": index.to_bytes()}
    old_s = time.perf_counter() - started
    started = time.perf_counter()
    files["new"] = bm25_blocks.encode(index)
    new_s = time.perf_counter() - started
    queries = [COLD_QUERY, *list(read_queries(args.data, "test")[0].values())[: args.queries]]
    result: dict = {"docs": args.docs, "terms": len(index.terms), "postings": int(len(index.rows)),
                    "loadavg_start": round(os.getloadavg()[0], 2),
                    "store": args.store, "latency_ms": args.latency_ms if args.store == "file" else None,
                    "encode_s": {"old": round(old_s, 2), "new": round(new_s, 2)}, "formats": {}}
    with tempfile.TemporaryDirectory(prefix="bm25od-") as tmp, raw_store(args, Path(tmp)) as raw:
        for name, data in files.items():
            key = f"ns/segments/bench-{name}/bm25.bin"
            raw.put(key, data)
            row = {"file_bytes": len(data)}
            row["cold"], cold_rows = cold(raw, key, COLD_QUERY)
            colds = [cold(raw, key, q)[0] for q in queries[1:6]]
            row["cold_5_queries"] = {k: statistics.median(c[k] for c in colds) for k in ("ms", "bytes", "round_trips")}
            row["warm"], row["answers"] = warm(raw, key, queries)
            assert row["answers"][0] == cold_rows
            result["formats"][name] = row
    old, new = result["formats"]["old"], result["formats"]["new"]
    result["same_answers"] = old.pop("answers") == new.pop("answers")
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(report(result))
    out = args.out or BENCH / "results" / f"{started_at:%Y%m%d-%H%M%S}-bm25-on-demand-{args.docs}-{args.store}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if result["same_answers"] else 1


def report(result: dict) -> str:
    where = "SeaweedFS (S3, loopback)" if result["store"] == "s3" else f"local dir + {result['latency_ms']} ms a read"
    lines = [f"{result['docs']:,} documents, {result['terms']:,} terms, {result['postings']:,} postings; {where}",
             f"{'':<5} {'file MB':>8} {'encode s':>8} | cold '{COLD_QUERY}': {'ms':>7} {'MB read':>8} {'reqs':>4} "
             f"{'rounds':>6} | cold, median of 5: {'ms':>6} {'MB':>6} {'rounds':>6} | warm p50 / p99 ms"]
    for name, row in result["formats"].items():
        c, c5, w = row["cold"], row["cold_5_queries"], row["warm"]
        lines.append(
            f"{name:<5} {row['file_bytes'] / 1e6:>8.1f} {result['encode_s'][name]:>8.2f} | "
            f"{'':<{len(COLD_QUERY) + 8}}{c['ms']:>7.1f} {c['bytes'] / 1e6:>8.3f} {c['requests']:>4} {c['round_trips']:>6} | "
            f"{'':<19}{c5['ms']:>6.1f} {c5['bytes'] / 1e6:>6.3f} {c5['round_trips']:>6} | {w['p50_ms']:.2f} / {w['p99_ms']:.2f}"
        )
    old, new = result["formats"]["old"], result["formats"]["new"]
    lines.append(
        f"new / old: cold ms {new['cold']['ms'] / old['cold']['ms']:.3f}, bytes {new['cold']['bytes'] / old['cold']['bytes']:.4f}, "
        f"warm p50 {new['warm']['p50_ms'] / old['warm']['p50_ms']:.2f}; same top 10 for every query: {result['same_answers']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
