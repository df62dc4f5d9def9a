"""Readers for the shared evaluation data (``../shared/data`` beside the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def read_vecs(path: Path, dtype) -> np.ndarray:
    """texmex .fvecs / .ivecs: each row is int32 d, then d values."""
    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].view(dtype).copy()


def siftsmall() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = DATA / "siftsmall"
    return (
        read_vecs(base / "siftsmall_base.fvecs", np.float32),
        read_vecs(base / "siftsmall_query.fvecs", np.float32),
        read_vecs(base / "siftsmall_groundtruth.ivecs", np.int32),
    )


def nfcorpus_docs(limit: int | None = None) -> list[dict]:
    docs = []
    with open(DATA / "nfcorpus" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": d["_id"], "text": (d.get("title", "") + " " + d.get("text", "")).strip(),
                         "attributes": {"title": d.get("title", "")}})
            if limit and len(docs) >= limit:
                break
    return docs
