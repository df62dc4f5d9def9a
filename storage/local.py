"""Object store in a local directory (``file://DIR``), for one machine and for tests.

Each key is a file under the root. Writes go to a temporary file in the target
directory, are fsynced, and then appear under their name in one atomic step:
``os.replace`` for ``put``, ``os.link`` for ``put_if_absent`` (``link`` refuses an
existing name, so exactly one of several racing writers, threads or processes, wins).
Temporary files are named ``~tmp-...``, which is never a valid key segment, so
listings skip them.

A key cannot be both an object and a "directory" of other objects here (``a`` and
``a/b``); S3 allows that, the file system does not, and such a write raises InvalidKey.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from storage.base import (
    ObjectInfo,
    check_dir_prefix,
    check_key,
    check_prefix,
    check_range,
    is_key_segment,
)
from storage.errors import InvalidKey, ObjectNotFound, PreconditionFailed
from vectordb.errors import InvalidArgument

_TEMP_PREFIX = "~tmp-"


class LocalStore:
    """Objects as files under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"file://{self.root}"

    @classmethod
    def from_uri(cls, uri: str) -> LocalStore:
        """``file://relative/dir`` or ``file:///absolute/dir``."""
        path = uri.removeprefix("file://")
        if not path:
            raise InvalidArgument(f"store URI {uri!r} names no directory")
        return cls(path)

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        try:
            with self._path(key).open("rb") as f:
                f.seek(start)
                return f.read(length)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not _is_file(st):
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    # --- writes --------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._publish(key, self._write_temp(path, data), path)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        target = self._path(key)
        self._publish(key, self._write_temp(target, None, Path(path)), target)

    def _publish(self, key: str, tmp: Path, path: Path) -> None:
        """Move the written ``tmp`` to ``path`` (replacing what is there), durably."""
        try:
            os.replace(tmp, path)
        except IsADirectoryError:
            raise InvalidKey(f"object key {key!r} is already a prefix of other objects") from None
        finally:
            tmp.unlink(missing_ok=True)  # gone already, unless the replace failed
        _fsync_dir(path.parent)

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise PreconditionFailed(f"object {key!r} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        # Drop directories left empty, so that list_prefixes forgets deleted "folders".
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or just refilled by a writer): stop here
                break

    # --- listings ------------------------------------------------------------------------

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        # Walk from the directory the prefix points into; the rest of the prefix filters.
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        for info in self._walk(self.root / base, base, prefix, start_after or ""):
            if info.key.startswith(prefix) and info.key > (start_after or ""):
                yield info

    def list_prefixes(self, prefix: str) -> list[str]:
        check_dir_prefix(prefix)
        try:
            entries = list(os.scandir(self.root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [
            e.name
            for e in entries
            if is_key_segment(e.name) and e.is_dir(follow_symlinks=False)
        ]
        # A directory holding only temporary files (a write in progress) is not a prefix yet.
        return sorted(n for n in names if next(self.list(f"{prefix}{n}/"), None) is not None)

    def _walk(
        self, directory: Path, key_prefix: str, prefix: str, start_after: str
    ) -> Iterator[ObjectInfo]:
        """Objects below ``directory`` in ascending key order, lazily; subdirectories that
        cannot hold a key matching ``prefix`` and greater than ``start_after`` are skipped.

        Sorting a directory's entries with ``/`` appended to subdirectory names orders
        them exactly as their keys sort: every key inside ``d`` starts with ``d/``.
        """
        try:
            entries = [e for e in os.scandir(directory) if is_key_segment(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            return
        dirs = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
        entries.sort(key=lambda e: e.name + "/" if e.name in dirs else e.name)
        for entry in entries:
            key = key_prefix + entry.name
            if entry.name in dirs:
                sub = key + "/"
                matches = sub.startswith(prefix) or prefix.startswith(sub)
                after = start_after < sub or start_after.startswith(sub)
                if matches and after:
                    yield from self._walk(Path(entry.path), sub, prefix, start_after)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while we listed
                continue
            if _is_file(st):
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    # --- helpers -------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file of ``key``; raises InvalidKey if it would resolve outside the root."""
        path = self.root / check_key(key)
        # check_key already refuses "..", absolute keys and empty segments; this catches a
        # symbolic link inside the root that points elsewhere.
        if not Path(os.path.realpath(path)).is_relative_to(self.root):
            raise InvalidKey(f"object key {key!r} resolves outside the store")
        return path

    def _write_temp(self, path: Path, data: bytes | None, source: Path | None = None) -> Path:
        """Write ``data`` (or the contents of the file ``source``) to a fsynced temporary
        file in ``path``'s directory."""
        tmp = path.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        # A concurrent delete may remove the (empty) directory between its creation and
        # our open; a few tries settle that race.
        for attempt in range(5):
            self._make_dirs(path.parent)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                if source is None:
                    f.write(data)
                else:
                    with open(source, "rb") as src:
                        shutil.copyfileobj(src, f, 8 * 1024**2)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents durably (each new entry fsynced
        in its parent), so that an acknowledged write survives a crash."""
        if directory.is_dir():
            return
        missing = [directory, *(p for p in directory.parents if not p.is_dir())]
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                if not new.is_dir():
                    key = new.relative_to(self.root).as_posix()
                    raise InvalidKey(f"object {key!r} exists, so no key can lie below it") from None
            except NotADirectoryError:
                raise InvalidKey(f"an object is in the way of {directory}") from None
            _fsync_dir(new.parent)


def _is_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
