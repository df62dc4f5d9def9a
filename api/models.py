"""Request and response bodies of the HTTP API (the contract clients rely on)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NamespaceCreate(_Strict):
    embedder: str = "minilm"
    dimensions: int | None = None
    metric: Literal["cosine", "dot", "l2"] = "cosine"


class Document(_Strict):
    id: str
    text: str | None = None
    vector: list[float] | None = None
    attributes: dict[str, Any] | None = None


class DocumentsUpsert(_Strict):
    documents: list[Document]


class UpsertResponse(BaseModel):
    version: int
    upserted: int


class DeleteRequest(_Strict):
    ids: list[str]


class DeleteResponse(BaseModel):
    version: int
    deleted: int


class QueryRequest(_Strict):
    text: str | None = None
    vector: list[float] | None = None
    top_k: int = Field(10, description="How many results (1..max_top_k).")
    include: list[Literal["text", "attributes", "vector"]] = []
    consistency: Literal["strong", "eventual"] = "strong"
    nprobe: int | None = Field(None, description="Partitions searched per segment (default: automatic).")


class QueryHit(BaseModel):
    id: str
    score: float
    text: str | None = None
    attributes: dict[str, Any] | None = None
    vector: list[float] | None = None


class QueryResponse(BaseModel):
    results: list[QueryHit]
    version: int


class IndexRequest(_Strict):
    compact: bool = False
    gc: bool = False
