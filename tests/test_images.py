"""Decoding: odd but valid images become RGB; broken ones raise ImageError with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from catsdogs import synthetic
from catsdogs.images import REDUCING_GAP, ImageError, load_pixels, read_rgb, to_pixels

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


def test_a_large_jpeg_decodes_at_a_reduced_scale_with_the_same_pixels_to_within_rounding() -> None:
    image = synthetic.make_image("cat", np.random.default_rng(2), size=(1400, 1000))  # stripes and noise
    jpeg, png = synthetic.encode(image), synthetic.encode(image, "PNG")
    size = 150  # at_least 450: 1/2 scale keeps 700x500, 1/4 would not
    assert read_rgb(jpeg, 10**7, at_least=REDUCING_GAP * size).size == (700, 500)
    assert read_rgb(png, 10**7, at_least=REDUCING_GAP * size).size == (1400, 1000)  # only JPEG has scaled decoding
    full = to_pixels(read_rgb(jpeg, 10**7), size)  # the whole image decoded, then resized
    difference = np.abs(load_pixels(jpeg, size, 10**7).astype(int) - full.astype(int))
    assert 0 < difference.mean() < 2 and difference.max() <= 8
    assert np.array_equal(load_pixels(png, size, 10**7), to_pixels(read_rgb(png, 10**7), size))


def test_a_jpeg_under_the_reducing_gap_decodes_whole() -> None:
    jpeg = synthetic.encode(synthetic.make_image("dog", np.random.default_rng(3), size=(899, 1200)))
    assert read_rgb(jpeg, 10**7, at_least=REDUCING_GAP * 150).size == (899, 1200)  # 1/2 would be 449 < 450
    assert np.array_equal(load_pixels(jpeg, 150, 10**7), to_pixels(read_rgb(jpeg, 10**7), 150))
