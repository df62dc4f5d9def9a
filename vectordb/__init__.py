"""vectordb: serverless vector search and RAG on object storage.

``vectordb.connect(uri)`` opens a store in this process (``file://DIR``, ``s3://BUCKET/PREFIX``,
``memory://NAME``) or a running service (``http://``, ``https://``) with the same methods;
see :mod:`vectordb.interface`. Importing this package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["connect", "connect_async"]

DEFAULT_URI = "file://./vectordb-data"


def connect(uri: str = DEFAULT_URI, **options: Any):
    """A :class:`vectordb.interface.Database`. Over HTTP, ``options`` are ``api_key`` and
    ``timeout`` (and httpx client options); in process, :class:`vectordb.settings.Settings`
    fields (``s3_endpoint=...``, ``s3_access_key=...``)."""
    if uri.startswith(("http://", "https://")):
        from vectordb.remote import RemoteDatabase

        return RemoteDatabase(uri, **options)
    return _embedded().EmbeddedDatabase(uri, **options)


def connect_async(uri: str = DEFAULT_URI, **options: Any):
    """The same as :func:`connect`, with every method a coroutine."""
    if uri.startswith(("http://", "https://")):
        from vectordb.remote import AsyncRemoteDatabase

        return AsyncRemoteDatabase(uri, **options)
    return _embedded().connect_async(uri, **options)


def _embedded():
    # By name: the client side does not import the server side (FastAPI, DuckDB, FAISS,
    # the embedding runtimes) until a store is opened in process.
    try:
        return importlib.import_module("api.embedded")
    except ImportError as exc:  # a client-only install
        raise ImportError(
            f"opening a store in process needs the server side of vectordb ({exc}); "
            "install its dependencies, or connect to a running service with an http:// URI"
        ) from exc
