"""The one mapping from errors to HTTP responses: ``{"error": {"code", "message", "request_id"}}``."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vectordb.errors import VectorDBError

log = logging.getLogger(__name__)
access_log = logging.getLogger("vectordb.access")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


class RequestId:
    """ASGI middleware: give every request an id (``request.state.request_id``), answer it
    in the ``x-request-id`` header, and log one access line per request on
    ``vectordb.access`` (INFO): id, client, method, path, status, milliseconds. Plain ASGI,
    not BaseHTTPMiddleware: no extra task per call."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(
                    "%s %s %s %s %d %.1fms", rid, f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                    scope["path"], status, (time.perf_counter() - started) * 1000,
                )


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = uuid.uuid4().hex[:16]
    return rid


def error_response(status: int, code: str, message: str, rid: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "request_id": rid}},
        status_code=status,
        headers={**(headers or {}), "x-request-id": rid},
    )


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(VectorDBError)
    async def _vectordb(request: Request, exc: VectorDBError):
        if exc.status >= 500:
            log.error("request %s failed: %s", request_id(request), exc.message)
        return error_response(exc.status, exc.code, exc.message, request_id(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(400, "invalid_argument", _describe_validation(exc), request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("request %s failed", request_id(request))
        return error_response(500, "internal", "internal error; see the server log", request_id(request))
