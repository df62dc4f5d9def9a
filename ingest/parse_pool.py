"""Parsing uploads in child processes that are killed at a deadline.

Why processes: a Python thread cannot be stopped, and what a hostile upload makes slow is
CPU-bound work in html.parser, pypdf and the tokenizer, which would also hold the GIL
against the worker's event loop and its queries. A child process is killed when its time
limit (``parse_timeout_s``) passes or when the job is cancelled, and its memory goes back
with it.

A child is a new Python interpreter running :func:`_serve`, spawned (not forked: the
server's threads may hold locks at fork time) with pipes for stdin and stdout, importing
this checkout's code. It serves one task at a time:
a length-prefixed pickle of ``(function, argument, timeout_s)`` in, ``(ok, value)`` out.
Idle children are kept for the next task (up to ``size``), so the interpreter start and
the tokenizer load (~0.3 s) are paid once per child, not per upload. A child also arms
``SIGALRM`` (default action: terminate) for each task, so it ends by itself even when the
worker that waits for it is gone; an idle child ends when its stdin closes.

Errors: past the deadline :class:`PayloadTooLarge`; a child that dies (killed by the
kernel, a crash) :class:`VectorDBError` (``internal``); a ``VectorDBError`` raised by the
task is raised again here; a ``MemoryError`` in the child is ``PayloadTooLarge``.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from vectordb.errors import PayloadTooLarge, VectorDBError

_HEADER = struct.Struct("<Q")
# How long the parent waits for the child between checks of the job's cancel flag.
_POLL_S = 0.1
# The child's own alarm fires this much after the parent's deadline: the parent, when it
# is alive, always kills first and reports the time limit.
_ALARM_GRACE_S = 2
# The child imports this very code, whatever its working directory and installation.
_CHILD = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
    "from ingest.parse_pool import _serve; _serve()"
)


class ParsePool:
    """Runs ``function(argument)`` in a child process, at most ``size`` children idle."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._idle: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, function: Callable[[Any], Any], argument: Any, timeout_s: float,
            check: Callable[[], None] | None = None) -> Any:
        """``function(argument)`` in a child; its result (pickled back).

        ``function`` must be importable by name (a module-level function). ``check`` is
        called every 0.1 s while waiting; whatever it raises (a cancellation) kills the
        child and propagates. Raises PayloadTooLarge once ``timeout_s`` has passed.
        """
        deadline = time.monotonic() + timeout_s
        child = self._take()
        try:
            _write(child.stdin, (function, argument, timeout_s))
            ok, value = _read(child, deadline, check, timeout_s)
        except BaseException:
            _kill(child)
            raise
        self._give_back(child)
        if ok:
            return value
        raise value

    def close(self) -> None:
        """End the idle children (a running task's child ends with its task)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            _kill(child)

    def _take(self) -> subprocess.Popen:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.poll() is None:
                    return child
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )

    def _give_back(self, child: subprocess.Popen) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(child)
                return
        _kill(child)


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


def _write(pipe: BinaryIO | None, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    assert pipe is not None
    pipe.write(_HEADER.pack(len(data)))
    pipe.write(data)
    pipe.flush()


def _read(child: subprocess.Popen, deadline: float, check: Callable[[], None] | None, timeout_s: float) -> tuple:
    """The child's answer, read as it arrives; the deadline and ``check`` apply meanwhile."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    poller = select.poll()  # not select.select: a busy server's descriptors pass 1024
    poller.register(fd, select.POLLIN)
    buffer = bytearray()
    need = _HEADER.size
    header_done = False
    while True:
        if len(buffer) >= need:
            if header_done:
                return pickle.loads(bytes(buffer[:need]))
            need = _HEADER.unpack(bytes(buffer[: _HEADER.size]))[0]
            del buffer[: _HEADER.size]
            header_done = True
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise PayloadTooLarge(
                f"parsing the file took longer than the limit of {timeout_s:g} s (parse_timeout_s); "
                "split it into smaller files"
            )
        if check is not None:
            check()
        if not poller.poll(1000 * min(_POLL_S, left)):
            continue
        data = os.read(fd, max(65536, min(need - len(buffer), 16 * 1024 * 1024)))
        if not data:
            code = child.wait()
            cause = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise VectorDBError(f"the parse process ended unexpectedly ({cause})")
        buffer += data


# ---------------------------------------------------------------------------- the child


def _serve() -> None:
    """The child's loop: read a task, run it, answer; end when stdin closes."""
    stdin = sys.stdin.buffer
    # The protocol owns the real stdout; anything printed by a library goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        function, argument, timeout_s = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
        signal.alarm(math.ceil(timeout_s) + _ALARM_GRACE_S)
        try:
            answer: tuple = (True, function(argument))
        except VectorDBError as exc:
            answer = (False, exc)
        except MemoryError:
            answer = (False, PayloadTooLarge("parsing the file needs more memory than this worker has"))
        except Exception as exc:  # reported to the job; a bug, not the client's fault
            answer = (False, VectorDBError(f"parsing failed: {type(exc).__name__}: {str(exc)[:300]}"))
        signal.alarm(0)
        try:
            _write(answers, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _write(answers, (False, VectorDBError(f"parse result cannot be sent back: {exc}")))
