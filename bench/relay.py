"""A TCP relay that counts what passes through it: the bytes each way and the HTTP requests.

Put it between a client we cannot instrument (LanceDB's Rust object-store client) and the S3
server to learn what a cold query read: ``with CountingRelay("127.0.0.1:8333") as relay:``
gives the client ``relay.endpoint``; ``relay.take()`` returns the counts since the last take.
A request is a client send that starts with an HTTP method (requests are not pipelined on
a keep-alive connection, so each begins a send). The relay adds a hop of its own to every
request: time queries without it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from vectordb.testing import listener

_METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ")


class CountingRelay:
    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = listener()
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._counts = {"bytes_down": 0, "bytes_up": 0, "requests": 0}
        self._closed = False

    def __enter__(self) -> CountingRelay:
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self._listener.close()

    def take(self) -> dict:
        """Bytes down (server -> client), bytes up and requests since the last take."""
        with self._lock:
            out = dict(self._counts)
            self._counts = dict.fromkeys(out, 0)
        return out

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, "bytes_up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "bytes_down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counter: str) -> None:
        try:
            while data := source.recv(1 << 16):
                with self._lock:
                    self._counts[counter] += len(data)
                    if counter == "bytes_up" and data.startswith(_METHODS):
                        self._counts["requests"] += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
