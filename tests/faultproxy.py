"""A fault-injecting HTTP proxy in front of a real S3 server, for tests.

Each request is, at random (seeded): forwarded; answered ``503 SlowDown`` without
reaching the server; stalled past the client's timeout and then forwarded (it may land
after the client has given up and retried); cut with a TCP reset before it is forwarded;
or forwarded and its answer thrown away with a reset (a PUT that landed but whose answer
was lost: the hardest case for a conditional create). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vectordb.testing import bind_free

FAULTS = ("ok", "error", "stall", "reset", "drop_response")


@dataclass
class FaultPlan:
    """Probabilities of each fault per request (the rest is forwarded untouched)."""

    error: float = 0.0
    stall: float = 0.0
    reset: float = 0.0
    drop_response: float = 0.0
    stall_s: float = 1.5


class FaultProxy:
    def __init__(self, upstream: str, plan: FaultPlan, seed: int = 0) -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self):  # noqa: N802 - the stdlib's naming
                proxy._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815

        self.server = bind_free(lambda port: ThreadingHTTPServer(("127.0.0.1", port), Handler))
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> str:
        with self._lock:
            r = self._rng.random()
        p = self.plan
        for name, share in (("error", p.error), ("stall", p.stall), ("reset", p.reset), ("drop_response", p.drop_response)):
            if r < share:
                return name
            r -= share
        return "ok"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        fault = self._draw()
        with self._lock:
            self.counts[fault] += 1
        if fault == "error":
            payload = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            h.send_response(503)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
            return
        if fault == "reset":
            _reset(h)
            return
        if fault == "stall":
            threading.Event().wait(self.plan.stall_s)
        status, headers, payload = self._forward(h, body)
        if fault == "drop_response":
            _reset(h)
            return
        try:
            h.send_response(status)
            length = str(len(payload))
            for name, value in headers:
                if name.lower() == "content-length" and h.command == "HEAD":
                    length = value  # a HEAD's length is the object's, its body is empty
                elif name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    h.send_header(name, value)
            h.send_header("Content-Length", length)
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
        except OSError:  # the client gave up (a stall past its timeout)
            h.close_connection = True

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes):
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection",)}
            conn.request(h.command, h.path, body=body if body else None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            return response.status, response.getheaders(), payload
        finally:
            conn.close()


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed server or middlebox would."""
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    h.close_connection = True
    try:
        h.connection.close()
    except OSError:
        pass
