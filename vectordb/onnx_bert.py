"""A sentence-transformers BERT encoder (e.g. all-MiniLM-L6-v2) run by ONNX Runtime.

Why: document ingest is bound by the encoder's matrix products. ONNX Runtime with its BERT
fusions and int8 weights (dynamic quantisation, per output channel) embedded NFCorpus
documents at several times the rate of sentence-transformers fp32 on a 2-core AVX512-VNNI
CPU, at a cosine of ~0.995 to the fp32 vectors (bench/embed_speed.py); fp32 ONNX keeps the
vectors exact.

The ONNX model is exported locally from the torch model (``torch.onnx.export``; never a
download) the first time it is needed, then cached under ``cache_dir/<model hash>/`` and
reused by every later process; files are written under a temporary name and renamed, so a
concurrent or interrupted export never leaves a half-written model behind. Exporting needs
torch, transformers and the ``onnx`` package; running a cached model needs only
``onnxruntime`` and ``tokenizers``. A missing package raises InvalidArgument naming it.

int8 activations are quantised on the fly per tensor, i.e. over the whole padded batch, so
a text's int8 vector depends slightly on the texts batched with it (alone vs in a batch:
cosine 0.991 for a sentence, 0.961 for the empty string); fp32 has no such effect.

The export covers the layout the numpy encoder accepts (Transformer, mean Pooling,
Normalize; see ``bert_numpy._check_pipeline``); the graph outputs unit-length sentence
vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from vectordb.bert_numpy import BatchedBertEncoder, _check_pipeline, load_tokenizer
from vectordb.errors import InvalidArgument

# Part of the cache key: bump it when the exported graph changes.
EXPORT_VERSION = "1"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "vectordb" / "onnx"


def model_hash(model_dir: Path) -> str:
    """Content hash of the files the export reads (weights, config, pooling) plus the export version."""
    digest = hashlib.sha256(EXPORT_VERSION.encode())
    for name in ("config.json", "modules.json", "model.safetensors"):
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _require(module: str, purpose: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise InvalidArgument(
            f"embed_runtime 'onnx'/'onnx-int8' needs the {module} package to {purpose} "
            f"(pip install onnxruntime onnx, or the project's 'cpu' extra)"
        ) from exc


def _atomic(target: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``target``: readers see all of it or nothing."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users' workers may share the cache
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export_fp32(model_dir: Path, target: Path, heads: int, hidden: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; never download
    torch = _require("torch", "export the model")
    _require("onnx", "export the model")
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    # Eager attention: ORT's attention fusion does not recognise the SDPA graph.
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden_states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    example = (torch.ones(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}}
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, warnings.catch_warnings():
        # The TorchScript exporter warns about traced Python conditions that are constant
        # for this model (no causal mask, no cache); the graph is checked against torch in tests.
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(Pooled().eval(), example, str(raw), input_names=["input_ids", "attention_mask"],
                              output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
        fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden,
                                         opt_level=1)
        _atomic(target, fused.save_model_to_file)


def _quantise(source: Path, target: Path) -> None:
    onnx = _require("onnx", "quantise the model")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: str) -> None:
        # Per output channel: per-tensor int8 weights left a cosine of 0.95 to fp32, per-channel 0.995.
        quantize_dynamic(str(source), tmp, weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    import logging

    quant_log = logging.getLogger()  # quantize_dynamic logs a "consider pre-processing" warning to root
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        _atomic(target, write)
    finally:
        quant_log.setLevel(level)


def exported_model(model_dir: str | Path, cache_dir: str | Path | None, int8: bool) -> Path:
    """Path of the cached ONNX model for ``model_dir``, exporting it first if missing.

    Raises InvalidArgument for an unsupported model layout or a missing package; OSError
    if the cache directory cannot be written.
    """
    model_dir = Path(model_dir)
    _check_pipeline(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    folder = Path(cache_dir or default_cache_dir()) / model_hash(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    if not fp32.exists():
        _export_fp32(model_dir, fp32, int(config["num_attention_heads"]), int(config["hidden_size"]))
    if not int8:
        return fp32
    quantised = folder / "model-int8.onnx"
    if not quantised.exists():
        _quantise(fp32, quantised)
    return quantised


class OnnxBertEmbedder(BatchedBertEncoder):
    """BERT on ONNX Runtime (exported once from the model directory, cached); thread-safe.

    ``threads``: ONNX Runtime intra-op threads (None: its default, one per physical core).
    Texts are ordered by token count before batching, so a batch pads little.
    """

    _mask_dtype = np.int64

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        int8: bool,
        cache_dir: str | Path | None = None,
        max_seq_length: int = 256,
        batch_size: int = 64,
        threads: int | None = None,
    ) -> None:
        super().__init__(name, model_dir, max_seq_length, batch_size)
        self.int8 = int8
        self._cache_dir = cache_dir
        self._threads = threads
        self.model_path: Path | None = None

    def _open(self) -> tuple:
        """Export (first time only) and open the model."""
        ort = _require("onnxruntime", "run the model")
        self.model_path = exported_model(self._dir, self._cache_dir, self.int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads or 0
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        return load_tokenizer(self._dir, self._max_seq_length), session

    def _run(self, session, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe; no lock around it.
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
