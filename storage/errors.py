"""Signals raised by object stores.

``ObjectNotFound`` and ``PreconditionFailed`` are expected outcomes that callers
handle (a missing key, a conditional create that lost the race); they subclass the
client-visible errors only so that one that escapes still maps to a sensible status.
Transport failures that survive the retries surface as
:class:`vectordb.errors.StorageUnavailable`.
"""

from __future__ import annotations

from vectordb.errors import Conflict, InvalidArgument, NotFound, StorageUnavailable

__all__ = ["InvalidKey", "ObjectNotFound", "PreconditionFailed", "StorageUnavailable"]


class ObjectNotFound(NotFound):
    code = "object_not_found"


class PreconditionFailed(Conflict):
    """A conditional write found the key already present (HTTP 412 from S3)."""

    code = "precondition_failed"


class InvalidKey(InvalidArgument):
    """A key that could escape the store's root or is otherwise unusable."""

    code = "invalid_key"
