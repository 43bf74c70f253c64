"""The compress stage and the int8 runtime, on the tiny project's fine-tuned model (random VGG16 weights)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from catsdogs.config import COMPRESSED_DIR, MODELS_DIR, load_params
from catsdogs.int8 import Int8Model, float32_copy
from catsdogs.models import build_vgg16_classifier


def test_compress_writes_an_int8_model_that_answers_like_the_keras_one(champion: dict, in_project: Path) -> None:
    metrics = json.loads((COMPRESSED_DIR / "metrics.json").read_text())
    assert metrics["model"] == "fine_tuning" and metrics["calibration_images"] == 24  # all 24 training images
    assert set(metrics) >= {"val_accuracy", "val_loss", "source_val_accuracy", "source_val_loss", "label_agreement"}
    xml = (COMPRESSED_DIR / "model.xml").read_text()
    assert "FakeQuantize" in xml or 'element_type="i8"' in xml, "the convolutions run on int8"
    int8 = Int8Model(COMPRESSED_DIR / "model.xml")
    source = keras.models.load_model(MODELS_DIR / "fine_tuning" / "model.keras")
    pixels = np.random.default_rng(5).integers(0, 256, (5, 48, 48, 3)).astype("float32")
    p = int8.predict(pixels)
    assert p.shape == (5,) and p.dtype == np.float64
    np.testing.assert_allclose(p, source.predict(pixels, verbose=0).reshape(-1), atol=0.01)
    run_id = json.loads((MODELS_DIR / "fine_tuning" / "run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(load_params().mlflow.tracking_uri).get_run(run_id).data.metrics
    assert logged["int8_val_accuracy"] == pytest.approx(metrics["val_accuracy"])


def test_int8_model_answers_concurrent_callers_each_their_own(champion: dict, in_project: Path) -> None:
    """The scoring server calls predict from several threads at once: no answer may be another's."""
    int8 = Int8Model(COMPRESSED_DIR / "model.xml")
    batches = [np.random.default_rng(seed).integers(0, 256, (1 + seed % 3, 48, 48, 3)).astype("float32")
               for seed in range(8)]
    expected = [int8.predict(batch) for batch in batches]
    answers: dict[int, list[np.ndarray]] = {i: [] for i in range(len(batches))}

    def call(i: int) -> None:
        for _ in range(10):
            answers[i].append(int8.predict(batches[i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, results in answers.items():
        assert len(results) == 10
        for result in results:
            np.testing.assert_array_equal(result, expected[i])


def test_float32_copy_computes_in_float32_with_the_same_weights() -> None:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    mixed = build_vgg16_classifier(48, None, 0.5, None, 48)
    keras.mixed_precision.set_global_policy("float32")
    copy = float32_copy(mixed)
    assert {layer.compute_dtype for layer in copy.get_layer("vgg16").layers} == {"float32"}
    assert {layer.dtype_policy.name for layer in mixed.get_layer("vgg16").layers} == {"mixed_bfloat16"}
    for a, b in zip(mixed.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    pixels = np.random.default_rng(6).integers(0, 256, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(copy.predict(pixels, verbose=0), mixed.predict(pixels, verbose=0), atol=0.02)
