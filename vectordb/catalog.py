"""The catalog: finding, creating, committing and dropping namespace manifests.

A commit is the conditional create of ``manifests/<v+1>``, so "version v+1 is absent" is
what tells a process that v is the newest. Garbage collection would make that lie if it
deleted old versions: a process that still knows v (a query worker idle for an hour, an
ingest worker that lost a few races) would find v+1 absent after it was committed and
collected, answer strong reads from v, and commit a second version v+1. So:

* **Versions are never deleted, only pruned.** Garbage collection overwrites an old
  manifest with a stub (:class:`vectordb.manifest.Pruned`): the key stays taken, a
  conditional create of it fails, and a probe that meets a stub knows it is behind and
  jumps ahead (the ``latest.json`` hint, else a LIST).
* **Stubs expire after ``pruned_ttl_s``** (default a week), or their number would grow
  with every commit forever. A process therefore trusts its own knowledge ("v is the
  newest, v+1 was absent") for half that time only; past it, or with no knowledge, it
  starts again from the hint when the hint is that recent, else from a LIST (the newest
  version is never pruned, so a LIST always shows it). A commit whose base was confirmed
  longer ago than that is refused before it is sent (as if it had lost the race). What
  this assumes: no process stalls for days between reading the newest version and
  committing on it, and clocks agree to within days.
* **Dropping is a commit**: a final "deleted" version, never removed; a later re-creation
  continues the numbering with a new *incarnation* (the version that created it), and a
  write validated against one incarnation is never committed into another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from storage.base import ObjectStore
from storage.errors import ObjectNotFound, PreconditionFailed
from vectordb import keys
from vectordb.errors import AlreadyExists, Conflict, NamespaceNotFound
from vectordb.manifest import Manifest, Pruned, decode
from vectordb.namespace import NamespaceConfig, check_namespace_name

# Probing one version at a time is cheapest when we are at most a few versions behind;
# beyond that one jump (hint or LIST) gets closer to the end.
_PROBES_BEFORE_JUMP = 3
# Jumps in one search for the newest version. Each one moves forward, so only a storm of
# concurrent commits and collections could use them all; then give up rather than spin.
_MAX_JUMPS = 100
DEFAULT_PRUNED_TTL_S = 7 * 24 * 3600.0


def get_fresh(store: ObjectStore, key: str) -> bytes:
    """Read a mutable object, bypassing any read cache."""
    getter = getattr(store, "get_uncached", None)
    return getter(key) if getter else store.get(key)


class Catalog:
    """Manifest access for every namespace of one store. Thread-safe.

    ``clock`` (wall-clock seconds) stamps committed manifests and measures how old this
    process's knowledge is; tests pass a fake one to simulate hours of idleness.
    """

    def __init__(
        self,
        store: ObjectStore,
        eventual_ttl_s: float = 5.0,
        pruned_ttl_s: float = DEFAULT_PRUNED_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.eventual_ttl_s = eventual_ttl_s
        self.pruned_ttl_s = pruned_ttl_s
        # Knowledge older than this may predate a stub that has since expired.
        self.trust_s = pruned_ttl_s / 2
        self.clock = clock
        self._known: dict[str, tuple[Manifest, float]] = {}  # newest seen, when confirmed newest
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

    def trusted(self, ns: str) -> Manifest | None:
        """The newest version this process has seen of ``ns``, if it may still start a probe
        from it without resyncing (see the module docstring) and it is not a drop; else None.
        Only where to start: whether it is still the newest takes a probe."""
        with self._lock:
            known = self._known.get(ns)
        if known is None or known[0].deleted or self.clock() - known[1] >= self.trust_s:
            return None
        return known[0]

    def newest(self, ns: str, consistency: str = "strong", on_start=None) -> Manifest | None:
        """The newest manifest, dropped or not; None if the namespace never existed.

        Strong: a version that was the newest at some moment during the call.
        """
        check_namespace_name(ns)
        now = self.clock()
        with self._lock:
            known = self._known.get(ns)
        if known and consistency == "eventual" and now - known[1] < self.eventual_ttl_s:
            return known[0]
        start = self._start(ns, known, now)
        if start is None:
            return None
        if on_start is not None and not start.deleted:
            on_start(start)
        newest = self._probe_forward(ns, start, now)
        self._remember(newest, now)
        return newest

    def start(self, ns: str) -> Manifest | None:
        """The version a search for the newest of ``ns`` starts from (the one this process
        trusts, else the ``latest.json`` hint or a LIST, as :meth:`newest` does); None if
        ``ns`` never existed. A version that was committed, but not confirmed the newest:
        a caller may read it while :meth:`probe_from` looks past it."""
        check_namespace_name(ns)
        with self._lock:
            known = self._known.get(ns)
        return self._start(ns, known, self.clock())

    def probe_from(self, ns: str, start: Manifest) -> Manifest:
        """The newest live version, probing forward from ``start`` (from :meth:`start`).
        Raises NamespaceNotFound if it is dropped."""
        now = self.clock()
        newest = self._probe_forward(ns, start, now)
        self._remember(newest, now)
        if newest.deleted:
            raise NamespaceNotFound(f"namespace {ns!r} does not exist")
        return newest

    def _start(self, ns: str, known: tuple[Manifest, float] | None, now: float) -> Manifest | None:
        if known and now - known[1] < self.trust_s:
            return known[0]
        return self._resync(ns, known[0] if known else None, now)

    def read_version(self, ns: str, version: int) -> Manifest | Pruned | None:
        """Version ``version`` as stored: the manifest, its stub, or None if absent."""
        try:
            return decode(self.store.get(keys.manifest_key(ns, version)))
        except ObjectNotFound:
            return None

    def get_version(self, ns: str, version: int) -> Manifest:
        """One specific (immutable) version. Raises ObjectNotFound if it is absent or pruned."""
        found = self.read_version(ns, version)
        if not isinstance(found, Manifest):
            raise ObjectNotFound(f"version {version} of {ns!r} is {'pruned' if found else 'absent'}")
        return found

    def _resync(self, ns: str, known: Manifest | None, now: float) -> Manifest | None:
        """A version to probe forward from, for a process with no knowledge it may trust.

        The hint is a recent version when writers are active (each commit rewrites it), so
        the versions after it still have their stubs: probing from it is safe. An old hint
        or none: a LIST after the best we know finds the newest version directly.
        """
        hint = self._hint(ns)
        if hint is not None and (known is None or hint.version >= known.version):
            if now - hint.created_at < self.trust_s:
                return hint
            known = hint
        found = self._last_listed(ns, known.version if known else None)
        return found if found is not None else known

    def _hint(self, ns: str) -> Manifest | None:
        try:
            found = decode(get_fresh(self.store, keys.latest_hint_key(ns)))
        except ObjectNotFound:
            return None
        return found if isinstance(found, Manifest) else None

    def _last_listed(self, ns: str, after: int | None) -> Manifest | None:
        """The newest version listed after ``after`` (None: none listed)."""
        for _ in range(_MAX_JUMPS):
            start_after = keys.manifest_key(ns, after) if after is not None else None
            last = None
            for info in self.store.list(keys.manifests_prefix(ns), start_after=start_after):
                last = info.key
            if last is None:
                return None
            found = self.read_version(ns, keys.version_of_manifest_key(last))
            if isinstance(found, Manifest):
                return found
            # Pruned (or expired) between the LIST and the GET: a newer version exists.
            after = keys.version_of_manifest_key(last)
        raise Conflict(f"could not find the newest version of {ns!r}: it changes too fast")

    def _probe_forward(self, ns: str, manifest: Manifest, now: float) -> Manifest:
        """From ``manifest`` (trusted as a version that was committed, and that nothing after
        it has expired) to the newest: probe ``v+1`` until it is absent."""
        probes = jumps = 0
        while True:
            found = self.read_version(ns, manifest.version + 1)
            if found is None:
                return manifest
            if isinstance(found, Manifest) and probes < _PROBES_BEFORE_JUMP:
                manifest, probes = found, probes + 1
                continue
            # A stub (versions were pruned after this one) or far behind: jump ahead.
            jumps += 1
            if jumps > _MAX_JUMPS:
                raise Conflict(f"could not find the newest version of {ns!r}: it changes too fast")
            ahead = self._resync(ns, manifest, now)
            if ahead is not None and ahead.version > manifest.version:
                manifest = ahead
            elif isinstance(found, Manifest):
                manifest = found
            probes = 0

    def _remember(self, manifest: Manifest, confirmed_at: float) -> None:
        with self._lock:
            known = self._known.get(manifest.namespace)
            if known is None or known[0].version < manifest.version:
                self._known[manifest.namespace] = (manifest, confirmed_at)
            elif known[0].version == manifest.version:
                self._known[manifest.namespace] = (manifest, max(known[1], confirmed_at))

    def list_namespaces(self) -> list[str]:
        names = []
        for name in self.store.list_prefixes(""):
            try:
                newest = self.newest(name, "eventual")
            except Exception:  # not a namespace of ours (stray prefix, .sys): skip it
                continue
            if newest is not None and not newest.deleted:
                names.append(name)
        return names

    # --- writing -----------------------------------------------------------------------
    def commit(self, manifest: Manifest) -> Manifest:
        """Create ``manifest``'s version; returns it as committed (stamped with this clock).

        Raises PreconditionFailed if another writer got the version, or if this process
        confirmed the base too long ago to trust that the version was never taken (see the
        module docstring); either way the caller re-reads the newest version and retries.
        """
        ns = manifest.namespace
        now = self.clock()
        with self._lock:
            known = self._known.get(ns)
        if known is not None and known[0].version == manifest.version - 1 and now - known[1] >= self.trust_s:
            raise PreconditionFailed(f"the newest version of {ns!r} was confirmed too long ago; re-read it")
        manifest = replace(manifest, created_at=now)
        data = manifest.to_bytes()
        self.store.put_if_absent(keys.manifest_key(ns, manifest.version), data)
        self._remember(manifest, now)
        try:  # the hint only saves readers a LIST; losing it is harmless
            self.store.put(keys.latest_hint_key(ns), data)
        except Exception:
            pass
        return manifest

    def create(self, ns: str, config: NamespaceConfig, retries: int = 50) -> tuple[Manifest, bool]:
        """Create the namespace, or return it if it exists with the same config.

        Returns (manifest, created). Raises AlreadyExists on a different config.
        """
        config.validate()
        for _ in range(retries):
            newest = self.newest(ns)
            if newest is not None and not newest.deleted:
                if newest.config != config:
                    raise AlreadyExists(
                        f"namespace {ns!r} exists with a different configuration {newest.config.to_json()}"
                    )
                return newest, False
            if newest is None:
                manifest = Manifest(namespace=ns, version=0, config=config, change={"op": "create"})
            else:  # re-created after a drop: the numbering goes on, a new incarnation starts
                version = newest.version + 1
                manifest = Manifest(
                    namespace=ns, version=version, config=config, incarnation=version, gc_fence=newest.gc_fence,
                    forks=newest.forks, change={"op": "create"},  # branches may still borrow old objects
                )
            try:
                return self.commit(manifest), True
            except PreconditionFailed:
                continue
        raise Conflict(f"creating {ns!r} kept conflicting with other writers")

    def drop(self, ns: str, retries: int = 50) -> Manifest:
        """Commit the final "dropped" version of ``ns`` and return it.

        The dropped version is itself a garbage-collection fence (every object written for
        this incarnation has a key version at or below it), so ``ingest.gc.collect`` can
        then delete every object of the namespace but its versions' stubs.
        """
        for _ in range(retries):
            current = self.latest(ns)
            tomb = current.next(
                segments=(), wal=(), tags=(), deleted=True, gc_fence=current.version + 1, change={"op": "drop"}
            )
            try:
                return self.commit(tomb)
            except PreconditionFailed:
                continue
        raise Conflict(f"dropping {ns!r} kept conflicting with other writers")
