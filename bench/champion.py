"""The served model's own speed in memory: the trained Keras model against its int8 copy.

    python -m bench.champion WORKSPACE [--repeats 50] [--passes 3] [--out reports/benchmark_champion.json]

In WORKSPACE after `dvc repro`: decodes the test split once (as the server does: catsdogs.images), then
for models/<register.model>/model.keras (Keras `predict_on_batch`) and models/compressed/model.xml (the
int8 copy, catsdogs.int8.Int8Model): the median time of one image over --repeats calls after warm-up,
images/s in batches of 16 over the whole test split (the median of --passes passes: one pass lasts seconds, and
a machine shared with others moves it by a few percent), and test accuracy and log loss of each. No HTTP:
this is the ceiling the scoring server is measured against (bench.serving).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from bench.harness import write_result

BATCH = 16
PASSES = 3  # timed passes over the test split in batches; the rate reported is their median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--passes", type=int, default=PASSES, help="timed passes over the test split in batches")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_champion.json"))
    args = parser.parse_args()
    if min(args.repeats, args.passes) < 1:
        parser.error("--repeats and --passes take at least 1")
    result = benchmark(args.workspace.resolve(), args.repeats, args.passes)
    write_result(args.out, result)


def benchmark(workspace: Path, repeats: int, passes: int = PASSES) -> dict:
    import keras

    from catsdogs import layers  # noqa: F401  (the saved model's custom layers)
    from catsdogs.config import COMPRESSED_DIR, MODELS_DIR, SPLITS_DIR, load_params
    from catsdogs.data import manifest_path, read_manifest
    from catsdogs.images import load_pixels
    from catsdogs.int8 import XML, Int8Model

    with contextlib.chdir(workspace):
        params = load_params()
        name = params.register.model
        class_names = tuple(json.loads((MODELS_DIR / name / "run.json").read_text())["class_names"])
        test = read_manifest(manifest_path("test", SPLITS_DIR))
        keras_model = keras.models.load_model(MODELS_DIR / name / "model.keras")
        size = int(keras_model.input_shape[1])
        pixels = np.stack([load_pixels(image.path, size, params.split.max_pixels) for image in test]).astype(np.float32)
        y = np.array([class_names.index(image.label) for image in test])
        int8 = Int8Model(COMPRESSED_DIR / XML)
    runners = {
        "keras": lambda x: np.asarray(keras_model.predict_on_batch(x)).reshape(-1),
        "int8": int8.predict,
    }
    result = {"model": name, "images": len(y), "repeats": repeats, "batch": BATCH, "passes": passes}
    for label, predict in runners.items():
        result[label] = measure(predict, pixels, y, repeats, passes)
    result["int8_speedup_one_image"] = round(result["keras"]["one_image_ms"] / result["int8"]["one_image_ms"], 2)
    result["int8_speedup_batch"] = round(result["int8"]["batch_images_per_second"]
                                         / result["keras"]["batch_images_per_second"], 2)
    result["int8_accuracy_change"] = round(result["int8"]["test_accuracy"] - result["keras"]["test_accuracy"], 4)
    return result


def measure(predict, pixels: np.ndarray, y: np.ndarray, repeats: int, passes: int) -> dict:
    for _ in range(5):  # warm-up: kernels built, caches filled
        predict(pixels[:1])
    predict(pixels[:BATCH])
    one = []
    for i in range(repeats):
        started = time.perf_counter()
        predict(pixels[i % len(pixels) : i % len(pixels) + 1])
        one.append(time.perf_counter() - started)
    seconds, answers = [], []
    for _ in range(passes):
        started = time.perf_counter()
        answers.append(np.concatenate([predict(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]))
        seconds.append(time.perf_counter() - started)
    p = answers[0].astype(np.float64)
    if any(not np.array_equal(answers[0], other) for other in answers[1:]):
        raise RuntimeError("the same images gave other probabilities in another pass")
    return {
        "one_image_ms": round(1000 * float(np.median(one)), 1),
        "one_image_p95_ms": round(1000 * float(np.percentile(one, 95)), 1),
        "batch_images_per_second": round(len(pixels) / float(np.median(seconds)), 1),
        "batch_images_per_second_passes": [round(len(pixels) / each, 1) for each in seconds],
        "test_accuracy": float(np.mean((p >= 0.5).astype(int) == y)),
        "test_log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
    }


if __name__ == "__main__":
    sys.exit(main())
