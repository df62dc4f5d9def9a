"""Document runtimes of the minilm embedder against plain sentence-transformers fp32.

bf16 autocast (torch) is what ``embed_precision=auto`` picks for documents on CPUs with native
bfloat16; on NFCorpus its vectors measured cosine >= 0.99997 to sentence-transformers fp32
(bench/embed_speed.py), so 0.9999 is the floor asserted here. ONNX fp32 is exact to float
rounding (floor 0.99999); ONNX int8 measured a mean of 0.995 and a min of 0.990 on 500
NFCorpus documents, and short texts fare worse (0.98 for "hello world"), so its floor is 0.97;
int8 vectors also shift a little with the batch a text is in (below).
Also: the device and precision settings, the ONNX export cache, a missing package.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from vectordb import embedders
from vectordb.bert_numpy import NumpyBertEmbedder
from vectordb.errors import InvalidArgument
from vectordb.onnx_bert import OnnxBertEmbedder
from vectordb.settings import Settings, load
from vectordb.testing import nfcorpus_docs

TEXTS = ["Vitamin D is made in the skin under sunlight.", "statins", "", "word " * 600]


@pytest.fixture(scope="module")
def bf16_minilm() -> embedders.SentenceTransformerEmbedder:
    embedder = embedders.create("minilm", Settings(embed_runtime="torch", embed_precision="bf16"))
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def fp32_reference():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(embedders.bundled_model_dir(), device="cpu")
    model.max_seq_length = 256
    return lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


@pytest.mark.slow
def test_bf16_single_and_batch(bf16_minilm):
    assert (bf16_minilm.device, bf16_minilm.precision) == ("cpu", "bf16")
    batch = bf16_minilm.embed_documents(TEXTS)  # an empty text and one far past 256 tokens included
    assert batch.shape == (4, 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    for text, row in zip(TEXTS, batch):
        # Alone or padded in a batch: bf16 rounding differs a little, the meaning does not.
        assert float(bf16_minilm.embed_query(text) @ row) > 0.9999
    assert bf16_minilm.embed_documents([]).shape == (0, 384)


@pytest.mark.slow
@pytest.mark.integration
def test_bf16_close_to_fp32_sentence_transformers(bf16_minilm, fp32_reference):
    texts = [d["text"] for d in nfcorpus_docs(64)] + TEXTS
    cosine = (bf16_minilm.embed_documents(texts) * fp32_reference(texts)).sum(axis=1)
    assert cosine.min() > 0.9999, cosine.min()


def test_precision_resolution():
    import torch

    assert embedders.use_bf16("bf16", "cpu", torch) and embedders.use_bf16("bf16", "cuda", torch)
    assert not embedders.use_bf16("fp32", "cpu", torch)
    assert not embedders.use_bf16("auto", "cuda", torch)  # not measured on a GPU: fp32 unless asked
    assert embedders.use_bf16("auto", "cpu", torch) == embedders.native_bf16(torch)


def test_device_resolution():
    import torch

    assert embedders.torch_device("cpu", torch) == "cpu"
    assert embedders.torch_device("auto", torch) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgument, match="no CUDA device"):
            embedders.torch_device("cuda", torch)


@pytest.mark.skipif(embedders.gpu_present(), reason="a GPU host puts queries on torch")
def test_auto_runtime_splits_on_a_cpu_host(monkeypatch):
    for device in ("cpu", "auto"):
        split = embedders.create("minilm", Settings(embed_device=device))
        assert isinstance(split, embedders.SplitEmbedder)
        assert isinstance(split._queries, NumpyBertEmbedder)
        assert isinstance(split._documents, OnnxBertEmbedder) and split._documents.int8  # the cpu extra has onnx
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # without onnxruntime: torch embeds documents
    split = embedders.create("minilm", Settings())
    assert isinstance(split._documents, embedders.SentenceTransformerEmbedder)


def test_cuda_device_puts_queries_on_torch():
    # Nothing is loaded here, so this holds on a CPU-only host too.
    embedder = embedders.create("minilm", Settings(embed_device="cuda"))
    assert isinstance(embedder, embedders.SentenceTransformerEmbedder)
    numpy_only = embedders.create("minilm", Settings(embed_device="cuda", embed_runtime="numpy"))
    assert isinstance(numpy_only, NumpyBertEmbedder)  # the numpy runtime stays on the CPU


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    embedder = embedders.create("minilm", Settings(embed_device="cuda"))
    with pytest.raises(InvalidArgument, match="no CUDA device"):
        embedder.load()


@pytest.mark.parametrize("setting", ["embed_runtime", "embed_device", "embed_precision"])
def test_unknown_choices_are_refused(setting):
    # At start-up, when the settings load (Literal fields), not at the first embed.
    with pytest.raises(InvalidArgument, match=f"VECTORDB_{setting.upper()}='tpu': Input should be 'auto'"):
        load(**{setting: "tpu"})


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def _onnx(cache, int8: bool) -> OnnxBertEmbedder:
    embedder = OnnxBertEmbedder("minilm", embedders.bundled_model_dir(), int8=int8, cache_dir=cache)
    embedder.load()
    return embedder


@pytest.mark.slow
@pytest.mark.integration
# int8 activations are quantised per tensor, over the whole padded batch, so a text's vector
# depends on its batch: alone vs in this batch measured cosine 0.991 for a sentence, 0.961 for
# the empty string.
@pytest.mark.parametrize("int8,floor,alone_floor", [(False, 0.99999, 0.9999), (True, 0.97, 0.95)])
def test_onnx_close_to_fp32_sentence_transformers(onnx_cache, fp32_reference, int8, floor, alone_floor):
    embedder = _onnx(onnx_cache, int8)
    texts = [d["text"] for d in nfcorpus_docs(16)] + TEXTS + ["hello world"]
    batch = embedder.embed_documents(texts)
    assert batch.shape == (len(texts), 384) and batch.dtype == np.float32
    cosine = (batch * fp32_reference(texts)).sum(axis=1)
    assert cosine.min() > floor, cosine.min()
    for text, row in zip(TEXTS, batch[-5:]):
        assert float(embedder.embed_query(text) @ row) > alone_floor  # alone or in a padded batch
    assert embedder.embed_documents([]).shape == (0, 384)


@pytest.mark.slow
def test_onnx_export_is_cached_and_reused(onnx_cache):
    first = _onnx(onnx_cache, int8=True)
    files = {p: p.stat().st_mtime_ns for p in onnx_cache.rglob("*")}
    assert first.model_path in files and first.model_path.parent.parent == onnx_cache
    assert not [p for p in files if p.name.endswith(".tmp")]  # written under a temp name, then renamed
    second = _onnx(onnx_cache, int8=True)  # a new embedder, as in a new process
    assert second.model_path == first.model_path
    assert {p: p.stat().st_mtime_ns for p in onnx_cache.rglob("*")} == files  # nothing exported again


def test_onnx_runtime_is_a_split(tmp_path):
    embedder = embedders.create("minilm", Settings(embed_runtime="onnx-int8", onnx_cache_dir=str(tmp_path)))
    assert isinstance(embedder, embedders.SplitEmbedder)
    assert isinstance(embedder._queries, NumpyBertEmbedder)  # queries stay exact and load fast
    assert isinstance(embedder._documents, OnnxBertEmbedder) and embedder._documents.int8


def test_missing_onnxruntime_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    embedder = OnnxBertEmbedder("minilm", embedders.bundled_model_dir(), int8=False, cache_dir=tmp_path)
    with pytest.raises(InvalidArgument, match="needs the onnxruntime package"):
        embedder.load()
    assert not list(tmp_path.iterdir())  # nothing exported
