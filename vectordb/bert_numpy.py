"""A sentence-transformers BERT encoder (e.g. all-MiniLM-L6-v2) evaluated with numpy.

Why: a query worker that scales to zero pays its imports on every cold start, and
``import sentence_transformers`` (torch, transformers, scikit-learn) takes 8-14 s on a
2-core machine, while this module needs numpy and the ``tokenizers`` package (~0.1 s).
Query embedding is one short sequence, which numpy computes in a few milliseconds.

The weights are memory-mapped from ``model.safetensors``, not copied: loading is a few
milliseconds, and every worker process on one host shares the same physical pages
through the page cache.

Only the layout that sentence-transformers writes for a BERT encoder with mean pooling
and normalisation is supported (``modules.json``: Transformer, Pooling with
``pooling_mode_mean_tokens``, Normalize); anything else raises InvalidArgument, and the
torch embedder remains the one to use for it. The output matches sentence-transformers
to float32 rounding (``tests/test_bert_numpy.py`` checks cosine > 0.99999).
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vectordb.errors import InvalidArgument

_DTYPES = {"F32": np.float32, "I64": np.int64}

# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32 resolution of GELU's output.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.copysign(1.0 - poly * np.exp(-a * a), x).astype(np.float32, copy=False)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU."""
    return x * 0.5 * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))


def load_tokenizer(model_dir: Path, max_seq_length: int):
    """The model's fast tokenizer, truncating at ``max_seq_length`` tokens, unpadded."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.no_padding()
    return tokenizer


def padded_batches(tokenizer, texts: list[str], batch_size: int, mask_dtype) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    """Tokenise ``texts`` and yield (positions in ``texts``, token ids, attention mask) per
    batch, texts of similar length together so that a batch pads little."""
    encodings = tokenizer.encode_batch(list(texts)) if texts else []
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    for lo in range(0, len(order), batch_size):
        batch = order[lo : lo + batch_size]
        width = max(len(encodings[i].ids) for i in batch)
        ids = np.zeros((len(batch), width), np.int64)
        mask = np.zeros((len(batch), width), mask_dtype)
        for row, i in enumerate(batch):
            n = len(encodings[i].ids)
            ids[row, :n] = encodings[i].ids
            mask[row, :n] = 1
        yield batch, ids, mask


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read-only arrays viewing a memory map of a ``.safetensors`` file.

    Raises InvalidArgument for a malformed file or a dtype other than F32 and I64.
    """
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        (header_len,) = struct.unpack("<Q", mapped[:8])
        header = json.loads(mapped[8 : 8 + header_len])
    except (struct.error, ValueError) as exc:
        raise InvalidArgument(f"{path} is not a safetensors file: {exc}") from exc
    base = 8 + header_len
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise InvalidArgument(f"{path}: tensor {name} is {spec['dtype']}; the numpy encoder reads F32 and I64")
        start, end = spec["data_offsets"]
        count = (end - start) // np.dtype(dtype).itemsize
        out[name] = np.frombuffer(mapped, dtype, count, base + start).reshape(spec["shape"])
    return out


def _check_pipeline(model_dir: Path) -> None:
    """Accept only Transformer -> mean Pooling -> Normalize."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((model_dir / pooling_dir / "config.json").read_text())
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise InvalidArgument(f"{model_dir} is not a sentence-transformers model directory: {exc}") from exc
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if kinds != ["Transformer", "Pooling", "Normalize"] or modes != {"pooling_mode_mean_tokens"}:
        raise InvalidArgument(f"{model_dir}: the numpy encoder supports Transformer + mean Pooling + Normalize only")
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise InvalidArgument(f"{model_dir}: the numpy encoder supports BERT models with GELU only")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise InvalidArgument(f"{model_dir}: the numpy encoder supports absolute position embeddings only")


def _limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS threads for the whole process.

    A one-sequence query is a few small matrix products; OpenBLAS splits them across all
    cores anyway and, on a busy 2-core machine, spins: 30 ms per query on one thread
    became 430 ms on two. threadpoolctl (a scikit-learn dependency) does the capping;
    without it the environment (``OPENBLAS_NUM_THREADS``) decides.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - present wherever sentence-transformers is
        return
    threadpool_limits(threads, user_api="blas")


class BatchedBertEncoder:
    """What the BERT runtimes share (the :class:`vectordb.embedders.Embedder` protocol):
    the model opens once, under a lock, on first use or :meth:`load` (:meth:`_open`, which
    returns the tokenizer and the runtime's model), and texts are encoded in padded batches
    (:meth:`_run`)."""

    _mask_dtype: type = np.float32

    def __init__(self, name: str, model_dir: str | Path, max_seq_length: int, batch_size: int) -> None:
        self.name = name
        self._dir = Path(model_dir)
        self._max_seq_length = max_seq_length
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple | None = None
        self._config = json.loads((self._dir / "config.json").read_text())
        self.dimensions = int(self._config["hidden_size"])

    def load(self) -> None:
        """Open the model now (idempotent)."""
        self._model()

    def _model(self) -> tuple:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._open()
            return self._loaded

    def _open(self) -> tuple:
        raise NotImplementedError

    def _run(self, model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        tokenizer, model = self._model()
        out = np.zeros((len(texts), self.dimensions), np.float32)
        for batch, ids, mask in padded_batches(tokenizer, texts, self._batch_size, self._mask_dtype):
            out[batch] = self._run(model, ids, mask)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


class NumpyBertEmbedder(BatchedBertEncoder):
    """BERT in numpy over a model directory (safetensors weights, memory-mapped).

    ``blas_threads`` caps numpy's BLAS threads process-wide when the model loads (None:
    leave them). Thread-safe: the weights are read-only and each call has its own arrays.
    """

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        max_seq_length: int = 256,
        batch_size: int = 32,
        blas_threads: int | None = 1,
    ) -> None:
        super().__init__(name, model_dir, max_seq_length, batch_size)
        self._blas_threads = blas_threads
        self._heads = int(self._config["num_attention_heads"])
        self._layers = int(self._config["num_hidden_layers"])
        self._eps = float(self._config.get("layer_norm_eps", 1e-12))

    def _open(self) -> tuple:
        if self._blas_threads:
            _limit_blas_threads(self._blas_threads)
        _check_pipeline(self._dir)
        tokenizer = load_tokenizer(self._dir, self._max_seq_length)
        weights = read_safetensors(self._dir / "model.safetensors")
        # Checkpoints saved from BertModel have no "bert." prefix; from BertFor* they do.
        return tokenizer, {k.removeprefix("bert."): v for k, v in weights.items()}

    def _run(self, weights, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._encode(weights, ids, mask)

    def _encode(self, w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled, unit-length sentence vectors of a padded batch (b × dims)."""
        b, n = ids.shape
        d, h = self.dimensions, self._heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        ).reshape(b * n, d)  # tokens as rows: every dense layer is one 2-D matrix product
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self._eps)
        # Padding keys get the most negative float, as in transformers: exp() makes them 0.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(d // h))
        for i in range(self._layers):
            p = f"encoder.layer.{i}."

            def dense(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def heads(t: np.ndarray) -> np.ndarray:
                return t.reshape(b, n, h, d // h).transpose(0, 2, 1, 3)

            q = heads(dense(x, "attention.self.query"))
            k = heads(dense(x, "attention.self.key"))
            v = heads(dense(x, "attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(b * n, d)
            x = _layer_norm(
                dense(context, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self._eps,
            )
            hidden = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                dense(hidden, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                self._eps,
            )
        x = x.reshape(b, n, d)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def use_for_minilm() -> None:
    """Make the ``minilm`` embedder of this process run on numpy (same model, same vectors).

    For query workers: their cold start then loads the model in ~0.1 s instead of importing
    torch and sentence-transformers. Documents may still be embedded by torch elsewhere.
    """
    from vectordb import embedders

    def factory(settings) -> NumpyBertEmbedder:
        return NumpyBertEmbedder(
            "minilm",
            settings.model_path or embedders.bundled_model_dir(),
            settings.embed_max_seq_length,
            settings.embed_batch_size,
            settings.embed_threads or 1,
        )

    embedders.register("minilm", 384, factory)
