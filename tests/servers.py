"""Real ``vectordb serve`` processes for the integration tier (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from vectordb.testing import free_port, listener

ROOT = Path(__file__).resolve().parent.parent
_START_TRIES = 3  # starts of a server whose free port was taken before it bound it


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing; what a crash looks like."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(env: dict[str, str], tmp: Path, role: str = "all", timeout: float = 60.0) -> Server:
    """Start ``vectordb serve`` with ``env`` added; wait until /healthz answers. Started again
    on another port if its free port was taken before it bound it."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    for attempt in range(1, _START_TRIES + 1):
        port = free_port()
        log_path = tmp / f"server-{role}-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--role", role, "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(proc, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if proc.poll() is None:
            server.stop()
            raise RuntimeError(f"server did not start in {timeout}s:\n{server.log()}")
        if "address already in use" not in server.log().lower() or attempt == _START_TRIES:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
    raise AssertionError("unreachable")


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
