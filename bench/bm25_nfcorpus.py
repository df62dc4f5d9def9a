"""BM25 quality on BEIR NFCorpus (test split): nDCG@10 and recall@100.

    python bench/bm25_nfcorpus.py [--data DIR] [--k1 1.2] [--b 0.75] [--grid]

Documents are ``(title + " " + text).strip()``; only the queries in ``qrels/test.tsv`` count;
nDCG uses trec_eval's linear gain. ``--grid`` tries k1 in {0.9, 1.2, 1.5} x b in {0.4, 0.75}.
References (BENCHMARKS.md): Anserini BM25 flat 0.3218, bm25s k1=1.5 b=0.75 0.3217.

Measured 2026-11-27 with vectordb.bm25 (nDCG@10 / recall@100):

    k1 | b   0.3             0.4             0.6             0.75            0.9
    0.9      0.3285/0.2467   0.3273/0.2473   0.3269/0.2471   0.3265/0.2468   0.3255/0.2465
    1.2      0.3297/0.2470   0.3288/0.2470   0.3291/0.2480   0.3299/0.2472   0.3290/0.2470
    1.5      0.3327/0.2480   0.3317/0.2481   0.3314/0.2481   0.3313/0.2479   0.3300/0.2471
    1.8      0.3316/0.2481   0.3313/0.2477   0.3315/0.2479   0.3321/0.2476   0.3306/0.2476
    2.0      0.3323/0.2480   0.3312/0.2477   0.3317/0.2481   0.3314/0.2468   0.3299/0.2472

Analyzer variants at k1=1.5 b=0.75: Lucene's 33 stopwords 0.3263, no stopwords 0.3241, no
stemming 0.3141, plural-s stripping 0.3270, Snowball English (Porter2) 0.3320, Snowball Porter
0.3314, dropping 1-letter tokens 0.3275.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from beir import read_queries  # noqa: E402  (bench/ is this script's directory)

from vectordb.bm25 import BM25Index  # noqa: E402
from vectordb.evaluation import ndcg_at_k, recall_at_k  # noqa: E402


def load(data: Path) -> tuple[list[str], list[str], dict[str, str], dict[str, dict[str, int]]]:
    doc_ids, texts = [], []
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            doc_ids.append(doc["_id"])
            texts.append((doc.get("title", "") + " " + doc.get("text", "")).strip())
    queries, qrels = read_queries(data, "test")
    return doc_ids, texts, queries, qrels


def evaluate(index: BM25Index, doc_ids: list[str], queries: dict[str, str], qrels: dict) -> tuple[float, float, float]:
    start = time.perf_counter()
    run = {}
    for qid, text in queries.items():
        rows, _ = index.search(text, 100)
        run[qid] = [doc_ids[r] for r in rows]
    per_query_ms = (time.perf_counter() - start) / len(queries) * 1000
    return ndcg_at_k(run, qrels, 10), recall_at_k(run, qrels, 100), per_query_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "nfcorpus")
    parser.add_argument("--k1", type=float, default=None)
    parser.add_argument("--b", type=float, default=None)
    parser.add_argument("--grid", action="store_true", help="try k1 in {0.9, 1.2, 1.5} x b in {0.4, 0.75}")
    args = parser.parse_args()

    doc_ids, texts, queries, qrels = load(args.data)
    start = time.perf_counter()
    index = BM25Index.build(texts)
    build_s = time.perf_counter() - start
    size = len(index.to_bytes())
    print(f"{len(texts)} documents, {len(queries)} queries; build {build_s:.2f} s, {size / 1e6:.2f} MB serialised")

    if args.grid:
        settings = [(k1, b) for k1 in (0.9, 1.2, 1.5) for b in (0.4, 0.75)]
    else:
        settings = [(args.k1 if args.k1 is not None else index.k1, args.b if args.b is not None else index.b)]
    for k1, b in settings:
        index.k1, index.b = k1, b
        ndcg, recall, ms = evaluate(index, doc_ids, queries, qrels)
        print(f"k1={k1:<4} b={b:<5} nDCG@10={ndcg:.4f} recall@100={recall:.4f} ({ms:.2f} ms/query)")


if __name__ == "__main__":
    main()
