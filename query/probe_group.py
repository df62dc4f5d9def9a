"""Strong queries of one namespace share their newest-manifest probes.

A strong query must see every write acknowledged before it began, so it asks the store
for the version after the newest it knows (``Catalog.latest``). With a writer beside
them, eight concurrent queries each made that round trip, and each decoded the new
manifest it found (every commit adds one; with a long tail it lists hundreds of WAL
objects): issue 11 measured that as the largest cost a writer added to a strong query.

Any probe that *starts* after a query arrived answers that query as well as one of its
own: it sees every version committed before it started. So at most one probe per
namespace runs at a time; a query arriving meanwhile waits for it to end and then shares
the next one, started by whichever waiting query gets there first. A lone query probes at
once, as before; under load each query waits at most for the rest of one probe and one
whole probe, and the store sees one probe at a time instead of one per query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vectordb.manifest import Manifest


class _Namespace:
    __slots__ = ("started", "finished", "running", "outcome")

    def __init__(self) -> None:
        self.started = 0  # probes started so far
        self.finished = 0  # number of the newest probe that ended
        self.running = False
        self.outcome: tuple[Manifest | None, BaseException | None] = (None, None)


class ProbeGroup:
    """``latest(ns)`` = ``probe(ns)`` run by this caller or by another one that started
    after this caller arrived. ``probe`` raises as ``Catalog.latest`` does; a probe's
    exception is every sharer's."""

    def __init__(self, probe: Callable[[str], Manifest]) -> None:
        self._probe = probe
        self._cond = threading.Condition()
        self._namespaces: dict[str, _Namespace] = {}

    def latest(self, ns: str) -> Manifest:
        with self._cond:
            state = self._namespaces.setdefault(ns, _Namespace())
            arrived = state.started  # a probe numbered above this began after we arrived
            while state.finished <= arrived:
                if not state.running:
                    state.running = True
                    state.started += 1
                    number = state.started
                    break
                self._cond.wait()
            else:
                manifest, error = state.outcome
                if error is not None:
                    raise error
                return manifest
        manifest, error = None, None
        try:
            manifest = self._probe(ns)
        except BaseException as exc:  # shared with the queries waiting for this probe
            error = exc
        with self._cond:
            state.running = False
            state.finished = number
            state.outcome = (manifest, error)
            self._cond.notify_all()
        if error is not None:
            raise error
        return manifest
