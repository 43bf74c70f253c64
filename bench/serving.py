"""Latency and throughput of the champion served by `mlflow models serve --env-manager local`.

    python -m bench.serving WORKSPACE [--seconds 30] [--clients 4] [--workers N] [--env KEY=VALUE] [--model URI]
                            [--out reports/benchmark_serving.json]

In WORKSPACE (a project folder after `dvc repro`): starts the server on a free local port, then
1. sequential: one client, one JPEG per request (the first test photo, its file's bytes as they are: the
   server decodes it and resizes it to the model's input, as for any user's photo), --requests times;
2. concurrent: --clients clients, each sending that request back to back for --seconds.
Every request is a real HTTP POST of base64 JPEG to /invocations over a kept-alive connection per client;
anything but HTTP 200 with one prediction counts as an error. Reports p50/p95/p99 latency (ms), images per
second, the CPU time the server's processes spent per request under load, and their peak resident memory
(sampled every 0.5 s under load). The clients share the machine's cores with the server: they are plain
http.client connections, which cost far less CPU per request than a `requests` session
(reports/decisions.md, "The served champion under load").
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from bench.harness import group_cpu_seconds, group_rss, served_model_process, write_result


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
        client = Client(base)
        for _ in range(5):  # warm-up: the first calls build the model's kernels
            if not client.post(body)[1]:
                raise SystemExit(f"the served model does not answer {base}/invocations correctly; see serve.log")
        single = [client.post(body) for _ in range(sequential)]
        client.close()
        peak = [group_rss(server)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                peak[0] = max(peak[0], group_rss(server))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = group_cpu_seconds(server)
        concurrent = load_test(base, body, clients, seconds)
        cpu = group_cpu_seconds(server) - cpu_before
        done.set()
        sampler.join()
    concurrent["server_cpu_ms_per_request"] = round(1000 * cpu / max(concurrent["requests"], 1), 1)
    return {
        "server_peak_rss_mib": round(peak[0] / 2**20),
        "model": model,
        "command": " ".join([f"mlflow models serve -m {model} --env-manager local", *extra_args]),
        "server_env": env or {},
        "image": f"{image_path.name} as stored ({image_path.stat().st_size} bytes, {size_of(image_path)}), "
                 f"{len(body)} bytes of JSON",
        "sequential": {"requests": sequential, "errors": sum(not ok for _, ok in single),
                       **percentiles([ms for ms, _ in single])},
        "concurrent": concurrent,
    }


def request_body(workspace: Path) -> tuple[Path, bytes]:
    with (workspace / "data/splits/test.csv").open(newline="") as f:
        first = next(csv.DictReader(f))
    path = workspace / first["path"]
    image = base64.b64encode(path.read_bytes()).decode()
    return path, json.dumps({"dataframe_records": [{"image": image}]}).encode()


def size_of(path: Path) -> str:
    with Image.open(path) as image:
        return f"{image.width}x{image.height} {image.format}"


class Client:
    """One kept-alive HTTP connection to the server at `base` (http://host:port)."""

    def __init__(self, base: str):
        address = urlsplit(base)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)

    def post(self, body: bytes) -> tuple[float, bool]:
        """(milliseconds, answered with HTTP 200 and one prediction) for one POST of `body` to /invocations."""
        started = time.perf_counter()
        try:
            self.connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            payload = response.read()
            ok = response.status == 200 and len(json.loads(payload)["predictions"]) == 1
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            self.connection.close()  # reconnects on the next request
            ok = False
        return (time.perf_counter() - started) * 1000, ok

    def close(self) -> None:
        self.connection.close()


def load_test(base: str, body: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        connection = Client(base)
        while time.perf_counter() < deadline:
            ms, ok = connection.post(body)
            with lock:
                latencies.append(ms)
                errors[0] += not ok
        connection.close()

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
