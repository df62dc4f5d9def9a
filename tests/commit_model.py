"""A model-based check of the commit protocol: several processes on one store, random
interleavings of their object-store calls, compared with a reference model.

Each simulated *process* is a real :class:`api.service.Service` (its own catalog, read
cache, decoded-object memo, committer, indexer and query engine) over one shared store,
like separate workers that share nothing but the bucket. A *round* starts a few
operations on different processes at once — upserts, deletes, index builds, compactions,
WAL merges, garbage collection with no grace, drops, re-creations, strong queries — and a
:class:`Scheduler` runs them one store call at a time, switching between them at every
call in an order drawn from a seeded RNG, so any interleaving of store calls can happen
and a seed reproduces one. Between rounds a fake clock moves on, sometimes by hours, and
some processes sleep through several rounds: the idle workers with stale caches.

The reference model knows nothing of the protocol: committed versions are totally
ordered and each acknowledged mutation says which version committed it, so the model
replays them in that order. Checked (:class:`Violation` names the first one found):

* every strong query answers a version at least as new as every version acknowledged
  before it started, with exactly the rows the model holds at that version (every
  acknowledged write visible, deleted ids absent, nothing of a failed write);
* after each round, every process and a fresh one answer the model's newest state;
* no manifest version is ever created twice (counted at the store: successful
  conditional creates of a manifest key);
* a dropped namespace answers "not found" until it is created again;
* reads as of a version answer exactly that version's rows (or say it was pruned); reads
  as of a tag always answer the tagged version's rows; a restore's version holds the
  restored version's rows; a branch holds its source version's rows and then goes its own
  way, while collections of either namespace run (``vectordb.versions``).

Assumption, as in production (``vectordb.catalog``): time does not pass *inside* an
operation; the clock moves between rounds. A process stalled mid-commit for longer than
half of ``pruned_manifest_ttl_s`` is outside the protocol's guarantee.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from api.service import Service
from ingest import gc, validate
from storage.base import ObjectInfo, ObjectStore
from storage.cache import CachedStore
from tests.fakes import unit_settings
from vectordb import versions
from vectordb.errors import NamespaceNotFound, VersionNotFound, VersionNotRetained
from vectordb.rows import RowBatch, WriteBatch

DIMS = 4
NAMESPACES = ("alpha", "beta", "gamma")  # gamma starts absent: it is created, or branched from the others
TAGS = ("t1", "t2")
IDS = [f"d{n}" for n in range(24)]
PRUNED_TTL_S = 7200.0  # stubs expire after 2 h; a process trusts what it knows for 1 h
_JOIN_TIMEOUT_S = 120.0


class Violation(AssertionError):
    """The store's history contradicts the reference model."""


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class InlineExecutor:
    """Stands in for a reader's fetch pool: runs each task at once in the caller's
    thread, so every store call belongs to an operation the scheduler knows."""

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the future carries it, as a pool's would
            future.set_exception(exc)
        return future

    def map(self, fn, *iterables) -> Iterator:
        return iter([fn(*args) for args in zip(*iterables)])

    def shutdown(self, wait: bool = True) -> None:
        pass


class Scheduler:
    """Runs operations as threads, one at a time, switching only at store calls."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seq = 0  # a logical clock: ticks at every operation's start and end
        self._cond = threading.Condition()
        self._turn: int | None = None
        self._alive: set[int] = set()
        self._local = threading.local()

    def run(self, ops: list[Callable[[], object]]) -> list[tuple[int, int, object, BaseException | None]]:
        """Run ``ops`` interleaved; for each: (start seq, end seq, result, error)."""
        outcomes: list = [None] * len(ops)
        if not ops:
            return outcomes
        with self._cond:
            self._alive = set(range(len(ops)))
        threads = [threading.Thread(target=self._body, args=(i, op, outcomes), daemon=True) for i, op in enumerate(ops)]
        for thread in threads:
            thread.start()
        with self._cond:
            self._turn = self.rng.choice(sorted(self._alive))
            self._cond.notify_all()
        for thread in threads:
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                raise RuntimeError("an operation did not finish: deadlock in the scheduler or the code under test")
        return outcomes

    def point(self) -> None:
        """A store call is about to happen: let the RNG pick who goes next."""
        me = getattr(self._local, "op", None)
        if me is None:  # not an operation thread (set-up, checks): no interleaving
            return
        with self._cond:
            self._turn = self.rng.choice(sorted(self._alive))
            self._cond.notify_all()
            while self._turn != me:
                self._cond.wait()

    def _body(self, i: int, op: Callable[[], object], outcomes: list) -> None:
        self._local.op = i
        with self._cond:
            while self._turn != i:
                self._cond.wait()
            self.seq += 1
            start = self.seq
        result, error = None, None
        try:
            result = op()
        except BaseException as exc:  # noqa: BLE001 - recorded for the model to judge
            error = exc
        with self._cond:
            self.seq += 1
            outcomes[i] = (start, self.seq, result, error)
            self._alive.discard(i)
            self._turn = self.rng.choice(sorted(self._alive)) if self._alive else None
            self._cond.notify_all()


class SharedStore:
    """The one store every process sees: each call is a scheduling point; writes are
    stamped with the fake clock (as ``last_modified``) and manifest creates are counted."""

    def __init__(self, inner: ObjectStore, scheduler: Scheduler, clock: FakeClock) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.scheduler = scheduler
        self.clock = clock
        self.written: dict[str, float] = {}
        self.manifest_creates: Counter[str] = Counter()

    def get(self, key: str) -> bytes:
        self.scheduler.point()
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.scheduler.point()
        return self.inner.get_range(key, start, length)

    def head(self, key: str) -> ObjectInfo | None:
        self.scheduler.point()
        info = self.inner.head(key)
        return None if info is None else self._stamped(info)

    def put(self, key: str, data: bytes) -> None:
        self.scheduler.point()
        self.inner.put(key, data)
        self.written[key] = self.clock()

    def put_file(self, key: str, path) -> None:
        self.put(key, Path(path).read_bytes())

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.scheduler.point()
        self.inner.put_if_absent(key, data)
        self.written[key] = self.clock()
        if "/manifests/" in key:
            self.manifest_creates[key] += 1

    def delete(self, key: str) -> None:
        self.scheduler.point()
        self.inner.delete(key)
        self.written.pop(key, None)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self.scheduler.point()
        return iter([self._stamped(info) for info in self.inner.list(prefix, start_after)])

    def list_prefixes(self, prefix: str) -> list[str]:
        self.scheduler.point()
        return self.inner.list_prefixes(prefix)

    def _stamped(self, info: ObjectInfo) -> ObjectInfo:
        return ObjectInfo(info.key, info.size, self.written.get(info.key, info.last_modified))


@dataclass
class Mutation:
    version: int
    kind: str  # create, drop, upsert, delete, restore, branch
    rows: dict[str, int] = field(default_factory=dict)  # upsert: id -> rev
    ids: tuple[str, ...] = ()  # delete
    source: tuple[str, int] | None = None  # restore, branch: (namespace, version) copied


@dataclass
class Stats:
    rounds: int = 0
    operations: Counter = field(default_factory=Counter)  # "upsert ok", "query error Conflict", ...
    checks: int = 0


class Model:
    """What the namespaces hold at each version, from the acknowledged mutations."""

    def __init__(self) -> None:
        self.mutations: dict[str, list[Mutation]] = {ns: [] for ns in NAMESPACES}
        self.acked: dict[str, list[tuple[int, int]]] = {ns: [] for ns in NAMESPACES}  # (end seq, version)
        self.tags: dict[str, dict[str, int]] = {ns: {} for ns in NAMESPACES}  # name -> version

    def record(self, ns: str, end: int, version: int | None, mutation: Mutation | None = None) -> None:
        if version is not None:
            self.acked[ns].append((end, version))
        if mutation is not None:
            self.mutations[ns].append(mutation)

    def state(self, ns: str, version: int) -> dict[str, int] | None:
        """Rows (id -> rev) at ``version``; None while dropped or before creation."""
        rows: dict[str, int] | None = None
        for m in sorted(self.mutations[ns], key=lambda m: m.version):
            if m.version > version:
                break
            if m.kind == "create":
                rows = {} if rows is None else rows
            elif m.kind == "drop":
                rows = None
            elif m.kind == "branch":
                rows = dict(self.state(*m.source) or {})
            elif rows is None:
                raise Violation(f"{ns}: a {m.kind} acknowledged at version {m.version} while the namespace was dropped")
            elif m.kind == "restore":
                rows = dict(self.state(*m.source) or {})
            elif rows is None:
                raise Violation(f"{ns}: a {m.kind} acknowledged at version {m.version} while the namespace was dropped")
            elif m.kind == "upsert":
                rows.update(m.rows)
            else:
                for i in m.ids:
                    rows.pop(i, None)
        return rows

    def newest_acked(self, ns: str, before_seq: int | None = None) -> int:
        versions = [v for end, v in self.acked[ns] if before_seq is None or end < before_seq]
        return max(versions, default=-1)

    def dropped_at_or_after(self, ns: str, version: int) -> bool:
        return any(m.kind == "drop" and m.version >= version for m in self.mutations[ns])


class Harness:
    """Processes over one store, driven round by round and checked against the model."""

    def __init__(self, seed: int, base_store: ObjectStore, processes: int = 4) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.scheduler = Scheduler(self.rng)
        self.store = SharedStore(base_store, self.scheduler, self.clock)
        self.model = Model()
        self.stats = Stats()
        self.revs = iter(range(1, 10**9))
        self.procs = [self._process() for _ in range(processes)]
        self.asleep_until = [0] * processes
        for ns in NAMESPACES[:2]:  # set-up, outside the scheduler
            manifest, _ = self.procs[0].create_namespace(ns, embedder="none", dimensions=DIMS, metric="l2")
            self.model.record(ns, 0, manifest.version, Mutation(manifest.version, "create"))

    def close(self) -> None:
        for proc in self.procs:
            proc.close()

    def _process(self) -> Service:
        # No background merges (their store calls would run outside the scheduler): merges
        # are operations of their own.
        settings = unit_settings(
            store_uri=self.store.uri, pruned_manifest_ttl_s=PRUNED_TTL_S, retain_manifests=self.rng.randint(1, 3),
            wal_merge_objects=0,
        )
        service = Service(settings, store=CachedStore(self.store, 64 * 1024 * 1024), clock=self.clock)
        service.reader.pool.shutdown()
        service.reader.pool = InlineExecutor()
        return service

    # --- one round ---------------------------------------------------------------------
    def round(self) -> None:
        self.stats.rounds += 1
        awake = [p for p in range(len(self.procs)) if self.asleep_until[p] <= self.stats.rounds]
        chosen = self.rng.sample(awake, self.rng.randint(1, min(4, len(awake)))) if awake else []
        taken: dict[str, set[str]] = {ns: set() for ns in NAMESPACES}
        plans = [self._plan(p, taken) for p in chosen]
        outcomes = self.scheduler.run([plan[2] for plan in plans])
        # Mutations first: a query may have seen a version whose writer was acknowledged
        # after the query ended.
        done = sorted(zip(plans, outcomes), key=lambda po: (po[0][0] == "query", po[1][1]))
        for (kind, _ns, _, judge), (start, end, result, error) in done:
            label = f"{kind} {'ok' if error is None else 'error ' + type(error).__name__}"
            self.stats.operations[label] += 1
            judge(start, end, result, error)
        self.check_everyone()
        self._move_clock()

    def _plan(self, p: int, taken: dict[str, set[str]]):
        proc = self.procs[p]
        ns = self.rng.choice(NAMESPACES)
        kind = self.rng.choices(
            ["upsert", "delete", "query", "index", "compact", "gc", "drop", "create",
             "tag", "untag", "asof", "restore", "branch", "merge"],
            weights=[30, 10, 20, 10, 5, 12, 2, 6, 6, 2, 10, 3, 3, 5],
        )[0]
        structural = "#structure" in taken[ns]
        tagging = any(t.startswith("#tag") for t in taken[ns])
        if kind in ("drop", "create", "branch"):
            if kind == "branch":
                ns = "gamma"
                structural = "#structure" in taken[ns]
                tagging = any(t.startswith("#tag") for t in taken[ns])
            if structural or tagging:
                kind = "query"
            else:
                taken[ns].add("#structure")
        if kind in ("tag", "untag", "asof"):
            name = self.rng.choice(TAGS)
            if structural or f"#tag:{name}" in taken[ns]:
                kind = "query"
            else:
                taken[ns].add(f"#tag:{name}")
        if kind in ("upsert", "delete"):
            free = [i for i in IDS if i not in taken[ns]]
            ids = tuple(self.rng.sample(free, min(len(free), self.rng.randint(1, 4))))
            taken[ns].update(ids)
            if not ids:
                kind = "query"
        model = self.model

        def mutation_judge(mutation_of: Callable[[int], Mutation]):
            def judge(start, end, version, error):
                if error is None:
                    model.record(ns, end, version, mutation_of(version))
            return judge

        if kind == "upsert":
            rows = {i: next(self.revs) for i in ids}
            return kind, ns, lambda: _upsert(proc, ns, rows), mutation_judge(lambda v: Mutation(v, "upsert", rows))
        if kind == "delete":
            return kind, ns, lambda: _delete(proc, ns, ids), mutation_judge(lambda v: Mutation(v, "delete", ids=ids))
        if kind == "drop":
            def judge_drop(start, end, version, error):
                if error is None:
                    model.record(ns, end, version, Mutation(version, "drop"))
                    model.tags[ns].clear()
            return kind, ns, lambda: proc.drop_namespace(ns), judge_drop
        recent = [v for _, v in model.acked[ns][-8:]] or [0]
        if kind == "tag":
            version = self.rng.choice(recent)

            def judge_tag(start, end, result, error):
                if error is None:
                    model.tags[ns][name] = version
            return kind, ns, lambda: versions.tag(proc.catalog, ns, name, version), judge_tag
        if kind == "untag":
            def judge_untag(start, end, result, error):
                if error is None:
                    model.tags[ns].pop(name, None)
                elif name in model.tags[ns] and not isinstance(error, NamespaceNotFound):
                    raise Violation(f"seed {self.seed}: untag {ns}:{name} failed: {error!r}")
            return kind, ns, lambda: versions.untag(proc.catalog, ns, name), judge_untag
        if kind == "asof":
            as_of = name if name in model.tags[ns] and self.rng.random() < 0.7 else self.rng.choice(recent)
            return kind, ns, lambda: _scan(proc, ns, as_of), self._as_of_judge(ns, as_of)
        if kind == "restore":
            version = self.rng.choice(recent)
            run = lambda: versions.restore(proc.catalog, ns, version).version  # noqa: E731
            return kind, ns, run, mutation_judge(lambda v: Mutation(v, "restore", source=(ns, version)))
        if kind == "branch":
            source = self.rng.choice(NAMESPACES[:2])
            version = self.rng.choice([v for _, v in model.acked[source][-8:]] or [0])
            run = lambda: versions.branch(proc.catalog, "gamma", source, version).version  # noqa: E731
            return kind, ns, run, mutation_judge(lambda v: Mutation(v, "branch", source=(source, version)))
        if kind == "create":
            def create():
                manifest, created = proc.create_namespace(ns, embedder="none", dimensions=DIMS, metric="l2")
                return manifest.version, created

            def judge_create(start, end, result, error):
                if error is None:
                    version, created = result
                    model.record(ns, end, version, Mutation(version, "create") if created else None)
            return kind, ns, create, judge_create
        if kind in ("index", "compact"):
            compact = kind == "compact"
            return kind, ns, lambda: proc.index(ns, compact=compact).version, self._version_judge(ns)
        if kind == "merge":
            def merge():
                result = proc.merger.merge(ns)  # synchronously, in this operation's thread
                if result.objects:
                    self.stats.operations["merge folded"] += 1
                return result.version
            return kind, ns, merge, self._version_judge(ns)
        if kind == "gc":
            retain = self.rng.randint(1, 3)
            run = lambda: gc.collect(proc.catalog, proc.store, ns, retain, 0.0).fence  # noqa: E731
            return kind, ns, run, self._version_judge(ns)
        return "query", ns, lambda: _scan(proc, ns), self._query_judge(ns)

    def _version_judge(self, ns: str):
        def judge(start, end, version, error):
            if error is None:
                self.model.record(ns, end, version)
        return judge

    def _query_judge(self, ns: str):
        def judge(start, end, result, error):
            self.stats.checks += 1
            floor = self.model.newest_acked(ns, before_seq=start)
            if isinstance(error, NamespaceNotFound):
                if not (self.model.dropped_at_or_after(ns, floor) or self.model.state(ns, floor) is None):
                    raise Violation(f"seed {self.seed}: strong query of {ns} said 'not found' after version {floor}")
                return
            if error is not None:
                return  # unavailable (e.g. collected under it twice): counted, not wrong
            version, rows = result
            self._check_answer(ns, version, rows, floor, "a strong query during the round")
            self.model.record(ns, end, version)  # later queries must not answer older
        return judge

    def _as_of_judge(self, ns: str, as_of):
        def judge(start, end, result, error):
            self.stats.checks += 1
            tagged = isinstance(as_of, str)
            if error is not None:
                if tagged or not isinstance(error, (VersionNotRetained, VersionNotFound, NamespaceNotFound)):
                    raise Violation(f"seed {self.seed}: read of {ns} as of {as_of!r} failed: {error!r}")
                return
            version, rows = result
            if tagged:
                self.stats.operations["asof by tag ok"] += 1
            wanted = self.model.tags[ns][as_of] if tagged else as_of
            expected = self.model.state(ns, wanted)
            if version != wanted or rows != expected:
                raise Violation(
                    f"seed {self.seed}: read of {ns} as of {as_of!r} answered version {version} with {rows}; "
                    f"the model has version {wanted} with {expected}"
                )
        return judge

    def _check_answer(self, ns: str, version: int, rows: dict[str, int], floor: int, who: str) -> None:
        if version < floor:
            raise Violation(f"seed {self.seed}: {who} of {ns} answered version {version}, older than acknowledged {floor}")
        expected = self.model.state(ns, version)
        if expected is None:
            raise Violation(f"seed {self.seed}: {who} of {ns} answered version {version}, where the namespace is dropped")
        if rows != expected:
            missing = {i: r for i, r in expected.items() if rows.get(i) != r}
            extra = {i: r for i, r in rows.items() if expected.get(i) != r}
            raise Violation(
                f"seed {self.seed}: {who} of {ns} at version {version}: missing or stale {missing}, unexpected {extra}"
            )

    # --- after each round ----------------------------------------------------------------
    def check_everyone(self) -> None:
        duplicates = [key for key, n in self.store.manifest_creates.items() if n > 1]
        if duplicates:
            raise Violation(f"seed {self.seed}: manifest versions created twice: {duplicates}")
        fresh = self._process()
        try:
            for proc, who in [*((p, f"process {n}") for n, p in enumerate(self.procs)), (fresh, "a fresh process")]:
                awake = who == "a fresh process" or self.asleep_until[self.procs.index(proc)] <= self.stats.rounds
                if not awake:
                    continue  # it is idle: it must not be woken (its cache has to stay stale)
                for ns in NAMESPACES:
                    self.stats.checks += 1
                    newest = self.model.newest_acked(ns)
                    try:
                        version, rows = _scan(proc, ns)
                    except NamespaceNotFound:
                        if self.model.state(ns, newest) is not None:
                            raise Violation(f"seed {self.seed}: {who} says {ns} does not exist at version {newest}") from None
                        continue
                    except Exception as exc:  # nothing runs beside it: a failed read is lost data
                        raise Violation(f"seed {self.seed}: {who} cannot read {ns}: {type(exc).__name__}: {exc}") from exc
                    self._check_answer(ns, version, rows, newest, who)
        finally:
            fresh.close()

    def _move_clock(self) -> None:
        r = self.rng.random()
        if r < 0.12:  # an idle spell: hours (the trust window is 1 h, stubs expire after 2 h)
            self.clock.advance(self.rng.uniform(0.3, 3.0) * PRUNED_TTL_S)
        else:
            self.clock.advance(self.rng.uniform(0.0, 5.0))
        for p in range(len(self.procs)):  # now and then a process sleeps through some rounds
            if self.asleep_until[p] <= self.stats.rounds and self.rng.random() < 0.1:
                self.asleep_until[p] = self.stats.rounds + self.rng.randint(2, 12)


def _upsert(proc: Service, ns: str, rows: dict[str, int]) -> int:
    """What ``Service.upsert`` does, with the commit in this thread (not a group-commit
    thread) so that the scheduler interleaves its store calls."""
    manifest = proc.catalog.latest(ns)
    docs = [{"id": i, "vector": [float(rev), 0.0, 0.0, 1.0], "attributes": {"rev": rev}} for i, rev in rows.items()]
    batch = validate.prepare_upserts(docs, manifest.config, proc.settings)
    return proc.committer.commit_batches(ns, [WriteBatch(batch, [])], DIMS, manifest.incarnation)


def _delete(proc: Service, ns: str, ids: tuple[str, ...]) -> int:
    manifest = proc.catalog.latest(ns)
    batch = WriteBatch(RowBatch.empty(DIMS), list(ids))
    return proc.committer.commit_batches(ns, [batch], DIMS, manifest.incarnation)


def _scan(proc: Service, ns: str, as_of=None) -> tuple[int, dict[str, int]]:
    """A strong query (or one as of a version or tag) that returns every live row (a filter
    that keeps every row is searched exactly): (version, id -> rev)."""
    result = proc.engine.query(
        ns, vector=[0.0] * DIMS, top_k=len(IDS) + 10, filter={"rev": {"$gte": 0}}, include=("attributes",),
        as_of=as_of,
    )
    return result.version, {hit.id: hit.attributes["rev"] for hit in result.hits}


def run(seed: int, base_store: ObjectStore, rounds: int) -> Stats:
    """Drive ``rounds`` random rounds; raise Violation at the first disagreement."""
    harness = Harness(seed, base_store)
    try:
        for _ in range(rounds):
            harness.round()
        return harness.stats
    finally:
        harness.close()
