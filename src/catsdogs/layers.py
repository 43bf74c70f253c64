"""Custom Keras layers that saved models need at load time (serving imports this, not training code)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="catsdogs")
class VGG16Preprocess(keras.layers.Layer):
    """`keras.applications.vgg16.preprocess_input` as a layer: 0-255 RGB in, BGR minus ImageNet mean out.

    Inside the model, so that evaluation and serving feed raw pixels and never re-implement it.
    """

    def call(self, inputs):
        return keras.applications.vgg16.preprocess_input(keras.ops.cast(inputs, self.compute_dtype))


@keras.saving.register_keras_serializable(package="catsdogs")
class RandomShear(keras.layers.RandomShear):
    """keras.layers.RandomShear that survives a save and load.

    Keras 3.15 stores a factor f as the range (-f, f) but refuses negative numbers when it reads
    the range back, so a saved model with RandomShear cannot be loaded. Storing f fixes that.
    """

    def get_config(self) -> dict:
        config = super().get_config()
        for key in ("x_factor", "y_factor"):
            config[key] = max(abs(v) for v in config[key])
        return config
