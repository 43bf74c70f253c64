"""Stage `train`: fits one model and logs it as one MLflow run.

    python -m catsdogs.train {scratch|augmented|feature_extraction|fine_tuning}

Reads params.yaml, data/splits/ (the CNNs, from pixels) or features/ (the VGG16 models, from the
frozen base's cached activations) and, for fine_tuning, models/feature_extraction/{model.keras,
val_block4.npz}. Writes models/<name>/model.keras (a full model taking raw pixels, its probability
calibrated on the validation set: catsdogs.calibration), history.csv, metrics.json and run.json (the
MLflow run id, so that later stages log into the same run); feature_extraction also val_block4.npz.
An interrupted run resumes from .backup/<name>/ (Keras BackupAndRestore, the same MLflow run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import keras
import numpy as np
from mlflow.keras import MlflowCallback
from scipy.special import expit
from sklearn.metrics import log_loss

from catsdogs import configure_logging, describe_machine
from catsdogs.augment import build_augmentation
from catsdogs.calibration import LOGIT_LAYER, fit_temperature, set_temperature
from catsdogs.config import (
    BACKUP_DIR,
    FEATURES_DIR,
    MODELS_DIR,
    SPLITS_DIR,
    VGG16_MODELS,
    ConfigError,
    ModelParams,
    Params,
    flatten,
    load_params,
    parse_model_name,
)
from catsdogs.data import (
    MissingInputError,
    batched,
    binary_class_names,
    image_dataset,
    manifest_path,
    read_history,
    read_manifest,
)
from catsdogs.layers import RandomAffine, TemperatureSigmoid, VGG16Preprocess
from catsdogs.models import (
    VGG16_CUT,
    VGG16_LAST,
    WeightsError,
    build_scratch_cnn,
    build_vgg16_classifier,
    count_params,
    front_model,
    set_precision,
    tail_model,
    unfreeze_block5,
)
from catsdogs.tracking import (
    TRACKING_ERRORS,
    log_splits,
    mlflow,
    model_requirements,
    run_tags,
    setup_mlflow,
    tracking_failure,
)

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

# name -> (learning rate or schedule, weight decay or None) -> optimizer. Keras applies the weight decay
# decoupled from the gradient, as AdamW does (keras.optimizers.AdamW is Adam with it).
OPTIMIZERS = {
    "adam": lambda lr, decay: keras.optimizers.Adam(learning_rate=lr, weight_decay=decay),
    "rmsprop": lambda lr, decay: keras.optimizers.RMSprop(learning_rate=lr, weight_decay=decay),
    "sgd": lambda lr, decay: keras.optimizers.SGD(learning_rate=lr, momentum=0.9, weight_decay=decay),
}
# The validation photos through a whole VGG16 model (for its temperature) in batches this small: in float32 at
# 224 px a batch of 32 holds about 1 GB of activations, on top of the training data still in memory.
VGG16_PHOTO_BATCH = 8
# Feature extraction keeps its calibration's block4 activations of the validation photos here (in its model's
# folder); a fine-tuning run started from it has the same frozen blocks 1-4 and reuses them (Block4Share).
VAL_BLOCK4_FILE = "val_block4.npz"
# Bytes a buffer TensorFlow takes over must be aligned to (its CPU kernels check; Eigen's maximum alignment).
TENSOR_ALIGNMENT = 64


def main(argv: list[str] | None = None) -> None:
    name = parse_model_name(argv, __doc__)
    configure_logging()
    try:
        params = load_params()
        train_model(name, params, MODELS_DIR / name, BACKUP_DIR / name)
    except (WeightsError, MissingInputError, ConfigError) as err:
        sys.exit(f"train {name}: {err}")
    except TRACKING_ERRORS as err:
        sys.exit(f"train {name}: {tracking_failure(err)}: the interrupted run resumes where it stopped")


def train_model(name: str, params: Params, out_dir: Path, backup_dir: Path) -> dict:
    precision = set_precision(params.train.precision)
    keras.utils.set_random_seed(params.train.seed)
    parent_run_id = setup_mlflow(params.mlflow)
    resumed = resumable_run(backup_dir, flatten(params))
    started = time.perf_counter()
    with mlflow.start_run(run_id=resumed, run_name=name, tags=run_tags(f"train_{name}", parent_run_id),
                          log_system_metrics=True) as run:
        (backup_dir / "run_id").write_text(run.info.run_id)
        job = RECIPES[name](params, params.models[name])
        trainable, frozen = count_params(job.model)
        if resumed is None:
            mlflow.log_params({**run_params(name, params, precision), "class_names": ",".join(job.class_names)})
            mlflow.log_metrics({"trainable_params": trainable, "non_trainable_params": frozen})
            log_splits(("train", "val"), params.data.url)
        else:
            log.info("resuming run %s from %s", resumed, backup_dir)
        history = fit(job.trained_part, job.train_data, job.val_data, params.models[name], backup_dir)
        temperature, logits, labels, block4 = calibrate(job)
        metrics = {
            "val_accuracy": float(np.mean((logits >= 0) == (labels >= 0.5))),
            "val_loss": float(log_loss(labels, expit(logits / temperature), labels=[0, 1])),  # as saved
            "val_loss_uncalibrated": float(log_loss(labels, expit(logits), labels=[0, 1])),
            "temperature": temperature,
            "best_epoch": int(np.argmin(history["val_loss"])) + 1,
            "epochs": len(history["val_loss"]),
            "train_seconds": round(time.perf_counter() - started, 1),
        }
        mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        mlflow.log_figure(plot_history(history, name), "learning_curves.png")
        model_info = log_model(job.model, job.val_photos, job.class_names)
        write_outputs(out_dir, job.model, backup_dir / "history.csv", metrics,
                      {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                       "model_uri": model_info.model_uri, "class_names": list(job.class_names),
                       "precision": precision, "machine": describe_machine()},
                      block4 if job.block4 is not None and job.block4.save else None)
    shutil.rmtree(backup_dir, ignore_errors=True)
    log.info("%s: val_accuracy %.4f after %d epochs (best %d), %.0fs, run %s", name, metrics["val_accuracy"],
             metrics["epochs"], metrics["best_epoch"], metrics["train_seconds"], run.info.run_id)
    return metrics


def run_params(name: str, params: Params, precision: str) -> dict[str, Any]:
    """The settings that shaped this model, under the names every run uses: its own models.<name> section as
    plain keys (epochs, learning_rate, views, ...), the model's name and the precision `train.precision` resolved
    to, then the shared sections it read (dotted, as in params.yaml). Not the other models' sections."""
    settings, vgg16 = params.models[name], name in VGG16_MODELS
    sections = ["image_size", "train"]
    sections += ["pretrained", "features", "compress.calibration_images"] if vgg16 else ["split.max_pixels", "cnn"]
    if settings.augment:
        sections.append("augment")
    shared = {key: value for key, value in flatten(params).items()
              if any(key == section or key.startswith(f"{section}.") for section in sections)}
    own = flatten(settings)
    if vgg16:  # the views it trained on, null resolved
        own["views"] = ",".join(str(view) for view in params.training_views(name))
    return {**own, "model": name, "precision": precision, **shared}


def resumable_run(backup_dir: Path, flat_params: dict) -> str | None:
    """The MLflow run id of an interrupted run with the same params, whose backup BackupAndRestore resumes.

    A backup left by a run with other params is stale: it is removed and training starts over.
    """
    params_file, run_file = backup_dir / "params.json", backup_dir / "run_id"
    current = json.dumps(flat_params, sort_keys=True)
    if run_file.is_file() and params_file.is_file() and params_file.read_text() == current:
        return run_file.read_text().strip()
    if run_file.is_file():  # the stale run will never finish: say so in MLflow rather than leave it RUNNING
        stale = run_file.read_text().strip()
        log.warning("params changed since run %s was interrupted: starting over; marking it KILLED", stale)
        mlflow.MlflowClient().set_terminated(stale, "KILLED")
    shutil.rmtree(backup_dir, ignore_errors=True)
    backup_dir.mkdir(parents=True)
    params_file.write_text(current)
    return None


# Batched (pixels, labels) from the manifests, or an (activations, labels) pair of tensors.
Data: TypeAlias = "tf.data.Dataset | tuple[Any, Any]"


@dataclass(frozen=True)
class TrainingJob:
    """What one model trains: the full model that is saved, the part of it that is fitted, and on what."""

    model: keras.Model  # raw pixels in: saved, logged, evaluated and served
    trained_part: keras.Model  # `model` itself, or its layers after the cached VGG16 cut (they share weights)
    train_data: Data
    val_data: Data  # what training validates on (early stopping): the photos, or their cached activations
    val_photos: tf.data.Dataset  # the validation photos as `model` takes them (its temperature is fitted on them)
    class_names: tuple[str, ...]
    block4: Block4Share | None = None  # a VGG16 model: its calibration runs blocks 1-4 apart from the rest


@dataclass(frozen=True)
class Block4Share:
    """How a VGG16 model's calibration gets the validation photos' activations after its frozen blocks 1-4.

    The whole model's logits are `front` (its layers up to VGG16_CUT, in Keras as it is saved) then the rest.
    Feature extraction computes them and saves them with `key`; fine-tuning, whose blocks 1-4 are the same
    frozen layers, loads them from its start's folder when the key matches, and runs only block5 and the head:
    in float32 that spares a whole-VGG16 pass over the validation photos (about a minute and a half here).
    """

    front: keras.Model
    key: str  # the front's weights and dtypes, the validation manifest and how its photos are decoded
    source: Path | None  # the saved activations to reuse, if their key matches
    save: bool  # keep them in the model's folder (VAL_BLOCK4_FILE) for a run started from this model


def cnn_job(params: Params, settings: ModelParams) -> TrainingJob:
    """scratch and augmented: the small CNN on decoded pixels, augmented inside the model if asked."""
    train = read_manifest(manifest_path("train", SPLITS_DIR))
    class_names = binary_class_names(train)
    model = build_scratch_cnn(params.image_size, settings.dropout, _augmentation(params, settings), params.cnn)
    if settings.init_from:
        copy_weights(load_trained(settings.init_from), model)
    train_ds = batched(image_dataset(train, class_names, params.image_size, params.split.max_pixels),
                       settings.batch_size, shuffle_seed=params.train.seed)
    val_ds = validation_photos(params, class_names, params.image_size, settings.batch_size)
    compile_model(model, settings, steps_per_epoch=int(train_ds.cardinality()))
    return TrainingJob(model, model, train_ds, val_ds, val_ds, class_names)


def feature_extraction_job(params: Params, settings: ModelParams) -> TrainingJob:
    """The VGG16 classifier with its whole base frozen: only the head trains."""
    features = load_features(FEATURES_DIR, params.training_views("feature_extraction"), params.vgg16_input_size)
    model = _new_vgg16_classifier(params, settings)
    # block5 is frozen too: run it once over the cached activations, then fit only the head.
    block5 = tail_model(model, after=VGG16_CUT, until=VGG16_LAST)
    train = (predict_in_chunks(block5, features["train_x"]), features["train_y"])
    val = (predict_in_chunks(block5, [features["val_x"]]), features["val_y"])
    return _activations_job(model, VGG16_LAST, train, val, features, params, settings, save_block4=True)


def fine_tuning_job(params: Params, settings: ModelParams) -> TrainingJob:
    """The VGG16 classifier with block5 unfrozen, started from the trained feature-extraction model."""
    features = load_features(FEATURES_DIR, params.training_views("fine_tuning"), params.vgg16_input_size)
    start = load_trained(settings.init_from) if settings.init_from else _new_vgg16_classifier(params, settings)
    set_temperature(start, 1.0)  # train on the plain logit; calibrated again afterwards
    model = unfreeze_block5(start)
    train = (float32_tensor(features["train_x"]), features["train_y"])
    val = (float32_tensor([features["val_x"]]), features["val_y"])
    source = MODELS_DIR / settings.init_from / VAL_BLOCK4_FILE if settings.init_from else None
    return _activations_job(model, VGG16_CUT, train, val, features, params, settings, source)


RECIPES: dict[str, Callable[[Params, ModelParams], TrainingJob]] = {
    "scratch": cnn_job,
    "augmented": cnn_job,
    "feature_extraction": feature_extraction_job,
    "fine_tuning": fine_tuning_job,
}


def _augmentation(params: Params, settings: ModelParams) -> keras.layers.Layer | None:
    return build_augmentation(params.augment, params.train.seed) if settings.augment else None


def _new_vgg16_classifier(params: Params, settings: ModelParams) -> keras.Model:
    return build_vgg16_classifier(params.vgg16_input_size, params.pretrained.weights, settings.dropout,
                                  _augmentation(params, settings))


def _activations_job(model: keras.Model, after: str, train: tuple, val: tuple, features: dict, params: Params,
                     settings: ModelParams, block4_source: Path | None = None, save_block4: bool = False,
                     ) -> TrainingJob:
    """Train `model`'s layers after base layer `after` on its cached activations."""
    trained_part = tail_model(model, after=after)
    compile_model(trained_part, settings, steps_per_epoch=-(-len(train[1]) // settings.batch_size))
    class_names = tuple(features["class_names"])
    photos = validation_photos(params, class_names, params.vgg16_input_size, VGG16_PHOTO_BATCH)
    front = front_model(model)
    share = Block4Share(front, block4_key(front, params), block4_source, save_block4)
    return TrainingJob(model, trained_part, train, val, photos, class_names, share)


def block4_key(front: keras.Model, params: Params) -> str:
    """What the front's activations of the validation photos depend on, hashed: its weights and dtypes, the
    validation manifest, and the decoding of its photos (their side and the pixel limit)."""
    digest = hashlib.sha256()
    layers = list(front.layers)
    while layers:  # each layer's kind and dtypes, in order (not names: Keras numbers unnamed layers per process)
        layer = layers.pop(0)
        if isinstance(layer, keras.Model):  # the nested VGG16 blocks: its layers compute, in their own dtypes
            layers += layer.layers
        elif not isinstance(layer, keras.layers.InputLayer):  # an input computes nothing
            digest.update(f"{type(layer).__name__}:{layer.dtype_policy.name};".encode())
    for weight in front.weights:
        digest.update(f"{weight.shape}:{weight.dtype};".encode())
        digest.update(np.asarray(weight.numpy()).tobytes())
    digest.update(manifest_path("val", SPLITS_DIR).read_bytes())
    digest.update(f"{front.input_shape};{params.split.max_pixels}".encode())
    return digest.hexdigest()


def validation_photos(params: Params, class_names: tuple[str, ...], size: int, batch_size: int) -> tf.data.Dataset:
    """The validation split's photos, decoded at `size` as the model takes them, and their labels, batched."""
    val = read_manifest(manifest_path("val", SPLITS_DIR))
    return batched(image_dataset(val, class_names, size, params.split.max_pixels), batch_size)


def load_trained(name: str) -> keras.Model:
    source = MODELS_DIR / name / "model.keras"
    if not source.is_file():
        raise MissingInputError(f"{source} is missing; run: dvc repro train_{name}")
    return keras.models.load_model(source)


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Start `target` from `source`'s trained weights: the same layers, augmentation aside (it has none)."""
    if len(source.trainable_weights) != len(target.trainable_weights):
        raise ConfigError(f"cannot start from {source.name}: it has {len(source.trainable_weights)} weight "
                          f"tensors, this model {len(target.trainable_weights)}")
    pairs = list(zip(source.trainable_weights, target.trainable_weights, strict=True))
    for src, dst in pairs:
        if src.shape != dst.shape:
            raise ConfigError(f"cannot start from {source.name}: weight {src.path} is {src.shape}, "
                              f"{dst.path} is {dst.shape} (was it trained at another image_size?)")
    for src, dst in pairs:
        dst.assign(src)


def load_features(folder: Path, views: Sequence[int], input_size: int) -> dict:
    """The features stage's meta.json, labels and activations of training views `views` (0: the images
    themselves). "train_x" is one memory-mapped float16 array per view and "val_x" one array, read when used
    (float32_tensor, predict_in_chunks); "train_y" the labels of the chosen views' rows, in the same order."""
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise MissingInputError(f"{meta_file} is missing; run: dvc repro features")
    meta = json.loads(meta_file.read_text())
    decoded = meta["image_size"]  # the side its images were decoded at
    seen = meta.get("input_size", decoded)  # older code's caches: decoded at image_size, resized inside the model
    if (decoded, seen) != (input_size, input_size):
        held = f"{decoded}px images" + (f" resized to {seen}px" if seen != decoded else "")
        raise MissingInputError(f"{folder} holds VGG16 activations of {held}, the params ask for "
                                f"{input_size}px; run: dvc repro features")
    if max(views) >= meta["views"]:
        raise MissingInputError(f"{folder} caches views 0..{meta['views'] - 1}, the params ask for view "
                                f"{max(views)}; run: dvc repro features")
    # rows are view-major: view k holds rows k * images .. (k + 1) * images, in the same image order
    images = meta["train_rows"] // meta["views"]
    train_x, train_y = np.load(folder / "train_block4.npy", mmap_mode="r"), np.load(folder / "train_labels.npy")
    parts = [slice(view * images, (view + 1) * images) for view in views]
    return {**meta, "train_x": [train_x[part] for part in parts],
            "train_y": np.concatenate([train_y[part] for part in parts]),
            "val_x": np.load(folder / "val_block4.npy", mmap_mode="r"), "val_y": np.load(folder / "val_labels.npy")}


def _chunks(arrays: Sequence[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    for array in arrays:
        for start in range(0, len(array), chunk):
            yield array[start : start + chunk]


def float32_tensor(cached: Sequence[np.ndarray], chunk: int = 256):
    """Cached float16 activations (arrays of rows, concatenated) as one float32 tensor (for training on them),
    holding the data once.

    Keras casts float16 arrays to float32 and copies them into a tensor before training on them, and a
    TensorFlow concat and cast hold the float16 and float32 copies together (at 224 px, 1.2 + 2.4 GB for the
    three training views). Here the float16 rows are cast a chunk at a time into one float32 buffer, aligned
    as TensorFlow's kernels require, which TensorFlow then takes over without a copy (DLPack).
    """
    import tensorflow as tf

    rows = sum(len(array) for array in cached)
    shape = (rows, *cached[0].shape[1:])
    size = rows * math.prod(shape[1:]) * np.dtype(np.float32).itemsize
    raw = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    out = raw[start : start + size].view(np.float32).reshape(shape)
    row = 0
    for part in _chunks(cached, chunk):
        out[row : row + len(part)] = part
        row += len(part)
    return tf.experimental.dlpack.from_dlpack(out.__dlpack__())


def predict_in_chunks(model: keras.Model, cached: Sequence[np.ndarray], chunk: int = 64) -> np.ndarray:
    """`model`'s outputs over cached float16 activations (arrays of rows, concatenated), read and cast a chunk
    at a time: a frozen part run once never needs the whole float32 copy (1.6 GB for two training views at
    224 px)."""
    return np.concatenate([np.asarray(model.predict_on_batch(np.asarray(rows, np.float32)))
                           for rows in _chunks(cached, chunk)])


def calibrate(job: TrainingJob) -> tuple[float, np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """Fit the temperature of the model's probability layer on the validation photos (log loss against the true
    labels, whatever label smoothing trained on); (the temperature, the validation logits, their labels, and for
    a VGG16 model the block4 activations they came from, as VAL_BLOCK4_FILE holds them).

    The logits are the whole model's, as it is saved, evaluated and served: for a VGG16 model, not those of the
    cached activations it trained on (int8 or float16 copies of the base's: their logits differ a little, and
    by enough to move the temperature; reports/decisions.md).
    Labels are unchanged (the logits keep their order).
    """
    if job.block4 is None:
        logit_part = keras.Model(job.model.inputs, job.model.get_layer(LOGIT_LAYER).output)
        batches = [(logit_part.predict_on_batch(x), y.numpy()) for x, y in job.val_photos]
        logits, labels = (np.concatenate(part) for part in zip(*batches, strict=True))
        block4 = None
    else:
        block4 = validation_block4(job.block4, job.val_photos)
        logit_part = tail_model(job.model, after=VGG16_CUT, until=LOGIT_LAYER)
        logits = predict_in_chunks(logit_part, [block4["activations"]])
        labels = block4["labels"]
    logits, labels = logits.reshape(-1).astype(np.float64), labels.reshape(-1)
    value = fit_temperature(logits, labels)
    set_temperature(job.model, value)
    log.info("calibration: temperature %.3f (fitted on %d validation images)", value, len(labels))
    return value, logits, labels, block4


def validation_block4(share: Block4Share, photos: tf.data.Dataset) -> dict[str, np.ndarray]:
    """The validation photos' activations after blocks 1-4 (float32) and their labels: the saved ones when their
    key matches, else the front run over the photos."""
    if share.source is not None and share.source.is_file():
        with np.load(share.source) as saved:
            if str(saved["key"]) == share.key:
                log.info("calibration: blocks 1-4 of the validation photos from %s", share.source)
                return {"activations": saved["activations"], "labels": saved["labels"], "key": saved["key"]}
        log.info("calibration: %s holds other blocks 1-4 or photos; running them", share.source)
    batches = [(share.front.predict_on_batch(x), y.numpy()) for x, y in photos]
    activations, labels = (np.concatenate(part) for part in zip(*batches, strict=True))
    # float32 holds bfloat16 and float16 activations exactly: block5 casts them back to the same values
    return {"activations": activations.astype(np.float32), "labels": labels, "key": np.array(share.key)}


def compile_model(model: keras.Model, settings: ModelParams, steps_per_epoch: int) -> None:
    learning_rate = settings.learning_rate
    if settings.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, settings.epochs * steps_per_epoch)
    model.compile(
        optimizer=OPTIMIZERS[settings.optimizer](learning_rate, settings.weight_decay or None),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=settings.label_smoothing),
        metrics=["accuracy"],
    )


def _xy(data) -> tuple:
    """fit/evaluate arguments for a tf.data dataset (x only) or an (x, y) pair of arrays."""
    return data if isinstance(data, tuple) else (data,)


def fit(model: keras.Model, train_data, val_data, settings: ModelParams, backup_dir: Path) -> dict[str, list]:
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(backup_dir / "keras")),
        keras.callbacks.CSVLogger(str(backup_dir / "history.csv"), append=True),
        EpochMetrics(),
    ]
    if settings.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=settings.early_stopping_patience, restore_best_weights=True))
    if settings.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=settings.reduce_lr_patience, min_lr=1e-7))
    x, *y = _xy(train_data)
    model.fit(
        x, *y,
        batch_size=settings.batch_size if y else None,
        epochs=settings.epochs,
        validation_data=val_data,
        shuffle=bool(y),  # arrays: Keras shuffles them each epoch; a tf.data pipeline shuffles itself
        callbacks=callbacks,
        verbose=2,
    )
    return read_history(backup_dir / "history.csv")


class EpochMetrics(MlflowCallback):
    """MLflow's Keras callback (per-epoch metrics, optimizer params, model summary) without its end-of-validation
    copies: val_accuracy and val_loss are logged once per epoch, not also as validation_accuracy/_loss."""

    def on_test_end(self, logs=None) -> None:
        pass


def plot_history(history: dict[str, list], name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(e) + 1 for e in history["epoch"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, history[metric], "o-", label=f"train {metric}")
        ax.plot(epochs, history[f"val_{metric}"], "s-", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(f"{name}: {metric}")
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def log_model(model: keras.Model, val_photos, class_names: tuple[str, ...]):
    """Log the full model (raw pixels in) with a signature and a validation photo as its input example."""
    from mlflow.models import infer_signature

    example = next(iter(val_photos))[0][:1].numpy()
    signature = infer_signature(example, model.predict(example, verbose=0))
    # mlflow.tensorflow saves Keras 3 models as .keras files (mlflow.keras.log_model of MLflow 3.17
    # fails to write an input example); custom_objects lets loaders find the custom layers.
    return mlflow.tensorflow.log_model(
        model, name="model", signature=signature, input_example=example,
        custom_objects={"VGG16Preprocess": VGG16Preprocess, "RandomAffine": RandomAffine,
                        "TemperatureSigmoid": TemperatureSigmoid},
        metadata={"class_names": list(class_names), "positive_class": class_names[1]},
        pip_requirements=model_requirements(),
    )


def write_outputs(out_dir: Path, model: keras.Model, history_csv: Path, metrics: dict, run: dict,
                  block4: dict[str, np.ndarray] | None = None) -> None:
    """Each file is written beside its final name and renamed: DVC never sees a half-written output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if block4 is not None:
        with (out_dir / f".{VAL_BLOCK4_FILE}.partial").open("wb") as f:
            np.savez(f, activations=block4["activations"], labels=block4["labels"], key=block4["key"])
        (out_dir / f".{VAL_BLOCK4_FILE}.partial").replace(out_dir / VAL_BLOCK4_FILE)
    partial = out_dir / ".model.partial.keras"
    model.save(partial)
    partial.replace(out_dir / "model.keras")
    shutil.copyfile(history_csv, out_dir / ".history.partial")
    (out_dir / ".history.partial").replace(out_dir / "history.csv")
    for filename, content in (("metrics.json", metrics), ("run.json", run)):
        (out_dir / f".{filename}.partial").write_text(json.dumps(content, indent=2) + "\n")
        (out_dir / f".{filename}.partial").replace(out_dir / filename)


if __name__ == "__main__":
    main()
