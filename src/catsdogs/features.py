"""Stage `features`: runs the frozen VGG16 blocks 1-4 once per training view and validation image.

Reads data/splits/{train,val}.csv and pretrained.weights; writes features/{train,val}_block4.npy
(float16 block4_pool activations), features/{train,val}_labels.npy and features/meta.json.
Training the VGG16 models on these (train.py) gives the same models as running the frozen
layers every epoch, for a fraction of the compute: VGG16 blocks 1-4 hold most of its operations.
Training views: view 0 is the image itself, views 1.. are random augmentations of it (the
augment section, the same layers the models carry), so augmentation survives the caching.
Blocks 1-4 run through OpenVINO. With features.int8 (the default) they are quantized to int8 first,
as compress quantizes the served model and on the same training images (compress.calibration_images):
the VGG16 models train on the activations the served int8 model computes, and the stage costs about
the same on any CPU with AVX512-VNNI or AMX, with or without native bfloat16 (reports/decisions.md,
"Blocks 1-4 in int8"). Without it they run in the precision the VGG16 models train in
(train.precision: bfloat16 for mixed_bfloat16, else float32), never in a precision OpenVINO picks
for the CPU. The layers OpenVINO leaves in floating point compute in that precision either way.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from catsdogs import configure_logging
from catsdogs.augment import build_augmentation
from catsdogs.config import FEATURES_DIR, SPLITS_DIR, ConfigError, Params, load_params
from catsdogs.data import MissingInputError, batched, binary_class_names, image_dataset, manifest_path, read_manifest
from catsdogs.int8 import calibration_pixels, compile_for_cpu, convert, quantize
from catsdogs.models import VGG16_CUT, WeightsError, build_vgg16_extractor, set_precision

log = logging.getLogger(__name__)


def main() -> None:
    configure_logging()
    try:
        params = load_params()
        keras.utils.set_random_seed(params.train.seed)
        compute_features(params, SPLITS_DIR, FEATURES_DIR)
    except (WeightsError, MissingInputError, ConfigError) as err:
        sys.exit(f"features: {err}")


def compute_features(params: Params, splits_dir: Path, out_dir: Path) -> dict:
    train = read_manifest(manifest_path("train", splits_dir))
    val = read_manifest(manifest_path("val", splits_dir))
    class_names = binary_class_names(train)
    precision = set_precision(params.train.precision)  # as the models that will run these layers
    size = params.vgg16_input_size
    extractor = build_vgg16_extractor(params.pretrained.weights, size)
    if params.features.int8:
        calibration = calibration_pixels(train, params.compress.calibration_images, params.train.seed,
                                         size, params.split.max_pixels)
        log.info("features: quantizing VGG16 blocks 1-4 to int8 on %d training images", len(calibration))
        ov_model = quantize(extractor, calibration)
    else:
        ov_model = convert(extractor)
    compiled = compile_for_cpu(ov_model, precision="bf16" if precision == "mixed_bfloat16" else "f32")
    request, output = compiled.create_infer_request(), compiled.output(0)
    augmentation = build_augmentation(params.augment, params.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"class_names": list(class_names), "views": params.features.views, "cut": VGG16_CUT,
            "image_size": size,
            "precision": precision, "runtime": "openvino", "int8": params.features.int8,
            # what OpenVINO computed in ("f32", "bf16"): f32 where the CPU has no bfloat16 (AVX2), whatever was asked
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()}
    for split, images, views in (("train", train, params.features.views), ("val", val, 1)):
        dataset = batched(
            image_dataset(images, class_names, size, params.split.max_pixels), params.features.batch_size
        )
        shape = (len(images) * views, *extractor.output.shape[1:])
        array = np.lib.format.open_memmap(out_dir / f".{split}_block4.npy", "w+", np.float16, shape)
        labels = []
        with tqdm(total=shape[0], desc=f"VGG16 blocks 1-4, {split}", unit="img", file=sys.stderr) as bar:
            row = 0
            for view in range(views):
                for pixels, y in dataset:
                    x = augmentation(pixels, training=True) if view else pixels
                    array[row : row + len(y)] = request.infer({0: np.asarray(x, np.float32)})[output].astype(np.float16)
                    labels.append(y.numpy())
                    row += len(y)
                    bar.update(len(y))
        array.flush()
        del array
        (out_dir / f".{split}_block4.npy").replace(out_dir / f"{split}_block4.npy")
        np.save(out_dir / f"{split}_labels.npy", np.concatenate(labels).astype(np.float32))
        meta[f"{split}_rows"] = shape[0]
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("features: %d train rows (%d views), %d val rows", meta["train_rows"], meta["views"], meta["val_rows"])
    return meta


if __name__ == "__main__":
    main()
