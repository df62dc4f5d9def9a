"""At most one background run per namespace: what the indexer's automatic builds and the
WAL merges both need (a commit that finds one running starts none).

A run's thread lowers its own OS priority by ``nice`` (Linux, where priority is per
thread; the FAISS/OpenMP threads a build starts from it inherit it): on an ingest worker
busy with upserts, the acknowledged writes get the cores first and a build the rest."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def lower_priority(nice: int) -> None:
    """The calling thread's OS priority lowered by ``nice`` steps (at most to 19). Linux
    only: elsewhere ``setpriority`` of a thread id could name another process."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # a sandbox may forbid it: the run goes on at the same priority
        log.debug("background thread priority unchanged: %s", exc)


class OnePerNamespace:
    def __init__(self, kind: str, nice: int = 0) -> None:
        self.kind = kind  # the threads' name prefix: "index", "merge"
        self.nice = nice
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
                lower_priority(self.nice)
                run()
            finally:
                with self._lock:
                    self._running.discard(ns)

        threading.Thread(target=body, name=f"{self.kind}-{ns}", daemon=True).start()
        return True
