"""The compress stage and the int8 runtime, on the tiny project's fine-tuned model (random VGG16 weights)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest

from catsdogs.compress import compress_model
from catsdogs.config import COMPRESSED_DIR, MODELS_DIR, SPLITS_DIR, ConfigError, load_params
from catsdogs.data import manifest_path, read_manifest
from catsdogs.images import load_pixels
from catsdogs.int8 import Int8Model, float32_copy, quantize, save
from catsdogs.models import build_vgg16_classifier
from conftest import make_params


def test_compress_writes_an_int8_model_that_answers_like_the_keras_one(champion: dict, in_project: Path) -> None:
    metrics = json.loads((COMPRESSED_DIR / "metrics.json").read_text())
    assert metrics["model"] == "fine_tuning" and metrics["calibration_images"] == 24  # all 24 training images
    trained = json.loads((MODELS_DIR / "fine_tuning" / "metrics.json").read_text())
    assert metrics["source_val_accuracy"] == trained["val_accuracy"]
    assert metrics["source_val_loss"] == trained["val_loss"]
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["val_loss"] > 0
    assert metrics["int8_until"] is None
    # the default: all 13 convolutions of VGG16 and the head's 2 dense layers take int8 inputs
    assert _int8_inputs(COMPRESSED_DIR / "model.xml") == [True] * 15
    # The images the model is for (the held-out ones): the int8 logits follow the Keras model's. With random
    # VGG16 weights the logits are a few hundredths, so rounding shows; a broken quantization (e.g. ranges
    # measured on the bfloat16 graph) answers noise or a constant.
    images = read_manifest(manifest_path("val", SPLITS_DIR)) + read_manifest(manifest_path("test", SPLITS_DIR))
    pixels = np.stack([load_pixels(image.path, 48, 10**8) for image in images]).astype("float32")
    p = Int8Model(COMPRESSED_DIR / "model.xml").predict(pixels)
    assert p.shape == (len(images),) and p.dtype == np.float64
    source = keras.models.load_model(MODELS_DIR / "fine_tuning" / "model.keras")
    temperature = float(source.get_layer("p_dog").temperature.numpy())
    logits = keras.Model(source.inputs, source.get_layer("logit").output).predict(pixels, verbose=0).reshape(-1)
    int8_logits = temperature * np.log(p / (1 - p))
    assert np.corrcoef(int8_logits, logits)[0, 1] > 0.9
    run_id = json.loads((MODELS_DIR / "fine_tuning" / "run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient(load_params().mlflow.tracking_uri).get_run(run_id).data.metrics
    assert logged["int8_val_accuracy"] == pytest.approx(metrics["val_accuracy"])


def _int8_inputs(xml: Path) -> list[bool]:
    """For each convolution and matrix product of the saved model, in order: whether its input is quantized (a
    FakeQuantize before it, or before the pooling or reshaping that feeds it)."""
    import openvino

    def source(op: Any) -> str:
        node = op.input_value(0).get_node()
        while node.get_type_name() in ("MaxPool", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        return node.get_type_name()

    return [source(op) == "FakeQuantize"
            for op in openvino.Core().read_model(xml).get_ordered_ops()
            if op.get_type_name() in ("Convolution", "MatMul")]


def test_int8_until_keeps_the_later_layers_in_float_and_a_missing_layer_is_named(champion: dict, in_project: Path,
                                                                                  tmp_path: Path) -> None:
    model = keras.models.load_model(MODELS_DIR / "fine_tuning" / "model.keras")
    pixels = np.random.default_rng(3).integers(0, 256, (4, 48, 48, 3)).astype("float32")
    save(quantize(model, pixels, "block4_pool"), tmp_path / "blocks1-4")
    # VGG16 blocks 1-4 (10 convolutions) take int8 inputs; block5's 3 and the head's 2 dense layers stay in float
    assert _int8_inputs(tmp_path / "blocks1-4" / "model.xml") == [True] * 10 + [False] * 5
    missing = "compress.int8_until: the model vgg16_classifier has no layer named 'block6'"
    with pytest.raises(ConfigError, match=missing):
        compress_model(make_params(**{"compress.int8_until": "block6"}), MODELS_DIR / "fine_tuning", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_int8_model_answers_concurrent_callers_each_their_own(champion: dict, in_project: Path) -> None:
    """The scoring server calls predict from several threads at once: no answer may be another's, and the calls
    made while another runs (through the second compilation, a stream per core) answer as a lone call does."""
    int8 = Int8Model(COMPRESSED_DIR / "model.xml", concurrent=True)
    assert int8.side_by_side is not None
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
    side_by_side = int8.side_by_side.create_infer_request().infer({0: batches[3]})[int8.side_by_side.output(0)]
    np.testing.assert_array_equal(np.asarray(side_by_side).reshape(-1), expected[3])


def test_float32_copy_computes_in_float32_with_the_same_weights() -> None:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    mixed = build_vgg16_classifier(48, None, 0.5, None)
    keras.mixed_precision.set_global_policy("float32")
    copy = float32_copy(mixed)
    assert {layer.compute_dtype for layer in copy.get_layer("vgg16").layers} == {"float32"}
    assert {layer.dtype_policy.name for layer in mixed.get_layer("vgg16").layers} == {"mixed_bfloat16"}
    for a, b in zip(mixed.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    pixels = np.random.default_rng(6).integers(0, 256, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(copy.predict(pixels, verbose=0), mixed.predict(pixels, verbose=0), atol=0.02)


def test_converting_a_model_sends_no_usage_statistics(tmp_path: Path) -> None:
    """OpenVINO's converter would send Google Analytics events and write a client id under ~/intel; convert
    turns that off for the conversion and leaves the environment as it was."""
    import os
    import subprocess
    import sys

    code = (
        "import os, keras\n"
        "from catsdogs.int8 import convert\n"
        "inputs = keras.Input((8, 8, 3))\n"
        "convert(keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs)))\n"
        "print(os.environ.get('CI'))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    result = subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(tmp_path)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "None"
    assert not (tmp_path / "intel" / "openvino_ga_cid").exists()
