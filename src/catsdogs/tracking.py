"""MLflow set-up shared by the stages that log: tracking store, experiment, run tags.

The store is params.mlflow.tracking_uri (sqlite:///mlflow.db) unless MLFLOW_TRACKING_URI is set.
Under `mlflow run`, MLflow hands the entry point a run of its own (MLFLOW_RUN_ID): each model's
run becomes its child instead of four models writing into that one run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import mlflow
import requests
from mlflow.exceptions import MlflowException

from catsdogs import error_line
from catsdogs.config import SPLIT_NAMES, SPLITS_DIR, MlflowParams


def setup_mlflow(params: MlflowParams) -> str | None:
    """Point MLflow at the project's store and experiment; return the parent run id under `mlflow run`."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri)
    mlflow.set_experiment(params.experiment)
    return os.environ.pop("MLFLOW_RUN_ID", None)


# What a stage sees when the tracking store fails or cannot be reached (a server killed, a network gone).
TRACKING_ERRORS = (MlflowException, requests.RequestException)


def tracking_failure(err: Exception) -> str:
    """One line for the user: which tracking store failed, why (its first line), and what to do."""
    return (f"the MLflow tracking store {mlflow.get_tracking_uri()} failed: {error_line(err)}; check that it is up "
            "(catsdogs services status) and rerun: an interrupted training run resumes where it stopped")


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def data_hash(splits_dir: Path = SPLITS_DIR) -> str:
    """sha256 over the three split manifests: which images, with which labels, in which split."""
    digest = hashlib.sha256()
    for name in SPLIT_NAMES:
        digest.update((splits_dir / f"{name}.csv").read_bytes())
    return digest.hexdigest()


def run_tags(stage: str, parent_run_id: str | None) -> dict[str, str]:
    tags = {"git_commit": git_commit(), "dvc_stage": stage, "data_hash": data_hash()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def model_requirements() -> list[str]:
    """A logged model's pip requirements, pinned to what trained it. Listed, MLflow need not infer them by
    loading the model in a subprocess at every log_model."""
    from importlib.metadata import version

    names = ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pillow")
    return [f"{name}=={version(name)}" for name in names]
