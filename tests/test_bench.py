"""The benchmark scripts run end to end on the tiny project (their numbers are not checked here:
speed targets live in reports/benchmark.md, measured by `make bench` on the real data)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import harness
from bench.repro import cpu_shares
from bench.run import LIMITS, calibration_section, inputs, markdown, seeds_section, targets
from bench.serving import request_body
from conftest import ROOT


def bench_env(project: Path) -> dict:
    env = harness.bench_env(ROOT)  # this checkout's code, as the benchmark workspace runs its own
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    return env


@pytest.mark.slow
def test_pipeline_benchmark_compares_the_book_generator_with_ours(tiny_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    subprocess.run([sys.executable, "-m", "bench.pipeline", "--epochs", "1", "--out", out],
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


@pytest.mark.slow
def test_serving_benchmark_counts_requests_and_errors(champion: dict, tiny_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    subprocess.run([sys.executable, "-m", "bench.serving", tiny_project, "--requests", "3", "--clients", "2",
                    "--seconds", "3", "--workers", "2", "--env", "TF_NUM_INTRAOP_THREADS=1", "--out", out],
                   env=bench_env(tiny_project), check=True, stdout=subprocess.PIPE)
    result = json.loads(out.read_text())
    assert result["command"].endswith("--workers 2") and result["server_env"] == {"TF_NUM_INTRAOP_THREADS": "1"}
    assert (tiny_project / "serve.log").read_text().count("Started server process") == 2  # both workers ran
    assert result["sequential"]["requests"] == 3 and result["sequential"]["errors"] == 0
    concurrent = result["concurrent"]
    assert concurrent["clients"] == 2 and concurrent["requests"] >= 2 and concurrent["errors"] == 0
    assert 0 < concurrent["p50_ms"] <= concurrent["p95_ms"] <= concurrent["p99_ms"]
    photo, body = request_body(tiny_project)  # a user's photo as stored: the server decodes and resizes it
    assert base64.b64decode(json.loads(body)["dataframe_records"][0]["image"]) == photo.read_bytes()
    assert result["image"].startswith(f"{photo.name} as stored ({photo.stat().st_size} bytes")


def test_repro_benchmark_splits_cpu_time_into_busy_and_stolen() -> None:
    import psutil

    times = type(psutil.cpu_times())
    before = times._make([100.0] * len(times._fields))
    seconds = {"user": 50, "system": 10, "idle": 30, "iowait": 5, "steal": 5, "guest": 10}  # guest is inside user
    after = times._make([100.0 + seconds.get(field, 0) for field in times._fields])
    assert cpu_shares(before, after) == {"cpu_busy": 0.6, "cpu_steal": 0.05}
    assert cpu_shares(after, after) == {"cpu_busy": None, "cpu_steal": None}


def test_report_states_the_inputs_it_was_given(tmp_path: Path) -> None:
    data, weights = tmp_path / "photos.zip", tmp_path / "my_vgg16.h5"
    data.write_bytes(b"zip")
    weights.write_bytes(b"weights")
    machine = {"cpu": "test CPU", "cores": 2, "cpu_features": "avx2", "memory_gib": 24, "gpu": False,
               "python": "3.11", "tensorflow": "2", "keras": "3", "mlflow": "3", "dvc": "3"}
    summary = {"commit": "c" * 40, "machine": machine, "inputs": inputs(data, weights),
               "test_accuracy": {"scratch": 0.8}, "book_accuracy": {"scratch": 0.739},
               "target_accuracy": {"scratch": 0.74}, "limits": LIMITS, "repro": None, "pipeline": None, "serving": None}
    text = markdown(summary)
    assert f"--weights {weights}" in text and "`my_vgg16.h5` (7 bytes" in text
    assert "stand-in" not in text, "the report says what it was given, not what it assumes"
    assert "| scratch | 73.9% | >= 74.0% | 80.0% | met |" in text


def test_team_report_puts_the_pull_next_to_the_repro_and_judges_the_logging_cost() -> None:
    from bench.team import markdown

    machine = {"cpu": "test CPU", "cores": 2, "cpu_features": "avx2", "memory_gib": 24, "dvc": "3", "mlflow": "3"}
    result = {"command": "python -m bench.team ws --services s", "date": "2026-11-29", "machine": machine,
              "push": {"seconds": 20.0, "seconds_when_up_to_date": 2.0, "cache_bytes": 900e6},
              "pull": {"seconds": 30.0, "bytes": 900e6, "dvc_status": "Data and pipelines are up to date."},
              "logging": {"stage": "train_feature_extraction", "seconds": {"sqlite": 100.0, "server": 103.0},
                          "server_overhead": 0.03},
              "repro_seconds": 1800.0}
    text = markdown(result)
    assert "| fresh clone: `dvc pull` of everything | 30.0 s | 900 MB |" in text
    assert "| the same results by `dvc repro` from scratch | 30.0 min | |" in text
    assert "+3.0% (target: under 5%, met)" in text
    result["logging"]["server_overhead"] = 0.08
    assert "(target: under 5%, **not met**)" in markdown(result)


@pytest.mark.slow
def test_champion_benchmark_times_the_keras_model_and_its_int8_copy(champion: dict, tiny_project: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "champion.json"
    subprocess.run([sys.executable, "-m", "bench.champion", tiny_project, "--repeats", "3", "--out", out],
                   env=bench_env(tiny_project), check=True, stdout=subprocess.PIPE)
    result = json.loads(out.read_text())
    test_metrics = json.loads((tiny_project / "evaluation" / "fine_tuning" / "metrics.json").read_text())
    assert result["model"] == "fine_tuning" and result["images"] == test_metrics["images"]
    assert result["keras"]["test_accuracy"] == pytest.approx(test_metrics["accuracy"])
    for side in ("keras", "int8"):
        assert 0 < result[side]["one_image_ms"] <= result[side]["one_image_p95_ms"]
        passes = result[side]["batch_images_per_second_passes"]
        assert len(passes) == 3 and result[side]["batch_images_per_second"] == sorted(passes)[1]
    assert result["int8_accuracy_change"] == pytest.approx(
        result["int8"]["test_accuracy"] - result["keras"]["test_accuracy"], abs=1e-4)


@pytest.mark.slow
def test_seeds_benchmark_retrains_the_vgg16_models_with_another_seed(champion: dict, tiny_project: Path,
                                                                     tmp_path: Path) -> None:
    import contextlib

    from catsdogs.config import EVALUATION_DIR, MODELS_DIR, load_params
    from catsdogs.evaluate import evaluate_model

    with contextlib.chdir(tiny_project):  # the default run's feature_extraction, evaluated
        evaluate_model(load_params(), MODELS_DIR / "feature_extraction", EVALUATION_DIR / "feature_extraction")
    out = tmp_path / "seeds.json"
    subprocess.run([sys.executable, "-m", "bench.seeds", tiny_project, "--seeds", "7", "--out", out],
                   env=bench_env(tiny_project), check=True, stdout=subprocess.PIPE)
    result = json.loads(out.read_text())
    default, seven = result["runs"]
    assert default["default"] and default["seed"] == 42 and seven["seed"] == 7 and not seven["default"]
    folder = tiny_project / ".bench-seeds" / "7"
    for name in ("feature_extraction", "fine_tuning"):
        assert seven[name]["test_accuracy"] == json.loads(
            (folder / "evaluation" / name / "metrics.json").read_text())["accuracy"]
    assert (folder / "features").resolve() == (tiny_project / "features").resolve(), "the cached views are shared"
    assert json.loads((folder / "models" / "fine_tuning" / "run.json").read_text())["run_id"] != json.loads(
        (tiny_project / "models" / "fine_tuning" / "run.json").read_text())["run_id"]


def test_targets_are_judged_against_the_measured_figures() -> None:
    models = {name: {"test": {"accuracy": acc, "log_loss": 0.09, "ece": ece}, "train": {"val_accuracy": val}}
              for name, acc, ece, val in (("feature_extraction", 0.972, 0.015, 0.972),
                                          ("fine_tuning", 0.976, 0.021, 0.974))}
    int8 = {"one_image_ms": 35.0, "batch_images_per_second": 29.5, "test_accuracy": 0.972}
    keras = {"one_image_ms": 85.0, "batch_images_per_second": 14.5, "test_accuracy": 0.976}
    serving = {"sequential": {"p50_ms": 45.5}, "concurrent": {"clients": 4, "seconds": 30, "images_per_second": 26.0,
                                                              "errors": 1}}
    summary = {"limits": LIMITS, "models": models, "champion": {"keras": keras, "int8": int8}, "serving": serving,
               "repro": {"total_seconds": 29 * 60, "peak_rss_gib": 5.3}, "repro_float32": None}
    verdicts = {figure: ok for figure, _, _, ok in targets(summary)}
    assert verdicts["fine_tuning test accuracy"] is True
    assert verdicts["fine-tuning against its start, validation accuracy"] is True
    assert verdicts["test expected calibration error, feature_extraction / fine_tuning"] is False  # 2.1% > 2%
    assert verdicts["champion's test accuracy against the uncompressed model"] is True  # exactly 0.4 pt
    assert verdicts["served, one image per request, sequential p50"] is False  # 45.5 > 35 + 10
    assert verdicts["served, 4 clients, 30 s"] is False  # 88% of 29.5, and one error
    assert verdicts["`dvc repro`, defaults (`train.precision: auto`)"] is False  # 5.3 GiB > 5.2
    assert verdicts["`dvc repro`, `train.precision: float32`"] is None
    assert "test log loss in float32, feature_extraction / fine_tuning" not in verdicts  # no float32 run

    # The float32 run: its time and accuracies in one row, its calibration judged as the default run's is.
    models32 = {name: {"test": {"accuracy": acc, "log_loss": loss, "ece": 0.015}, "train": {"val_accuracy": acc}}
                for name, acc, loss in (("scratch", 0.784, 0.47), ("augmented", 0.846, 0.33),
                                        ("feature_extraction", 0.97, 0.102), ("fine_tuning", 0.976, 0.074))}
    summary |= {"repro_float32": {"total_seconds": 26 * 60, "peak_rss_gib": 4.6}, "float32_models": models32}
    verdicts = {figure: ok for figure, _, _, ok in targets(summary)}
    assert verdicts["`dvc repro`, `train.precision: float32`"] is True  # 26 min, every accuracy target met
    assert verdicts["test log loss in float32, feature_extraction / fine_tuning"] is False  # but 0.102 > 0.10
    assert verdicts["test expected calibration error in float32, feature_extraction / fine_tuning"] is True


def test_calibration_is_shown_next_to_what_chance_alone_gives() -> None:
    tested = {"accuracy": 0.97, "log_loss": 0.09, "ece": 0.0206, "ece_by_chance": 0.0161, "ece_by_chance_p95": 0.0234}
    models = {"feature_extraction": {"test": tested, "train": {"val_accuracy": 0.97}},
              "fine_tuning": {"test": {**tested, "ece": 0.0193}, "train": {"val_accuracy": 0.97}}}
    rows = {figure: (measured, ok) for figure, measured, _, ok in targets({"limits": LIMITS, "models": models})}
    measured, ok = rows["test expected calibration error, feature_extraction / fine_tuning"]
    assert ok is False, "the target is judged on the measured ECE, whatever chance explains"
    assert measured == "2.06% / 1.93% (a calibrated model, by chance alone: up to 2.34% / 2.34%)"
    assert "| feature_extraction | n/a | 0.090 | n/a | n/a | 2.06% | n/a | 1.61%, 2.34% |" in calibration_section(
        {"models": models})

    run = {"val_accuracy": 0.97, "test_accuracy": 0.97, "test_log_loss": 0.08}
    seeds = {"models": ["feature_extraction"], "runs": [
        {"seed": 42, "default": True, "feature_extraction": {**run, "test_ece": 0.02}},
        {"seed": 7, "default": False, "feature_extraction": {**run, "test_ece": 0.01}}]}
    lines = seeds_section({"seeds": seeds})
    assert "| 7 | 97.0% | 97.0% | 0.080 | 1.00% |" in lines
    assert lines[-1] == "| mean ± standard deviation | 97.0% ± 0.0% | 97.0% ± 0.0% | 0.080 ± 0.000 | 1.50% ± 0.71% |"
    del seeds["runs"][1]["feature_extraction"]["test_ece"]  # a seeds run recorded before ECE was
    assert seeds_section({"seeds": seeds})[-1].endswith("| 0.080 ± 0.000 | n/a |")
