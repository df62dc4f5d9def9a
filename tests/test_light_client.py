"""The Python client of a running service is a light install: ``pip install vectordb``
brings httpx only (pyproject's base dependencies), and the client's modules import nothing
of the server side. Checked on the source and by running the client in a process where
every server-side module (ours and torch, FAISS, DuckDB, FastAPI, numpy, pyarrow, ...)
refuses to import."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from api.app import create_app
from tests.fakes import unit_settings
from tests.servers import InProcessServer

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ["vectordb/__init__.py", "vectordb/remote.py", "vectordb/results.py", "vectordb/errors.py",
          "vectordb/interface.py"]
SERVER_SIDE = ["api", "ingest", "query", "storage", "deploy", "torch", "faiss", "duckdb", "fastapi", "starlette",
               "uvicorn", "numpy", "pyarrow", "pydantic", "sentence_transformers", "minio", "ray", "onnxruntime"]


def test_the_base_install_is_httpx_only_and_the_client_imports_no_more():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["httpx"]
    tops = set()
    for rel in CLIENT:
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    third_party = tops - set(sys.stdlib_module_names) - {"vectordb", "__future__"}
    # pyarrow: only to send a table the caller made (so has installed) itself.
    assert third_party <= {"httpx", "pyarrow"}, third_party


CLIENT_RUN = """
import importlib.abc, sys
BLOCKED = set(sys.argv[2].split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (a client-only install)")
sys.meta_path.insert(0, Refuse())
import vectordb
from vectordb import errors
db = vectordb.connect(sys.argv[1])
kb = db.create_namespace("light", embedder="none", dimensions=3, metric="l2")
kb.upsert([{"id": "a", "vector": [1.0, 0.0, 0.0], "text": "alpha"}, {"id": "b", "vector": [0.0, 1.0, 0.0]}])
hits = kb.query([0.9, 0.1, 0.0], top_k=1, include=["text"]).hits
assert hits[0].id == "a" and hits[0].text == "alpha", hits
try:
    kb.get("missing")
except errors.DocumentNotFound:
    pass
else:
    raise AssertionError("no DocumentNotFound")
loaded = sorted(m.split(".")[0] for m in sys.modules)
assert not BLOCKED & set(loaded), BLOCKED & set(loaded)
print("client ok")
"""


def test_the_client_runs_without_the_server_side():
    app = create_app(unit_settings(f"memory://light-{uuid.uuid4().hex}"), "all")
    with InProcessServer(app) as url:
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(CLIENT_RUN), url, ",".join(SERVER_SIDE)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0 and "client ok" in run.stdout, run.stderr[-3000:]
