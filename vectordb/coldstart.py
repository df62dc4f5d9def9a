"""Where a worker's cold start goes: wall-clock marks from process start to first answer.

A :class:`ColdStart` records, once each, when a stage was first reached, as seconds since
the process started (from ``/proc`` on Linux, so the interpreter's own start and the
imports before this module count too). The stages a query worker passes, in order:

    process_start     the OS started the process (0 by definition)
    replica_init      a hosting engine (Ray Serve) handed the replica its constructor
    imports           the service code and its libraries are imported
    app_ready         the Service (store client, caches, thread pools) and the app exist
    model_loaded      the namespace embedder is loaded
    first_request     the first query request arrived
    first_manifest    the first manifest was resolved
    centroids         the first segment's centroids (ivf.bin) were read
    first_partitions  the first probed partitions were read
    first_answer      the first query was answered

:meth:`ColdStart.watch` attaches to a service's catalog and reader without changing them:
it wraps four instance methods so that their first return marks a stage. A process has
one cold start: :func:`process_clock` is the instance that the HTTP app and a hosting
engine share.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

STAGES = (
    "process_start",
    "replica_init",
    "imports",
    "app_ready",
    "model_loaded",
    "first_request",
    "first_manifest",
    "centroids",
    "first_partitions",
    "first_answer",
)


def process_start_time() -> float:
    """Unix time at which this process started, to ~10 ms; this module's import time where
    ``/proc`` is missing (not Linux).

    The process's age is ``/proc/uptime`` minus its start tick (both since boot, 10 ms
    resolution). Adding the start tick to the boot time in ``/proc/stat`` instead would be
    off by up to a second: that boot time is rounded to whole seconds.
    """
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime, clock ticks after boot); the command name before it
            # may contain spaces, so count from the closing parenthesis.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
        return now - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


class ColdStart:
    """First-reached times of the cold-start stages of one process. Thread-safe."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = process_start_time() if started_at is None else started_at
        self._marks: dict[str, float] = {"process_start": 0.0}
        self._lock = threading.Lock()
        self._watched: set[tuple[int, int]] = set()

    def mark(self, stage: str, at: float | None = None) -> bool:
        """Record ``stage`` unless already recorded; True if this call recorded it."""
        at = time.time() if at is None else at
        with self._lock:
            if stage in self._marks:
                return False
            self._marks[stage] = max(0.0, at - self.started_at)
            return True

    def reached(self, stage: str) -> bool:
        with self._lock:
            return stage in self._marks

    def stages(self) -> dict[str, float]:
        """Seconds from process start to each stage reached, in time order."""
        with self._lock:
            return dict(sorted(self._marks.items(), key=lambda kv: kv[1]))

    def breakdown(self) -> dict[str, float]:
        """Seconds spent reaching each stage from the one before it, in time order."""
        out, previous = {}, 0.0
        for stage, at in self.stages().items():
            if stage != "process_start":
                out[stage] = round(at - previous, 4)
            previous = at
        return out

    @property
    def total(self) -> float | None:
        """Process start to first answer, once there was one."""
        with self._lock:
            return self._marks.get("first_answer")

    def watch(self, catalog: Any, reader: Any) -> None:
        """Mark first_manifest, centroids and first_partitions when ``catalog.latest`` (or
        ``catalog.start``: the version a cold worker searches while it probes past it),
        ``reader.layout`` and ``reader.partitions`` first return (once per pair)."""
        with self._lock:
            if (id(catalog), id(reader)) in self._watched:
                return
            self._watched.add((id(catalog), id(reader)))
        _on_first_return(catalog, "latest", lambda: self.mark("first_manifest"))
        _on_first_return(catalog, "start", lambda: self.mark("first_manifest"))
        _on_first_return(reader, "layout", lambda: self.mark("centroids"))
        _on_first_return(reader, "partitions", lambda: self.mark("first_partitions"))


_PROCESS_CLOCK: ColdStart | None = None
_PROCESS_LOCK = threading.Lock()


def process_clock() -> ColdStart:
    """The cold start of this process (created on first use)."""
    global _PROCESS_CLOCK
    with _PROCESS_LOCK:
        if _PROCESS_CLOCK is None:
            _PROCESS_CLOCK = ColdStart()
        return _PROCESS_CLOCK


def _on_first_return(obj: Any, name: str, callback: Callable[[], Any]) -> None:
    """Shadow ``obj.name`` by an instance attribute that calls ``callback`` after the
    first successful call, then removes itself (later calls cost nothing)."""
    original = getattr(obj, name)
    done = threading.Event()

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if not done.is_set():
            done.set()
            callback()
            try:
                delattr(obj, name)  # back to the class's method
            except AttributeError:
                pass
        return result

    setattr(obj, name, wrapper)
