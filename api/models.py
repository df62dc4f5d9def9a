"""Request and response bodies of the HTTP API (the contract clients rely on)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from vectordb.errors import InvalidArgument

# Path parameters. The patterns document what the service checks (its own errors, 400):
# in the schema only, so that a client sees the rule and the service keeps its messages.
Namespace = Annotated[str, Path(
    description="Namespace name: 1-63 ASCII letters, digits, '_' or '-', starting with a letter or digit.",
    json_schema_extra={"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"},
)]
TagName = Annotated[str, Path(
    description="Tag name: 1-63 ASCII letters, digits, '_', '-' or '.', starting with a letter.",
    json_schema_extra={"pattern": "^[A-Za-z][A-Za-z0-9_.-]{0,62}$"},
)]
DocId = Annotated[str, Path(
    description="A document's id (a chunked document's: its chunks' doc_id): no control characters.",
    json_schema_extra={"minLength": 1},
)]
JobId = Annotated[str, Path(description="An upload job's id.", json_schema_extra={"pattern": "^[A-Za-z0-9_-]{1,64}$"})]


def _at_least(n: int) -> dict:
    return {"json_schema_extra": {"minimum": n}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Chunking(_Strict):
    chunk_tokens: int = 256
    overlap_tokens: int = 32


AS_OF = (
    "Read a past version: its number, a tag name, or a time (ISO 8601 with a zone, e.g. "
    "'2026-12-06T05:00:00Z': the newest version committed then). A pruned version is 410."
)
AsOf = int | float | str
ATTRIBUTES = "Free-form JSON object of the document's attributes (what filters match on)."
FILTER = ('A JSON filter on attributes and id, e.g. {"lang": "en"} or {"year": {"$gte": 2020}} '
          "(operators: see README).")


class VersionRef(_Strict):
    """Which version: exactly one of ``version``, ``tag`` or ``as_of``."""

    version: int | None = None
    tag: str | None = None
    as_of: AsOf | None = Field(None, description=AS_OF)

    def resolve(self) -> AsOf:
        given = [v for v in (self.version, self.tag, self.as_of) if v is not None]
        if len(given) != 1:
            raise InvalidArgument("give exactly one of 'version', 'tag' or 'as_of'")
        return given[0]


class BranchFrom(VersionRef):
    namespace: str

    def resolve(self) -> AsOf | None:  # the newest version when none is named
        return None if self.version is None and self.tag is None and self.as_of is None else super().resolve()


class NamespaceCreate(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    from_: BranchFrom | None = Field(
        None, alias="from",
        description="Create the namespace as a branch of another one's version (O(1): it borrows the "
        "source's data; configuration fields must then be left out).",
    )
    embedder: str = "minilm"
    dimensions: int | None = None
    metric: Literal["cosine", "dot", "l2"] = "cosine"
    chunking: Chunking | bool | None = Field(
        None, description="How long texts are split; false = never; default 256/32 tokens with an embedder."
    )
    vector_dtype: Literal["float32", "float16", "int8"] = Field(
        "float32",
        description="How indexed segments store vectors: float16 halves cold reads, int8 (8-bit codes per "
        "component over each partition's range) quarters them; both answer from float32 in memory.",
    )
    cluster_by: list[str] | None = Field(
        None, max_length=4,
        description="Up to 4 top-level attribute keys (e.g. [\"tenant\", \"year\"]) that each segment also "
        "groups its vectors by (a float16 copy): a selective filter on these keys alone reads a few "
        "contiguous ranges instead of each kept row.",
    )


class Document(_Strict):
    id: str
    text: str | None = None
    vector: list[float] | str | None = Field(None, description="Numbers, or base64 of little-endian float32.")
    attributes: dict[str, Any] | None = Field(None, description=ATTRIBUTES)


class DocumentsUpsert(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"documents": [
        {"id": "manual-7", "text": "Clean the pump filter every week.", "attributes": {"lang": "en", "year": 2024}},
    ]}]})

    documents: list[Document]


class UpsertResponse(BaseModel):
    version: int
    upserted: int = Field(description="Rows written: the same as chunks.")
    documents: int = Field(description="Documents sent (each written whole: one row, or its chunks).")
    chunks: int = Field(description="Rows written: a long text's chunks each, a shorter document one.")


class DeleteRequest(_Strict):
    ids: list[str] | None = None
    filter: dict[str, Any] | None = Field(None, description=FILTER)


class GetManyRequest(_Strict):
    ids: list[str] = Field(..., description="Ids of rows or chunked documents (1..max_top_k).")
    as_of: AsOf | None = Field(None, description=AS_OF)


class DocumentOut(BaseModel):
    id: str
    text: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict, description=ATTRIBUTES)
    vector: list[float] | None = Field(None, description="Listing with include_vectors: the vector as stored.")
    chunks: list[DocumentOut] | None = Field(None, description="A chunked document: its chunks, in order.")


class GetManyResponse(BaseModel):
    documents: list[DocumentOut] = Field(..., description="Those found, in the order asked.")


class DocumentPage(BaseModel):
    documents: list[DocumentOut]
    cursor: str | None = Field(None, description="Pass as ``cursor`` for the next page; null: the end.")
    version: int = Field(..., description="The version every page of this listing reads.")


class DeleteResponse(BaseModel):
    version: int
    deleted: int


class QueryRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"text": "pump filter", "top_k": 5, "include": ["text", "attributes"], "filter": {"lang": "en"}},
        {"text": "pump filter", "mode": "hybrid", "top_k": 5},
    ]})

    text: str | None = None
    vector: list[float] | str | None = Field(None, description="Numbers, or base64 of little-endian float32.")
    top_k: int = Field(10, description="How many results (1..max_top_k).", **_at_least(1))
    include: list[Literal["text", "attributes", "vector"]] = []
    consistency: Literal["strong", "eventual"] = "strong"
    nprobe: int | None = Field(None, description="Partitions searched per segment (default: automatic).",
                               **_at_least(1))
    mode: Literal["vector", "bm25", "hybrid"] = "vector"
    filter: dict[str, Any] | None = Field(None, description=FILTER)
    rrf_k: int = Field(60, description="Reciprocal rank fusion constant (hybrid).")
    weights: dict[str, float] | None = Field(None, description='Hybrid weights, e.g. {"vector": 1, "bm25": 0.5}.')
    as_of: AsOf | None = Field(None, description=AS_OF)


class QueryHit(BaseModel):
    id: str
    score: float
    text: str | None = None
    attributes: dict[str, Any] | None = Field(None, description=ATTRIBUTES)
    vector: list[float] | None = None
    scores: dict[str, float | None] | None = Field(None, description="Hybrid: each mode's score (null: not found by it).")


class QueryResponse(BaseModel):
    results: list[QueryHit]
    version: int


class RagRequest(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"question": "How often is the filter cleaned?"}]})

    question: str
    top_k: int = Field(8, description="Chunks retrieved before merging and trimming (1..max_top_k).",
                       **_at_least(1))
    mode: Literal["vector", "bm25", "hybrid"] = "hybrid"
    filter: dict[str, Any] | None = Field(None, description=FILTER)
    max_context_tokens: int = Field(2000, description="Token budget of the numbered context block (1..100000).",
                                    json_schema_extra={"minimum": 1, "maximum": 100_000})
    max_answer_tokens: int = Field(512, description="Token limit of the generated answer (1..100000).",
                                   json_schema_extra={"minimum": 1, "maximum": 100_000})
    generate: bool | None = Field(None, description="Ask the configured LLM (default: when one is configured).")
    consistency: Literal["strong", "eventual"] = "strong"
    as_of: AsOf | None = Field(None, description=AS_OF)


class IndexRequest(_Strict):
    compact: bool = False
    gc: bool = False


# --- responses -------------------------------------------------------------------------------
# Each mirrors what its route has always answered; a route returning a dict validates it
# against its model (``response_model_exclude_unset``, so keys it leaves out stay out).


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable name, e.g. namespace_not_found, invalid_argument.")
    message: str = Field(description="What went wrong, for a person.")
    request_id: str = Field(description="The request's id, also in the x-request-id header and the server log.")


class ErrorResponse(BaseModel):
    """Every error answer of the API (api/errors.py)."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]
    role: Literal["ingest", "query", "all"]
    stats: dict[str, dict[str, int]] = Field(
        description="Counters of this process by group (commits, wal_merges, tail_folds, cache when cached, "
        "background_builds when an ingest worker builds in child processes)."
    )


class NamespaceList(BaseModel):
    namespaces: list[str] = Field(description="Names the caller may see.")


class NamespaceConfigOut(BaseModel):
    embedder: str = Field(description="'none': the client sends vectors.")
    dimensions: int
    metric: Literal["cosine", "dot", "l2"]
    chunk_tokens: int | None = Field(description="Texts longer than this are split into chunks (null: never).")
    overlap_tokens: int
    vector_dtype: Literal["float32", "float16", "int8"]
    cluster_by: list[str] = Field(default_factory=list, description="Attribute keys segments group vectors by.")


class BranchOrigin(BaseModel):
    namespace: str
    version: int


class NamespaceCreated(NamespaceConfigOut):
    name: str
    created: bool = Field(description="False: it existed already with this configuration.")
    version: int
    origin: BranchOrigin | None = Field(None, description="A branch: the namespace and version it was made from.")


class RowCounts(BaseModel):
    indexed: int
    unindexed: int


class SegmentInfo(BaseModel):
    id: str
    rows: int
    live_rows: int
    partitions: int
    bytes: int


class NamespaceDescription(NamespaceConfigOut):
    name: str
    version: int
    rows: RowCounts
    segments: list[SegmentInfo]
    wal_objects: int = Field(description="Write-ahead-log objects not yet indexed.")
    bytes: int


class Deleted(BaseModel):
    name: str
    deleted: bool
    version: int = Field(description="The version that dropped it.")


class TagInfo(BaseModel):
    name: str
    version: int
    created_at: float = Field(description="Unix time.")


class TagResponse(BaseModel):
    tag: TagInfo


class TagList(BaseModel):
    tags: list[TagInfo]


class RestoreResponse(BaseModel):
    version: int = Field(description="The new version, with the old one's content.")
    restored: int = Field(description="The version restored.")


class VersionChange(BaseModel):
    model_config = ConfigDict(extra="allow")

    op: str = Field(description="create, write, index, compact, merge, gc, tag, untag, restore, branch, fork, "
                    "copy or drop; the other fields depend on it (e.g. write: upserted, deleted).")


class VersionInfo(BaseModel):
    version: int
    created_at: float | None = Field(description="Unix time; null once pruned.")
    change: VersionChange | None = Field(description="What the commit did (null: pruned or not recorded).")
    readable: bool
    tags: list[str]


class VersionList(BaseModel):
    versions: list[VersionInfo] = Field(description="Newest first.")


class JobFailure(BaseModel):
    code: str
    message: str
    status: int = Field(description="The HTTP status the synchronous route would have answered.")


class JobOut(BaseModel):
    id: str
    namespace: str
    description: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    chunks_total: int
    chunks_done: int
    documents: int
    version: int | None = Field(description="The version that committed it (done).")
    error: JobFailure | None = Field(description="A failed job: why.")
    created_at: float
    finished_at: float | None
    owner: str | None = Field(description="The id of the API key that started it.")
    heartbeat_at: float | None
    cancel_requested: bool


class JobResponse(BaseModel):
    job: JobOut


class JobAccepted(JobResponse):
    status_url: str = Field(description="Poll it (GET) for the job's progress.")


class JobErrorResponse(ErrorResponse):
    job: JobOut | None = Field(None, description="With ?wait=true: the failed or cancelled job.")


class GcReport(BaseModel):
    manifests_pruned: int
    manifests_deleted: int
    objects_deleted: int
    bytes_deleted: int
    fence: int | None
    versions_kept: int
    versions_kept_by_retention: int
    versions_kept_by_grace: int
    objects_kept: int
    objects_kept_for_versions: int
    objects_kept_for_tags: int
    objects_kept_for_branches: int
    objects_kept_by_fence: int


class IndexResponse(BaseModel):
    version: int
    indexed_rows: int
    segments: int
    compacted: bool
    seconds: float
    gc: GcReport | None = Field(None, description="With gc: what the garbage collection did.")


class Citation(BaseModel):
    n: int = Field(description="The passage's number in the prompt, [n].")
    doc_id: str
    title: str | None = None
    source: str | None = None
    chunks: list[int] | None = Field(None, description="First and last chunk index joined into the passage.")
    page: int | None = None
    heading: str | None = None
    version: int


class Passage(Citation):
    text: str
    score: float


class RagResponse(BaseModel):
    answer: str | None = Field(description="The LLM's answer (null: not generated).")
    citations: list[Citation]
    passages: list[Passage]
    prompt: str
    context_tokens: int
    mode: Literal["vector", "bm25", "hybrid"]
    version: int


class WarmResponse(BaseModel):
    namespace: str
    version: int
    segments: int
    centroid_bytes: int
    wal_objects: int
    partitions: int
    partitions_total: int
    partition_bytes: int
    docs_bytes: int
    bm25_bytes: int = Field(0, description="BM25 files (bm25.bin) fetched whole.")
    column_bytes: int = Field(0, description="Attribute column files (attrs.bin) fetched whole.")
    group_bytes: int = Field(0, description="Each row's group in clusters.bin (cluster_by namespaces), held.")
    id_bytes: int = Field(0, description="Ids decoded from them and held (the $id column).")
    embedder: str | None
    seconds: float
    skipped: list[str] = Field(description="What was not fetched, and why.")
