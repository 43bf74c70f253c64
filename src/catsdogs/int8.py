"""Keras models run by OpenVINO: a trained model compressed to int8 for serving (NNCF's post-training
quantization), and the conversion and quantization that the features stage uses too (VGG16 blocks 1-4).

`quantize` turns a saved Keras model into an OpenVINO model whose convolutions and dense layers run in
int8: the same input (raw 0-255 pixels, image_size square) and the same output (the calibrated
p(positive class)). NNCF measures each layer's activation range on a few hundred training images and
corrects the biases that rounding shifts; nothing is retrained. `Int8Model` runs the saved result
(model.xml + model.bin) and is safe to call from several threads at once, as the scoring server does.
Why int8 and what it costs in accuracy: reports/decisions.md ("A champion twice as cheap").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs.images import load_pixels

# NNCF sends usage statistics unless told it runs in CI (its only switch). OpenVINO's model converter
# does too: openvino is imported through _openvino.
os.environ.setdefault("NNCF_CI", "1")

XML, BIN = "model.xml", "model.bin"


class LayerError(ValueError):
    """The layer that quantization should stop at is not one this model's layers can be matched to."""


def float32_copy(model: Any) -> Any:
    """The same Keras model and weights with every layer computing in float32 (a mixed-precision model casts
    to bfloat16 inside; the quantizer wants float32 ranges). Augmentation layers stay the identity."""
    import keras

    copy = keras.Model.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(config["config"].get("name", "")).startswith("mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def convert(model: Any) -> Any:
    """The Keras `model` as a float32 openvino.Model (the same input, any batch size), by way of a
    TensorFlow SavedModel."""
    ov = _openvino()
    with tempfile.TemporaryDirectory(prefix="catsdogs-export-") as folder:
        float32_copy(model).export(folder, format="tf_saved_model", verbose=False)
        with _telemetry_off():
            converted = ov.convert_model(folder)
    converted.reshape([-1, *model.input_shape[1:]])
    return converted


def _openvino() -> Any:
    """The openvino module, imported with its telemetry off."""
    with _telemetry_off():
        import openvino

    return openvino


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """OpenVINO's model converter writes a client id under ~/intel when openvino is imported, and sends usage
    statistics to Google Analytics (from forked processes) when it converts, unless the user opted out in
    ~/intel/openvino_telemetry or it runs in CI, which it reads from CI=true at both moments. That is its
    only switch that leaves the user's own setting alone: set meanwhile, then restored."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = before


def compile_for_cpu(ov_model: Any, threads: int | None = None, precision: str | None = None,
                    hint: str = "LATENCY") -> Any:
    """`ov_model` (an openvino.Model or a model.xml path) compiled for this CPU. hint "LATENCY": one stream using
    every core, for one call at a time (on 2 cores as fast in batches as two streams fed at once:
    reports/decisions.md); "THROUGHPUT": OpenVINO's streams for calls side by side (on 2 cores: two streams of one
    thread each). `precision` ("f32", "bf16") is what the layers left in floating point compute in; None:
    OpenVINO's default for this CPU, which is bfloat16 wherever the CPU has it natively (AVX512-BF16, AMX)."""
    ov = _openvino()
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(str(ov_model) if isinstance(ov_model, Path | str) else ov_model, "CPU", config)


def quantize(model: Any, calibration_pixels: np.ndarray, int8_until: str | None = None) -> Any:
    """An int8 OpenVINO model of the Keras `model`, its activation ranges measured on calibration_pixels
    (N, size, size, 3 float32 raw pixels). Returns an openvino.Model (save it with save).

    int8_until: the name of a layer of `model` (or of a model inside it, e.g. "block4_pool"): the convolutions
    and dense layers after it stay in floating point. None: all of them run in int8."""
    converted = convert(model)  # first: nncf imports openvino
    import nncf

    kept = nncf.IgnoredScope(names=layers_after(model, converted, int8_until)) if int8_until else None
    samples = nncf.Dataset([calibration_pixels[i : i + 1] for i in range(len(calibration_pixels))])
    return nncf.quantize(converted, samples, subset_size=len(calibration_pixels),
                         preset=nncf.QuantizationPreset.PERFORMANCE, ignored_scope=kept)


def layers_after(model: Any, ov_model: Any, layer: str) -> list[str]:
    """The names in `ov_model` (`model` converted) of the convolutions and matrix products of the Keras `model`'s
    Conv2D and Dense layers that come after its layer `layer`. The converter renames convolutions
    ("Convolution_<n>"), so they are matched by order: the models here are chains of layers, and the converted
    graph keeps their order and their count (checked)."""
    import keras

    layers = list(_layers(model))
    names = [each.name for each in layers]
    if layer not in names:
        raise LayerError(f"the model {model.name} has no layer named {layer!r}")
    computing = [isinstance(each, keras.layers.Conv2D | keras.layers.Dense) for each in layers]
    ops = [op.get_friendly_name() for op in ov_model.get_ordered_ops()
           if op.get_type_name() in ("Convolution", "MatMul")]
    if len(ops) != sum(computing):
        raise LayerError(f"{model.name}: {sum(computing)} Conv2D and Dense layers, but {len(ops)} convolutions and "
                         "matrix products once converted")
    return ops[len(ops) - sum(computing[names.index(layer) + 1 :]) :]


def _layers(model: Any) -> Iterator[Any]:
    """The layers of `model` in order, those of a model inside it in its place, followed by that model."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        yield layer


def calibration_pixels(images: list, count: int, seed: int, size: int, max_pixels: int) -> np.ndarray:
    """The pixels (float32, size square) of the `count` of `images` (a training manifest) whose activations set
    the int8 ranges: a seeded choice in manifest order, the same for compress and features, so blocks 1-4
    quantize alike in both."""
    chosen = np.random.default_rng(seed).choice(len(images), min(count, len(images)), replace=False)
    return np.stack([load_pixels(images[i].path, size, max_pixels) for i in sorted(chosen)]).astype(np.float32)


def save(ov_model: Any, folder: Path) -> None:
    """model.xml and model.bin in `folder`, written beside their names and renamed (DVC never sees half)."""
    ov = _openvino()
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, folder / f".partial.{XML}")
    (folder / f".partial.{BIN}").replace(folder / BIN)
    (folder / f".partial.{XML}").replace(folder / XML)


class Int8Model:
    """p(positive class) from raw pixels with a saved int8 model (model.xml; model.bin beside it).

    Safe to call from several threads at once, as the scoring server does, each thread with inference requests
    of its own. A call made while no other runs goes through the model compiled for latency (every core on it);
    calls made while another runs go through a second compilation with one stream per core, so that concurrent
    requests run side by side, each on a core, instead of taking turns on all of them: on 2 cores threads that
    take turns lose CPU time at every hand-off (reports/decisions.md, "The served champion under load").
    `concurrent=False` (a single caller): the latency compilation only, one model in memory.
    """

    def __init__(self, xml: Path | str, threads: int | None = None, concurrent: bool = False):
        self.compiled = compile_for_cpu(xml, threads)
        self.side_by_side = compile_for_cpu(xml, threads, hint="THROUGHPUT") if concurrent else None
        self.image_size = int(self.compiled.input(0).get_partial_shape()[1].get_length())
        self._local = threading.local()
        self._running = 0
        self._lock = threading.Lock()
        if self.side_by_side is not None:  # its first call builds what it needs; not the first request's
            blank = np.zeros((1, self.image_size, self.image_size, 3), np.float32)
            self.side_by_side.create_infer_request().infer({0: blank})

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) pixels -> N probabilities (float64)."""
        with self._lock:
            compiled = self.compiled if self._running == 0 or self.side_by_side is None else self.side_by_side
            self._running += 1
        try:
            requests = self._local.__dict__.setdefault("requests", {})  # this thread's, one per compilation
            if id(compiled) not in requests:
                requests[id(compiled)] = compiled.create_infer_request()
            result = requests[id(compiled)].infer({0: np.ascontiguousarray(pixels, dtype=np.float32)})
            return np.asarray(result[compiled.output(0)]).reshape(-1).astype(np.float64)
        finally:
            with self._lock:
                self._running -= 1
