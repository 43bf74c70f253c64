"""The book's data augmentation as one Keras layer (active in training only).

The book's legacy generator: rotation_range=40, width/height_shift_range=0.2, shear_range=0.2,
zoom_range=0.2, horizontal_flip=True, fill_mode="nearest". Like that generator, the layer composes
the transforms into one affine map per image and resamples once (catsdogs.layers.RandomAffine).
One of the generator's quirks is fixed: its shear_range was in *degrees* (0.2 degrees: almost
nothing), so `shear` is the shear the book meant, as keras.layers.RandomShear's fraction of the
image (0.2 = up to 20%, about 11 degrees).
"""

from __future__ import annotations

import keras

from catsdogs.config import AugmentParams
from catsdogs.layers import RandomAffine


def build_augmentation(params: AugmentParams, seed: int) -> keras.layers.Layer:
    """Random transforms; identity when called with training=False (evaluation, serving)."""
    return RandomAffine(
        rotation_degrees=params.rotation_degrees,
        shift=params.shift,
        shear=params.shear,
        zoom=params.zoom,
        horizontal_flip=params.horizontal_flip,
        fill_mode=params.fill_mode,
        seed=seed,
        name="augmentation",
    )


def preview_grid(params: AugmentParams, pixels, count: int, seed: int):
    """A figure of the photo and `count` random augmentations of it, like the book's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    augmentation = build_augmentation(params, seed)
    batch = np.repeat(pixels[None].astype("float32"), count, axis=0)
    views = np.asarray(augmentation(batch, training=True))
    columns = 4
    rows = -(-(count + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(pixels)
    axes.flat[0].set_title("original")
    for i, (ax, view) in enumerate(zip(axes.flat[1:], views, strict=False), start=1):
        ax.imshow(np.clip(view, 0, 255).astype("uint8"))
        ax.set_title(f"augmented {i}")
    fig.tight_layout()
    return fig
