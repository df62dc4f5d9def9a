"""Text ingest with chunking beside the embedder alone, on the same chunks (issue 12).

NFCorpus documents (title + " " + text; ``passes`` copies under other ids, so that a run
goes past 10,000 chunks) go through a chunking namespace (``minilm``, 256/32 tokens) with
``Service.upsert``, ``batch`` documents at a time, each call acknowledged once durable. The
embedder alone embeds the very chunks of each batch (the same ``embed_documents`` calls the
service makes, chunked beforehand, untimed). The two take turns batch by batch, so a change
in the machine's load slows both alike; each side's clock counts only its own calls.

Reported per side: chunks/s over the first 10,000 chunks, over the last 10,000 and overall,
and the service's share of the embedder's speed (the target: >= 0.90, flat from the first
10k to the last).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from api.service import Service  # noqa: E402
from ingest import documents  # noqa: E402
from vectordb import embedders  # noqa: E402

WINDOW = 10_000


def nfcorpus(data: Path, passes: int, limit: int | None = None) -> list[dict]:
    """The NFCorpus documents, ``passes`` times (ids ``p<pass>-<id>``), the first ``limit`` of each."""
    base = []
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            base.append((d["_id"], d.get("title", ""), (d.get("title", "") + " " + d.get("text", "")).strip()))
            if limit and len(base) >= limit:
                break
    return [{"id": f"p{p}-{i}", "text": text, "attributes": {"title": title}}
            for p in range(passes) for i, title, text in base]


def rates(marks: list[tuple[int, float]]) -> dict:
    """chunks/s over the first and the last ``WINDOW`` chunks and overall, from (chunks, seconds) marks."""
    total, seconds = marks[-1]
    first = next(m for m in marks if m[0] >= min(WINDOW, total))
    start = max((m for m in marks if m[0] <= total - WINDOW), default=(0, 0.0), key=lambda m: m[0])
    return {
        "chunks": total,
        "seconds": round(seconds, 1),
        "first_10k_chunks_per_s": round(first[0] / first[1], 1),
        "last_10k_chunks_per_s": round((total - start[0]) / (seconds - start[1]), 1),
        "overall_chunks_per_s": round(total / seconds, 1),
    }


def measure(settings, store, docs: list[dict], batch: int, log) -> dict:
    """Ingest ``docs`` into a fresh chunking namespace of ``store`` beside the embedder alone."""
    svc = Service(settings, store=store)
    ns = "text-ingest"
    svc.create_namespace(ns, "minilm")
    config = svc.catalog.latest(ns).config
    embedder = embedders.get(config.embedder, settings)
    embedder.load(documents=True)
    embedder.embed_documents(["a warm-up text, so that neither side pays for the first call"] * 8)
    batches = [docs[lo : lo + batch] for lo in range(0, len(docs), batch)]
    chunk_texts = [[c["text"] for c in documents.expand(b, config, svc.token_counter())] for b in batches]
    total = sum(map(len, chunk_texts))
    log(f"ingest: {len(docs):,} documents -> {total:,} chunks, in {len(batches)} batches of {batch}")
    marks: dict[str, list[tuple[int, float]]] = {"service": [(0, 0.0)], "embedder": [(0, 0.0)]}
    started_all = time.perf_counter()
    for n, (docs_batch, texts) in enumerate(zip(batches, chunk_texts, strict=True)):
        started = time.perf_counter()
        embedder.embed_documents(texts)
        done, spent = marks["embedder"][-1]
        marks["embedder"].append((done + len(texts), spent + time.perf_counter() - started))
        started = time.perf_counter()
        _, rows = svc.upsert(ns, docs_batch)
        done, spent = marks["service"][-1]
        marks["service"].append((done + rows, spent + time.perf_counter() - started))
        if n % 10 == 9:
            elapsed = time.perf_counter() - started_all
            left = elapsed / (n + 1) * (len(batches) - n - 1)
            log(f"ingest: {n + 1}/{len(batches)} batches, {marks['service'][-1][0]:,} chunks, "
                f"{elapsed:.0f} s, ETA {left:.0f} s")
    svc.close()
    out = {side: rates(m) for side, m in marks.items()}
    service, alone = out["service"], out["embedder"]
    out["service_over_embedder"] = {key: round(service[key] / alone[key], 3) for key in service if key.endswith("_per_s")}
    out["service_last_over_first"] = round(service["last_10k_chunks_per_s"] / service["first_10k_chunks_per_s"], 3)
    out["docs"], out["batch_docs"] = len(docs), batch
    return out
