"""MLflow set-up shared by the stages that log: tracking store, experiment, run tags, datasets.

The store is params.mlflow.tracking_uri (sqlite:///mlflow.db) unless MLFLOW_TRACKING_URI is set.
Under `mlflow run`, MLflow hands the entry point a run of its own (MLFLOW_RUN_ID): each model's
run becomes its child instead of four models writing into that one run. Otherwise runs carry a
`pipeline` tag naming the `dvc repro` / `dvc exp run` that made them, which the UI can group by.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import requests
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.exceptions import MlflowException

from catsdogs import error_line
from catsdogs.config import PARAMS_FILE, SPLIT_NAMES, SPLITS_DIR, MlflowParams, load_params

# The experiment tag that tells MLflow's UI what the experiment is: here model training, so that it
# opens on the runs table (not on the GenAI traces overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# What each split is to MLflow's dataset tracking (the runs table's Dataset column and filter).
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def use_tracking_store(params: MlflowParams) -> None:
    """Point MLflow at the project's store: MLFLOW_TRACKING_URI when set, else params.mlflow.tracking_uri."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri)


def setup_mlflow(params: MlflowParams) -> str | None:
    """Point MLflow at the project's store and experiment; return the parent run id under `mlflow run`."""
    use_tracking_store(params)
    experiment = mlflow.set_experiment(params.experiment)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return os.environ.pop("MLFLOW_RUN_ID", None)


# What a stage sees when the tracking store fails or cannot be reached (a server killed, a network gone).
TRACKING_ERRORS = (MlflowException, requests.RequestException)
# What to do when a tracking server with logins (MLflow's basic-auth app) answers 401 or 403, by MLflow's error code.
LOGIN_HINTS = {
    "UNAUTHENTICATED": "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (for `catsdogs services`: "
                       "source .services/env) and rerun",
    "PERMISSION_DENIED": "the login MLFLOW_TRACKING_USERNAME names may not make this change (a read-only user?); "
                         "rerun with one that may",
}


def tracking_failure(err: Exception) -> str:
    """One line for the user: which tracking store failed, why (its first line), and what to do."""
    hint = LOGIN_HINTS.get(getattr(err, "error_code", ""), "check that it is up (catsdogs services status) and rerun")
    return f"the MLflow tracking store {mlflow.get_tracking_uri()} failed: {error_line(err)}; {hint}"


def registered_model_uri(model_uri: str | None) -> str:
    """The model that `catsdogs predict` and `score` use: `model_uri`, else the champion,
    models:/<register.name>@<register.alias>, in the project's tracking store. Outside a project (no
    params.yaml) MLflow's own settings (MLFLOW_TRACKING_URI) name the store and the champion is
    models:/catsdogs@champion. It only reads: no experiment is created."""
    if not PARAMS_FILE.is_file():
        return model_uri or "models:/catsdogs@champion"
    params = load_params()
    use_tracking_store(params.mlflow)
    return model_uri or f"models:/{params.register.name}@{params.register.alias}"


def model_failure(model_uri: str, err: MlflowException) -> str:
    """One line for a model that could not be loaded: which, why, and (when it is not there) what to do."""
    if err.error_code == "RESOURCE_DOES_NOT_EXIST":
        hint = " (dvc repro registers the champion; --model names another)"
    else:
        hint = f"; {LOGIN_HINTS[err.error_code]}" if err.error_code in LOGIN_HINTS else ""
    return f"cannot load model {model_uri}: {error_line(err)}{hint}"


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
    tags = {"git_commit": git_commit(), "dvc_stage": stage, "data_hash": data_hash(), "pipeline": pipeline_run()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def pipeline_run() -> str:
    """Which pipeline execution this stage belongs to: the same for every stage one command runs.

    `dvc exp run` names its experiment (DVC_EXP_NAME); a plain `dvc repro` is named by its start time,
    read from the dvc process this stage runs under; outside DVC, this process's own start.
    """
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        return f"dvc exp {exp_name}"
    import psutil

    process = psutil.Process()
    if "DVC_STAGE" in os.environ:
        for parent in process.parents():
            try:
                command = [Path(part).name for part in parent.cmdline()[:3]]
            except psutil.Error:
                continue
            if "dvc" in command:
                return f"dvc repro {datetime.fromtimestamp(parent.create_time()):%Y-%m-%d %H:%M:%S}"
    return f"manual {datetime.fromtimestamp(process.create_time()):%Y-%m-%d %H:%M:%S}"


def split_dataset(split: str, source: str, digest: str, splits_dir: Path = SPLITS_DIR) -> PandasDataset:
    """One split's manifest as an MLflow dataset: its rows (path, label, group, sha256)."""
    frame = pd.read_csv(splits_dir / f"{split}.csv", dtype=str, keep_default_na=False)
    return as_dataset(frame, split, source, digest, targets="label")


def as_dataset(frame: pd.DataFrame, name: str, source: str, digest: str, **columns: str) -> PandasDataset:
    """A table as an MLflow dataset: the data hash as digest (its first 12 hex digits, as the version
    descriptions quote it) and the downloaded archive (params data.url: an http(s) or file:// URL, or a path)
    as source."""
    with warnings.catch_warnings():  # a path matches two equivalent local source kinds; MLflow picks one
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple")
        return from_pandas(frame, source=source, name=name, digest=digest[:12], **columns)


def log_splits(splits: tuple[str, ...], source: str, splits_dir: Path = SPLITS_DIR) -> None:
    """Log the splits a run used as its dataset inputs, each under its context (training, validation, test)."""
    digest = data_hash(splits_dir)
    for split in splits:
        mlflow.log_input(split_dataset(split, source, digest, splits_dir), context=DATASET_CONTEXTS[split])


def model_requirements() -> list[str]:
    """A logged model's pip requirements, pinned to what trained it. Listed, MLflow need not infer them by
    loading the model in a subprocess at every log_model."""
    from importlib.metadata import version

    names = ("mlflow", "tensorflow", "keras", "numpy", "pandas", "pillow")
    return [f"{name}=={version(name)}" for name in names]
