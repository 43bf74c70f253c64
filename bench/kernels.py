"""TensorFlow's CPU kernels with and without oneDNN, on the project's own models (random data).

    python bench/kernels.py [--out reports/benchmark_kernels.json]

For each setting of TF_ENABLE_ONEDNN_OPTS (0, 1), in a fresh process (TensorFlow reads it once, at
import): training images/s of the book CNN (batch 32, float32), images/s of VGG16 blocks 1-4 in
batches of 32 (the features stage), and the latency of one image through the whole VGG16 base
(serving). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/benchmark_kernels.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    result = {}
    for setting in ("0", "1"):
        print(f"kernels benchmark: TF_ENABLE_ONEDNN_OPTS={setting} ...", file=sys.stderr, flush=True)
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
        done = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True, stdout=subprocess.PIPE,
                              text=True)
        result[f"TF_ENABLE_ONEDNN_OPTS={setting}"] = json.loads(done.stdout.strip().splitlines()[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def measure(batch: int = 32, batches: int = 8) -> dict:
    import keras
    import numpy as np

    from catsdogs.config import load_params
    from catsdogs.models import build_scratch_cnn

    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (batch * batches, 150, 150, 3)).astype("float32")
    labels = rng.integers(0, 2, (len(pixels), 1)).astype("float32")
    cnn = build_scratch_cnn(150, 0.5, None, load_params().cnn)
    cnn.compile(optimizer="adam", loss="binary_crossentropy")
    cnn.fit(pixels[:batch], labels[:batch], batch_size=batch, verbose=0)  # builds the kernels
    started = time.perf_counter()
    cnn.fit(pixels, labels, batch_size=batch, epochs=2, verbose=0)
    cnn_rate = 2 * len(pixels) / (time.perf_counter() - started)

    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(150, 150, 3))
    blocks1_4 = keras.Model(base.inputs, base.get_layer("block4_pool").output)
    blocks1_4.predict_on_batch(pixels[:batch])
    started = time.perf_counter()
    for i in range(batches):
        blocks1_4.predict_on_batch(pixels[i * batch : (i + 1) * batch])
    vgg_rate = len(pixels) / (time.perf_counter() - started)

    one = pixels[:1]
    base.predict_on_batch(one)
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        base.predict_on_batch(one)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"cnn_train_images_per_second": round(cnn_rate, 1), "vgg16_blocks1_4_images_per_second": round(vgg_rate, 1),
            "vgg16_one_image_ms_median": round(float(np.median(latencies)), 1)}


if __name__ == "__main__":
    main()
