"""Training throughput of the `augmented` model: the book's input pipeline against ours.

    python -m bench.pipeline [--epochs 3] [--out reports/benchmark_pipeline.json]

Run inside a project folder whose `dvc repro split` is done (bench/run.py runs it in its workspace).
Each side trains the same book CNN (3,453,121 parameters) on the real training split for the same
number of epochs, in its own process, and reports images per second of `model.fit`:
- legacy: the book's pipeline, `ImageDataGenerator` (rotation 40, shifts/shear/zoom 0.2, flip,
  nearest) reading and decoding the JPEGs every epoch, float32, TensorFlow's default kernels;
- ours: the project's defaults: tf.data decoded once (cache), parallel map, prefetch, the augmentation
  layers inside the model, `train.precision`, and the oneDNN kernels that `import catsdogs` turns on.
It also measures the ceiling of any pipeline on this machine: the same CNN, with ours' kernels, fed a
batch already in memory (no decoding, no augmentation), in float32 and in mixed_bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import write_result

SIDES = ("legacy", "ours", "ceiling")
CEILING_PRECISIONS = ("float32", "mixed_bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_pipeline.json"))
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure(args.side, args.epochs)))
        return
    result = compare(args.epochs)
    write_result(args.out, result)


def compare(epochs: int) -> dict:
    sides = {side: run_side(side, epochs) for side in SIDES}
    ratio = sides["ours"]["images_per_second"] / sides["legacy"]["images_per_second"]
    steady = sides["ours"]["epoch_images_per_second"][-1] / sides["legacy"]["epoch_images_per_second"][-1]
    best = max(sides["ceiling"]["images_per_second"].values())
    return {"epochs": epochs, **sides, "speedup": round(ratio, 2), "speedup_last_epoch": round(steady, 2),
            "ceiling_speedup": round(best / sides["legacy"]["images_per_second"], 2)}


def run_side(side: str, epochs: int) -> dict:
    """Each side in a fresh process: TensorFlow reads its kernel choice (oneDNN or not) once, at import."""
    env = dict(os.environ)
    if side == "legacy":
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # TensorFlow's own default for this CPU, as the book ran
    command = [sys.executable, "-m", "bench.pipeline", "--side", side, "--epochs", str(epochs)]
    print(f"pipeline benchmark: {side} side, {epochs} epochs ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(side: str, epochs: int) -> dict:
    if side != "legacy":
        import catsdogs  # noqa: F401  (its defaults, the oneDNN kernels among them, apply before TensorFlow loads)
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default)")
    import keras

    from catsdogs.augment import build_augmentation
    from catsdogs.config import SPLITS_DIR, load_params
    from catsdogs.data import batched, binary_class_names, image_dataset, manifest_path, read_manifest
    from catsdogs.models import build_scratch_cnn, set_precision
    from catsdogs.train import compile_model

    params = load_params()
    settings = params.models["augmented"]
    keras.utils.set_random_seed(params.train.seed)
    if side == "ceiling":
        return {"TF_ENABLE_ONEDNN_OPTS": onednn, "batch_size": settings.batch_size, "images_per_second": {
            precision: in_memory_rate(params, precision) for precision in CEILING_PRECISIONS}}
    train = read_manifest(manifest_path("train", SPLITS_DIR))
    class_names = binary_class_names(train)
    size = params.image_size
    if side == "legacy":
        precision = set_precision("float32")
        model = build_scratch_cnn(size, settings.dropout, None, params.cnn)
        data = legacy_generator(train, size, settings.batch_size, params.train.seed)
    else:
        precision = set_precision(params.train.precision)
        augmentation = build_augmentation(params.augment, params.train.seed)
        model = build_scratch_cnn(size, settings.dropout, augmentation, params.cnn)
        data = batched(image_dataset(train, class_names, size, params.split.max_pixels), settings.batch_size,
                       shuffle_seed=params.train.seed)
    compile_model(model, settings, steps_per_epoch=-(-len(train) // settings.batch_size))
    timer = epoch_timer(keras)
    model.fit(data, epochs=epochs, callbacks=[timer], verbose=0)
    per_epoch = [len(train) / seconds for seconds in timer.seconds]
    return {
        "pipeline": "ImageDataGenerator.flow_from_dataframe" if side == "legacy" else "tf.data + RandomAffine",
        "precision": precision,
        "TF_ENABLE_ONEDNN_OPTS": onednn,
        "batch_size": settings.batch_size,
        "images_per_epoch": len(train),
        "epoch_seconds": [round(s, 1) for s in timer.seconds],
        "epoch_images_per_second": [round(v, 1) for v in per_epoch],
        "images_per_second": round(len(train) * epochs / sum(timer.seconds), 1),
    }


def in_memory_rate(params, precision: str, steps: int = 8) -> float:
    """Training images/s of the CNN on one batch already in memory: no input pipeline, no augmentation."""
    import numpy as np

    from catsdogs.models import build_scratch_cnn, set_precision
    from catsdogs.train import compile_model

    settings = params.models["augmented"]
    set_precision(precision)
    model = build_scratch_cnn(params.image_size, settings.dropout, None, params.cnn)
    compile_model(model, settings, steps_per_epoch=steps)
    rng = np.random.default_rng(params.train.seed)
    x = rng.uniform(0, 255, (settings.batch_size, params.image_size, params.image_size, 3)).astype("float32")
    y = rng.integers(0, 2, (settings.batch_size, 1)).astype("float32")
    model.train_on_batch(x, y)  # builds the kernels
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    rate = steps * settings.batch_size / (time.perf_counter() - started)
    print(f"  in memory, {precision}: {rate:.1f} images/s", file=sys.stderr, flush=True)
    return round(rate, 1)


def legacy_generator(images, size: int, batch_size: int, seed: int):
    """The book's generator, same transforms; the model's own Rescaling layer replaces `rescale=1/255`."""
    import pandas as pd
    from keras._tf_keras.keras.preprocessing.image import ImageDataGenerator

    frame = pd.DataFrame({"filename": [str(image.path) for image in images],
                          "class": [image.label for image in images]})
    generator = ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                                   shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")
    return generator.flow_from_dataframe(frame, target_size=(size, size), batch_size=batch_size,
                                         class_mode="binary", seed=seed)


def epoch_timer(keras):
    """A callback that keeps the wall time of each epoch of fit."""

    class EpochTimer(keras.callbacks.Callback):
        seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)
            print(f"  epoch {epoch + 1}: {self.seconds[-1]:.1f}s", file=sys.stderr, flush=True)

    return EpochTimer()


if __name__ == "__main__":
    main()
