"""uvicorn serving an app in a thread of the test process (the real HTTP stack, with the
test's fake embedder registered). Separate ``vectordb serve`` processes: ``vectordb.testing``."""

from __future__ import annotations

import time

from vectordb.testing import listener


class InProcessServer:
    """uvicorn serving ``app`` in a thread of this process on a free loopback port (a context
    manager giving the URL): the real HTTP stack, with the test's fake embedder registered."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        # Bound here and handed to uvicorn: no other process can take the port in between.
        sock = listener()
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
