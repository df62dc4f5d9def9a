"""Retrieval quality on a BEIR dataset, measured through the HTTP API of a real service.

    python bench/beir.py DIR [--url URL] [--modes vector,bm25,hybrid] [--limit N] [--no-chunking]

``DIR`` holds a BEIR dataset: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` and ``qrels/<split>.tsv``. Without ``--url`` a ``vectordb serve`` process
is started on a free 127.0.0.1 port with a temporary ``file://`` store and ended when done.

Steps: create the namespace (``--embedder``, default ``minilm``; the service's default
chunking unless ``--no-chunking``), upsert every document as ``(title + " " + text).strip()``
with attributes ``{"title": title}`` in batches, ``POST /index``, then for each mode send
every query of the split (``top_k`` 100, attributes included) and map each hit to its parent
document (``attributes["doc_id"]``, else the hit's id; the first, best-ranked occurrence
counts). With chunking, 100 hits may name fewer than 100 documents: ``--top-k 300`` asks
deeper, and only the first 100 distinct documents count for recall@100.
Scores are trec_eval's nDCG@10 (linear gain) and recall@100 over the queries in the qrels.

Prints a table with the published references beside our figures (NFCorpus only) and writes
everything to ``bench/results/beir-<dataset>.json`` (``vectordb eval beir``: only to
``--output``). Exit status 1 if a mode failed.

Reference scores (BENCHMARKS.md and the BEIR / bm25s papers, NFCorpus test split) are for
the unchunked documents, truncated by the model at 256 tokens: ``--no-chunking`` reproduces
that setting; the default measures what a user of the service gets.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vectordb.evaluation import ndcg_at_k, recall_at_k  # noqa: E402
from vectordb.testing import free_port  # noqa: E402

RESULTS = BENCH / "results"
MODES = ("vector", "bm25", "hybrid")
# Published figures: (what, nDCG@10, recall@100), per dataset and mode.
REFERENCES: dict[str, dict[str, list[tuple[str, float, float]]]] = {
    "nfcorpus": {
        "vector": [("dense exact all-MiniLM-L6-v2", 0.3159, 0.3115)],
        "bm25": [("BM25 Anserini flat", 0.3218, 0.2457), ("BM25 bm25s k1=1.5 b=0.75", 0.3217, 0.2550)],
        "hybrid": [("RRF k=60, dense + BM25 top-100", 0.3425, 0.3178)],
    },
}


def log(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the dataset


def read_corpus(data: Path, limit: int | None = None) -> Iterator[dict]:
    """Documents to upsert, in file order: ``{"id", "text", "attributes": {"title"}}``."""
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                return
            doc = json.loads(line)
            title = doc.get("title") or ""
            yield {"id": str(doc["_id"]), "text": (title + " " + (doc.get("text") or "")).strip(),
                   "attributes": {"title": title}}


def read_queries(data: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The queries judged in ``qrels/<split>.tsv`` and those judgments."""
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = {}
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            query = json.loads(line)
            if str(query["_id"]) in qrels:
                queries[str(query["_id"])] = query["text"]
    return queries, qrels


# ---------------------------------------------------------------------------- the service


@contextlib.contextmanager
def local_server(workdir: Path, settings: dict[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """A ``vectordb serve`` subprocess on a free 127.0.0.1 port with a ``file://`` store in
    ``workdir`` and ``settings`` (``VECTORDB_*`` variables) added to its environment; yields
    its URL once /healthz answers, ends it (by its own PID) afterwards."""
    port = free_port()
    log_path = workdir / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VECTORDB_STORE_URI": f"file://{workdir / 'store'}", **(settings or {})}
    command = [sys.executable, "-m", "api.cli", "serve", "--role", "all", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in {timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _check(response: httpx.Response) -> dict:
    """The JSON body of a 2xx response; else RuntimeError with the service's error message."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        detail = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        detail = response.text[:500]
    raise RuntimeError(f"{response.request.method} {response.request.url.path} answered {response.status_code}: {detail}")


def ingest(client: httpx.Client, ns: str, docs: list[dict], batch: int) -> dict:
    """Upsert ``docs`` in batches, then build the index; the timings and row counts."""
    started = time.perf_counter()
    rows = 0
    for lo in range(0, len(docs), batch):
        rows += _check(client.post(f"/v1/namespaces/{ns}/documents", json={"documents": docs[lo : lo + batch]}))[
            "upserted"]
        done = min(lo + batch, len(docs))
        rate = done / (time.perf_counter() - started)
        log(f"\ringested {done}/{len(docs)} documents ({rows} rows, {rate:.1f} docs/s)", end="")
    log("")
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    index = _check(client.post(f"/v1/namespaces/{ns}/index", json={}))
    return {"documents": len(docs), "rows": rows, "upsert_s": round(upsert_s, 1),
            "docs_per_s": round(len(docs) / upsert_s, 1) if upsert_s else None,
            "index_s": round(time.perf_counter() - started, 2), "indexed_rows": index.get("indexed_rows")}


def evaluate(client: httpx.Client, ns: str, mode: str, queries: dict[str, str], qrels: dict, top_k: int) -> dict:
    """Run every query in ``mode``; nDCG@10, recall@100 and latency."""
    run: dict[str, list[str]] = {}
    latencies = []
    hits_per_query = []
    for n, (qid, text) in enumerate(queries.items(), 1):
        body: dict = {"text": text, "top_k": top_k, "include": ["attributes"]}
        if mode != "vector":  # a server without search modes still answers vector queries
            body["mode"] = mode
        started = time.perf_counter()
        results = _check(client.post(f"/v1/namespaces/{ns}/query", json=body))["results"]
        latencies.append(time.perf_counter() - started)
        run[qid] = parents(results)
        hits_per_query.append(len(run[qid]))
        if n % 25 == 0 or n == len(queries):
            log(f"\r{mode}: {n}/{len(queries)} queries", end="")
    log("")
    latencies.sort()
    return {
        "ndcg@10": round(ndcg_at_k(run, qrels, 10), 4),
        "recall@100": round(recall_at_k(run, qrels, 100), 4),
        "queries": len(queries),
        "documents_per_query": round(statistics.mean(hits_per_query), 1) if hits_per_query else 0,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1) if latencies else None,
        "seconds": round(sum(latencies), 1),
    }


def parents(results: list[dict]) -> list[str]:
    """Parent document ids of ranked hits, each once, at its best rank."""
    seen: dict[str, None] = {}
    for hit in results:
        doc_id = (hit.get("attributes") or {}).get("doc_id", hit["id"])
        seen.setdefault(str(doc_id))
    return list(seen)


# ---------------------------------------------------------------------------- report


def table(result: dict) -> str:
    refs = REFERENCES.get(result["dataset"], {})
    lines = [f"{'mode':<8} {'nDCG@10':>8} {'recall@100':>10} {'p50 ms':>7}   published nDCG@10 / recall@100"]
    for mode, scores in result["modes"].items():
        published = "; ".join(f"{n:.4f} / {r:.4f} {what}" for what, n, r in refs.get(mode, [])) or "-"
        if "error" in scores:
            lines.append(f"{mode:<8} {'failed: ' + scores['error'][:100]}")
            continue
        lines.append(f"{mode:<8} {scores['ndcg@10']:>8.4f} {scores['recall@100']:>10.4f} {scores['p50_ms']:>7.1f}"
                     f"   {published}")
    ing = result.get("ingest")
    if ing:
        lines.append(f"ingest: {ing['documents']} documents -> {ing['rows']} rows in {ing['upsert_s']} s "
                     f"({ing['docs_per_s']} docs/s), index {ing['index_s']} s")
    lines.append(f"total: {result['total_s']} s ({result['queries']} queries per mode, top_k {result['top_k']}, "
                 f"chunking {result['chunking']}{_threads(result)})")
    return "\n".join(lines)


def _threads(result: dict) -> str:
    if result["url"] != "local":
        return ""  # the server at --url was set up by someone else
    return f", embed threads {result['embed_threads'] or 'default'}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="beir", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, metavar="DIR", help="BEIR dataset directory")
    parser.add_argument("--url", help="a running service (default: start one with a temporary store)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: vector,bm25,hybrid")
    parser.add_argument("--limit", type=int, help="ingest only the first N documents (a smoke test)")
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument("--namespace", help="namespace to use (default: beir-<dataset>)")
    parser.add_argument("--reuse", action="store_true", help="skip ingestion if the namespace already exists")
    parser.add_argument("--embedder", default="minilm", help="the namespace's embedder (default: minilm)")
    parser.add_argument("--no-chunking", action="store_true", help="store documents whole (the reference setting)")
    parser.add_argument("--embed-threads", type=int,
                        help="torch threads of the started server (VECTORDB_EMBED_THREADS; 1 helps on a busy machine)")
    parser.add_argument("--batch", type=int, default=128, help="documents per upsert request")
    parser.add_argument("--top-k", type=int, default=100,
                        help="hits asked per query (default: 100); with chunks, more hits reach 100 documents")
    parser.add_argument("--output", type=Path, help="JSON file (default: bench/results/beir-<dataset>.json; vectordb eval: none)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or not args.modes:
        parser.error(f"--modes takes {', '.join(MODES)}; not {', '.join(unknown) or 'nothing'}")
    if args.url and args.embed_threads:
        parser.error("--embed-threads sets up the server this command starts; it cannot change one at --url")
    if not (args.data / "corpus.jsonl").is_file():
        parser.error(f"{args.data} has no corpus.jsonl")
    return args


def run(args: argparse.Namespace, url: str) -> dict:
    dataset = args.data.resolve().name
    ns = args.namespace or "beir-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset)[:50]
    queries, qrels = read_queries(args.data, args.split)
    result: dict = {"dataset": dataset, "namespace": ns, "url": url if args.url else "local", "split": args.split,
                    "queries": len(queries), "top_k": args.top_k, "embedder": args.embedder,
                    "chunking": "off" if args.no_chunking else "service default",
                    "embed_threads": args.embed_threads}
    with httpx.Client(base_url=url, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        body: dict = {"embedder": args.embedder}
        if args.no_chunking:
            body["chunking"] = False
        created = _check(client.put(f"/v1/namespaces/{ns}", json=body)).get("created", True)
        if created or not args.reuse:
            docs = list(read_corpus(args.data, args.limit))
            log(f"{dataset}: {len(docs)} documents, {len(queries)} {args.split} queries -> {url} namespace {ns}")
            result["ingest"] = ingest(client, ns, docs, args.batch)
        else:
            log(f"{dataset}: reusing namespace {ns} at {url}")
        result["modes"] = {}
        for mode in args.modes:
            try:
                result["modes"][mode] = evaluate(client, ns, mode, queries, qrels, args.top_k)
            except RuntimeError as exc:  # e.g. a server without this mode: report it, go on
                log(f"\n{mode}: {exc}")
                result["modes"][mode] = {"error": str(exc)}
    result["references"] = {mode: [{"what": w, "ndcg@10": n, "recall@100": r} for w, n, r in refs]
                            for mode, refs in REFERENCES.get(dataset, {}).items()}
    return result


def main(argv: list[str] | None = None, results_dir: Path | None = RESULTS) -> int:
    """The command line (also ``vectordb eval beir``, which passes ``results_dir`` None: it
    writes a JSON file only where ``--output`` says, never into the checkout); returns the
    exit status."""
    args = parse_args(argv)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="beir-")))
            log("starting vectordb serve ...")
            settings = {"VECTORDB_EMBED_THREADS": str(args.embed_threads)} if args.embed_threads else {}
            url = stack.enter_context(local_server(workdir, settings))
        result = run(args, url.rstrip("/"))
    result["total_s"] = round(time.perf_counter() - started, 1)
    output = args.output or (results_dir / f"beir-{result['dataset']}.json" if results_dir else None)
    print(table(result))
    if output is None:
        print("(no JSON written: pass --output FILE to keep the full result)")
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {output}")
    return 1 if any("error" in m for m in result["modes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
