"""LocalStore details the other backends do not share: paths, links, temporary files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.errors import InvalidKey, PreconditionFailed
from storage.local import LocalStore


def test_a_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    store = LocalStore(tmp_path / "root")
    os.symlink(outside, store.root / "escape")
    with pytest.raises(InvalidKey):
        store.get("escape/secret")
    with pytest.raises(InvalidKey):
        store.put("escape/new", b"x")
    assert not (outside / "new").exists()


def test_temporary_files_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("ns/a", b"1")
    (tmp_path / "ns" / "~tmp-abc").write_bytes(b"half written")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "~tmp-def").write_bytes(b"half written")
    assert [i.key for i in store.list("")] == ["ns/a"]
    assert store.list_prefixes("") == ["ns"]


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"1")
    store.put("a/b", b"2")
    store.put_if_absent("a/c", b"3")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("a/c", b"4")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "c"]


def test_an_object_cannot_also_be_a_prefix(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"1")
    with pytest.raises(InvalidKey):
        store.put("a", b"2")  # "a" is a directory here
    store.put("f", b"1")
    with pytest.raises(InvalidKey):
        store.put("f/g", b"2")  # "f" is a file
    assert [i.key for i in store.list("")] == ["a/b", "f"]


def test_delete_removes_emptied_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("ns/segments/s1/ivf", b"1")
    store.put("ns/wal/1", b"1")
    store.delete("ns/segments/s1/ivf")
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == ["wal"]
    assert tmp_path.exists()


def test_uri_with_a_relative_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalStore.from_uri("file://./data/store")
    assert store.root == tmp_path / "data" / "store"
    assert store.root.is_dir()
    assert store.uri == f"file://{tmp_path}/data/store"
    assert LocalStore.from_uri(f"file://{tmp_path}/abs").root == tmp_path / "abs"
