"""A served worker limits glibc's malloc arenas (api.cli.limit_malloc_arenas): with the
default, eight a core, fetch threads that free decoded partitions each keep memory in an
arena of their own, and a worker past its cache grows beyond cache + 300 MB."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_CHILD = textwrap.dedent("""
    import ctypes, os, re, sys, tempfile, threading
    sys.path.insert(0, {root!r})
    from api.cli import limit_malloc_arenas
    print(limit_malloc_arenas())

    def work():
        keep = []
        for i in range(20_000):
            keep.append(bytearray(4096 + i % 512))
            if len(keep) > 200:
                keep.pop(0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        f = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(f))
        libc.fclose(ctypes.c_void_p(f))
        with open(path) as report:
            print(len(re.findall(r"<heap nr=", report.read())))
    finally:
        os.remove(path)
""")


def _run(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT))], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_threads_share_at_most_two_arenas_unless_the_environment_says():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    took, heaps = _run(env)
    assert took == "True" and heaps <= 2
    took, heaps = _run({**env, "MALLOC_ARENA_MAX": "1"})  # the operator's choice stands
    assert took == "False" and heaps == 1
