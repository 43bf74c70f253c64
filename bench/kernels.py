"""TensorFlow's CPU kernels with and without oneDNN, in float32 and mixed bfloat16, on the project's models.

    python -m bench.kernels [--out reports/benchmark_kernels.json]

For each setting of TF_ENABLE_ONEDNN_OPTS (0, 1) and each precision, in a fresh process (TensorFlow
reads the variable once, at import): training images/s of the book CNN (batch 16, as
models.augmented trains), images/s of VGG16 blocks 1-4 in batches of 32 at 150 and 224 px (the
features stage), and the median latency of one image through the whole VGG16 base at 150 and 224 px
(serving; predict_on_batch, as serve.py calls it). Random weights and pixels: speed does not depend
on them. On a CPU without native bfloat16, mixed_bfloat16 is emulated (slow).
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

PRECISIONS = ("float32", "mixed_bfloat16")
SIZES = (150, 224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_kernels.json"))
    parser.add_argument("--child", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    result = {}
    for setting in ("0", "1"):
        for precision in PRECISIONS:
            key = f"TF_ENABLE_ONEDNN_OPTS={setting}, {precision}"
            print(f"kernels benchmark: {key} ...", file=sys.stderr, flush=True)
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
            done = subprocess.run([sys.executable, "-m", "bench.kernels", "--child", precision], env=env, check=True,
                                  stdout=subprocess.PIPE, text=True)
            result[key] = json.loads(done.stdout.strip().splitlines()[-1])
    write_result(args.out, result)


def measure(precision: str, batches: int = 4) -> dict:
    import keras
    import numpy as np

    from catsdogs.config import load_params
    from catsdogs.models import build_scratch_cnn

    keras.mixed_precision.set_global_policy(precision)
    rng = np.random.default_rng(0)
    result = {}
    batch = 16
    pixels = rng.uniform(0, 255, (batch * 8, 150, 150, 3)).astype("float32")
    labels = rng.integers(0, 2, (len(pixels), 1)).astype("float32")
    cnn = build_scratch_cnn(150, 0.0, None, load_params().cnn)
    cnn.compile(optimizer="adam", loss="binary_crossentropy")
    cnn.fit(pixels[:batch], labels[:batch], batch_size=batch, verbose=0)  # builds the kernels
    started = time.perf_counter()
    cnn.fit(pixels, labels, batch_size=batch, epochs=2, verbose=0)
    result["cnn_train_images_per_second"] = round(2 * len(pixels) / (time.perf_counter() - started), 1)

    for size in SIZES:
        base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
        blocks1_4 = keras.Model(base.inputs, base.get_layer("block4_pool").output)
        images = rng.uniform(0, 255, (32, size, size, 3)).astype("float32")
        blocks1_4.predict_on_batch(images)
        started = time.perf_counter()
        for _ in range(batches):
            blocks1_4.predict_on_batch(images)
        result[f"vgg16_blocks1_4_{size}px_images_per_second"] = round(batches * 32 / (time.perf_counter() - started),
                                                                      1)
        one = images[:1]
        for _ in range(3):
            base.predict_on_batch(one)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            base.predict_on_batch(one)
            latencies.append((time.perf_counter() - started) * 1000)
        result[f"vgg16_one_image_{size}px_ms_median"] = round(float(np.median(latencies)), 1)
    return result


if __name__ == "__main__":
    main()
