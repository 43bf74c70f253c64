"""Augmentation: the configured transforms, active in training only, reproducible and savable."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from catsdogs.augment import build_augmentation
from catsdogs.config import AugmentParams
from catsdogs.models import build_scratch_cnn
from conftest import make_params

PIXELS = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3)).astype("float32")
SIZE, CENTRE, DOT = 64, 31.5, (44.0, 21.0)  # a bright dot at x=44, y=21 of a black 64x64 image


def only(**transform) -> AugmentParams:
    """The book's augmentation with every transform off but the given ones."""
    off = {"rotation_degrees": 0, "shift": 0, "shear": 0, "zoom": 0, "horizontal_flip": False}
    return dataclasses.replace(make_params().augment, **{**off, **transform})


def dot_positions(params: AugmentParams, count: int = 64) -> np.ndarray:
    """(x, y) of the dot, relative to the image centre, in `count` random augmentations."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype("float32")
    dot = 255 * np.exp(-((x - DOT[0]) ** 2 + (y - DOT[1]) ** 2) / (2 * 1.5**2))
    batch = np.repeat(np.stack([dot] * 3, axis=-1)[None], count, axis=0)
    out = np.asarray(build_augmentation(params, seed=5)(batch, training=True))[..., 0]
    total = out.sum(axis=(1, 2))
    return np.stack([(out * x).sum(axis=(1, 2)) / total, (out * y).sum(axis=(1, 2)) / total], axis=1) - CENTRE


def test_configured_transforms() -> None:
    config = build_augmentation(make_params().augment, seed=1).get_config()
    assert {k: config[k] for k in ("rotation_degrees", "shift", "shear", "zoom", "horizontal_flip", "fill_mode")} == {
        "rotation_degrees": 40, "shift": 0.2, "shear": 0.2, "zoom": 0.2, "horizontal_flip": True, "fill_mode": "nearest"
    }


def test_identity_at_inference_random_in_training() -> None:
    augmentation = build_augmentation(make_params().augment, seed=1)
    np.testing.assert_array_equal(np.asarray(augmentation(PIXELS, training=False)), PIXELS)
    augmented = np.asarray(augmentation(PIXELS, training=True))
    assert augmented.shape == PIXELS.shape and not np.allclose(augmented, PIXELS)


def test_the_same_seed_gives_the_same_augmentations() -> None:
    first, second = (np.asarray(build_augmentation(make_params().augment, seed=7)(PIXELS, training=True))
                     for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_flip_only_gives_the_image_or_its_mirror() -> None:
    images = np.concatenate([PIXELS] * 4)
    out = np.asarray(build_augmentation(only(horizontal_flip=True), seed=3)(images, training=True))
    mirrored = [np.array_equal(result, original[:, ::-1]) for original, result in zip(images, out, strict=True)]
    assert all(m or np.array_equal(result, original) for m, original, result in zip(mirrored, images, out, strict=True))
    assert 0 < sum(mirrored) < len(images)


START = np.array(DOT) - CENTRE
RADIUS, ANGLE = float(np.hypot(*START)), math.atan2(START[1], START[0])


def test_rotation_turns_about_the_centre_within_the_range() -> None:
    positions = dot_positions(only(rotation_degrees=40))
    np.testing.assert_allclose(np.hypot(*positions.T), RADIUS, atol=0.5)
    turns = np.degrees(np.arctan2(positions[:, 1], positions[:, 0]) - ANGLE)
    assert np.abs(turns).max() <= 40.5 and np.abs(turns).max() > 25 and np.ptp(np.sign(turns)) == 2


def test_shift_moves_by_at_most_the_fraction_of_the_size() -> None:
    moves = dot_positions(only(shift=0.2)) - START
    assert np.abs(moves).max() <= 0.2 * SIZE + 0.5 and np.abs(moves).max(axis=0).min() > 0.1 * SIZE


def test_shear_moves_x_in_proportion_to_the_distance_from_the_centre_row() -> None:
    moves = dot_positions(only(shear=0.2)) - START
    np.testing.assert_allclose(moves[:, 1], 0, atol=0.3)
    limit = 0.2 * abs(START[1])
    assert np.abs(moves[:, 0]).max() <= limit + 0.3 and np.abs(moves[:, 0]).max() > limit / 2


def test_zoom_scales_about_the_centre_within_the_range() -> None:
    positions = dot_positions(only(zoom=0.2))
    np.testing.assert_allclose(np.arctan2(positions[:, 1], positions[:, 0]), ANGLE, atol=0.02)
    ratios = np.hypot(*positions.T) / RADIUS
    assert ratios.min() >= 1 / 1.2 - 0.02 and ratios.max() <= 1 / 0.8 + 0.02 and ratios.min() < 0.9 < 1.1 < ratios.max()


@pytest.mark.parametrize("fill_mode", ["nearest", "constant"])
def test_fill_mode_decides_what_enters_at_the_borders(fill_mode: str) -> None:
    grey = np.full((8, 32, 32, 3), 100.0, "float32")
    params = dataclasses.replace(make_params().augment, fill_mode=fill_mode)
    out = np.asarray(build_augmentation(params, seed=2)(grey, training=True))
    if fill_mode == "nearest":
        np.testing.assert_allclose(out, 100.0, atol=1e-3)
    else:
        assert out.min() == 0.0 and out.max() == pytest.approx(100.0)


def test_model_with_augmentation_saves_and_loads(tmp_path: Path) -> None:
    params = make_params()
    model = build_scratch_cnn(48, 0.0, build_augmentation(params.augment, seed=1), params.cnn)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(PIXELS, verbose=0), model.predict(PIXELS, verbose=0), rtol=1e-5)
    assert loaded.get_layer("augmentation").get_config() == model.get_layer("augmentation").get_config()
