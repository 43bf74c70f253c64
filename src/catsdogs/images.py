"""Decodes image files into RGB pixels: the one place that turns bytes into model input.

Used by the split stage (to validate every file), the training input pipeline and the served
model, so that training and serving see identical pixels. Imports no TensorFlow.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """The bytes are not a usable image; the message says why in a few words."""


# A JPEG is decoded at the 1/2, 1/4 or 1/8 scale that still leaves both sides at least this many times the
# size it is resized to (so only one at least twice that large is reduced), as Pillow's `thumbnail` does:
# "with reducing_gap greater or equal to 3.0, the result is indistinguishable from fair resampling in most
# cases" (Pillow's docs). A 12-megapixel photo decodes in a fraction of the time and memory; no photo of
# the dataset is large enough to be reduced, at 150 or 224 px.
REDUCING_GAP = 3


def read_rgb(source: bytes | Path, max_pixels: int, at_least: int | None = None) -> Image.Image:
    """Decode an image (the first frame of an animation) into RGB, or raise ImageError.

    Greyscale, palette, CMYK and alpha images are converted; transparent pixels become white.
    The EXIF orientation is applied, as any photo viewer does. `max_pixels` is checked from the
    header, before decoding; Pillow's own bomb warning (past its default limit) is an error too.
    `at_least`: a JPEG may be decoded at a reduced scale (`Image.draft`) that keeps both sides at
    least this many pixels; other formats decode at full size.
    """
    data = source.read_bytes() if isinstance(source, Path) else source
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"too large: {width}x{height} pixels (limit {max_pixels})")
            if width == 0 or height == 0:
                raise ImageError("image has no pixels")
            if at_least is not None:
                image.draft(image.mode, (at_least, at_least))
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"too large: {err}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image: {err}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip.
        pixels = np.asarray(image, dtype=np.float64)
        peak = pixels.max() or 1.0
        image = Image.fromarray(np.uint8(np.clip(pixels * (255.0 / peak), 0, 255)))
    return image.convert("RGB")


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size (no crop, like Keras's image loaders) and return uint8 HxWx3."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_pixels(source: bytes | Path, size: int, max_pixels: int) -> np.ndarray:
    return to_pixels(read_rgb(source, max_pixels, at_least=REDUCING_GAP * size), size)
