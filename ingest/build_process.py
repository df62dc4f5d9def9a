"""Background index builds in a child process.

An ingest worker that builds in one of its threads holds the build's memory (up to
``build_memory_bytes``, and glibc keeps much of it after the build), and can only lower
that thread's priority so far: a thread in the idle scheduling class, preempted while it
holds the GIL, would stall the server. A child process builds with memory of its own,
returned when it exits, and can take the idle class (``background_idle``, Linux
SCHED_IDLE) safely: it shares no lock with the server. Upserts get the cores first, the
build what they leave idle (an ingest pipeline waiting on object store round trips leaves
a good share). Measured at 1M vectors (``bench/ingest_builds.py``): the ingest worker's
peak RSS while ingesting fell from ~1.3 to ~0.64 GB; ingest with builds running went from
0.77–0.82 to 0.81–0.86 of the same ingest without builds (the rest is the build's memory
traffic and uploads, not its CPU time: see ARCHITECTURE.md).

The commit protocol already allows it: a build commits by a conditional manifest create
and rebases over writes that came meanwhile, from whichever process it runs in. The parent
keeps its own view of the namespace right: the thread that waits for the child holds the
indexer's lock of the namespace, so no WAL merge of this worker starts beside it (it would
make one of the two stale), as with a build in a thread.

The child gets the parent's settings as JSON on stdin (they may name S3 keys: not on its
command line), lowers its priority, dies with its parent (Linux), and prints the build's
result as one JSON line. Killed at any moment, it leaves what any killed build leaves:
nothing visible, and objects garbage collection removes.

An explicit build of the namespace in the parent (``POST /v1/namespaces/{ns}/index``, the
embedded ``index()``) waits for a running child while it progresses, as for a build in a
thread: once the server is idle, an idle-class child has the cores. But such a child gets
no CPU while the server is busy, so one that got less than a quarter of a core over the
last second, and moved less than 1 MiB through its reads and writes (a child waiting on a
slow upload uses little CPU but is not starved), is stopped (``ChildBuilds.stop_starved``)
and the explicit build runs in the parent at the server's priority; no child of that
namespace starts meanwhile (``ChildBuilds.explicit``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from ingest import background
from vectordb.settings import Settings

log = logging.getLogger(__name__)

# A running child counts as starved (``ChildBuilds.stop_starved``) when, between two checks,
# it got less than this share of a core and read and wrote less than this many bytes a second.
STARVED_SHARE = 0.25
STARVED_IO_BYTES_S = 2**20


def usable(settings: Settings) -> bool:
    """Whether a child process can open the store these settings name (a ``memory://``
    store lives in this process only)."""
    return settings.background_builds == "process" and not settings.store_uri.startswith("memory://")


@dataclass
class Stats:
    started: int = 0
    built: int = 0  # exited 0 (a namespace dropped meanwhile counts too)
    failed: int = 0  # exited otherwise, not stopped by close()
    stopped: int = 0  # ended by close()
    preempted: int = 0  # starved, stopped for an explicit build of its namespace (``ChildBuilds.stop_starved``)


class ChildBuilds:
    """Runs ``vectordb``'s index build of a namespace in a child process and waits for it."""

    def __init__(self, settings: Settings) -> None:
        # What the child builds with: the parent's settings but the disk cache tier, which is
        # the parent's (its bound and index are per process; a build reads its input uncached).
        self._settings_json = settings.model_copy(update={"disk_cache_dir": None}).model_dump_json()
        self._children: dict[subprocess.Popen, str] = {}  # running child -> its namespace
        self._explicit: Counter[str] = Counter()  # namespace -> explicit builds waiting or running
        self._preempted: set[subprocess.Popen] = set()
        self._samples: dict[subprocess.Popen, tuple[float, float, int]] = {}  # child -> (when, CPU s, I/O bytes)
        self._lock = threading.Lock()
        self._closed = False
        self.stats = Stats()

    def run(self, ns: str) -> dict | None:
        """Build ``ns``'s index in a child and wait; its result (``IndexResult`` as a dict),
        or None if it failed (its log went to this process's stderr), was stopped, or was not
        started because an explicit build of ``ns`` is under way (it builds the same rows)."""
        with self._lock:
            if self._closed or self._explicit[ns]:
                return None
            child = subprocess.Popen(
                [sys.executable, "-m", "ingest.build_process", ns, str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=os.getcwd(), env=_child_env(),
            )
            self._children[child] = ns
            self.stats.started += 1
        try:
            out, _ = child.communicate(self._settings_json)
        finally:
            with self._lock:
                del self._children[child]
                self._samples.pop(child, None)
                preempted = child in self._preempted
                self._preempted.discard(child)
                if child.returncode == 0:
                    self.stats.built += 1
                elif preempted:
                    self.stats.preempted += 1
                elif self._closed:
                    self.stats.stopped += 1
                else:
                    self.stats.failed += 1
        if child.returncode != 0:
            if preempted:
                log.info("background index of %s: the build process (pid %d), starved, stopped for an explicit "
                         "build", ns, child.pid)
            elif not self._closed:
                log.error("background index of %s: the build process (pid %d) exited with %d",
                          ns, child.pid, child.returncode)
            return None
        return json.loads(out.strip().splitlines()[-1])

    @contextlib.contextmanager
    def explicit(self, ns: str) -> Iterator[None]:
        """Around an explicit index build of ``ns`` in this process: no child of ``ns``
        starts meanwhile (``run`` returns None: the explicit build covers its rows)."""
        with self._lock:
            self._explicit[ns] += 1
        try:
            yield
        finally:
            with self._lock:
                self._explicit[ns] -= 1
                if not self._explicit[ns]:
                    del self._explicit[ns]

    def stop_starved(self, ns: str) -> None:
        """Stop each running child of ``ns`` that, since the previous call (the first call
        only takes a sample), got less than ``STARVED_SHARE`` of a core and read and wrote
        less than ``STARVED_IO_BYTES_S`` a second (files and sockets): SIGTERM, it unwinds
        and leaves nothing visible. Where the OS gives no process counters, nothing is stopped."""
        with self._lock:
            running = [child for child, of in self._children.items() if of == ns]
        for child in running:
            now, progress = time.monotonic(), _progress(child.pid)
            if progress is None:
                continue
            with self._lock:
                last = self._samples.get(child)
                self._samples[child] = (now, *progress)
                starved = False
                if last is not None and now > last[0]:
                    seconds = now - last[0]
                    starved = ((progress[0] - last[1]) / seconds < STARVED_SHARE
                               and (progress[1] - last[2]) / seconds < STARVED_IO_BYTES_S)
                if starved:
                    self._preempted.add(child)
            if starved:
                _stop_child(child)

    def close(self, wait_s: float = 5.0) -> None:
        """Stop running builds (a stopped build leaves nothing visible; see the module doc)."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            _stop_child(child)
        for child in children:
            try:
                child.wait(wait_s)
            except subprocess.TimeoutExpired:
                child.kill()


def _stop_child(child: subprocess.Popen) -> None:
    """SIGTERM, and SIGCONT in case the child is stopped (a stopped process acts on SIGTERM
    only once continued)."""
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
        child.send_signal(signal.SIGCONT)


def _progress(pid: int) -> tuple[float, int] | None:
    """What ``pid`` has done so far, from /proc (Linux): CPU seconds (user + system, all
    threads) and bytes it read and wrote (files and sockets); None where there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/io") as f:
            io = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(io["rchar"]) + int(io["wchar"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package importable from the child."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the parent ends (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        sys.exit(3)


def lower_priority(settings: Settings) -> None:
    """This process's priority, before it starts any other thread (they inherit it, FAISS's
    too): ``background_nice`` steps lower, as a background thread's (``ingest.background``)
    and, with ``background_idle`` on Linux, the idle class: it runs only where the server
    and everything else leave a core free."""
    background.lower_priority(settings.background_nice)
    if settings.background_idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # a sandbox may forbid it: the build runs as it is
            log.warning("background build priority unchanged: %s", exc)


def _stop(signum, frame) -> None:
    # Unwinds the build, so its spill directory is removed on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ns, parent = (argv if argv is not None else sys.argv[1:])[:2]
    signal.signal(signal.SIGTERM, _stop)
    _die_with_parent(int(parent))
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s background index {ns}: %(levelname)s %(message)s")
    settings = Settings(**json.loads(sys.stdin.read()))
    lower_priority(settings)
    from ingest.indexer import Indexer
    from storage import open_store
    from vectordb.catalog import Catalog
    from vectordb.errors import NamespaceNotFound
    from vectordb.reader import NamespaceReader

    # What the server's write side is made of (``api.service``), without the server: the
    # build reads its input from the store without its RAM cache, as there.
    store = open_store(settings)
    catalog = Catalog(store, settings.eventual_ttl_s, settings.pruned_manifest_ttl_s)
    reader = NamespaceReader(store, settings.fetch_threads, settings.cache_bytes)
    try:
        out = asdict(Indexer(catalog, store, reader, settings, store.inner).index(ns))
    except NamespaceNotFound:
        out = {"dropped": True}  # dropped meanwhile: nothing to build
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
