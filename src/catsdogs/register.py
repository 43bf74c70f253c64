"""Stage `register`: registers the fine-tuned model as an image-taking pyfunc and moves the alias on merit.

Reads models/<register.model>/{model.keras,run.json,metrics.json} and evaluation/<register.model>/
metrics.json. Logs the pyfunc (catsdogs.serve.ImageClassifier wrapping the .keras file) into the
model's training run, registers it as register.name, and tags the version with its validation and
test metrics, data hash and git commit. The alias (register.alias, "champion") moves to the new
version only when it beats the current holder on register.metric, a validation metric: selection
never looks at test data. Writes models/registered.json.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

import catsdogs
from catsdogs import configure_logging, synthetic
from catsdogs.config import EVALUATION_DIR, MODELS_DIR, ConfigError, Params, load_params
from catsdogs.data import MissingInputError
from catsdogs.serve import COLUMN, ImageClassifier, signature
from catsdogs.tracking import TRACKING_ERRORS, mlflow, model_requirements, setup_mlflow, tracking_failure

log = logging.getLogger(__name__)

REGISTERED_FILE = MODELS_DIR / "registered.json"


def main() -> None:
    configure_logging()
    params = load_params()
    try:
        setup_mlflow(params.mlflow)
        result = register_model(params, MODELS_DIR / params.register.model, EVALUATION_DIR / params.register.model)
    except (MissingInputError, ConfigError) as err:
        sys.exit(f"register: {err}")
    except TRACKING_ERRORS as err:
        sys.exit(f"register: {tracking_failure(err)}")
    REGISTERED_FILE.write_text(json.dumps(result, indent=2) + "\n")


def register_model(params: Params, model_dir: Path, evaluation_dir: Path) -> dict:
    rule = params.register
    run, validation, test = read_inputs(model_dir, evaluation_dir, rule.metric)
    info, training_tags = log_classifier(params, model_dir / "model.keras", run)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tag_version(client, rule.name, version, model_dir.name, rule.metric, validation, test, training_tags)
    promoted, alias_version = promote(client, rule.name, rule.alias, rule.metric, version, validation[rule.metric])
    return {
        "name": rule.name, "version": version, "run_id": run["run_id"], "model_uri": info.model_uri,
        rule.metric: validation[rule.metric], "alias": rule.alias, "promoted": promoted,
        "alias_version": alias_version,
    }


def read_inputs(model_dir: Path, evaluation_dir: Path, metric: str) -> tuple[dict, dict, dict]:
    """(run.json, validation metrics, test metrics) of the model to register."""
    inputs = {
        "run": model_dir / "run.json", "validation": model_dir / "metrics.json",
        "test": evaluation_dir / "metrics.json", "model": model_dir / "model.keras",
    }
    for path in inputs.values():
        if not path.is_file():
            raise MissingInputError(f"{path} is missing; run: dvc repro evaluate@{model_dir.name}")
    run, validation, test = (json.loads(inputs[key].read_text()) for key in ("run", "validation", "test"))
    if metric not in validation:
        raise ConfigError(f"register.metric={metric!r} is not in {inputs['validation']}: {', '.join(validation)}")
    return run, validation, test


def log_classifier(params: Params, keras_file: Path, run: dict):
    """Log the image-taking pyfunc into the model's training run and register it; (model info, the run's tags)."""
    with mlflow.start_run(run_id=run["run_id"]) as active:
        info = mlflow.pyfunc.log_model(
            name="classifier",
            python_model=ImageClassifier(),
            artifacts={"keras_model": str(keras_file)},
            model_config={"class_names": run["class_names"], "max_pixels": params.split.max_pixels},
            code_paths=[str(Path(catsdogs.__file__).parent)],
            signature=signature(run["class_names"]),
            input_example=pd.DataFrame({COLUMN: [_example_image()]}),
            pip_requirements=model_requirements(),
            registered_model_name=params.register.name,
        )
        return info, active.data.tags


def tag_version(client: mlflow.MlflowClient, name: str, version: str, source_model: str, metric: str,
                validation: dict, test: dict, training_tags: dict) -> None:
    """The version's tags (its validation and test metrics, data hash, commit) and a one-line description."""
    tags = {
        metric: validation[metric],
        **{f"test_{k}": v for k, v in test.items() if isinstance(v, float)},
        "source_model": source_model,
        "data_hash": training_tags.get("data_hash", "unknown"),
        "git_commit": training_tags.get("git_commit", "unknown"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(
        name, version,
        description=(
            f"{source_model}: {metric} {validation[metric]:.4f}, test accuracy {test['accuracy']:.4f} "
            f"on {test['images']} held-out images; data {tags['data_hash'][:12]}, "
            f"commit {tags['git_commit'][:12]}. Input: base64 image files; output: label and p_<class>."
        ),
    )


def promote(client: mlflow.MlflowClient, name: str, alias: str, metric: str, version: str,
            value: float) -> tuple[bool, str]:
    """Move `alias` to `version` when it beats the current holder on `metric`; (promoted, the alias's version)."""
    holder = current_holder(client, name, alias)
    held = float(holder.tags[metric]) if holder is not None and metric in holder.tags else None
    promoted = held is None or float(value) > held
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    log.info("registered %s version %s (%s %.4f); %s %s", name, version, metric, value, alias,
             f"moved to {version}" if promoted else f"stays on {holder.version} ({held:.4f})")
    return promoted, version if promoted else str(holder.version)


def current_holder(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _example_image() -> str:
    photo = synthetic.make_photo(np.random.default_rng(0), (64, 48))
    return base64.b64encode(synthetic.encode(photo)).decode()


if __name__ == "__main__":
    main()
