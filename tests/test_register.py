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
from catsdogs.config import EVALUATION_DIR, MODELS_DIR, load_params
from catsdogs.images import load_pixels
from catsdogs.register import register_model


@pytest.fixture(scope="module")
def registered(champion: dict, tiny_project: Path) -> list[dict]:
    """Register the fine-tuned model again: the second version, no better on validation, must not take the alias."""
    with contextlib.chdir(tiny_project):
        params = load_params()
        mlflow.set_tracking_uri(params.mlflow.tracking_uri)
        return [champion, register_model(params, MODELS_DIR / "fine_tuning", EVALUATION_DIR / "fine_tuning")]


def test_alias_moves_only_on_a_better_validation_metric(registered: list[dict], in_project: Path) -> None:
    first, second = registered
    assert first["promoted"] and first["alias_version"] == first["version"]
    assert not second["promoted"] and second["alias_version"] == first["version"]
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("catsdogs", "champion").version) == first["version"]
    assert client.get_model_version("catsdogs", second["version"]).aliases == []


def test_a_better_challenger_takes_the_alias(trained: dict, in_project: Path, tmp_path: Path) -> None:
    """Under a registered name of its own, from copies of the model's files: the session's champion and the
    project's files, which later tests serve, stay as they were."""
    params = load_params()
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, name="catsdogs-challenger"))
    model_dir = tmp_path / "fine_tuning"
    shutil.copytree(MODELS_DIR / "fine_tuning", model_dir)
    project_files = {path: path.read_bytes() for path in (MODELS_DIR / "fine_tuning").iterdir()}
    champion_before = mlflow.MlflowClient().get_model_version_by_alias("catsdogs", "champion").version

    first = register_model(params, model_dir, EVALUATION_DIR / "fine_tuning")
    better = {**json.loads((model_dir / "metrics.json").read_text())}
    better["val_accuracy"] += 0.01
    (model_dir / "metrics.json").write_text(json.dumps(better))
    second = register_model(params, model_dir, EVALUATION_DIR / "fine_tuning")

    client = mlflow.MlflowClient()
    assert first["promoted"] and second["promoted"] and second["version"] != first["version"]
    assert str(client.get_model_version_by_alias("catsdogs-challenger", "champion").version) == second["version"]
    assert client.get_model_version_by_alias("catsdogs", "champion").version == champion_before
    assert {path: path.read_bytes() for path in (MODELS_DIR / "fine_tuning").iterdir()} == project_files


def test_version_carries_metrics_data_hash_and_commit(registered: list[dict], in_project: Path) -> None:
    version = mlflow.MlflowClient().get_model_version("catsdogs", registered[0]["version"])
    test_metrics = json.loads((EVALUATION_DIR / "fine_tuning" / "metrics.json").read_text())
    assert float(version.tags["test_accuracy"]) == pytest.approx(test_metrics["accuracy"])
    assert float(version.tags["val_accuracy"]) == pytest.approx(registered[0]["val_accuracy"])
    assert len(version.tags["data_hash"]) == 64 and version.tags["git_commit"]
    assert version.run_id == json.loads((MODELS_DIR / "fine_tuning" / "run.json").read_text())["run_id"]
    assert "test accuracy" in version.description


def test_pyfunc_takes_image_files_and_matches_keras(registered: list[dict], in_project: Path) -> None:
    rng = np.random.default_rng(3)
    photo = synthetic.make_photo(rng)
    files = [synthetic.encode(photo)] + list(synthetic.odd_images(rng).values())
    model = mlflow.pyfunc.load_model("models:/catsdogs@champion")
    result = model.predict(pd.DataFrame({"image": [base64.b64encode(f).decode() for f in files]}))
    assert list(result.columns) == ["label", "p_cat", "p_dog"]
    assert result["p_dog"].dtype == np.float64 and set(result["label"]) <= {"cat", "dog"}
    np.testing.assert_allclose(result["p_cat"] + result["p_dog"], 1.0)
    keras_model = keras.models.load_model(MODELS_DIR / "fine_tuning" / "model.keras")
    pixels = np.stack([load_pixels(f, 48, 10**6) for f in files]).astype("float32")
    np.testing.assert_allclose(result["p_dog"], keras_model.predict(pixels, verbose=0).reshape(-1), rtol=1e-5)
    assert list(result["label"]) == ["dog" if p >= 0.5 else "cat" for p in result["p_dog"]]
