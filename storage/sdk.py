"""The minio SDK, imported without its admin client (see :func:`_import_without_admin`)."""

from __future__ import annotations

import sys
import types


def _import_without_admin() -> None:
    """Import the minio package without its admin client.

    ``minio/__init__`` imports ``minio.minioadmin``, whose encryption helpers import
    pycryptodome and argon2: ~60 ms of a fresh query worker's start, for an API this store
    never calls. A placeholder stands in for that one import; it is removed at once, so a
    later ``import minio.minioadmin`` loads the real module (``minio.MinioAdmin`` itself
    stays None in this process).
    """
    if "minio" in sys.modules or "minio.minioadmin" in sys.modules:
        return
    placeholder = types.ModuleType("minio.minioadmin")
    placeholder.MinioAdmin = None  # type: ignore[attr-defined]
    sys.modules["minio.minioadmin"] = placeholder
    try:
        import minio  # noqa: F401
    finally:
        if sys.modules.get("minio.minioadmin") is placeholder:
            del sys.modules["minio.minioadmin"]
        if getattr(sys.modules.get("minio"), "minioadmin", None) is placeholder:
            del sys.modules["minio"].minioadmin


_import_without_admin()

from minio import Minio  # noqa: E402
from minio.error import InvalidResponseError, S3Error, ServerError  # noqa: E402
from minio.helpers import check_bucket_name  # noqa: E402

__all__ = ["InvalidResponseError", "Minio", "S3Error", "ServerError", "check_bucket_name"]
