"""open_store: the URI scheme picks the backend; the cache is in front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage import CachedStore, open_raw_store, open_store
from storage.local import LocalStore
from storage.memory import MemoryStore
from storage.s3 import S3Store
from vectordb.errors import InvalidArgument
from vectordb.settings import Settings


def test_file_uri(tmp_path: Path) -> None:
    settings = Settings(store_uri=f"file://{tmp_path}/data", cache_bytes=1234, disk_cache_dir=str(tmp_path / "cache"))
    store = open_store(settings)
    assert isinstance(store, CachedStore)
    assert isinstance(store.inner, LocalStore)
    assert store.max_bytes == 1234
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert store.stats()["disk_bytes"] > 0
    assert isinstance(open_raw_store(settings), LocalStore)


def test_memory_uri_is_shared_by_name() -> None:
    settings = Settings(store_uri="memory://open-test")
    open_store(settings).put("k", b"v")
    assert open_store(settings).get("k") == b"v"
    assert isinstance(open_raw_store(settings), MemoryStore)


@pytest.mark.s3
def test_s3_uri(s3_settings: Settings) -> None:
    assert isinstance(open_raw_store(s3_settings), S3Store)
    store = open_store(s3_settings)
    store.put("k", b"v")
    assert store.get("k") == b"v"


@pytest.mark.parametrize("uri", ["gs://bucket/x", "./just/a/path", "file://", "s3://", "s3:///prefix"])
def test_unusable_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidArgument, match="URI|s3://"):
        open_store(Settings(store_uri=uri))


def test_the_s3_store_imports_minio_without_its_admin_client():
    # A fresh worker's start: storage.s3 must not pull in pycryptodome/argon2 through
    # minio's admin client, and minio.minioadmin must still import for whoever wants it.
    code = (
        "import sys; import storage.s3; "
        "assert 'Crypto' not in sys.modules and 'argon2' not in sys.modules, 'crypto imported'; "
        "import minio.minioadmin; assert minio.minioadmin.MinioAdmin is not None"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
