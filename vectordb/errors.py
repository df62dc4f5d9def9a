"""The one error hierarchy of the service.

Every error a client can see is a :class:`VectorDBError`; each class carries the HTTP
status it maps to and a stable machine-readable ``code``. Third-party errors are
translated into these at the boundary that meets them (``raise ... from exc``).

    VectorDBError (500, internal)
    ├── InvalidArgument (400, invalid_argument)
    │   ├── PayloadTooLarge (413, payload_too_large)
    │   └── UnsupportedMediaType (415, unsupported_media_type)
    ├── Unauthenticated (401, unauthenticated)  -- no or a bad credential
    ├── PermissionDenied (403, permission_denied)  -- a credential without the right scope
    │   └── QuotaExceeded (403, quota_exceeded)  -- a key's namespace limit is reached
    ├── NotFound (404, not_found)
    │   ├── NamespaceNotFound (404, namespace_not_found)
    │   ├── DocumentNotFound (404, document_not_found)
    │   └── VersionNotFound (404, version_not_found)  -- no such version, tag or time
    ├── VersionNotRetained (410, version_not_retained)  -- pruned by garbage collection
    ├── WrongRole (421, wrong_role)  -- a route of a role this worker does not run
    ├── AlreadyExists (409, already_exists)
    ├── Conflict (409, conflict)  -- optimistic commit retried too often
    ├── TooManyRequests (429, rate_limited)  -- a limit per key or per worker; ``retry_after_s``
    ├── StorageUnavailable (503, storage_unavailable)
    └── UpstreamError (502, llm_unavailable)  -- the LLM behind /rag failed or is unreachable

Storage-level signals that callers handle themselves (not client-visible as such):
``ObjectNotFound`` (a key is absent) and ``PreconditionFailed`` (a conditional create
lost the race) live in :mod:`storage.errors`.
"""

from __future__ import annotations


class VectorDBError(Exception):
    """Base class: an error with an HTTP status and a stable code."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After``, ``WWW-Authenticate``); none by default."""
        return {}


class InvalidArgument(VectorDBError):
    status = 400
    code = "invalid_argument"


class PayloadTooLarge(InvalidArgument):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidArgument):
    status = 415
    code = "unsupported_media_type"


class Unauthenticated(VectorDBError):
    status = 401
    code = "unauthenticated"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDenied(VectorDBError):
    status = 403
    code = "permission_denied"


class QuotaExceeded(PermissionDenied):
    code = "quota_exceeded"


class NotFound(VectorDBError):
    status = 404
    code = "not_found"


class NamespaceNotFound(NotFound):
    code = "namespace_not_found"


class DocumentNotFound(NotFound):
    code = "document_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class VersionNotRetained(VectorDBError):
    """The version existed but garbage collection has pruned it; the message names the
    oldest version still readable."""

    status = 410
    code = "version_not_retained"


class WrongRole(VectorDBError):
    """A write sent to a query worker, or a query to an ingest worker (``VECTORDB_ROLE``):
    421 Misdirected Request, the request is fine but this server will not answer it."""

    status = 421
    code = "wrong_role"


class AlreadyExists(VectorDBError):
    status = 409
    code = "already_exists"


class Conflict(VectorDBError):
    status = 409
    code = "conflict"


class TooManyRequests(VectorDBError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, int(-(-self.retry_after_s // 1))))}


class StorageUnavailable(VectorDBError):
    status = 503
    code = "storage_unavailable"


class UpstreamError(VectorDBError):
    """A service we call on the client's behalf (the chat LLM behind RAG) failed or is unreachable."""

    status = 502
    code = "llm_unavailable"
