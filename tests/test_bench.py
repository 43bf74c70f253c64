"""The benchmark scripts run end to end on the tiny project (their numbers are not checked here:
speed targets live in reports/benchmark.md, measured by `make bench` on the real data)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def bench_env(project: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "TF_ENABLE_ONEDNN_OPTS"}
    return {**env, "PYTHONPATH": str(ROOT / "src"), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}


def test_pipeline_benchmark_compares_the_book_generator_with_ours(tiny_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    subprocess.run([sys.executable, ROOT / "bench/pipeline.py", "--epochs", "1", "--out", out],
                   cwd=tiny_project, env=bench_env(tiny_project), check=True, stdout=subprocess.PIPE)
    result = json.loads(out.read_text())
    legacy, ours = result["legacy"], result["ours"]
    assert legacy["pipeline"].startswith("ImageDataGenerator") and legacy["precision"] == "float32"
    assert legacy["TF_ENABLE_ONEDNN_OPTS"].startswith("unset") and ours["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert legacy["images_per_epoch"] == ours["images_per_epoch"] == 24
    assert result["speedup"] == pytest.approx(ours["images_per_second"] / legacy["images_per_second"], rel=0.01)
    ceiling = result["ceiling"]  # the model alone, fed from memory, in both precisions, with ours' kernels
    assert ceiling["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert set(ceiling["images_per_second"]) == {"float32", "mixed_bfloat16"}
    assert result["ceiling_speedup"] == pytest.approx(
        max(ceiling["images_per_second"].values()) / legacy["images_per_second"], rel=0.01)


def test_serving_benchmark_counts_requests_and_errors(champion: dict, tiny_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    subprocess.run([sys.executable, ROOT / "bench/serving.py", tiny_project, "--requests", "3", "--clients", "2",
                    "--seconds", "3", "--out", out], env=bench_env(tiny_project), check=True, stdout=subprocess.PIPE)
    result = json.loads(out.read_text())
    assert result["sequential"]["requests"] == 3 and result["sequential"]["errors"] == 0
    concurrent = result["concurrent"]
    assert concurrent["clients"] == 2 and concurrent["requests"] >= 2 and concurrent["errors"] == 0
    assert 0 < concurrent["p50_ms"] <= concurrent["p95_ms"] <= concurrent["p99_ms"]


def test_repro_benchmark_splits_cpu_time_into_busy_and_stolen() -> None:
    import psutil

    cpu_shares = runpy.run_path(str(ROOT / "bench/repro.py"))["cpu_shares"]
    times = type(psutil.cpu_times())
    before = times._make([100.0] * len(times._fields))
    seconds = {"user": 50, "system": 10, "idle": 30, "iowait": 5, "steal": 5, "guest": 10}  # guest is inside user
    after = times._make([100.0 + seconds.get(field, 0) for field in times._fields])
    assert cpu_shares(before, after) == {"cpu_busy": 0.6, "cpu_steal": 0.05}
    assert cpu_shares(after, after) == {"cpu_busy": None, "cpu_steal": None}
