"""The ports of the servers that tests and benchmarks start (vectordb/testing.py): below 32768,
where the kernel's ephemeral range begins, so that no outgoing connection can hold them."""

from __future__ import annotations

import errno
import socket

import pytest

from vectordb import testing
from vectordb.testing import SEAWEEDFS_GRPC_OFFSET, bind_free, free_port, listener, seaweedfs_port


def _bind(port: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_free_port_is_below_the_ephemeral_range_and_bindable():
    for _ in range(50):
        port = free_port()
        assert 20_000 <= port < 32_768
        _bind(port)


def test_both_ports_of_a_seaweedfs_pair_are_below_32768_and_bindable():
    taken: list[int] = []
    for _ in range(20):
        port = seaweedfs_port(taken)
        pair = (port, port + SEAWEEDFS_GRPC_OFFSET)
        assert all(1024 < p < 32_768 for p in pair) and not set(pair) & set(taken)
        for p in pair:
            _bind(p)
        taken += pair


def test_no_free_port_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(testing, "_bindable", lambda port: False)
    with pytest.raises(RuntimeError, match="no free TCP port in 20000-32767"):
        free_port()
    with pytest.raises(RuntimeError, match="no free port pair"):
        seaweedfs_port()


def test_a_port_taken_before_the_bind_is_replaced_by_another():
    tried: list[int] = []

    def bind(port: int) -> int:
        tried.append(port)
        if len(tried) < 3:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return port

    assert bind_free(bind) == tried[-1] and len(tried) == 3

    def always(error: OSError):
        def bind(port: int):
            tried.append(port)
            raise error
        return bind

    tried.clear()
    with pytest.raises(OSError, match="in use"):
        bind_free(always(OSError(errno.EADDRINUSE, "Address already in use")), tries=4)
    assert len(tried) == 4
    tried.clear()
    with pytest.raises(PermissionError):  # any other error at once
        bind_free(always(PermissionError(errno.EACCES, "denied")))
    assert len(tried) == 1


def test_a_listener_accepts_connections_below_32768():
    with listener() as sock:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and 20_000 <= port < 32_768
        with socket.create_connection((host, port), timeout=2):
            pass
