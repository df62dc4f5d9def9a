"""The numpy runtime of the minilm embedder gives the vectors sentence-transformers gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vectordb import embedders
from vectordb.bert_numpy import NumpyBertEmbedder, read_safetensors, use_for_minilm
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings
from vectordb.testing import nfcorpus_docs


@pytest.fixture(scope="module")
def numpy_minilm() -> NumpyBertEmbedder:
    embedder = NumpyBertEmbedder("minilm", embedders.bundled_model_dir(), max_seq_length=256)
    embedder.load()
    return embedder


def test_unit_vectors_batch_equals_single(numpy_minilm):
    texts = ["Vitamin D is made in the skin under sunlight.", "statins", "", "word " * 600]
    batch = numpy_minilm.embed_documents(texts)
    assert batch.shape == (4, 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, batch):
        assert np.allclose(numpy_minilm.embed_query(text), row, atol=1e-5)  # padding changes nothing
    assert numpy_minilm.embed_documents([]).shape == (0, 384)


def test_meaning_is_kept(numpy_minilm):
    q = numpy_minilm.embed_query("does sunlight give you vitamin D")
    near, far = numpy_minilm.embed_documents(["Vitamin D is made in the skin under sunlight.",
                                              "Statins lower LDL cholesterol."])
    assert q @ near > q @ far + 0.2


def test_registered_as_minilm():
    saved = embedders._FACTORIES["minilm"]  # the torch factory, restored for later tests
    use_for_minilm()
    try:
        embedder = embedders.get("minilm", Settings(preload_embedder=""))
        assert isinstance(embedder, NumpyBertEmbedder) and embedder.dimensions == 384
    finally:
        embedders.register("minilm", *saved)


def test_unsupported_models_are_refused(tmp_path):
    model = embedders.bundled_model_dir()
    for name in ("config.json", "modules.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / name).symlink_to(f"{model}/{name}")
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(InvalidArgument, match="mean Pooling"):
        NumpyBertEmbedder("x", tmp_path).load()
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(InvalidArgument, match="not a safetensors file"):
        read_safetensors(tmp_path / "bad.safetensors")


@pytest.mark.slow
@pytest.mark.integration
def test_same_vectors_as_sentence_transformers(numpy_minilm):
    from sentence_transformers import SentenceTransformer

    texts = [d["text"] for d in nfcorpus_docs(48)] + ["Do statins lower the risk of breast cancer?", "x"]
    model = SentenceTransformer(embedders.bundled_model_dir(), device="cpu")
    model.max_seq_length = 256
    expected = model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    got = numpy_minilm.embed_documents(texts)
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() > 0.99999
    assert np.abs(got - expected).max() < 1e-4
