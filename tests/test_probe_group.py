"""Shared newest-manifest probes (``query.probe_group``): never older than a caller's own
probe would be, and one probe at a time per namespace."""

from __future__ import annotations

import threading
import time

import pytest

from query.probe_group import ProbeGroup


class _Probes:
    """A probe that returns its own number, and can be held open."""

    def __init__(self) -> None:
        self.count = 0
        self.running = 0
        self.most_running = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, ns: str) -> int:
        with self.lock:
            self.count += 1
            number = self.count
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.entered.set()
        self.gate.wait(10)
        with self.lock:
            self.running -= 1
        return number


def test_a_lone_caller_probes_at_once():
    probes = _Probes()
    group = ProbeGroup(probes)
    assert [group.latest("ns") for _ in range(3)] == [1, 2, 3]


def test_a_probe_that_started_before_a_caller_arrived_never_answers_it():
    probes = _Probes()
    probes.gate.clear()
    group = ProbeGroup(probes)
    first: list[int] = []
    leader = threading.Thread(target=lambda: first.append(group.latest("ns")))
    leader.start()
    assert probes.entered.wait(5)  # probe 1 is running
    late: list[int] = []
    followers = [threading.Thread(target=lambda: late.append(group.latest("ns"))) for _ in range(8)]
    for t in followers:
        t.start()
    time.sleep(0.1)
    probes.gate.set()
    leader.join(5)
    for t in followers:
        t.join(5)
    assert first == [1]
    assert late == [2] * 8  # one more probe, shared by all eight
    assert probes.most_running == 1


def test_namespaces_probe_independently_and_errors_are_shared():
    calls = []

    def probe(ns: str) -> int:
        calls.append(ns)
        if ns == "gone":
            raise LookupError(ns)
        return len(calls)

    group = ProbeGroup(probe)
    with pytest.raises(LookupError):
        group.latest("gone")
    assert group.latest("a") == 2
    assert group.latest("b") == 3


def test_under_load_every_answer_comes_from_a_probe_started_after_the_call():
    starts: list[float] = []
    lock = threading.Lock()

    def probe(ns: str) -> float:
        with lock:
            starts.append(time.monotonic())
            started = starts[-1]
        time.sleep(0.002)
        return started

    group = ProbeGroup(probe)
    bad: list[tuple[float, float]] = []

    def client() -> None:
        for _ in range(30):
            arrived = time.monotonic()
            started = group.latest("ns")
            if started < arrived:
                bad.append((arrived, started))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not bad
    assert len(starts) < 8 * 30  # shared
