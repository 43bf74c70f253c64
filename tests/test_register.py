"""The register stage: an image-taking pyfunc in the registry, and the alias rule."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from catsdogs import synthetic
from catsdogs.config import COMPRESSED_DIR, EVALUATION_DIR, MODELS_DIR, load_params
from catsdogs.data import MissingInputError
from catsdogs.images import load_pixels
from catsdogs.int8 import Int8Model
from catsdogs.register import int8_folder, register_model


@pytest.fixture(scope="module")
def registered(champion: dict, tiny_project: Path) -> list[dict]:
    """Register the fine-tuned model again: the second version, no better on validation, must not take the alias."""
    with contextlib.chdir(tiny_project):
        params = load_params()
        mlflow.set_tracking_uri(params.mlflow.tracking_uri)
        return [champion, register_model(params, MODELS_DIR / "fine_tuning", EVALUATION_DIR / "fine_tuning")]


def test_the_same_model_again_is_registered_but_refused(registered: list[dict], in_project: Path) -> None:
    """A tie is not an improvement: the second version stays registered, tagged with the gate's reason."""
    first, second = registered
    assert first["promoted"] and first["alias_version"] == first["version"]
    assert not second["promoted"] and second["alias_version"] == first["version"]
    assert second["val_accuracy"] == first["val_accuracy"]  # the same model on the same validation split
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("catsdogs", "champion").version) == first["version"]
    version = client.get_model_version("catsdogs", second["version"])
    assert version.aliases == [] and version.tags["gate"] == "refused"
    assert "val_accuracy minimum absolute change check failed" in version.tags["gate_reason"]
    assert client.get_model_version("catsdogs", first["version"]).tags["gate"] == "promoted"


def _constant_model(source: Path, dest: Path, p_dog: float) -> Path:
    """A copy of the trained model's files whose output is p_dog for every image (zero weights, a chosen bias)."""
    shutil.copytree(source, dest)
    model = keras.models.load_model(dest / "model.keras")
    kernel, _ = model.get_layer("logit").get_weights()
    model.get_layer("logit").set_weights([np.zeros_like(kernel), np.array([np.log(p_dog / (1 - p_dog))])])
    model.get_layer("p_dog").temperature.assign(1.0)
    model.save(dest / "model.keras")
    return dest


def test_the_gate_knows_a_loss_is_better_lower(champion: dict, in_project: Path, tmp_path: Path) -> None:
    """register.metric val_loss: a sure-of-itself constant model (p = 0.99) loses to an unsure one (p = 0.5):
    the same answers, so the same accuracy, but a lower log loss. Under a registered name of its own, from
    copies of the model's files: the session's champion and the project's files stay as they were."""
    params = load_params()
    rule = dataclasses.replace(params.register, name="catsdogs-gate", metric="val_loss", int8=False)
    params = dataclasses.replace(params, register=rule)
    sure = _constant_model(MODELS_DIR / "fine_tuning", tmp_path / "sure" / "fine_tuning", 0.99)
    unsure = _constant_model(MODELS_DIR / "fine_tuning", tmp_path / "unsure" / "fine_tuning", 0.5)
    project_files = {path: path.read_bytes() for path in (MODELS_DIR / "fine_tuning").iterdir()}
    champion_before = mlflow.MlflowClient().get_model_version_by_alias("catsdogs", "champion").version

    results = [register_model(params, model_dir, EVALUATION_DIR / "fine_tuning") for model_dir in (sure, unsure, sure)]

    assert [r["promoted"] for r in results] == [True, True, False]
    assert results[1]["val_loss"] == pytest.approx(np.log(2), abs=1e-3)
    assert results[0]["val_loss"] > 2 * np.log(2)  # half the answers at p = 0.01
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("catsdogs-gate", "champion").version) == results[1]["version"]
    refused = client.get_model_version("catsdogs-gate", results[2]["version"])
    assert refused.tags["gate"] == "refused" and "val_loss minimum absolute change" in refused.tags["gate_reason"]
    assert client.get_model_version_by_alias("catsdogs", "champion").version == champion_before
    assert {path: path.read_bytes() for path in (MODELS_DIR / "fine_tuning").iterdir()} == project_files


def test_a_version_below_the_floor_never_takes_the_alias(trained: dict, in_project: Path, tmp_path: Path) -> None:
    params = load_params()
    rule = dataclasses.replace(params.register, name="catsdogs-floor", min_val_accuracy=0.99, int8=False)
    params = dataclasses.replace(params, register=rule)
    constant = _constant_model(MODELS_DIR / "fine_tuning", tmp_path / "constant" / "fine_tuning", 0.7)
    result = register_model(params, constant, EVALUATION_DIR / "fine_tuning")
    assert not result["promoted"] and result["alias_version"] is None
    client = mlflow.MlflowClient()
    version = client.get_model_version("catsdogs-floor", result["version"])
    assert version.tags["gate"] == "refused" and "val_accuracy threshold = 0.99" in version.tags["gate_reason"]
    assert not client.get_registered_model("catsdogs-floor").aliases


def test_the_gate_runs_are_mlflow_evaluations_nested_under_the_training_run(registered: list[dict],
                                                                           in_project: Path) -> None:
    client = mlflow.MlflowClient()
    run_id = registered[1]["run_id"]
    experiment = client.get_run(run_id).info.experiment_id
    gates = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
    second = registered[1]["version"]
    names = {run.info.run_name for run in gates}
    assert {f"gate: catsdogs v{second}", f"gate: catsdogs@champion v{registered[0]['version']}"} <= names
    gate = next(run for run in gates if run.info.run_name == f"gate: catsdogs v{second}")
    assert gate.data.metrics["val_accuracy"] == pytest.approx(registered[1]["val_accuracy"], abs=1e-4)  # rounded
    assert "accuracy_score" in gate.data.metrics and "val_loss" in gate.data.metrics
    assert any(item.dataset.name == "val" for item in gate.inputs.dataset_inputs)
    assert gate.data.tags["dvc_stage"] == "register" and gate.data.tags["pipeline"]
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(gate.info.run_id)}


def test_the_registered_model_and_its_versions_describe_themselves(registered: list[dict], in_project: Path) -> None:
    client = mlflow.MlflowClient()
    model = client.get_registered_model("catsdogs")
    assert "base64" in model.description and "validation gate" in model.description
    assert model.tags["classes"] == "cat,dog" and model.tags["gate_metric"] == "val_accuracy"
    version = client.get_model_version("catsdogs", registered[0]["version"])
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_log_loss"):
        assert len(version.tags[key].split(".")[-1]) <= 4, f"{key}={version.tags[key]} is not rounded"


def test_version_carries_metrics_data_hash_and_commit(registered: list[dict], in_project: Path) -> None:
    version = mlflow.MlflowClient().get_model_version("catsdogs", registered[0]["version"])
    test_metrics = json.loads((EVALUATION_DIR / "fine_tuning" / "metrics.json").read_text())
    assert float(version.tags["test_accuracy"]) == pytest.approx(test_metrics["accuracy"], abs=1e-4)
    assert float(version.tags["val_accuracy"]) == pytest.approx(registered[0]["val_accuracy"], abs=1e-4)
    assert len(version.tags["data_hash"]) == 64 and version.tags["git_commit"]
    assert version.run_id == json.loads((MODELS_DIR / "fine_tuning" / "run.json").read_text())["run_id"]
    assert "test accuracy" in version.description


def test_pyfunc_takes_image_files_and_runs_the_int8_copy(registered: list[dict], in_project: Path) -> None:
    """The champion is the int8 copy (register.int8): its answers are the OpenVINO model's (how close those
    are to the Keras model's: tests/test_compress.py)."""
    rng = np.random.default_rng(3)
    photo = synthetic.make_photo(rng)
    files = [synthetic.encode(photo)] + list(synthetic.odd_images(rng).values())
    model = mlflow.pyfunc.load_model("models:/catsdogs@champion")
    result = model.predict(pd.DataFrame({"image": [base64.b64encode(f).decode() for f in files]}))
    assert list(result.columns) == ["label", "p_cat", "p_dog"]
    assert result["p_dog"].dtype == np.float64 and set(result["label"]) <= {"cat", "dog"}
    np.testing.assert_allclose(result["p_cat"] + result["p_dog"], 1.0)
    pixels = np.stack([load_pixels(f, 48, 10**6) for f in files]).astype("float32")
    np.testing.assert_allclose(result["p_dog"], Int8Model(COMPRESSED_DIR / "model.xml").predict(pixels), rtol=1e-6)
    assert list(result["label"]) == ["dog" if p >= 0.5 else "cat" for p in result["p_dog"]]
    version = mlflow.MlflowClient().get_model_version("catsdogs", registered[0]["version"])
    assert version.tags["format"] == "int8 (OpenVINO)" and "int8 copy" in version.description


def test_with_int8_off_the_pyfunc_runs_the_keras_model(trained: dict, in_project: Path) -> None:
    params = load_params()
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, name="catsdogs-keras",
                                                                      int8=False, min_delta=1e-6))
    result = register_model(params, MODELS_DIR / "fine_tuning", EVALUATION_DIR / "fine_tuning")
    rng = np.random.default_rng(4)
    files = [synthetic.encode(synthetic.make_photo(rng)) for _ in range(3)]
    answer = mlflow.pyfunc.load_model(result["model_uri"]).predict(
        pd.DataFrame({"image": [base64.b64encode(f).decode() for f in files]}))
    pixels = np.stack([load_pixels(f, 48, 10**6) for f in files]).astype("float32")
    keras_model = keras.models.load_model(MODELS_DIR / "fine_tuning" / "model.keras")
    np.testing.assert_allclose(answer["p_dog"], keras_model.predict(pixels, verbose=0).reshape(-1), rtol=1e-5)
    assert mlflow.MlflowClient().get_model_version("catsdogs-keras", result["version"]).tags["format"] == "keras"


def test_int8_registration_needs_the_compressed_copy_of_this_model(trained: dict, in_project: Path,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="dvc repro compress"):
        int8_folder(MODELS_DIR / "fine_tuning", tmp_path / "nothing")
    other = tmp_path / "compressed"
    shutil.copytree(COMPRESSED_DIR, other)
    (other / "metrics.json").write_text(json.dumps({"model": "feature_extraction"}))
    with pytest.raises(MissingInputError, match="int8 copy of 'feature_extraction', not of 'fine_tuning'"):
        int8_folder(MODELS_DIR / "fine_tuning", other)


class _LegacyClassifier(mlflow.pyfunc.PythonModel):
    """A champion registered before the pyfunc had its `errors` param: no `error` column, no params."""

    def predict(self, context, model_input: pd.DataFrame) -> pd.DataFrame:
        rows = len(model_input)
        return pd.DataFrame({"label": ["dog"] * rows, "p_cat": [0.4] * rows, "p_dog": [0.6] * rows})


def test_the_gate_scores_a_champion_registered_by_an_older_pyfunc(champion: dict, in_project: Path) -> None:
    params = load_params()
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, name="catsdogs-legacy"))
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name="legacy"):
        mlflow.pyfunc.log_model(name="classifier", python_model=_LegacyClassifier(),
                                registered_model_name="catsdogs-legacy")
    client.set_registered_model_alias("catsdogs-legacy", "champion", "1")

    result = register_model(params, MODELS_DIR / "fine_tuning", EVALUATION_DIR / "fine_tuning")

    val = [line.split(",")[1] for line in (Path("data/splits/val.csv").read_text().splitlines()[1:])]
    assert result["holder_val_accuracy"] == pytest.approx(val.count("dog") / len(val), abs=1e-4)
    expected = result["val_accuracy"] >= result["holder_val_accuracy"] + params.register.min_delta
    assert result["promoted"] == expected and result["version"] == "2"
