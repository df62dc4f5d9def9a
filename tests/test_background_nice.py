"""Background index builds and WAL merges run at a lower OS priority than the server's
upserts (``background_nice``; Linux, per thread)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from ingest.background import OnePerNamespace, lower_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")


def _own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_background_run_lowers_its_own_thread_only():
    before = _own_priority()
    seen: list[int] = []
    done = threading.Event()

    def run() -> None:
        seen.append(_own_priority())
        done.set()

    assert OnePerNamespace("index", nice=7).start("ns", run)
    assert done.wait(10)
    assert seen == [min(19, before + 7)]
    assert _own_priority() == before  # the caller's (a request handler's) is untouched


def test_nice_zero_changes_nothing():
    seen: list[int] = []

    def body() -> None:
        lower_priority(0)
        seen.append(_own_priority())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [_own_priority()]
