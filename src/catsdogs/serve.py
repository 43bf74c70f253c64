"""The served model: an MLflow pyfunc that takes image files and answers label and class probabilities.

Input: a DataFrame with a column `image` holding base64-encoded files (JPEG, PNG, GIF, BMP,
WebP...; any size and colour mode), in any of MLflow's request shapes:

    {"dataframe_records": [{"image": "<base64>"}, ...]}
    {"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}
    {"inputs": {"image": ["<base64>", ...]}}

Output, one row per image: `label` (e.g. "cat" / "dog") and `p_<class>`, the probability of each
class. Bad input raises MlflowException(INVALID_PARAMETER_VALUE), which the scoring server turns
into an HTTP 400 naming the problem; no URL is ever fetched.
Imports no training code: decoding is catsdogs.images, the model is the int8 copy of the trained model
(catsdogs.int8, OpenVINO) or the trained .keras file.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

import catsdogs
from catsdogs.images import ImageError, load_pixels

# Before TensorFlow loads (load_context): for one image per call on a CPU without native bfloat16,
# TensorFlow's own kernels answer faster than oneDNN's. On a CPU with AVX512-BF16/AMX, models train (and
# are saved) in mixed bfloat16, which only oneDNN runs fast: it stays on. Measured by `python -m
# bench.kernels`; the figures are in reports/decisions.md ("oneDNN kernels").
if not catsdogs.ONEDNN_SET_BY_USER and "tensorflow" not in sys.modules and not catsdogs.cpu_has_fast_bfloat16():
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"

COLUMN = "image"
MAX_IMAGES_PER_REQUEST = 64


def signature(class_names: list[str]) -> ModelSignature:
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", "label")]
    outputs += [ColSpec("double", f"p_{name}") for name in class_names]
    # errors: "raise" (one bad image fails the request: HTTP 400) or "column" (batch scoring: a bad image
    # gets a row with `error` set and no label, and the others are classified, with an empty `error`)
    params = ParamSchema([ParamSpec("errors", "string", "raise")])
    return ModelSignature(inputs=Schema([ColSpec("string", COLUMN)]), outputs=Schema(outputs), params=params)


class ImageClassifier(PythonModel):
    """model_config: class_names (negative, positive), max_pixels; the image size is the saved model's input.

    Artifacts: `int8_model` (a folder with the int8 OpenVINO model.xml / model.bin: catsdogs.int8) or
    `keras_model` (the trained .keras file). Both answer the same calibrated probability.
    """

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config
        self.class_names = list(config["class_names"])
        self.max_pixels = int(config["max_pixels"])
        if "int8_model" in context.artifacts:
            from catsdogs.int8 import XML, Int8Model

            int8 = Int8Model(os.path.join(context.artifacts["int8_model"], XML), concurrent=True)
            self.model: Any = int8
            self.image_size = int8.image_size
            # concurrent requests run side by side in it, each on a core (catsdogs.int8)
            self._predict_batch: Callable[[np.ndarray], np.ndarray] = int8.predict
        else:
            import keras

            from catsdogs import layers  # noqa: F401  registers the custom layers the .keras file uses

            self.model = keras.models.load_model(context.artifacts["keras_model"])
            self.image_size = int(self.model.input_shape[1])
            # predict_on_batch: one graph call; predict() would build a tf.data pipeline for every request
            predict = self.model.predict_on_batch
            self._predict_batch = CallBatcher(lambda x: np.asarray(predict(x)).reshape(-1), MAX_IMAGES_PER_REQUEST)
        # Warm-up: the first call builds the kernels; the first request should not wait for it.
        self._p_positive(np.zeros((1, self.image_size, self.image_size, 3), np.float32))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        errors = (params or {}).get("errors", "raise")
        if errors not in ("raise", "column"):
            raise _bad_request(f"params.errors must be 'raise' or 'column', got {errors!r}")
        values = _images(model_input, limit=MAX_IMAGES_PER_REQUEST if errors == "raise" else None)
        pixels, failures = [], {}
        for index, value in enumerate(values):
            try:
                pixels.append(self._decode(value))
            except MlflowException as err:
                if errors == "raise":  # HTTP 400 for the whole request: say which image
                    raise _bad_request(f"image {index}: {err.message}") from None
                failures[index] = err.message
        p_positive = np.full(len(values), np.nan)
        good = [i for i in range(len(values)) if i not in failures]
        if good:
            p_positive[good] = self._p_positive(np.stack(pixels))
        negative, positive = self.class_names
        result = pd.DataFrame({
            "label": np.where(p_positive >= 0.5, positive, negative),
            f"p_{negative}": 1.0 - p_positive,
            f"p_{positive}": p_positive,
        })
        if errors == "column":
            result.loc[list(failures), "label"] = None
            # "" when fine: Spark UDFs (mlflow.pyfunc.spark_udf) turn a None string into "None"
            result["error"] = pd.Series([failures.get(i, "") for i in range(len(values))], dtype=object)
        return result

    def _p_positive(self, pixels: np.ndarray) -> np.ndarray:
        """The positive class's probability, MAX_IMAGES_PER_REQUEST images per model call at most."""
        chunks = [
            np.asarray(self._predict_batch(pixels[i : i + MAX_IMAGES_PER_REQUEST].astype(np.float32)))
            for i in range(0, len(pixels), MAX_IMAGES_PER_REQUEST)
        ]
        return np.concatenate(chunks).reshape(-1).astype(np.float64)

    def _decode(self, value: Any) -> np.ndarray:
        if isinstance(value, str):
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _bad_request("not valid base64") from None
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        else:
            raise _bad_request(f"expected a base64 string, got {type(value).__name__}")
        try:
            return load_pixels(data, self.image_size, self.max_pixels)
        except ImageError as err:
            raise _bad_request(str(err)) from None


class CallBatcher:
    """One model call at a time; the requests that arrive during a call go through the next call together.

    The scoring server runs each request's predict in a thread of its own. Two model calls at once would
    each claim every core; queued instead, the requests that arrive while the model runs are stacked into
    one batch (up to max_images) for its next call, which is cheaper per image than one call each.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_images: int):
        self._predict, self._max_images = predict, max_images
        self._queue: list[_Job] = []
        self._busy = False
        self._changed = threading.Condition()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        job, jobs = _Job(pixels), []
        with self._changed:
            self._queue.append(job)
            while self._busy and not job.done:
                self._changed.wait()
            if not job.done:  # the model is free and no call took this job: run it, with what else is queued
                self._busy = True
                jobs = self._take(job)
        if jobs:
            self._run(jobs)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _take(self, first: _Job) -> list[_Job]:
        jobs, size = [first], len(first.pixels)
        for job in self._queue:
            if job is not first and size + len(job.pixels) <= self._max_images:
                jobs.append(job)
                size += len(job.pixels)
        self._queue = [job for job in self._queue if all(job is not taken for taken in jobs)]
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        try:
            p = self._predict(np.concatenate([job.pixels for job in jobs]))
            start = 0
            for job in jobs:
                job.result, start = p[start : start + len(job.pixels)], start + len(job.pixels)
        except Exception as err:  # every request of the batch gets the model's error
            for job in jobs:
                job.error = err
        finally:
            with self._changed:
                for job in jobs:
                    job.done = True
                self._busy = False
                self._changed.notify_all()


class _Job:
    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.result: np.ndarray | None = None
        self.error: Exception | None = None
        self.done = False  # set under CallBatcher's condition


def _images(model_input: Any, limit: int | None) -> list:
    if isinstance(model_input, pd.DataFrame):
        if COLUMN not in model_input.columns:
            raise _bad_request(f"missing column '{COLUMN}' (base64-encoded image files)")
        values = model_input[COLUMN].tolist()
    elif isinstance(model_input, dict) and COLUMN in model_input:
        values = list(np.atleast_1d(model_input[COLUMN]))
    else:
        raise _bad_request(f"expected a table with a column '{COLUMN}' of base64-encoded image files")
    if not values:
        raise _bad_request("no images in the request")
    if limit is not None and len(values) > limit:
        raise _bad_request(f"{len(values)} images in one request; the limit is {limit}")
    return values


def _bad_request(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def predict_files(paths: list[str], model_uri: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Classify image files with a registered (or any pyfunc) model; (results per file, errors per file)."""
    model = mlflow.pyfunc.load_model(model_uri)
    rows, errors = [], {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                encoded = base64.b64encode(f.read()).decode()
            result = model.predict(pd.DataFrame({COLUMN: [encoded]}))
        except IsADirectoryError:
            errors[path] = "a folder: name its files (folder/*.jpg), or classify folders with catsdogs score"
            continue
        except OSError as err:
            errors[path] = err.strerror or str(err)
            continue
        except MlflowException as err:  # one file per call: its index in the request (0) says nothing here
            errors[path] = err.message.split("Error: ")[-1].removeprefix("image 0: ")
            continue
        rows.append({"path": path, **result.iloc[0].to_dict()})
    return pd.DataFrame(rows), errors
