"""Augmentation: the configured transforms, active in training only, and savable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from catsdogs.augment import build_augmentation
from catsdogs.models import build_scratch_cnn
from conftest import make_params

PIXELS = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3)).astype("float32")


def test_configured_transforms() -> None:
    augmentation = build_augmentation(make_params().augment, seed=1)
    by_type = {type(layer).__name__: layer for layer in augmentation.layers}
    assert list(by_type) == ["RandomRotation", "RandomTranslation", "RandomShear", "RandomZoom", "RandomFlip"]
    rotation = by_type["RandomRotation"]
    np.testing.assert_allclose(rotation.factor, (-40 / 360, 40 / 360))
    assert by_type["RandomTranslation"].height_factor == by_type["RandomTranslation"].width_factor == 0.2
    assert tuple(by_type["RandomShear"].x_factor) == (-0.2, 0.2)
    assert by_type["RandomZoom"].height_factor == 0.2
    assert by_type["RandomFlip"].mode == "horizontal"
    assert all(layer.fill_mode == "nearest" for name, layer in by_type.items() if name != "RandomFlip")


def test_identity_at_inference_random_in_training() -> None:
    augmentation = build_augmentation(make_params().augment, seed=1)
    np.testing.assert_array_equal(np.asarray(augmentation(PIXELS, training=False)), PIXELS)
    augmented = np.asarray(augmentation(PIXELS, training=True))
    assert augmented.shape == PIXELS.shape and not np.allclose(augmented, PIXELS)


def test_flip_only_gives_the_image_or_its_mirror() -> None:
    params = dataclasses.replace(make_params().augment, rotation_degrees=0, shift=0, shear=0, zoom=0)
    augmentation = build_augmentation(params, seed=3)
    assert [type(layer).__name__ for layer in augmentation.layers] == ["RandomFlip"]
    out = np.asarray(augmentation(PIXELS, training=True))
    for original, result in zip(PIXELS, out):
        assert np.array_equal(result, original) or np.array_equal(result, original[:, ::-1])


def test_model_with_augmentation_saves_and_loads(tmp_path: Path) -> None:
    params = make_params()
    model = build_scratch_cnn(48, 0.0, build_augmentation(params.augment, seed=1), params.cnn)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(PIXELS, verbose=0), model.predict(PIXELS, verbose=0), rtol=1e-5)
    shear = loaded.get_layer("augmentation").layers[2]
    assert tuple(shear.x_factor) == (-0.2, 0.2)
