"""The study's four models. Each takes raw RGB pixels (0-255, square) and preprocesses inside.

- scratch / augmented: the book's small CNN (Conv 32-64-128-128, Dense 512, one output), its pixel scaling
  and initialisation set by the `cnn` params (default: the book's [0, 1] and Glorot; or [-1, 1] and He);
- feature_extraction: the VGG16 conv base, frozen, with a new head (Flatten, Dense 256, sigmoid); it takes
  pretrained.input_size pixels (Params.vgg16_input_size), decoded from each file at that size;
- fine_tuning: the same with block5 trainable (started from the trained feature-extraction model).
Augmentation, when given, is the first block of the model and is the identity at inference. Each ends in
a logit and its calibrated probability (`probability`): the model answers p(positive class).
"""

from __future__ import annotations

from pathlib import Path

import keras

import catsdogs
from catsdogs.calibration import LOGIT_LAYER, PROBABILITY_LAYER
from catsdogs.config import CnnParams
from catsdogs.layers import TemperatureSigmoid, VGG16Preprocess

VGG16_URL_HINT = "set pretrained.weights to a local copy of the VGG16 'notop' .h5 weights file"
# The frozen VGG16 layers up to here run once in the features stage; training starts after it.
VGG16_CUT = "block4_pool"
VGG16_LAST = "block5_pool"  # the base's output, where the new head begins


def set_precision(setting: str) -> str:
    """Sets Keras's dtype policy for the models built next; returns it. A saved model keeps its policy.

    `auto`: mixed_bfloat16 where the hardware runs it fast (a GPU, or a CPU with AVX512-BF16/AMX),
    float32 elsewhere (bfloat16 emulated on an AVX2 CPU trains the CNN several times slower).
    """
    policy = setting
    if setting == "auto":
        policy = "mixed_bfloat16" if fast_bfloat16() else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def fast_bfloat16() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU")) or catsdogs.cpu_has_fast_bfloat16()


class WeightsError(RuntimeError):
    """Pretrained weights could not be loaded; never fall back to random weights."""


def build_scratch_cnn(
    image_size: int,
    dropout: float,
    augmentation: keras.layers.Layer | None,
    cnn: CnnParams,
) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = augmentation(inputs) if augmentation is not None else inputs
    scale, offset = (1 / 127.5, -1.0) if cnn.centered_inputs else (1 / 255, 0.0)
    x = keras.layers.Rescaling(scale, offset=offset, name="rescale")(x)
    for filters in (32, 64, 128, 128):
        x = keras.layers.Conv2D(filters, 3, activation="relu", kernel_initializer=cnn.initializer)(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(512, activation="relu", kernel_initializer=cnn.initializer, name="dense_512")(x)
    return keras.Model(inputs, probability(x), name="scratch_cnn")


def probability(x):
    """Every model's last layers: one logit (Dense, float32 even under mixed precision), then the
    positive class's probability, sigmoid(logit / temperature), the temperature fitted after training."""
    logit = keras.layers.Dense(1, dtype="float32", name=LOGIT_LAYER)(x)
    return TemperatureSigmoid(name=PROBABILITY_LAYER)(logit)


def load_vgg16_base(weights: str | None, image_size: int) -> keras.Model:
    """The VGG16 conv base: `weights` is "imagenet" (downloaded by Keras), a .h5 path, or None (random: tests)."""
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise WeightsError(f"pretrained.weights={weights!r}: no such file; {VGG16_URL_HINT}")
    try:
        return keras.applications.VGG16(
            weights=weights, include_top=False, input_shape=(image_size, image_size, 3)
        )
    except Exception as err:  # Keras raises several kinds (URL, HTTP, OS, value) for the same failure
        first_line = catsdogs.error_line(err, limit=200)
        raise WeightsError(f"cannot load VGG16 weights {weights!r} ({first_line}); {VGG16_URL_HINT}") from None


def build_vgg16_classifier(
    image_size: int, weights: str | None, dropout: float, augmentation: keras.layers.Layer | None
) -> keras.Model:
    """`image_size`: the side of the pixels it takes, which the VGG16 base sees as they are
    (Params.vgg16_input_size)."""
    base = load_vgg16_base(weights, image_size)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = VGG16Preprocess(name="vgg16_preprocess")(x)
    # training=False keeps the base in inference mode even when block5 is later unfrozen.
    x = base(x, training=False)
    x = keras.layers.Flatten()(x)
    # Dropout on the 8,192 frozen features too, not only after Dense 256: otherwise the head learns
    # the few cached views of each training image by heart and is over-confident on new photos.
    if dropout:
        x = keras.layers.Dropout(dropout, name="features_dropout")(x)
    x = keras.layers.Dense(256, activation="relu", name="head_dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, probability(x), name="vgg16_classifier")


def unfreeze_block5(model: keras.Model) -> keras.Model:
    """Make block5_conv1..3 of the VGG16 base trainable, the rest of the base frozen."""
    base = model.get_layer("vgg16")
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block5")
    return model


def build_vgg16_extractor(weights: str | None, image_size: int) -> keras.Model:
    """Raw pixels (image_size square) -> the frozen base's activations at VGG16_CUT: what the features stage caches."""
    base = load_vgg16_base(weights, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = VGG16Preprocess(name="vgg16_preprocess")(inputs)
    return keras.Model(inputs, blocks_1_4(base)(x, training=False), name="block4_features")


def blocks_1_4(base: keras.Model) -> keras.Model:
    """The VGG16 base's layers up to VGG16_CUT (the same layers, not copies)."""
    return keras.Model(base.inputs, base.get_layer(VGG16_CUT).output, name="vgg16_blocks1_4")


def count_params(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) parameter counts."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    frozen = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return trainable, frozen


def front_model(model: keras.Model) -> keras.Model:
    """The part of a VGG16 classifier up to VGG16_CUT (tail_model's complement; the same layers, not copies):
    raw pixels -> block4 activations, as the whole model computes them."""
    base = model.get_layer("vgg16")
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    x = inputs
    for layer in model.layers[1 : model.layers.index(base)]:  # augmentation (identity at inference), preprocessing
        x = layer(x)
    return keras.Model(inputs, blocks_1_4(base)(x, training=False), name="front")


def tail_model(model: keras.Model, after: str, until: str | None = None) -> keras.Model:
    """The part of a VGG16 classifier after base layer `after`: its remaining base layers, then the head.

    With `until`, stop at that layer (of the base, or of the head: LOGIT_LAYER gives the logit). The tail
    shares the classifier's layers, so training it trains the classifier: this is how the VGG16 models
    learn from cached activations.
    """
    base = model.get_layer("vgg16")
    names = [layer.name for layer in base.layers]
    layers = base.layers[names.index(after) + 1 :] + model.layers[model.layers.index(base) + 1 :]
    if until:
        layers = layers[: [layer.name for layer in layers].index(until) + 1]
    inputs = keras.Input(base.get_layer(after).output.shape[1:], name=f"{after}_activations")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name=f"tail_after_{after}")
