"""Writes small, real image data sets for tests and smoke runs: no network, no ../shared needed.

The two classes are easy to tell apart but not trivial: "cat" images have horizontal stripes,
"dog" images vertical ones, in random colours, at random sizes, with noise. Files are real
JPEG/PNG/GIF files laid out as the public archives are, optionally with broken files and
duplicates mixed in.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("cat", "dog")

# How each archive lays out (split, label, index) -> relative path.
LAYOUTS = {
    "filtered": lambda split, label, i: f"cats_and_dogs_filtered/{split}/{label}s/{label}.{i}.jpg",
    "petimages": lambda split, label, i: f"PetImages/{label.capitalize()}/{i}.jpg",
    "kaggle": lambda split, label, i: f"train/{label}.{i}.jpg",
    "classes": lambda split, label, i: f"{label}/{label}_{i}.jpg",
}


def make_image(label: str, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """A stripes image: horizontal for cat, vertical for dog."""
    width, height = size or (int(rng.integers(40, 96)), int(rng.integers(40, 96)))
    period = int(rng.integers(6, 14))
    colours = rng.integers(0, 256, size=(2, 3))
    axis = np.arange(height)[:, None] if label == "cat" else np.arange(width)[None, :]
    stripes = ((axis // (period // 2)) % 2).astype(bool)
    stripes = np.broadcast_to(stripes, (height, width))
    pixels = np.where(stripes[..., None], colours[0], colours[1]).astype(np.float64)
    pixels += rng.normal(0, 12, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_photo(rng: np.random.Generator, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth, photo-like image (a blown-up 5x5 colour grid): what perceptual hashes are made for."""
    grid = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_dataset(root: Path, per_class: int = 20, layout: str = "classes", seed: int = 0) -> list[Path]:
    """Write per_class JPEGs of each label under root in the given layout; return their paths."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    rng = np.random.default_rng(seed)
    paths = []
    for label in LABELS:
        for i in range(per_class):
            split = "train" if i < per_class * 2 // 3 else "validation"
            path = root / LAYOUTS[layout](split, label, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(make_image(label, rng)))
            paths.append(path)
    return paths


def decompression_bomb(width: int = 10_000, height: int = 5_000) -> bytes:
    """A few-KB PNG that claims width x height pixels (default 50 million, over split.max_pixels)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def odd_images(rng: np.random.Generator) -> dict[str, bytes]:
    """Valid images in modes and formats a data set may hold: all must be accepted."""
    base = make_image("cat", rng, (64, 48))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    return {
        "grey.jpg": encode(base.convert("L")),
        "cmyk.jpg": encode(base.convert("CMYK")),
        "alpha.png": encode(rgba, "PNG"),
        "palette.gif": encode(base.convert("P"), "GIF"),
        "tiny.png": encode(make_image("cat", rng, (3, 2)), "PNG"),
    }


def broken_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Files that look like images by name but are not usable: all must be rejected."""
    good = encode(make_image("dog", rng, (80, 60)))
    return {
        "empty.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "text.jpg": b"this is not an image\n",
        "garbage.png": bytes(rng.integers(0, 256, 2048, dtype=np.uint8)),
        "huge.png": encode(Image.new("RGB", (2000, 1500), (10, 20, 30)), "PNG"),
    }


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive
