"""S3Store beyond the conformance suite: retries and failures against a scripted fake
server, and bucket handling against the real one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from minio import Minio

from storage.errors import PreconditionFailed, StorageUnavailable
from storage.s3 import S3Store
from vectordb.settings import Settings
from vectordb.testing import ACCESS_KEY, SECRET_KEY, bind_free, free_port

# (method, path, body) -> (status, headers, body); a handler may sleep to simulate a timeout.
Responder = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]


def s3_error(status: int, code: str) -> tuple[int, dict[str, str], bytes]:
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>scripted</Message></Error>'
    return status, {"Content-Type": "application/xml"}, body.encode()


def ok(body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/octet-stream", "ETag": '"0"', "Last-Modified": formatdate(usegmt=True)}
    return 200, headers, body


class FakeS3:
    """An HTTP server on 127.0.0.1 answering every request through ``respond``."""

    def __init__(self, respond: Responder) -> None:
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append((self.command, self.path))
                status, headers, payload = respond(self.command, self.path, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_HEAD = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = bind_free(lambda port: ThreadingHTTPServer(("127.0.0.1", port), Handler))
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_s3() -> Iterator[Callable[[Responder], FakeS3]]:
    servers: list[FakeS3] = []

    def start(respond: Responder) -> FakeS3:
        servers.append(FakeS3(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def store_at(endpoint: str, **overrides: object) -> S3Store:
    fields: dict[str, object] = {
        "s3_endpoint": endpoint,
        "s3_access_key": "key",
        "s3_secret_key": "secret",
        "s3_region": "us-east-1",  # no bucket-location lookup
        "s3_create_bucket": False,
        "s3_retries": 2,
        "s3_backoff_s": 0.01,
        "s3_timeout_s": 2.0,
    }
    return S3Store("bucket", "pfx", Settings(**(fields | overrides)))


def scripted(*answers: tuple[int, dict[str, str], bytes]) -> Responder:
    """Answer with ``answers`` in turn, then repeat the last one."""
    queue = list(answers)

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return respond


# --- retries -----------------------------------------------------------------------------


def test_transient_errors_are_retried(fake_s3: Callable[[Responder], FakeS3]) -> None:
    server = fake_s3(scripted(s3_error(503, "SlowDown"), s3_error(500, "InternalError"), ok(b"hello")))
    assert store_at(server.endpoint).get("k") == b"hello"
    assert server.requests == [("GET", "/bucket/pfx/k")] * 3


def test_a_proxy_error_page_is_retried(fake_s3: Callable[[Responder], FakeS3]) -> None:
    html = (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>")
    server = fake_s3(scripted(html, ok(b"hello")))
    assert store_at(server.endpoint).get("k") == b"hello"
    assert len(server.requests) == 2


def test_persistent_5xx_gives_storage_unavailable(fake_s3: Callable[[Responder], FakeS3]) -> None:
    server = fake_s3(scripted(s3_error(500, "InternalError")))
    with pytest.raises(StorageUnavailable, match="after 3 attempts"):
        store_at(server.endpoint).put("k", b"x")
    assert len(server.requests) == 3  # the first try and s3_retries=2 more


def test_access_denied_is_not_retried(fake_s3: Callable[[Responder], FakeS3]) -> None:
    server = fake_s3(scripted(s3_error(403, "AccessDenied")))
    with pytest.raises(StorageUnavailable, match="AccessDenied"):
        store_at(server.endpoint).get("k")
    assert len(server.requests) == 1


def test_a_closed_port_fails_fast() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store_at(f"127.0.0.1:{port}").get("k")
    # Refused at once, three times; a client that waited instead would take 3 x s3_timeout_s (30 s).
    assert time.monotonic() - started < 10


def test_a_slow_server_times_out(fake_s3: Callable[[Responder], FakeS3]) -> None:
    def slow(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        time.sleep(3.0)
        return ok(b"late")

    server = fake_s3(slow)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store_at(server.endpoint, s3_timeout_s=0.2, s3_retries=1).get("k")
    # Two tries of 0.2 s each; a client without the read timeout would wait 2 x 3 s for the answers.
    assert time.monotonic() - started < 3.0
    assert len(server.requests) == 2


# --- a conditional create whose answer was lost ---------------------------------------------


def lost_answer_server(stored: bytes) -> Responder:
    """The first PUT lands (``stored`` is what it stored) but its answer comes too late;
    later PUTs find the object (412); GETs return it."""
    puts = 0

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        nonlocal puts
        if method == "PUT":
            puts += 1
            if puts == 1:
                time.sleep(0.6)
                return ok()
            return s3_error(412, "PreconditionFailed")
        return ok(stored)

    return respond


def test_put_if_absent_recognises_its_own_earlier_attempt(fake_s3: Callable[[Responder], FakeS3]) -> None:
    server = fake_s3(lost_answer_server(stored=b"manifest v7"))
    store_at(server.endpoint, s3_timeout_s=0.3).put_if_absent("m/7", b"manifest v7")
    assert [m for m, _ in server.requests] == ["PUT", "PUT", "GET"]


def test_put_if_absent_still_loses_to_another_writer(fake_s3: Callable[[Responder], FakeS3]) -> None:
    server = fake_s3(lost_answer_server(stored=b"someone else's manifest"))
    with pytest.raises(PreconditionFailed):
        store_at(server.endpoint, s3_timeout_s=0.3).put_if_absent("m/7", b"manifest v7")


def test_put_if_absent_conflict_on_the_first_attempt(fake_s3: Callable[[Responder], FakeS3]) -> None:
    server = fake_s3(scripted(s3_error(412, "PreconditionFailed")))
    with pytest.raises(PreconditionFailed):
        store_at(server.endpoint).put_if_absent("m/7", b"x")
    assert [m for m, _ in server.requests] == ["PUT"]  # no retry, no read-back


# --- against the real server ------------------------------------------------------------


def raw_client(endpoint: str) -> Minio:
    return Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, http_client=urllib3.PoolManager(retries=False))


@pytest.mark.s3
def test_missing_bucket_is_created(s3_settings: Settings) -> None:
    bucket = f"vectordb-new-{uuid.uuid4().hex[:12]}"
    client = raw_client(s3_settings.s3_endpoint)
    try:
        store = S3Store.from_uri(f"s3://{bucket}/p", s3_settings)
        store.put("k", b"v")
        assert client.bucket_exists(bucket)
        assert S3Store.from_uri(f"s3://{bucket}/p", s3_settings).get("k") == b"v"  # exists: fine
    finally:
        if client.bucket_exists(bucket):
            client.remove_bucket(bucket)  # SeaweedFS removes non-empty buckets


@pytest.mark.s3
def test_a_missing_bucket_without_create_is_unavailable(s3_settings: Settings) -> None:
    settings = s3_settings.model_copy(update={"s3_create_bucket": False})
    store = S3Store.from_uri(f"s3://vectordb-absent-{uuid.uuid4().hex[:12]}/p", settings)
    with pytest.raises(StorageUnavailable):
        store.get("k")


@pytest.mark.s3
def test_keys_live_under_the_prefix(s3_settings: Settings) -> None:
    store = S3Store.from_uri(s3_settings.store_uri, s3_settings)
    sibling = S3Store.from_uri(s3_settings.store_uri + "2", s3_settings)  # ".../pfx2"
    store.put("ns/a", b"1")
    sibling.put("ns/b", b"2")
    root = s3_settings.store_uri.removeprefix(f"s3://{store.bucket}/")
    names = [o.object_name for o in raw_client(s3_settings.s3_endpoint).list_objects(store.bucket, prefix=root, recursive=True)]
    assert f"{root}/ns/a" in names
    assert [i.key for i in store.list("")] == ["ns/a"]
    assert store.list_prefixes("") == ["ns"]


@pytest.mark.s3
def test_large_objects_go_up_in_parts(s3_settings: Settings) -> None:
    part = 5 * 1024**2
    store = S3Store.from_uri(s3_settings.store_uri, s3_settings.model_copy(update={"s3_part_bytes": part}))
    data = bytes(range(256)) * (12 * 1024**2 // 256 + 7)  # 12 MiB and a bit: three parts
    store.put("big", data)
    assert store.get("big") == data
    assert store.get_range("big", part - 10, 20) == data[part - 10 : part + 10]  # across a part boundary
    assert store.head("big").size == len(data)
    root = s3_settings.store_uri.removeprefix(f"s3://{store.bucket}/")
    stat = raw_client(s3_settings.s3_endpoint).stat_object(store.bucket, f"{root}/big")
    assert stat.etag.endswith("-3")  # S3 marks a multipart object's ETag with its part count
