"""The report stage on hand-written metrics and histories: the table's figures come from the right files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catsdogs.config import MODEL_NAMES
from catsdogs.data import MissingInputError
from catsdogs.report import write_report

TEST_METRICS = {"accuracy": 0.9, "precision": 0.9, "recall": 0.9, "f1": 0.9, "roc_auc": 0.95, "log_loss": 0.3,
                "brier": 0.071, "ece": 0.034, "temperature": 1.87, "images": 500, "positive_class": "dog"}


def _write_run(root: Path, name: str, val_accuracies: list[float], final_val_accuracy: float) -> None:
    model_dir, evaluation_dir = root / "models" / name, root / "evaluation" / name
    model_dir.mkdir(parents=True)
    evaluation_dir.mkdir(parents=True)
    lines = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    lines += [f"{i},0.9,0.3,{v},0.4" for i, v in enumerate(val_accuracies)]
    (model_dir / "history.csv").write_text("\n".join(lines) + "\n")
    (model_dir / "metrics.json").write_text(json.dumps({
        "val_accuracy": final_val_accuracy, "val_loss": 0.4, "best_epoch": 1, "epochs": len(val_accuracies),
        "train_seconds": 120.0}))
    (evaluation_dir / "metrics.json").write_text(json.dumps(TEST_METRICS))
    (evaluation_dir / "predictions.csv").write_text(
        "path,actual,predicted,p_dog\n" + "".join(f"t/{i}.jpg,{('cat', 'dog')[i % 2]},dog,{0.1 * (i % 10):.6f}\n"
                                                   for i in range(20)))
    (model_dir / "run.json").write_text(json.dumps({"machine": "Test CPU, 2 cores", "precision": "float32"}))


def test_best_val_accuracy_is_the_best_epoch_not_the_final_weights(tmp_path: Path) -> None:
    # With early stopping off, the saved (final) weights score 0.80 while epoch 2 reached 0.90.
    for name in MODEL_NAMES:
        _write_run(tmp_path, name, [0.70, 0.90, 0.85], final_val_accuracy=0.80)
    text = write_report(tmp_path / "models", tmp_path / "evaluation", tmp_path / "reports")
    row = next(line for line in text.splitlines() if line.startswith("| scratch "))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    header = next(line for line in text.splitlines() if line.startswith("| model "))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells[columns.index("best val accuracy")] == "90.0%"
    assert cells[columns.index("test accuracy")] == "**90.0%**" and cells[columns.index("epochs")] == "3"
    assert (cells[columns.index("Brier")], cells[columns.index("ECE")], cells[columns.index("temperature")]) == (
        "0.071", "3.4%", "1.87")
    for figure in ("val_accuracy.png", "reliability.png"):
        assert (tmp_path / "reports" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "Trained on: Test CPU, 2 cores, float32." in text


def test_a_missing_history_names_the_stage_to_run(tmp_path: Path) -> None:
    for name in MODEL_NAMES:
        _write_run(tmp_path, name, [0.5], final_val_accuracy=0.5)
    (tmp_path / "models" / "augmented" / "history.csv").unlink()
    with pytest.raises(MissingInputError, match="dvc repro train_augmented"):
        write_report(tmp_path / "models", tmp_path / "evaluation", tmp_path / "reports")


def test_a_model_evaluated_before_calibration_shows_na(tmp_path: Path) -> None:
    for name in MODEL_NAMES:
        _write_run(tmp_path, name, [0.5], final_val_accuracy=0.5)
    legacy = {k: v for k, v in TEST_METRICS.items() if k not in ("brier", "ece")} | {"temperature": None}
    (tmp_path / "evaluation" / "scratch" / "metrics.json").write_text(json.dumps(legacy))
    text = write_report(tmp_path / "models", tmp_path / "evaluation", tmp_path / "reports")
    row = next(line for line in text.splitlines() if line.startswith("| scratch "))
    assert row.count("| n/a ") == 3


def test_a_missing_prediction_file_names_the_stage_to_run(tmp_path: Path) -> None:
    for name in MODEL_NAMES:
        _write_run(tmp_path, name, [0.5], final_val_accuracy=0.5)
    (tmp_path / "evaluation" / "fine_tuning" / "predictions.csv").unlink()
    with pytest.raises(MissingInputError, match="dvc repro evaluate@fine_tuning"):
        write_report(tmp_path / "models", tmp_path / "evaluation", tmp_path / "reports")
