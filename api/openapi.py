"""The OpenAPI description's finishing touches: error responses, hand-read bodies, no 422.

Routes declare what they may answer besides success with :func:`error_responses`, all in
the one error shape (:class:`api.models.ErrorResponse`). Routes that read their body by
hand (the upsert, the query) describe it with :func:`request_body`. :func:`install`
then fixes what FastAPI would otherwise get wrong: it lists a 422 for every route with
parameters, but a request that fails validation is 400 here (api/errors.py), and it
knows nothing of the models that only hand-read bodies refer to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from api.models import ErrorResponse

REF = "#/components/schemas/{model}"

STATUSES = {
    400: "Invalid request: a parameter, the body or a value in it (invalid_argument).",
    401: "No valid credential while the server requires one (unauthenticated).",
    403: "The key lacks the right, a Host outside the allow-list, or a body-less POST without an "
    "Authorization or X-Requested-With header (permission_denied, quota_exceeded).",
    404: "No such namespace (or one outside the key's prefixes), document, version, tag or job.",
    409: "Conflicts with the namespace's state: exists with another configuration, a concurrent "
    "re-creation, a tag that exists, a cancelled job (already_exists, conflict, cancelled).",
    410: "The version asked for is no longer retained (version_not_retained).",
    413: "The body, a file or the rows of one write are over a limit (payload_too_large).",
    415: "A body of a content type the route does not take (unsupported_media_type).",
    421: "This worker runs another role (VECTORDB_ROLE) than the route needs (wrong_role).",
    429: "Over the key's request rate or job limits; see Retry-After (rate_limited).",
    502: "The configured LLM failed or could not be reached (llm_unavailable).",
    503: "The object store could not be read or written (storage_unavailable), or an upload job's "
    "worker stopped (interrupted).",
}


def error_responses(*statuses: int, model: type[BaseModel] = ErrorResponse) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may answer ``statuses``, each in the error shape."""
    return {status: {"model": model, "description": STATUSES[status]} for status in statuses}


def request_body(model: type[BaseModel], *, description: str | None = None,
                 others: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body by hand: ``model`` under
    application/json, and ``others`` (content type -> media type object) beside it."""
    content = {"application/json": {"schema": model.model_json_schema(ref_template=REF)}, **(others or {})}
    body: dict[str, Any] = {"required": True, "content": content}
    if description:
        body["description"] = description
    return {"requestBody": body}


def install(app: FastAPI) -> None:
    """Post-process ``app``'s schema (see the module docstring). Call before
    ``api.access.install``, whose wrapper then adds security to the finished schema."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                op.get("responses", {}).pop("422", None)
                for media in op.get("requestBody", {}).get("content", {}).values():
                    media["schema"] = _hoist(media.get("schema", {}), components)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _hoist(schema: dict, components: dict) -> dict:
    """A model's inline JSON schema as a ``$ref`` to it in ``components``, with its
    ``$defs`` there too (what pydantic's ``model_json_schema`` refers to by REF)."""
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    title = schema.get("title")
    if schema.get("type") == "object" and title and components.get(title, schema) == schema:
        components[title] = schema
        return {"$ref": REF.format(model=title)}
    return schema
