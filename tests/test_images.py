"""Decoding: odd but valid images become RGB; broken ones raise ImageError with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catsdogs import synthetic
from catsdogs.images import ImageError, load_pixels, read_rgb

RNG = np.random.default_rng(1)


@pytest.mark.parametrize("name", sorted(synthetic.odd_images(np.random.default_rng(0))))
def test_odd_images_decode_to_rgb(name: str) -> None:
    data = synthetic.odd_images(np.random.default_rng(0))[name]
    pixels = load_pixels(data, 32, max_pixels=10**6)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.jpg", "empty"),
        ("truncated.jpg", "truncated"),
        ("text.jpg", "not an image"),
        ("garbage.png", "not an image"),
        ("huge.png", "too large"),
    ],
)
def test_broken_files_raise_with_reason(name: str, reason: str) -> None:
    data = synthetic.broken_files(np.random.default_rng(0))[name]
    with pytest.raises(ImageError, match=reason):
        read_rgb(data, max_pixels=1_000_000)


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    assert read_rgb(buffer.getvalue(), 100).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert read_rgb(buffer.getvalue(), 10_000).size == (20, 40)
