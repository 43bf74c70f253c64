"""Stage `register`: registers the fine-tuned model as an image-taking pyfunc; a validation gate moves the alias.

Reads models/<register.model>/{model.keras,run.json,metrics.json}, evaluation/<register.model>/
metrics.json, models/compressed/ (its int8 copy) and data/splits/val.csv. Logs the pyfunc
(catsdogs.serve.ImageClassifier wrapping the int8 copy, or with register.int8 false the .keras file)
into the model's training run and registers it as register.name: every run gets a version.
The validation gate then scores that version, and the alias's holder, on the current validation
split with MLflow's model evaluation (one nested run each, under the training run) and checks
them with mlflow.validate_evaluation_results: the alias (register.alias) moves only when the new
version clears the floors and beats the holder on register.metric by register.min_delta. Test data
never chooses a model. A refused version stays registered, tagged with the verdict and its reason.
Writes models/registered.json.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import MetricThreshold, make_metric
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

import catsdogs
from catsdogs import configure_logging, synthetic
from catsdogs.config import (
    COMPRESSED_DIR,
    EVALUATION_DIR,
    GATE_METRICS,
    MODELS_DIR,
    SPLITS_DIR,
    ConfigError,
    Params,
    RegisterParams,
    load_params,
)
from catsdogs.data import MissingInputError, manifest_path, read_manifest
from catsdogs.int8 import XML
from catsdogs.serve import COLUMN, ImageClassifier, signature
from catsdogs.tracking import (
    TRACKING_ERRORS,
    as_dataset,
    data_hash,
    mlflow,
    model_requirements,
    run_tags,
    setup_mlflow,
    tracking_failure,
)

log = logging.getLogger(__name__)

REGISTERED_FILE = MODELS_DIR / "registered.json"


def main() -> None:
    configure_logging()
    try:
        params = load_params()
        setup_mlflow(params.mlflow)
        result = register_model(params, MODELS_DIR / params.register.model, EVALUATION_DIR / params.register.model)
    except (MissingInputError, ConfigError) as err:
        sys.exit(f"register: {err}")
    except TRACKING_ERRORS as err:
        sys.exit(f"register: {tracking_failure(err)}")
    REGISTERED_FILE.write_text(json.dumps(result, indent=2) + "\n")


def register_model(params: Params, model_dir: Path, evaluation_dir: Path, splits_dir: Path = SPLITS_DIR) -> dict:
    rule = params.register
    run, validation, test = read_inputs(model_dir, evaluation_dir)
    info, training_tags = log_classifier(params, model_dir, run)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    describe_registered_model(client, rule, run["class_names"])
    holder = current_holder(client, rule.name, rule.alias)
    verdict = validation_gate(params, run, version, holder, splits_dir)
    tag_version(client, rule.name, version, model_dir.name, validation, test, training_tags, verdict, rule.int8)
    if verdict.passed:
        client.set_registered_model_alias(rule.name, rule.alias, version)
    alias_version = version if verdict.passed else str(holder.version) if holder is not None else None
    log.info("registered %s version %s; %s %s: %s", rule.name, version, rule.alias,
             f"moved to {version}" if verdict.passed else f"stays on {alias_version}", verdict.reason)
    return {
        "name": rule.name, "version": version, "run_id": run["run_id"], "model_uri": info.model_uri,
        rule.metric: verdict.candidate.get(rule.metric), "alias": rule.alias, "promoted": verdict.passed,
        "alias_version": alias_version, "reason": verdict.reason,
        "holder_" + rule.metric: verdict.holder.get(rule.metric) if verdict.holder else None,
    }


def read_inputs(model_dir: Path, evaluation_dir: Path) -> tuple[dict, dict, dict]:
    """(run.json, validation metrics, test metrics) of the model to register."""
    inputs = {
        "run": model_dir / "run.json", "validation": model_dir / "metrics.json",
        "test": evaluation_dir / "metrics.json", "model": model_dir / "model.keras",
    }
    for path in inputs.values():
        if not path.is_file():
            raise MissingInputError(f"{path} is missing; run: dvc repro evaluate@{model_dir.name}")
    run, validation, test = (json.loads(inputs[key].read_text()) for key in ("run", "validation", "test"))
    return run, validation, test


def log_classifier(params: Params, model_dir: Path, run: dict, compressed_dir: Path = COMPRESSED_DIR):
    """Log the image-taking pyfunc into the model's training run and register it; (model info, the run's tags).

    It runs the int8 copy (register.int8, stage compress) or the trained .keras file.
    """
    artifacts = {"keras_model": str(model_dir / "model.keras")}
    requirements = model_requirements()
    if params.register.int8:
        artifacts = {"int8_model": str(int8_folder(model_dir, compressed_dir))}
        requirements.append(f"openvino=={importlib.metadata.version('openvino')}")
    with mlflow.start_run(run_id=run["run_id"]) as active:
        info = mlflow.pyfunc.log_model(
            name="classifier",
            python_model=ImageClassifier(),
            artifacts=artifacts,
            model_config={"class_names": run["class_names"], "max_pixels": params.split.max_pixels},
            code_paths=[str(Path(catsdogs.__file__).parent)],
            signature=signature(run["class_names"]),
            input_example=pd.DataFrame({COLUMN: [_example_image()]}),
            pip_requirements=requirements,
            registered_model_name=params.register.name,
        )
        return info, active.data.tags


def int8_folder(model_dir: Path, compressed_dir: Path) -> Path:
    """models/compressed, checked to hold the int8 copy of this model (not of another register.model)."""
    metrics_file = compressed_dir / "metrics.json"
    if not (compressed_dir / XML).is_file() or not metrics_file.is_file():
        raise MissingInputError(f"{compressed_dir / XML} is missing; run: dvc repro compress")
    source = json.loads(metrics_file.read_text()).get("model")
    if source != model_dir.name:
        raise MissingInputError(f"{compressed_dir} holds the int8 copy of {source!r}, not of {model_dir.name!r}; "
                                "run: dvc repro compress")
    return compressed_dir


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: whether the alias moves, why, and the metrics it compared (validation split)."""

    passed: bool
    reason: str
    candidate: dict[str, float]
    holder: dict[str, float] | None


def validation_gate(params: Params, run: dict, version: str, holder, splits_dir: Path) -> Verdict:
    """Score the new version and the alias's holder on the current validation split; check the thresholds."""
    rule = params.register
    images = read_manifest(manifest_path("val", splits_dir))
    # read, encoded and hashed once for both versions the gate scores
    val = pd.DataFrame({"path": [image.path.as_posix() for image in images], "label": [image.label for image in images],
                        COLUMN: [base64.b64encode(image.path.read_bytes()).decode() for image in images]})
    context = GateContext(val, run["class_names"][1], params.data.url, data_hash(splits_dir),
                          run_tags("register", run["run_id"]))
    candidate = gate_evaluation(context, f"models:/{rule.name}/{version}", f"gate: {rule.name} v{version}")
    baseline = None
    if holder is not None:
        baseline = gate_evaluation(context, f"models:/{rule.name}/{holder.version}",
                                   f"gate: {rule.name}@{rule.alias} v{holder.version}")
    thresholds = gate_thresholds(rule, compare=baseline is not None)
    held = _rounded(baseline) if baseline is not None else None
    try:
        mlflow.validate_evaluation_results(thresholds, candidate, baseline)
    except ModelValidationFailedException as err:
        return Verdict(False, str(err.message).strip(), _rounded(candidate), held)
    reason = (f"{rule.metric} {candidate.metrics[rule.metric]:.4f} beats {rule.alias} version {holder.version}'s "
              f"{baseline.metrics[rule.metric]:.4f} by at least {rule.min_delta}"
              if baseline is not None and holder is not None else f"no {rule.alias} yet; floors cleared")
    return Verdict(True, reason, _rounded(candidate), held)


def gate_thresholds(rule: RegisterParams, compare: bool) -> dict[str, MetricThreshold]:
    """MLflow thresholds for the gate: the floors from params, and the least improvement over the holder."""
    thresholds = {}
    floors = {"val_accuracy": rule.min_val_accuracy, "val_loss": rule.max_val_loss}
    for metric, greater_is_better in GATE_METRICS.items():
        change = rule.min_delta if compare and metric == rule.metric else None
        if floors[metric] is not None or change is not None:
            thresholds[metric] = MetricThreshold(threshold=floors[metric], min_absolute_change=change,
                                                 greater_is_better=greater_is_better)
    return thresholds


def _accuracy(predictions: pd.Series, targets: pd.Series) -> float:
    return float(np.mean(predictions.to_numpy() == targets.to_numpy()))


def _log_loss(predictions: pd.Series, targets: pd.Series, positive: pd.Series, p_positive: pd.Series) -> float:
    return float(skm.log_loss(targets == positive, p_positive.astype(float), labels=[False, True]))


# The gate's own metrics, under the names training logs (Keras's val_loss is this log loss).
GATE_EVALUATION_METRICS = [
    make_metric(eval_fn=_accuracy, greater_is_better=GATE_METRICS["val_accuracy"], name="val_accuracy"),
    make_metric(eval_fn=_log_loss, greater_is_better=GATE_METRICS["val_loss"], name="val_loss"),
]


@dataclass(frozen=True)
class GateContext:
    """What every evaluation of one gate shares: the validation split (path, label, base64 image), the positive
    class, the dataset's source and digest, and the runs' tags (stage, commit, data hash, pipeline, parent)."""

    val: pd.DataFrame
    positive: str
    source: str
    digest: str
    tags: dict[str, str]


def gate_evaluation(context: GateContext, model_uri: str, run_name: str) -> EvaluationResult:
    """A registered version's predictions on the validation split, evaluated by MLflow in a nested run under the
    candidate's training run (metrics, confusion matrix, the validation set as its dataset)."""
    val, positive = context.val, context.positive
    output = mlflow.pyfunc.load_model(model_uri).predict(val[[COLUMN]], params={"errors": "column"})
    # versions registered before the pyfunc had its `errors` param raise on a bad image instead
    failed = output["error"] != "" if "error" in output.columns else pd.Series(False, index=output.index)
    if failed.any():
        index = int(np.argmax(failed.to_numpy()))
        raise MissingInputError(f"{val['path'].iloc[index]}: {output['error'].iloc[index]} (validation image)")
    frame = val[["path", "label"]].assign(predicted=output["label"].astype(str).to_numpy(),
                                          p_positive=output[f"p_{positive}"].astype(float).to_numpy(),
                                          positive=positive)
    dataset = as_dataset(frame, "val", context.source, context.digest, targets="label", predictions="predicted")
    with mlflow.start_run(run_name=run_name, nested=True, tags={**context.tags, "gate_model": model_uri},
                          log_system_metrics=True), warnings.catch_warnings():
        # a version that never answers the positive class has precision 0 (MLflow's metric), not a warning
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return mlflow.models.evaluate(
            data=dataset, model_type="classifier", feature_names=["path", "p_positive", "positive"],
            evaluator_config={"pos_label": positive, "log_model_explainability": False},
            extra_metrics=GATE_EVALUATION_METRICS,
        )


def _rounded(result: EvaluationResult) -> dict[str, float]:
    return {metric: round(float(result.metrics[metric]), 4) for metric in GATE_METRICS}


def describe_registered_model(client: mlflow.MlflowClient, rule: RegisterParams, class_names: list[str]) -> None:
    """What the registered model is, for whoever finds it in the registry (not only its versions)."""
    outputs = ", ".join(f"`p_{name}`" for name in class_names)
    client.update_registered_model(rule.name, description=(
        f"Classifies a photo as {' or '.join(class_names)}: the catsdogs pipeline's `{rule.model}` model, one "
        f"version per `register` stage run. Input: a column `{COLUMN}` of base64-encoded image files (JPEG, PNG, "
        f"...); output: `label` and {outputs}. The `{rule.alias}` alias moves only to a "
        f"version that passes the validation gate on {rule.metric} (each version's tags say why). "
        f"Serve: mlflow models serve -m models:/{rule.name}@{rule.alias} --env-manager local"
    ))
    tags = {
        "task": "binary image classification", "classes": ",".join(class_names), "source_model": rule.model,
        "input": f"base64 image files (column {COLUMN})", "gate_metric": rule.metric,
        "gate_min_delta": rule.min_delta, "gate_min_val_accuracy": rule.min_val_accuracy,
        "gate_max_val_loss": rule.max_val_loss,
    }
    for key, value in tags.items():
        client.set_registered_model_tag(rule.name, key, "none" if value is None else str(value))


def tag_version(client: mlflow.MlflowClient, name: str, version: str, source_model: str, validation: dict,
                test: dict, training_tags: dict, verdict: Verdict, int8: bool = False) -> None:
    """The version's tags (the gate's verdict and reason, its metrics rounded, data hash, commit, format) and a
    one-line description. test_* are the trained model's (evaluate); the gate's val_* are this version's own."""
    tags = {
        "format": "int8 (OpenVINO)" if int8 else "keras",
        "gate": "promoted" if verdict.passed else "refused",
        "gate_reason": verdict.reason,
        **verdict.candidate,
        **{f"{key}_at_training": round(float(validation[key]), 4) for key in GATE_METRICS if key in validation},
        **{f"test_{k}": round(v, 4) for k, v in test.items() if isinstance(v, float)},
        "source_model": source_model,
        "data_hash": training_tags.get("data_hash", "unknown"),
        "git_commit": training_tags.get("git_commit", "unknown"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(
        name, version,
        description=(
            f"{source_model}{', int8 copy' if int8 else ''}: validation accuracy "
            f"{verdict.candidate['val_accuracy']:.4f}, test accuracy {test['accuracy']:.4f} on {test['images']} "
            f"held-out images{' (the trained model)' if int8 else ''}; gate: {tags['gate']}. Data "
            f"{tags['data_hash'][:12]}, commit {tags['git_commit'][:12]}. Input: base64 image files; output: label "
            f"and {', '.join(f'p_{name}' for name in test['confusion_matrix']['labels'])}."
        ),
    )


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
