"""Finds labelled images in data/raw, whatever the archive's layout, and reads the split manifests.

Layouts recognised (after descending through single wrapper folders such as `PetImages/`):
- subset folders, each holding classes: `train|validation|test/cats|dogs/` (cats_and_dogs_filtered);
- folder per class: `Cat/`, `Dog/` (Microsoft's PetImages) or any other class names;
- flat, label in the file name: `train/cat.123.jpg` (Kaggle's Dogs vs. Cats).
Labels are normalised (lower case, singular: `Cats` -> `cat`) and sorted, so the mapping is stable.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from catsdogs.config import SPLITS_DIR, ConfigError

log = logging.getLogger(__name__)

SUBSET_NAMES = frozenset({"train", "training", "validation", "valid", "val", "test", "testing"})
FLAT_NAME = re.compile(r"^(?P<label>[A-Za-z][A-Za-z_-]*)\.\d+\.\w+$")
IGNORED_DIRS = frozenset({"__MACOSX"})


class LayoutError(ValueError):
    """No labelled images found; the message says which layouts were expected."""


class MissingInputError(FileNotFoundError):
    """An earlier stage's output is missing; the message names the command that makes it."""


class LabelledImage(NamedTuple):
    path: Path
    label: str


def normalise_label(name: str) -> str:
    """`Cats` -> `cat`, `puppies` -> `puppy`, `Dog` -> `dog`; keeps names like `glass` or `bus`."""
    label = name.strip().lower().replace(" ", "_")
    if label.endswith("ies") and len(label) > 4:
        return label[:-3] + "y"
    if label.endswith("s") and not label.endswith("ss") and len(label) > 3:
        return label[:-1]
    return label


def find_labelled_images(root: Path) -> tuple[str, list[LabelledImage]]:
    """Return (layout name, images sorted by path) for the tree under root, or raise LayoutError."""
    top = _unwrap(root)
    subsets = [d for d in _subdirs(top) if d.name.lower() in SUBSET_NAMES]
    if subsets:
        layout = "subset folders (" + ", ".join(d.name for d in subsets) + ")"
        images = [image for subset in subsets for image in _labelled_in(subset)]
    elif len(_subdirs(top)) >= 2:
        layout, images = "folder per class", _folder_per_class(top)
    else:
        layout, images = "flat file names (label.id.ext)", _flat(top)
    labels = sorted({image.label for image in images})
    if len(labels) < 2:
        raise LayoutError(
            f"no labelled images found in {root}: expected class folders (cats/, dogs/), "
            "subset folders holding them (train/cats/, validation/dogs/), or file names like cat.1.jpg; "
            f"found {len(images)} file(s) in {len(labels)} class(es)"
        )
    return layout, sorted(images, key=lambda image: image.path.as_posix())


def class_counts(images: list[LabelledImage]) -> dict[str, int]:
    return dict(sorted(Counter(image.label for image in images).items()))


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def _files(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return [
        p
        for p in candidates
        if p.is_file() and not p.is_symlink() and all(_visible(part) for part in p.relative_to(folder).parts)
    ]


def _unwrap(folder: Path) -> Path:
    subdirs = _subdirs(folder)
    while len(subdirs) == 1 and subdirs[0].name.lower() not in SUBSET_NAMES:
        folder = subdirs[0]
        subdirs = _subdirs(folder)
    return folder


def _labelled_in(subset: Path) -> list[LabelledImage]:
    if _subdirs(subset):
        return _folder_per_class(subset)
    return _flat(subset)


def _folder_per_class(folder: Path) -> list[LabelledImage]:
    return [
        LabelledImage(path, normalise_label(class_dir.name))
        for class_dir in _subdirs(folder)
        for path in _files(class_dir, recursive=True)
    ]


def _flat(folder: Path) -> list[LabelledImage]:
    images, unlabelled = [], 0
    for path in _files(folder, recursive=False):
        match = FLAT_NAME.match(path.name)
        if match:
            images.append(LabelledImage(path, normalise_label(match["label"])))
        else:
            unlabelled += 1
    if unlabelled:
        log.warning("%s: skipped %d file(s) without a label in their name", folder, unlabelled)
    return images


def manifest_path(split: str, splits_dir: Path = SPLITS_DIR) -> Path:
    return splits_dir / f"{split}.csv"


def read_manifest(path: Path) -> list[LabelledImage]:
    """Read a split manifest written by the split stage."""
    if not path.is_file():
        raise MissingInputError(f"{path} is missing; run: dvc repro split")
    with path.open(newline="", encoding="utf-8") as f:
        return [LabelledImage(Path(row["path"]), row["label"]) for row in csv.DictReader(f)]


def binary_class_names(images: list[LabelledImage]) -> tuple[str, str]:
    """The two labels, sorted: index 0 is the negative class (cat), 1 the positive one (dog)."""
    names = sorted({image.label for image in images})
    if len(names) != 2:
        raise ConfigError(f"the models are binary classifiers, but the data has classes {names}")
    return names[0], names[1]


def image_dataset(images: list[LabelledImage], class_names: tuple[str, ...], image_size: int, max_pixels: int):
    """tf.data of (uint8 pixels, float label): decoded and resized once (cached), in parallel, in order."""
    import tensorflow as tf  # here, not at the top: the data stages never need TensorFlow

    from catsdogs.images import load_pixels

    def load(path: bytes) -> object:
        return load_pixels(Path(path.decode()), image_size, max_pixels)

    def decode(path, label):
        pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(pixels, (image_size, image_size, 3)), label

    paths = [image.path.as_posix() for image in images]
    labels = [float(class_names.index(image.label)) for image in images]
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()


def batched(dataset, batch_size: int, shuffle_seed: int | None = None):
    """Shuffle (training only, seeded, reshuffled each epoch), batch, cast pixels to float32, prefetch.

    tf.data's autotuning is off. Its thread (TensorFlow 2.21) waits longer and longer between
    tuning rounds, and deleting an iterator waits for the current wait to end: Keras deletes each
    epoch's iterator as the next epoch starts, so about one CNN epoch in three ran at half speed
    with the CPU idle (reports/decisions.md). Without it, AUTOTUNE parallelism stays at one call per
    core (at most 16).
    """
    import tensorflow as tf

    if shuffle_seed is not None:
        dataset = dataset.shuffle(dataset.cardinality(), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def read_history(path: Path) -> dict[str, list[float]]:
    """A training history (Keras CSVLogger: one row per epoch, across resumes) as columns."""
    if not path.is_file():
        raise MissingInputError(f"{path} is missing; run: dvc repro train_{path.parent.name}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    return {key: [float(row[key]) for row in rows] for key in reader.fieldnames or []}
