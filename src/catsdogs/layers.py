"""Custom Keras layers that saved models need at load time (serving imports this, not training code)."""

from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="catsdogs")
class VGG16Preprocess(keras.layers.Layer):
    """`keras.applications.vgg16.preprocess_input` as a layer: 0-255 RGB in, BGR minus ImageNet mean out.

    Inside the model, so that evaluation and serving feed raw pixels and never re-implement it.
    """

    def call(self, inputs):
        return keras.applications.vgg16.preprocess_input(keras.ops.cast(inputs, self.compute_dtype))


@keras.saving.register_keras_serializable(package="catsdogs")
class RandomAffine(keras.layers.Layer):
    """The legacy ImageDataGenerator's random transform, in training only: rotation, shift, shear, zoom
    and horizontal flip composed into one affine map per image, applied with one bilinear resampling.

    Chaining keras.layers.RandomRotation, RandomTranslation, RandomShear and RandomZoom resamples
    each image four times: four rounds of interpolation blur, and about four times the work
    (reports/decisions.md, "One augmentation layer").
    Ranges, all drawn uniformly per image: rotation +-rotation_degrees; shift +-shift of the width and
    of the height; shear: x moves by up to +-shear times the distance from the centre row (0.2: about
    11 degrees, keras.layers.RandomShear's x_factor); zoom: one scale for both axes, 1 +- zoom
    (keras.layers.RandomZoom's factor); a mirror image half of the time.
    """

    def __init__(
        self,
        rotation_degrees: float = 0.0,
        shift: float = 0.0,
        shear: float = 0.0,
        zoom: float = 0.0,
        horizontal_flip: bool = False,
        fill_mode: str = "nearest",
        seed: int | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # resample in float32 even under a mixed precision policy
        super().__init__(**kwargs)
        self.rotation_degrees, self.shift, self.shear, self.zoom = rotation_degrees, shift, shear, zoom
        self.horizontal_flip, self.fill_mode, self.seed = horizontal_flip, fill_mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training: bool = False):
        if not training:
            return inputs
        ops = keras.ops
        images = ops.cast(inputs, "float32")
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(limit: float):  # per image, in [-limit, limit]
            return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)

        angle = uniform(math.radians(self.rotation_degrees))
        shear, scale = uniform(self.shear), 1 + uniform(self.zoom)
        shift_x, shift_y = uniform(self.shift) * width, uniform(self.shift) * height
        mirror = ops.where(uniform(1.0) < 0, -1.0, 1.0) if self.horizontal_flip else ops.ones((batch,))
        # Output pixel p maps to input pixel A (p - centre) + centre + shift, where
        # A = rotation(angle) @ [[1, shear], [0, 1]] @ diag(scale * mirror, scale).
        cos, sin = ops.cos(angle), ops.sin(angle)
        a0, a1 = cos * scale * mirror, (cos * shear - sin) * scale
        b0, b1 = sin * scale * mirror, (sin * shear + cos) * scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx + shift_x - a0 * cx - a1 * cy
        b2 = cy + shift_y - b0 * cx - b1 * cy
        zeros = ops.zeros((batch,))
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return ops.image.affine_transform(images, transform, "bilinear", fill_mode=self.fill_mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "rotation_degrees": self.rotation_degrees,
            "shift": self.shift,
            "shear": self.shear,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "fill_mode": self.fill_mode,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="catsdogs")
class TemperatureSigmoid(keras.layers.Layer):
    """The positive class's probability from the model's logit: sigmoid(logit / temperature).

    The temperature is fitted on the validation set after training (catsdogs.calibration) and saved
    with the model, so evaluation, prediction and serving all answer calibrated probabilities. It is
    not trained: 1 (the plain sigmoid) while the weights are fitted.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # a bfloat16 sigmoid is too coarse near 0 and 1
        super().__init__(**kwargs)

    def build(self, input_shape) -> None:
        self.temperature = self.add_weight(shape=(), initializer="ones", trainable=False, name="temperature")

    def call(self, logits):
        return keras.ops.sigmoid(keras.ops.cast(logits, self.compute_dtype) / self.temperature)

    def compute_output_shape(self, input_shape):
        return input_shape
