"""End to end: the real DVC stages and `mlflow run` on generated data, in a temporary git repo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest

from catsdogs.config import MODEL_NAMES
from conftest import pipeline_project, run_checked

pytestmark = pytest.mark.slow  # each test runs the real DVC stages in subprocesses


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return pipeline_project(tmp_path)


def test_dvc_repro_split_then_nothing_to_do(project: Path) -> None:
    run_checked(["dvc", "repro", "split"], project)
    for name, expected in {"train": 18, "val": 6, "test": 6}.items():
        lines = (project / "data" / "splits" / f"{name}.csv").read_text().splitlines()
        assert len(lines) == expected + 1
        first_path = lines[1].split(",")[0]
        assert (project / first_path).is_file()
    second = run_checked(["dvc", "repro", "split"], project)
    assert "Running stage" not in second.stdout
    status = run_checked(["dvc", "status", "split"], project)
    assert "up to date" in status.stdout
    metrics = json.loads(run_checked(["dvc", "metrics", "show", "--json"], project).stdout)
    summary = metrics[""]["data"]["data/splits/summary.json"]["data"]
    assert summary["splits"]["train"]["total"] == 18 and summary["rejected"] == 0


def test_mlflow_run_main_runs_the_whole_pipeline(project: Path) -> None:
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    run_checked([mlflow_cli, "run", ".", "--env-manager", "local"], project)
    assert (project / "dvc.lock").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("catsdogs")
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_stage LIKE 'train_%'")
    assert sorted(r.data.tags["mlflow.runName"] for r in runs) == sorted(MODEL_NAMES)
    assert all(r.info.status == "FINISHED" for r in runs)
    # Each model's run is a child of the run that `mlflow run` opened for the entry point.
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert len(parents) == 1 and None not in parents
    assert client.get_run(parents.pop()).info.status == "FINISHED"
    # ... and all four carry the one `dvc repro` that `mlflow run` started.
    pipelines = {r.data.tags["pipeline"] for r in runs}
    assert len(pipelines) == 1 and pipelines.pop().startswith("dvc repro "), pipelines
    for name in MODEL_NAMES:
        assert (project / "models" / name / "model.keras").is_file()
        assert (project / "evaluation" / name / "metrics.json").is_file()
    # the VGG16 models' images are decoded at pretrained.input_size (64 px), the CNNs' at image_size (48)
    assert json.loads((project / "features" / "meta.json").read_text())["image_size"] == 64
    predictions = {name: (project / "evaluation" / name / "predictions.csv").read_text().count("\n")
                   for name in MODEL_NAMES}
    assert set(predictions.values()) == {6 + 1}, predictions  # the 6 test images, scored by every model
    again = run_checked(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout

    # An experiment that retrains the fine-tuned model: its run is tagged with the DVC experiment's name,
    # and the register stage's gate answers for its version.
    exp = run_checked(["dvc", "exp", "run", "-S", "models.fine_tuning.learning_rate=0.01"], project)
    assert "Running stage 'train_fine_tuning'" in exp.stdout and "Running stage 'train_scratch'" not in exp.stdout
    tuned = json.loads((project / "models" / "fine_tuning" / "run.json").read_text())
    names = run_checked(["dvc", "exp", "list", "--name-only"], project).stdout.split()
    assert client.get_run(tuned["run_id"]).data.tags["pipeline"] in {f"dvc exp {name}" for name in names}
    registered = json.loads((project / "models" / "registered.json").read_text())
    assert registered["version"] == "2" and registered["reason"]
    version = client.get_model_version("catsdogs", "2")
    assert version.tags["gate"] == ("promoted" if registered["promoted"] else "refused")
