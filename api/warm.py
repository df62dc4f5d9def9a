"""``POST /v1/namespaces/{ns}/warm``: the warm hint of the query role (see :mod:`query.warm`).

A router, a scheduler or a client that knows traffic is coming calls it on a worker that
has just started; the answer says what was fetched. A body is optional.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from api.models import Namespace, WarmResponse
from api.openapi import error_responses
from query import warm as warming


class WarmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    budget_bytes: int = Field(
        warming.DEFAULT_BUDGET_BYTES, ge=0,
        description="Most bytes to prefetch, most useful first: attribute columns, partitions (at their decoded "
        "size), BM25 files, record offsets, then with include_docs the documents.",
    )
    include_docs: bool = Field(False, description="Also fetch each segment's id table and records (ids.bin, "
                               "fields.bin; an older segment's docs.parquet): for GET by id and for queries that "
                               "include text or attributes.")
    load_embedder: bool = Field(True, description="Also load the namespace's embedding model.")


def warm_routes(r: APIRouter, db) -> APIRouter:
    """The warm route, added to ``r``, over ``db`` (an ``api.embedded.EmbeddedDatabase``)."""

    @r.post("/v1/namespaces/{ns}/warm", response_model=WarmResponse,
            responses=error_responses(400, 404, 413, 415, 421, 401, 403, 429, 503))
    def warm_namespace(ns: Namespace, body: WarmRequest | None = None) -> Any:
        body = body or WarmRequest()
        return db.open(ns).warm(budget_bytes=body.budget_bytes, include_docs=body.include_docs,
                                load_embedder=body.load_embedder)

    return r


def install_warm(app: FastAPI, service) -> None:
    """Add the warm route to ``app`` over ``service`` (an ``api.service.Service``; idempotent)."""
    if getattr(app.state, "warm_installed", False):
        return
    from api.embedded import EmbeddedDatabase

    warm_routes(app.router, EmbeddedDatabase(service=service))
    app.state.warm_installed = True
