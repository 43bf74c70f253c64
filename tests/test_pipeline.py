"""End to end: the real DVC stages and `mlflow run` on generated data, in a temporary git repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import pytest
import yaml

from catsdogs import synthetic
from catsdogs.config import MODEL_NAMES
from conftest import copy_project

pytestmark = pytest.mark.slow  # each test runs the real DVC stages in subprocesses


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    # In-process tests export MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID (mlflow.set_tracking_uri and
    # set_experiment do): the subprocesses must use the temporary project's own store and experiment.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {
        **inherited,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = copy_project(tmp_path / "project")
    images = tmp_path / "images"
    synthetic.write_dataset(images, per_class=15, layout="filtered")
    archive = synthetic.zip_folder(images, tmp_path / "cats_and_dogs_filtered.zip")
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(48, 48, 3)).save_weights(
        tmp_path / "vgg.weights.h5"
    )
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["url"] = archive.as_uri()
    params["split"].update(train=0.6, val=0.2, test=0.2)
    params["image_size"] = 48
    params["pretrained"]["weights"] = str(tmp_path / "vgg.weights.h5")
    params["pretrained"]["input_size"] = None  # the VGG16 models see the 48 px images as they are
    params["features"]["views"] = 1
    for settings in params["models"].values():
        settings.update(epochs=1, batch_size=8)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "project"], project)
    return project


def test_dvc_repro_split_then_nothing_to_do(project: Path) -> None:
    _run(["dvc", "repro", "split"], project)
    for name, expected in {"train": 18, "val": 6, "test": 6}.items():
        lines = (project / "data" / "splits" / f"{name}.csv").read_text().splitlines()
        assert len(lines) == expected + 1
        first_path = lines[1].split(",")[0]
        assert (project / first_path).is_file()
    second = _run(["dvc", "repro", "split"], project)
    assert "Running stage" not in second.stdout
    status = _run(["dvc", "status", "split"], project)
    assert "up to date" in status.stdout
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], project).stdout)
    summary = metrics[""]["data"]["data/splits/summary.json"]["data"]
    assert summary["splits"]["train"]["total"] == 18 and summary["rejected"] == 0


def test_mlflow_run_main_runs_the_whole_pipeline(project: Path) -> None:
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    _run([mlflow_cli, "run", ".", "--env-manager", "local"], project)
    assert (project / "dvc.lock").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("catsdogs")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["mlflow.runName"] for r in runs) == sorted(MODEL_NAMES)
    assert all(r.info.status == "FINISHED" for r in runs)
    # Each model's run is a child of the run that `mlflow run` opened for the entry point.
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert len(parents) == 1 and None not in parents
    assert client.get_run(parents.pop()).info.status == "FINISHED"
    for name in MODEL_NAMES:
        assert (project / "models" / name / "model.keras").is_file()
    again = _run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout
