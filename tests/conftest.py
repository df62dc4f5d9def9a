import os

pytest_plugins = ["tests.s3server"]

# FastAPI's TestClient sends "Host: testserver", which the default allow-list of an open
# server (loopback names, against DNS rebinding) refuses. The default stays as it is;
# tests/test_auth.py checks it with the default passed explicitly.
os.environ.setdefault("VECTORDB_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
