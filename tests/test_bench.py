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


def test_resolution_report_swaps_the_vgg16_stages_into_the_default_total() -> None:
    render = runpy.run_path(str(ROOT / "bench/resolution.py"))["render"]

    def stage(name: str, seconds: float, gib: float = 1.0) -> dict:
        return {"stage": name, "seconds": seconds, "peak_rss_gib": gib}

    def serving(p50: float, rate: float) -> dict:
        return {"sequential": {"p50_ms": p50, "p95_ms": p50 + 40, "p99_ms": p50 + 60},
                "concurrent": {"clients": 4, "seconds": 60, "images_per_second": rate, "errors": 0}}

    default = {"total_seconds": 2400, "stages": [
        stage("download", 6), stage("features", 400), stage("train_scratch", 600),
        stage("train_feature_extraction", 120), stage("evaluate@fine_tuning", 60, 1.5)]}
    result = {"commit": "c" * 40, "image_size": 150, "input_size": 224, "views": 1, "command": "bench",
              "test_accuracy": {"feature_extraction": 0.97, "fine_tuning": 0.98}, "serving": serving(250.0, 4.0),
              "repro": {"total_seconds": 1000, "stages": [
                  stage("download", 6), stage("features", 600, 2.0), stage("train_feature_extraction", 180),
                  stage("evaluate@fine_tuning", 120), stage("register", 12)]}}
    summary = {"commit": "d" * 40, "test_accuracy": {"feature_extraction": 0.962, "fine_tuning": 0.96}}
    text = render(result, default, serving(137.0, 8.9), summary)
    assert "| these stages together | 9.7 min | 15.0 min |" in text  # 580 s against 900 s
    assert "| 40.0 min, met | 45.3 min, **not met** |" in text  # 2400 - 580 + 900 seconds, limit 45 min
    assert "| fine_tuning test accuracy (target >= 97.5%) | 96.0%, **not met** | 98.0%, met |" in text
    assert "| peak memory of these stages | 1.50 GiB | 2.00 GiB |" in text
    assert "| serving, one image, p50 (target <= 150 ms) | 137.0 ms, met | 250.0 ms, **not met** |" in text
    assert "| train_scratch |" not in text and "| register |" not in text and "| download |" not in text
