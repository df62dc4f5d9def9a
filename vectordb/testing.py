"""What the tests and the benchmarks share: free loopback ports for the servers they start.

Plain helpers, no pytest: the fixtures built on them live in ``tests/``.

Every server we start listens on a port below 32768. Linux gives the local ports of outgoing
connections from 32768 up (``net.ipv4.ip_local_port_range``), so a listening port taken from
there, as binding port 0 does, can collide with a client's; ports are drawn from
[20000, 32767] instead. A free port is free when it is tested, not when a server binds it:
:func:`bind_free` binds again on another port if it was taken meanwhile.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Callable, Collection
from typing import TypeVar

PORTS = (20_000, 32_767)  # below the ephemeral range (32768 and up)
SEAWEEDFS_GRPC_OFFSET = 10_000  # SeaweedFS puts each service's gRPC port at its port + 10000

_SEAWEEDFS_PORTS = (12_000, PORTS[1] - SEAWEEDFS_GRPC_OFFSET)  # p; p + 10000 is its gRPC port
_PORT_TRIES = 500
_START_TRIES = 3  # starts of a server whose free port was taken before it bound it

T = TypeVar("T")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A TCP port in [20000, 32767] that could be bound on 127.0.0.1 just now, drawn at
    random. RuntimeError if none of many draws was free."""
    for _ in range(_PORT_TRIES):
        port = random.randint(*PORTS)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free TCP port in {PORTS[0]}-{PORTS[1]} on 127.0.0.1 after {_PORT_TRIES} tries")


def seaweedfs_port(taken: Collection[int] = ()) -> int:
    """A port p such that p and its gRPC port p + 10000 are both free on 127.0.0.1, both
    below 32768 and neither in ``taken`` (the ports already given to the other services of
    the same server). RuntimeError if none of many draws fitted."""
    for _ in range(_PORT_TRIES):
        port = random.randint(*_SEAWEEDFS_PORTS)
        pair = (port, port + SEAWEEDFS_GRPC_OFFSET)
        if not set(pair) & set(taken) and all(_bindable(p) for p in pair):
            return port
    raise RuntimeError(f"no free port pair p, p + {SEAWEEDFS_GRPC_OFFSET} below 32768 on 127.0.0.1")


def bind_free(bind: Callable[[int], T], tries: int = _START_TRIES) -> T:
    """``bind(port)`` on a :func:`free_port`; on another one if that was taken before
    ``bind`` got it (EADDRINUSE), up to ``tries`` ports. Other errors are raised."""
    for _ in range(tries - 1):
        try:
            return bind(free_port())
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    return bind(free_port())


def listener() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 at a free port below 32768 (for a relay, or for
    uvicorn in a thread: ``Server.run(sockets=[sock])``, so no other process can take it)."""
    return bind_free(lambda port: socket.create_server(("127.0.0.1", port)))
