"""The catalog: finding, creating, committing and dropping namespace manifests.

Finding the newest manifest without a lock service: start from the newest version this
process knows (or the ``latest.json`` hint, or a LIST when there is neither), then probe
``manifests/<v+1>`` until one is absent. Versions are never reused, not even after a
namespace is dropped and created again, so every manifest object is immutable and may be
cached forever.
"""

from __future__ import annotations

import threading
import time

from storage.base import ObjectStore
from storage.errors import ObjectNotFound, PreconditionFailed
from vectordb import keys
from vectordb.errors import AlreadyExists, NamespaceNotFound
from vectordb.manifest import Manifest
from vectordb.namespace import NamespaceConfig, check_namespace_name

# Probing one version at a time is cheapest when we are at most a few versions behind;
# beyond that one LIST jumps to the end.
_PROBES_BEFORE_LIST = 3


def get_fresh(store: ObjectStore, key: str) -> bytes:
    """Read a mutable object, bypassing any read cache."""
    getter = getattr(store, "get_uncached", None)
    return getter(key) if getter else store.get(key)


class Catalog:
    """Manifest access for every namespace of one store. Thread-safe."""

    def __init__(self, store: ObjectStore, eventual_ttl_s: float = 5.0) -> None:
        self.store = store
        self.eventual_ttl_s = eventual_ttl_s
        self._known: dict[str, tuple[Manifest, float]] = {}
        self._lock = threading.Lock()

    # --- reading -----------------------------------------------------------------------
    def latest(self, ns: str, consistency: str = "strong", on_start=None) -> Manifest:
        """The newest live manifest. Raises NamespaceNotFound if absent or dropped.

        ``on_start(manifest)``, if given, is called with the starting point before probing for
        newer versions, so a caller can fetch what that version needs during the probe (a cold
        worker then pays one round trip less).
        """
        manifest = self.newest(ns, consistency, on_start)
        if manifest is None or manifest.deleted:
            raise NamespaceNotFound(f"namespace {ns!r} does not exist")
        return manifest

    def newest(self, ns: str, consistency: str = "strong", on_start=None) -> Manifest | None:
        """The newest manifest, dropped or not; None if the namespace never existed."""
        check_namespace_name(ns)
        with self._lock:
            known = self._known.get(ns)
        if known and consistency == "eventual" and time.monotonic() - known[1] < self.eventual_ttl_s:
            return known[0]
        start = known[0] if known else self._starting_point(ns)
        if start is None:
            return None
        if on_start is not None and not start.deleted:
            on_start(start)
        newest = self._probe_forward(ns, start)
        self._remember(newest)
        return newest

    def get_version(self, ns: str, version: int) -> Manifest:
        """One specific (immutable) version. Raises ObjectNotFound."""
        return Manifest.from_bytes(self.store.get(keys.manifest_key(ns, version)))

    def _starting_point(self, ns: str) -> Manifest | None:
        try:
            return Manifest.from_bytes(get_fresh(self.store, keys.latest_hint_key(ns)))
        except ObjectNotFound:
            pass
        last = None
        for info in self.store.list(keys.manifests_prefix(ns)):
            last = info.key
        return None if last is None else self.get_version(ns, keys.version_of_manifest_key(last))

    def _probe_forward(self, ns: str, manifest: Manifest) -> Manifest:
        for _ in range(_PROBES_BEFORE_LIST):
            try:
                manifest = self.get_version(ns, manifest.version + 1)
            except ObjectNotFound:
                return manifest
        last = None
        for info in self.store.list(keys.manifests_prefix(ns), start_after=keys.manifest_key(ns, manifest.version)):
            last = info.key
        if last is not None:
            manifest = self.get_version(ns, keys.version_of_manifest_key(last))
        return self._probe_forward(ns, manifest) if last is not None else manifest

    def _remember(self, manifest: Manifest) -> None:
        with self._lock:
            known = self._known.get(manifest.namespace)
            if known is None or known[0].version <= manifest.version:
                self._known[manifest.namespace] = (manifest, time.monotonic())

    def list_namespaces(self) -> list[str]:
        names = []
        for name in self.store.list_prefixes(""):
            try:
                newest = self.newest(name, "eventual")
            except Exception:  # not a namespace of ours (stray prefix): skip it
                continue
            if newest is not None and not newest.deleted:
                names.append(name)
        return names

    # --- writing -----------------------------------------------------------------------
    def commit(self, manifest: Manifest) -> None:
        """Create ``manifest``'s version. Raises PreconditionFailed if another writer got it."""
        self.store.put_if_absent(keys.manifest_key(manifest.namespace, manifest.version), manifest.to_bytes())
        self._remember(manifest)
        try:  # the hint only saves readers a LIST; losing it is harmless
            self.store.put(keys.latest_hint_key(manifest.namespace), manifest.to_bytes())
        except Exception:
            pass

    def create(self, ns: str, config: NamespaceConfig) -> tuple[Manifest, bool]:
        """Create the namespace, or return it if it exists with the same config.

        Returns (manifest, created). Raises AlreadyExists on a different config.
        """
        config.validate()
        while True:
            newest = self.newest(ns)
            if newest is not None and not newest.deleted:
                if newest.config != config:
                    raise AlreadyExists(
                        f"namespace {ns!r} exists with a different configuration {newest.config.to_json()}"
                    )
                return newest, False
            version = 0 if newest is None else newest.version + 1
            manifest = Manifest(namespace=ns, version=version, config=config)
            try:
                self.commit(manifest)
                return manifest, True
            except PreconditionFailed:
                continue

    def drop(self, ns: str) -> Manifest:
        """Commit a 'dropped' version, then delete every other object of the namespace.

        The dropped manifest stays, so versions are never reused by a later re-creation.
        """
        while True:
            current = self.latest(ns)
            tomb = current.next(segments=(), wal=(), deleted=True)
            try:
                self.commit(tomb)
                break
            except PreconditionFailed:
                continue
        keep = {keys.manifest_key(ns, tomb.version), keys.latest_hint_key(ns)}
        for info in list(self.store.list(f"{ns}/")):
            if info.key not in keep:
                self.store.delete(info.key)
        return tomb
