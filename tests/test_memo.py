"""The reader's memo (``vectordb.memo.Memo``): single flight, errors, and its bounds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vectordb.memo import Memo


def test_concurrent_misses_share_one_make():
    memo = Memo(8)
    calls = []

    def make():
        calls.append(1)
        time.sleep(0.05)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(memo.get("k", make))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)
    assert "k" in memo and memo.peek("k") is got[0]


def test_an_error_reaches_every_waiter_and_is_not_kept():
    memo = Memo(8)
    started = threading.Event()

    def failing():
        started.set()
        time.sleep(0.05)
        raise KeyError("gone")

    errors = []

    def call():
        try:
            memo.get("k", failing)
        except KeyError as exc:
            errors.append(exc)

    first = threading.Thread(target=call)
    first.start()
    started.wait(5)
    second = threading.Thread(target=call)
    second.start()
    first.join()
    second.join()
    assert len(errors) == 2
    assert "k" not in memo
    assert memo.get("k", lambda: 5) == 5


def test_bounded_in_bytes_and_entries_least_recently_used_first():
    memo = Memo(100, max_bytes=3000, weigh=lambda a: a.nbytes)
    for key in range(5):
        memo.get(key, lambda: np.zeros(1000, np.uint8))
        memo.peek(0)  # keep 0 recently used
    assert memo.bytes <= 3000 and len(memo) == 3
    assert memo.peek(0) is not None and memo.peek(1) is None
    small = Memo(2)
    for key in range(4):
        small.get(key, lambda key=key: key)
    assert len(small) == 2 and small.peek_many([2, 3]) == [2, 3]
    huge = Memo(10, max_bytes=10, weigh=lambda a: a.nbytes)
    assert huge.get("x", lambda: np.zeros(100, np.uint8)).nbytes == 100  # the newest stays
    with pytest.raises(ZeroDivisionError):
        huge.get("y", lambda: 1 / 0)
