"""At most one background run per namespace: what the indexer's automatic builds and the
WAL merges both need (a commit that finds one running starts none)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class OnePerNamespace:
    def __init__(self, kind: str) -> None:
        self.kind = kind  # the threads' name prefix: "index", "merge"
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def start(self, ns: str, run: Callable[[], None]) -> bool:
        """Run ``run()`` in a daemon thread unless one of ``ns`` is running; whether it started."""
        with self._lock:
            if ns in self._running:
                return False
            self._running.add(ns)

        def body() -> None:
            try:
                run()
            finally:
                with self._lock:
                    self._running.discard(ns)

        threading.Thread(target=body, name=f"{self.kind}-{ns}", daemon=True).start()
        return True
