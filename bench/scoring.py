"""Batch scoring throughput: `catsdogs score` on Spark against the other ways to classify many photos.

    python -m bench.scoring WORKSPACE FOLDER [--model URI] [--sample 300] [--master local[2]]

In WORKSPACE (a project after `dvc repro`, its champion registered), over the image files of FOLDER:
1. `catsdogs score FOLDER` on --master: the whole command (Spark's start included) and the job alone
   (from Spark's start to the written output, as the command reports it);
2. `catsdogs predict` over --sample of the same files (one process, one file after another);
3. the served champion (`mlflow models serve`), one image per request, over the same sample;
4. the ceiling: the champion's Keras model on batches of 32 decoded images held in memory, all files.
Writes reports/benchmark_scoring.json and reports/scoring.md, each rate next to the targets (score at
least 3x `catsdogs predict`, and at least 70% of the ceiling once Spark has started).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.harness import REPORTS, served_model
from bench.run import machine

SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
TARGETS = {"vs_predict": 3.0, "vs_ceiling": 0.7}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="models:/catsdogs@champion", help="the registered model, for every way")
    parser.add_argument("--sample", type=int, default=300, help="files for the one-at-a-time ways")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--reports", type=Path, default=REPORTS)
    args = parser.parse_args()
    workspace, folder = args.workspace.resolve(), args.folder.resolve()
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    sample = files[:: max(1, len(files) // args.sample)][: args.sample]
    catsdogs = str(Path(sys.executable).parent / "catsdogs")
    result = {
        "files": len(files), "sample": len(sample), "master": args.master, "model": args.model,
        "score": spark_rate(catsdogs, workspace, folder, args.master, len(files), args.model),
        "predict": predict_rate(catsdogs, workspace, sample, args.model),
        "served": served_rate(workspace, sample, args.model),
        "ceiling": ceiling_rate(workspace, files, args.model),
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python -m bench.scoring", *map(shlex.quote, sys.argv[1:])]),
    }
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / "benchmark_scoring.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.reports / "scoring.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


def spark_rate(catsdogs: str, workspace: Path, folder: Path, master: str, count: int, model: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="catsdogs-scored-")) / "scored.parquet"
    started = time.perf_counter()
    done = subprocess.run([catsdogs, "score", str(folder), "--out", str(out), "--master", master, "--model", model],
                          cwd=workspace, capture_output=True, text=True)
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"catsdogs score failed:\n{done.stderr[-3000:]}")
    summary = done.stdout.strip().splitlines()[-1]
    job = float(re.search(r"\(([\d.]+) s after Spark started\)", summary).group(1))  # type: ignore[union-attr]
    return {"summary": summary, "seconds": round(total, 1), "job_seconds": job,
            "images_per_second": round(count / job, 2), "with_startup_images_per_second": round(count / total, 2),
            "startup_seconds": round(total - job, 1), "output": str(out)}


def predict_rate(catsdogs: str, workspace: Path, sample: list[str], model: str) -> dict:
    """`catsdogs predict` over the sample; the model's load is timed apart on one file."""
    started = time.perf_counter()
    subprocess.run([catsdogs, "predict", "--model", model, sample[0]], cwd=workspace, capture_output=True, check=True)
    one = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([catsdogs, "predict", "--model", model, *sample], cwd=workspace, capture_output=True, check=True)
    seconds = time.perf_counter() - started
    per_image = (seconds - one) / (len(sample) - 1)  # the start-up (process, model load) counted once
    return {"seconds": round(seconds, 1), "startup_seconds": round(one - per_image, 1),
            "images_per_second": round(1 / per_image, 2),
            "with_startup_images_per_second": round(len(sample) / seconds, 2)}


def served_rate(workspace: Path, sample: list[str], model: str) -> dict:
    session = requests.Session()
    bodies = [json.dumps({"dataframe_records": [{"image": base64.b64encode(Path(p).read_bytes()).decode()}]})
              for p in sample]
    tracking = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_")}  # a server's, if set
    uri = tracking.pop("MLFLOW_TRACKING_URI", None)
    with served_model(workspace, model, tracking_uri=uri, extra_env=tracking) as url:
        for body in bodies[:3]:  # warm-up
            session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=60)
        started = time.perf_counter()
        errors = 0
        for body in bodies:
            response = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"},
                                    timeout=60)
            errors += response.status_code != 200
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "errors": errors, "images_per_second": round(len(sample) / seconds, 2)}


def ceiling_rate(workspace: Path, files: list[str], model_uri: str, batch_size: int = 32) -> dict:
    """The champion's Keras model on batches of decoded images already in memory (no decoding timed)."""
    code = f"""
import json, sys, time
import numpy as np, mlflow, keras
from catsdogs.images import load_pixels
from catsdogs.config import load_params
from catsdogs.tracking import setup_mlflow
import catsdogs.layers
setup_mlflow(load_params().mlflow)
path = mlflow.artifacts.download_artifacts({model_uri!r})
model = keras.models.load_model(path + "/artifacts/model.keras")
size = model.input_shape[1]
files = json.loads(sys.stdin.read())
pixels = np.stack([load_pixels(open(f, "rb").read(), size, 40_000_000) for f in files]).astype("float32")
model.predict_on_batch(pixels[:{batch_size}])
started = time.perf_counter()
for i in range(0, len(pixels), {batch_size}):
    model.predict_on_batch(pixels[i:i + {batch_size}])
print(json.dumps({{"seconds": time.perf_counter() - started, "images": len(pixels)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace, input=json.dumps(files),
                          capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {"batch_size": batch_size, "seconds": round(measured["seconds"], 1),
            "images_per_second": round(measured["images"] / measured["seconds"], 2)}


def markdown(r: dict) -> str:
    m, spark = r["machine"], r["score"]
    vs_predict = spark["images_per_second"] / r["predict"]["images_per_second"]
    vs_ceiling = spark["images_per_second"] / r["ceiling"]["images_per_second"]

    def verdict(value: float, target: float) -> str:
        return f"{value:.2f}x, target >= {target}x: {'met' if value >= target else '**not met**'}"

    return "\n".join([
        "# Batch scoring: `catsdogs score` on Spark against the other ways",
        "",
        f"Generated by `{r['command']}` on {r['date']}. Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['cpu_features']}), {m['memory_gib']} GiB. Model `{r['model']}`. {r['files']} image files; the "
        f"one-at-a-time ways ran over a sample of {r['sample']} of them. Spark master: `{r['master']}`.",
        "",
        "| way | images/s | notes |",
        "|---|---|---|",
        f"| `catsdogs score`, once Spark has started | {spark['images_per_second']} | {r['files']} files in "
        f"{spark['job_seconds']} s |",
        f"| `catsdogs score`, the whole command | {spark['with_startup_images_per_second']} | Spark's start-up "
        f"and the model's load: {spark['startup_seconds']} s |",
        f"| `catsdogs predict`, one file after another | {r['predict']['images_per_second']} | start-up "
        f"{r['predict']['startup_seconds']} s counted apart |",
        f"| served model, one image per request | {r['served']['images_per_second']} | "
        f"{r['served']['errors']} errors |",
        f"| ceiling: Keras on decoded images in memory, batches of {r['ceiling']['batch_size']} | "
        f"{r['ceiling']['images_per_second']} | no decoding, no I/O |",
        "",
        f"`catsdogs score` against `catsdogs predict`: {verdict(vs_predict, TARGETS['vs_predict'])}. Against the "
        f"ceiling: {verdict(vs_ceiling, TARGETS['vs_ceiling'])}. Summary line: `{spark['summary']}`.",
        "",
    ])


if __name__ == "__main__":
    main()
