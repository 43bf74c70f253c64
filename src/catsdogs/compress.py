"""Stage `compress`: the model that register serves (register.model), quantized to int8 (catsdogs.int8).

    python -m catsdogs.compress

Reads models/<register.model>/{model.keras,run.json,metrics.json}, data/splits/train.csv
(compress.calibration_images of them, a seeded choice) and data/splits/val.csv. Writes
models/compressed/: model.xml and model.bin (OpenVINO) and metrics.json: the validation accuracy and
log loss of the int8 model next to those of the model it came from (from its metrics.json). Logs them
into the model's training run (int8_* metrics). The test split stays for evaluation and the benchmark.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn import metrics as skm

from catsdogs import configure_logging
from catsdogs.config import COMPRESSED_DIR, MODELS_DIR, SPLITS_DIR, ConfigError, Params, load_params
from catsdogs.data import LabelledImage, MissingInputError, manifest_path, read_manifest
from catsdogs.images import load_pixels
from catsdogs.int8 import XML, Int8Model, LayerError, calibration_pixels, quantize, save
from catsdogs.layers import RandomAffine, TemperatureSigmoid, VGG16Preprocess  # noqa: F401  (the saved model's layers)
from catsdogs.tracking import TRACKING_ERRORS, mlflow, setup_mlflow, tracking_failure

log = logging.getLogger(__name__)

BATCH = 32


def main() -> None:
    configure_logging()
    try:
        params = load_params()
        setup_mlflow(params.mlflow)
        compress_model(params, MODELS_DIR / params.register.model, COMPRESSED_DIR)
    except (MissingInputError, ConfigError) as err:
        sys.exit(f"compress: {err}")
    except TRACKING_ERRORS as err:
        sys.exit(f"compress: {tracking_failure(err)}")


def compress_model(params: Params, model_dir: Path, out_dir: Path, splits_dir: Path = SPLITS_DIR) -> dict:
    for required in ("model.keras", "run.json", "metrics.json"):
        if not (model_dir / required).is_file():
            raise MissingInputError(f"{model_dir / required} is missing; run: dvc repro train_{model_dir.name}")
    run = json.loads((model_dir / "run.json").read_text())
    source = json.loads((model_dir / "metrics.json").read_text())
    class_names = tuple(run["class_names"])
    model = keras.models.load_model(model_dir / "model.keras")
    size, max_pixels = model.input_shape[1], params.split.max_pixels
    train = read_manifest(manifest_path("train", splits_dir))
    calibration = calibration_pixels(train, params.compress.calibration_images, params.train.seed, size, max_pixels)
    val_pixels, y = _pixels(read_manifest(manifest_path("val", splits_dir)), class_names, size, max_pixels)

    started = time.perf_counter()
    until = params.compress.int8_until
    log.info("compress: quantizing %s to int8 (%s) on %d training images", model_dir.name,
             f"the layers up to {until}" if until else "every layer", len(calibration))
    try:
        quantized = quantize(model, calibration, until)
    except LayerError as err:
        raise ConfigError(f"compress.int8_until: {err}; set it to one of its layers or to null") from None
    save(quantized, out_dir)
    seconds = time.perf_counter() - started
    int8 = Int8Model(out_dir / XML)
    p_int8 = np.concatenate([int8.predict(val_pixels[i : i + BATCH]) for i in range(0, len(y), BATCH)])
    metrics: dict[str, Any] = {
        "model": model_dir.name,
        "val_accuracy": float(np.mean((p_int8 >= 0.5).astype(int) == y)),
        "val_loss": float(skm.log_loss(y, p_int8, labels=[0, 1])),
        "source_val_accuracy": float(source["val_accuracy"]),  # the Keras model's, from train
        "source_val_loss": float(source["val_loss"]),
        "calibration_images": len(calibration),
        "int8_until": until,
        "seconds": round(seconds, 1),
    }
    (out_dir / ".metrics.json.partial").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / ".metrics.json.partial").replace(out_dir / "metrics.json")
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.log_metrics({f"int8_{key}": float(value) for key, value in metrics.items()
                            if isinstance(value, float)})
    log.info("compress: int8 val_accuracy %.4f, val_loss %.4f (the Keras model: %.4f, %.4f), %.0fs",
             metrics["val_accuracy"], metrics["val_loss"], metrics["source_val_accuracy"], metrics["source_val_loss"],
             seconds)
    return metrics


def _pixels(images: list[LabelledImage], class_names: tuple[str, ...], size: int,
            max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack([load_pixels(image.path, size, max_pixels) for image in images]).astype(np.float32)
    return pixels, np.array([class_names.index(image.label) for image in images])


if __name__ == "__main__":
    main()
