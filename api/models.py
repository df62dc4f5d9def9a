"""Request and response bodies of the HTTP API (the contract clients rely on)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vectordb.errors import InvalidArgument


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


class Document(_Strict):
    id: str
    text: str | None = None
    vector: list[float] | str | None = Field(None, description="Numbers, or base64 of little-endian float32.")
    attributes: dict[str, Any] | None = None


class DocumentsUpsert(_Strict):
    documents: list[Document]


class UpsertResponse(BaseModel):
    version: int
    upserted: int = Field(description="Rows written: the same as chunks.")
    documents: int = Field(description="Documents sent (each written whole: one row, or its chunks).")
    chunks: int = Field(description="Rows written: a long text's chunks each, a shorter document one.")


class DeleteRequest(_Strict):
    ids: list[str] | None = None
    filter: dict[str, Any] | None = None


class GetManyRequest(_Strict):
    ids: list[str] = Field(..., description="Ids of rows or chunked documents (1..max_top_k).")
    as_of: AsOf | None = Field(None, description=AS_OF)


class DocumentOut(BaseModel):
    id: str
    text: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
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
    text: str | None = None
    vector: list[float] | str | None = Field(None, description="Numbers, or base64 of little-endian float32.")
    top_k: int = Field(10, description="How many results (1..max_top_k).")
    include: list[Literal["text", "attributes", "vector"]] = []
    consistency: Literal["strong", "eventual"] = "strong"
    nprobe: int | None = Field(None, description="Partitions searched per segment (default: automatic).")
    mode: Literal["vector", "bm25", "hybrid"] = "vector"
    filter: dict[str, Any] | None = Field(None, description="JSON filter on attributes and id (see README).")
    rrf_k: int = Field(60, description="Reciprocal rank fusion constant (hybrid).")
    weights: dict[str, float] | None = Field(None, description='Hybrid weights, e.g. {"vector": 1, "bm25": 0.5}.')
    as_of: AsOf | None = Field(None, description=AS_OF)


class QueryHit(BaseModel):
    id: str
    score: float
    text: str | None = None
    attributes: dict[str, Any] | None = None
    vector: list[float] | None = None
    scores: dict[str, float | None] | None = None


class QueryResponse(BaseModel):
    results: list[QueryHit]
    version: int


class RagRequest(_Strict):
    question: str
    top_k: int = Field(8, description="Chunks retrieved before merging and trimming.")
    mode: Literal["vector", "bm25", "hybrid"] = "hybrid"
    filter: dict[str, Any] | None = None
    max_context_tokens: int = Field(2000, description="Token budget of the numbered context block.")
    max_answer_tokens: int = Field(512, description="Token limit of the generated answer.")
    generate: bool | None = Field(None, description="Ask the configured LLM (default: when one is configured).")
    consistency: Literal["strong", "eventual"] = "strong"
    as_of: AsOf | None = Field(None, description=AS_OF)


class IndexRequest(_Strict):
    compact: bool = False
    gc: bool = False
