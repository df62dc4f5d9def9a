"""Container start -> first answer: the image's query role, beside the same server started
from this checkout's virtual environment, in one command.

Each run starts the query role (``serve --role query``) against a namespace that is
already in S3, connects as soon as the port accepts, sends one text query and stops the
server (by its process group). The image's runs and the baseline's alternate, so that
the machine's load falls on both alike.

    python bench/container_start.py --command "docker run --rm --network host {env} vectordb"
    python bench/container_start.py --command \\
        "buildah run --isolation chroot --network host {env} CONTAINER -- /app/deploy/entrypoint.sh"

``{env}`` becomes ``-e NAME=VALUE`` for each setting (the store, the port, 127.0.0.1 as
the host); ``serve --role query`` is appended. The default namespace is the one
``bench/coldstart.py`` ingests (NFCorpus, embedder minilm) in the test bucket on
127.0.0.1:8333.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vectordb.testing import ACCESS_KEY, SECRET_KEY, TEST_BUCKET, free_port  # noqa: E402

QUERY = {"text": "vitamin d deficiency and bone health", "top_k": 10}


def start_to_answer(command: list[str], env: dict[str, str] | None, port: int, ns: str, timeout_s: float) -> dict:
    """Start ``command``, query ``ns`` once the port accepts, stop it; times in ms."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
                conn.connect()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}") from None
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"nothing listened on {port} after {timeout_s} s") from None
                time.sleep(0.005)
        accepted = time.perf_counter()
        conn.request("POST", f"/v1/namespaces/{ns}/query", body=json.dumps(QUERY).encode(),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        answered = time.perf_counter()
        if response.status != 200:
            raise RuntimeError(f"query failed: {response.status} {body}")
        conn.close()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    return {"start_to_first_answer_ms": round((answered - started) * 1000, 1),
            "start_to_accept_ms": round((accepted - started) * 1000, 1),
            "first_query_ms": round((answered - accepted) * 1000, 1),
            "top_id": body["results"][0]["id"] if body["results"] else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", required=True, help="runs the image; {env} is replaced by -e NAME=VALUE ...")
    parser.add_argument("--store-uri", default=f"s3://{TEST_BUCKET}/coldstart-nfcorpus")
    parser.add_argument("--endpoint", default="127.0.0.1:8333", help="S3 endpoint host:port")
    parser.add_argument("--namespace", default="nfcorpus")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the checkout's own server")
    parser.add_argument("--out", help="result JSON (default bench/results/<time>-container-start.json)")
    args = parser.parse_args()

    port = free_port()
    settings = {"VECTORDB_HOST": "127.0.0.1", "VECTORDB_PORT": str(port), "VECTORDB_STORE_URI": args.store_uri,
                "VECTORDB_S3_ENDPOINT": args.endpoint, "VECTORDB_S3_ACCESS_KEY": ACCESS_KEY,
                "VECTORDB_S3_SECRET_KEY": SECRET_KEY}
    env_flags = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in settings.items())
    image_command = shlex.split(args.command.replace("{env}", env_flags)) + ["serve", "--role", "query"]
    baseline_command = [str(Path(sys.executable).parent / "vectordb"), "serve", "--role", "query"]
    baseline_env = {**os.environ, **settings, "HF_HUB_OFFLINE": "1"}

    out: dict = {"command": image_command, "load_average_start": os.getloadavg(), "image": [], "baseline": []}
    for run in range(args.runs):
        out["image"].append(start_to_answer(image_command, None, port, args.namespace, args.timeout_s))
        print(f"image run {run + 1}: {out['image'][-1]}", file=sys.stderr, flush=True)
        if not args.no_baseline:
            out["baseline"].append(start_to_answer(baseline_command, baseline_env, port, args.namespace, args.timeout_s))
            print(f"baseline run {run + 1}: {out['baseline'][-1]}", file=sys.stderr, flush=True)
    out["load_average_end"] = os.getloadavg()
    for key in ("image", "baseline"):
        if out[key]:
            out[f"{key}_p50_ms"] = statistics.median(r["start_to_first_answer_ms"] for r in out[key])
    if out["baseline"]:
        out["image_over_baseline"] = round(out["image_p50_ms"] / out["baseline_p50_ms"], 2)
    text = json.dumps(out, indent=1)
    print(text)
    path = Path(args.out or ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S-container-start.json"))
    path.write_text(text + "\n")
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
