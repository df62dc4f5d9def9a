"""The namespace an integration reads and writes, opened lazily, with sync and async calls.

Frameworks hand a vector store its vectors (their own embedding model), so a namespace made
here has embedder ``"none"``, the vectors' dimensions, metric cosine and no chunking (a
framework's document is one row: its id, text and metadata come back as they went in). It is
made at the first write, when the dimensions are known; reads before that find nothing.

Async calls go through :func:`vectordb.connect_async` over HTTP (real async I/O); in process
they run the sync namespace's methods in a worker thread, which is what the embedded async
API does anyway, so both share one store and one group committer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import vectordb
from vectordb.errors import NamespaceNotFound


def _is_remote(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(("http://", "https://"))


class NamespaceHandle:
    """One namespace, given by name (with a ``uri`` or a ``database`` to find it in) or as an
    object from ``vectordb.connect(...).namespace(...)`` (plus, optionally, its async twin
    from ``connect_async``). ``connect_options`` go to :func:`vectordb.connect` (``api_key``,
    ``timeout``; settings in process)."""

    def __init__(
        self,
        namespace: Any = "default",
        *,
        uri: str | None = None,
        database: Any = None,
        async_namespace: Any = None,
        **connect_options: Any,
    ) -> None:
        self._owned = None
        if isinstance(namespace, str):
            self.name = namespace
            self._ns = None
            if database is None:
                database = self._owned = vectordb.connect(uri or vectordb.DEFAULT_URI, **connect_options)
            self._db = database
        else:
            self.name, self._ns, self._db = namespace.name, namespace, None
        self._uri = uri if _is_remote(uri) and async_namespace is None else None
        self._connect_options = connect_options
        self._ans = async_namespace
        self._adb: Any = None
        self._adb_loop: asyncio.AbstractEventLoop | None = None
        self._found: Any = None  # the async namespace over self._adb

    # -- sync -------------------------------------------------------------------------------

    def namespace(self, dimensions: int | None = None) -> Any:
        """The namespace; made with ``dimensions`` if it does not exist and they are given,
        else None when it does not exist."""
        if self._ns is None:
            if dimensions is not None:
                self._ns = self._db.create_namespace(
                    self.name, embedder="none", dimensions=dimensions, metric="cosine", chunking=False
                )
            else:
                try:
                    self._ns = self._db.namespace(self.name)
                except NamespaceNotFound:
                    return None
        return self._ns

    def call(self, method: str, *args: Any, dimensions: int | None = None, **kwargs: Any) -> Any:
        """``namespace.method(*args, **kwargs)``; None, without calling, if there is no
        namespace (and ``dimensions`` were not given to make one)."""
        ns = self.namespace(dimensions)
        return None if ns is None else getattr(ns, method)(*args, **kwargs)

    def close(self) -> None:
        """Close the connection this handle opened (not one it was given)."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    # -- async ------------------------------------------------------------------------------

    async def anamespace(self, dimensions: int | None = None) -> Any:
        """The async :meth:`namespace` (over HTTP, or the async namespace given)."""
        if self._ans is not None:
            return self._ans
        loop = asyncio.get_running_loop()
        if self._adb is None or self._adb_loop is not loop:
            # An httpx pool's connections belong to the loop that opened them.
            self._adb, self._adb_loop = vectordb.connect_async(self._uri, **self._connect_options), loop
            self._found = None
        if self._found is None:
            if dimensions is not None:
                self._found = await self._adb.create_namespace(
                    self.name, embedder="none", dimensions=dimensions, metric="cosine", chunking=False
                )
            else:
                try:
                    self._found = await self._adb.namespace(self.name)
                except NamespaceNotFound:
                    return None
        return self._found

    async def acall(self, method: str, *args: Any, dimensions: int | None = None, **kwargs: Any) -> Any:
        """The async :meth:`call`."""
        if self._ans is None and self._uri is None:
            return await asyncio.to_thread(self.call, method, *args, dimensions=dimensions, **kwargs)
        ns = await self.anamespace(dimensions)
        return None if ns is None else await getattr(ns, method)(*args, **kwargs)

    async def aclose(self) -> None:
        if self._adb is not None:
            await self._adb.close()
            self._adb = None
        await asyncio.to_thread(self.close)
