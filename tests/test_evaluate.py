"""The evaluate and report stages on the tiny trained project."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from catsdogs.config import EVALUATION_DIR, MODEL_NAMES, MODELS_DIR, load_params
from catsdogs.evaluate import evaluate_model, score
from catsdogs.report import write_report


def test_score_matches_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.8, 0.4, 0.9])
    scores = score(y, p, ("cat", "dog"))
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["roc_auc"] == pytest.approx(5 / 6)
    assert scores["confusion_matrix"]["counts"] == [[1, 1], [1, 2]]
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.8, 0.4, 0.9]))
    assert scores["log_loss"] == pytest.approx(expected_log_loss)


@pytest.fixture(scope="module")
def evaluated(trained: dict, tiny_project: Path) -> dict:
    import contextlib

    with contextlib.chdir(tiny_project):
        params = load_params()
        mlflow.set_tracking_uri(params.mlflow.tracking_uri)
        return {name: evaluate_model(params, MODELS_DIR / name, EVALUATION_DIR / name) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_evaluate_writes_metrics_plots_and_logs_to_the_training_run(evaluated: dict, in_project: Path, name: str):
    out = EVALUATION_DIR / name
    scores = json.loads((out / "metrics.json").read_text())
    assert scores == evaluated[name]
    assert scores["images"] == 12 and set(scores) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss",
                                                      "brier", "ece", "log_loss_uncalibrated", "ece_uncalibrated"}
    assert 0 <= scores["ece_by_chance"] <= scores["ece_by_chance_p95"] < 1
    trained = json.loads((MODELS_DIR / name / "metrics.json").read_text())
    assert scores["temperature"] == pytest.approx(trained["temperature"], rel=1e-6), "the model saved calibrated"
    p_dog = np.array([float(row["p_dog"]) for row in csv.DictReader((out / "predictions.csv").open())])
    y = np.array([row["actual"] == "dog" for row in csv.DictReader((out / "predictions.csv").open())])
    assert scores["brier"] == pytest.approx(np.mean((p_dog - y) ** 2), abs=1e-6)
    assert sum(map(sum, scores["confusion_matrix"]["counts"])) == 12
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    test_paths = [row["path"] for row in csv.DictReader(open("data/splits/test.csv"))]
    assert [row["path"] for row in rows] == test_paths, "exactly the held-out test images"
    accuracy = np.mean([row["actual"] == row["predicted"] for row in rows])
    assert accuracy == pytest.approx(scores["accuracy"])
    for figure in ("confusion_matrix.png", "confusion_matrix_normalized.png", "roc_curve.png",
                   "reliability_diagram.png", "worst_misclassified.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    run_id = json.loads((MODELS_DIR / name / "run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(load_params().mlflow.tracking_uri).get_run(run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(scores["accuracy"])
    artifacts = {a.path for a in mlflow.MlflowClient(load_params().mlflow.tracking_uri).list_artifacts(
        run_id, "evaluation")}
    figures = {"evaluation/confusion_matrix.png", "evaluation/roc_curve.png", "evaluation/reliability_diagram.png"}
    assert figures <= artifacts
    assert run.data.metrics["test_ece"] == pytest.approx(scores["ece"]) and "test_temperature" not in run.data.metrics


def test_report_table_and_figure(evaluated: dict, in_project: Path, tmp_path: Path) -> None:
    text = write_report(MODELS_DIR, EVALUATION_DIR, tmp_path)
    for name, book in (("scratch", "73.9%"), ("augmented", "80.1%"), ("feature_extraction", "90.4%"),
                       ("fine_tuning", "93.1%")):
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
        assert book in line and f"{evaluated[name]['accuracy']:.1%}" in line
    assert (tmp_path / "val_accuracy.png").read_bytes()[:4] == b"\x89PNG"
