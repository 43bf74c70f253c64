"""Latency and throughput of the champion served by `mlflow models serve --env-manager local`.

    python -m bench.serving WORKSPACE [--seconds 30] [--clients 4] [--workers N] [--env KEY=VALUE] [--model URI]
                            [--out reports/benchmark_serving.json]

In WORKSPACE (a project folder after `dvc repro`): starts the server on a free local port, then
1. sequential: one client, one 150x150 JPEG per request (a test image, resized), --requests times;
2. concurrent: --clients clients, each sending that request back to back for --seconds.
Every request is a real HTTP POST of base64 JPEG to /invocations; anything but HTTP 200 with one
prediction counts as an error. Reports p50/p95/p99 latency (ms), images per second and the peak
resident memory of the server's processes (sampled every 0.5 s under load).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from bench.harness import group_rss, served_model_process, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="the scoring server's worker processes")
    parser.add_argument("--model", default="models:/catsdogs@champion", help="the model URI to serve")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="the server's environment, e.g. TF_NUM_INTRAOP_THREADS=1")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_serving.json"))
    args = parser.parse_args()
    env = dict(pair.split("=", 1) for pair in args.env)
    result = benchmark(args.workspace, args.requests, args.clients, args.seconds, args.workers, env, args.model)
    write_result(args.out, result)


def benchmark(workspace: Path, sequential: int, clients: int, seconds: float, workers: int = 1,
              env: dict[str, str] | None = None, model: str = "models:/catsdogs@champion") -> dict:
    image_path, body = request_body(workspace)
    extra_args = ("--workers", str(workers)) if workers != 1 else ()
    with served_model_process(workspace, model, extra_args=extra_args, extra_env=env) as (base, server):
        url = f"{base}/invocations"
        session = requests.Session()
        for _ in range(5):  # warm-up: the first calls build TensorFlow's kernels
            if not post(session, url, body)[1]:
                raise SystemExit(f"the served model does not answer {url} correctly; see serve.log")
        single = [post(session, url, body) for _ in range(sequential)]
        peak = [group_rss(server)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                peak[0] = max(peak[0], group_rss(server))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        concurrent = load_test(url, body, clients, seconds)
        done.set()
        sampler.join()
    return {
        "server_peak_rss_mib": round(peak[0] / 2**20),
        "model": model,
        "command": " ".join([f"mlflow models serve -m {model} --env-manager local", *extra_args]),
        "server_env": env or {},
        "image": f"{image_path.name}, resized to 150x150, JPEG quality 90, {len(body)} bytes of JSON",
        "sequential": {"requests": sequential, "errors": sum(not ok for _, ok in single),
                       **percentiles([ms for ms, _ in single])},
        "concurrent": concurrent,
    }


def request_body(workspace: Path) -> tuple[Path, bytes]:
    with (workspace / "data/splits/test.csv").open(newline="") as f:
        first = next(csv.DictReader(f))
    path = workspace / first["path"]
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize((150, 150)).save(buffer, "JPEG", quality=90)
    image = base64.b64encode(buffer.getvalue()).decode()
    return path, json.dumps({"dataframe_records": [{"image": image}]}).encode()


def post(session: requests.Session, url: str, body: bytes) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        response = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
        ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
    except (requests.RequestException, ValueError, KeyError):
        ok = False
    return (time.perf_counter() - started) * 1000, ok


def load_test(url: str, body: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        session = requests.Session()
        while time.perf_counter() < deadline:
            ms, ok = post(session, url, body)
            with lock:
                latencies.append(ms)
                errors[0] += not ok

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(latencies), "errors": errors[0],
            "images_per_second": round((len(latencies) - errors[0]) / elapsed, 1), **percentiles(latencies)}


def percentiles(latencies_ms: list[float]) -> dict:
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p99_ms": round(p99, 1)}


if __name__ == "__main__":
    sys.exit(main())
