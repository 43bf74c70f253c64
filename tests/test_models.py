"""The four architectures: parameter counts, raw-pixel inputs, shared tails, weights errors."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from catsdogs.config import CnnParams
from catsdogs.layers import VGG16Preprocess
from catsdogs.models import (
    VGG16_CUT,
    WeightsError,
    build_scratch_cnn,
    build_vgg16_classifier,
    build_vgg16_extractor,
    count_params,
    load_vgg16_base,
    tail_model,
    unfreeze_block5,
)

CNN = CnnParams(centered_inputs=True, initializer="he_uniform")


def test_book_parameter_counts_at_150() -> None:
    """The book's counts, plus one frozen number per model: the calibration temperature."""
    assert count_params(build_scratch_cnn(150, 0.5, None, CNN)) == (3_453_121, 1)
    vgg = build_vgg16_classifier(150, None, 0.5, None)
    assert count_params(vgg) == (2_097_665, 14_714_688 + 1)
    trainable, frozen = count_params(unfreeze_block5(vgg))
    assert trainable == 9_177_089 and trainable + frozen == 2_097_665 + 14_714_688 + 1
    base = vgg.get_layer("vgg16")
    assert [layer.name for layer in base.layers if layer.trainable and layer.weights] == [
        "block5_conv1", "block5_conv2", "block5_conv3"
    ]


def test_models_take_raw_pixels_of_any_batch_size() -> None:
    rng = np.random.default_rng(0)
    for model in (build_scratch_cnn(48, 0.0, None, CNN), build_vgg16_classifier(48, None, 0.0, None)):
        for batch in (1, 3):
            p = model.predict(rng.integers(0, 256, (batch, 48, 48, 3)).astype("float32"), verbose=0)
            assert p.shape == (batch, 1) and np.all((p >= 0) & (p <= 1))


def test_cnn_params_choose_the_pixel_scaling_and_the_initialiser() -> None:
    pixels = np.array([0.0, 127.5, 255.0])
    for cnn, scaled, initializer in ((CNN, [-1.0, 0.0, 1.0], keras.initializers.HeUniform),
                                     (CnnParams(False, "glorot_uniform"), [0.0, 0.5, 1.0],
                                      keras.initializers.GlorotUniform)):
        model = build_scratch_cnn(48, 0.0, None, cnn)
        np.testing.assert_allclose(np.asarray(model.get_layer("rescale")(pixels)), scaled)
        relu_layers = [layer for layer in model.layers if getattr(layer, "activation", None) is keras.activations.relu]
        assert len(relu_layers) == 5
        assert all(isinstance(layer.kernel_initializer, initializer) for layer in relu_layers)


def test_vgg16_preprocess_layer_is_keras_preprocess_input() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(VGG16Preprocess()(pixels)), expected, rtol=1e-6)


def test_tail_shares_layers_with_the_classifier() -> None:
    model = build_vgg16_classifier(64, None, 0.0, None)
    base = model.get_layer("vgg16")
    pixels = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    cut = keras.Model(base.inputs, base.get_layer("block4_pool").output)
    activations = cut.predict(keras.applications.vgg16.preprocess_input(pixels.copy()), verbose=0)
    tail = tail_model(model, after=VGG16_CUT)
    np.testing.assert_allclose(tail.predict(activations, verbose=0), model.predict(pixels, verbose=0), rtol=1e-4)
    tail.get_layer("logit").bias.assign([3.0])  # training the tail changes the classifier
    assert float(model.get_layer("logit").bias.numpy()[0]) == 3.0
    logits = tail_model(model, after=VGG16_CUT, until="logit")  # the same layers up to the logit
    model.get_layer("p_dog").temperature.assign(2.0)
    np.testing.assert_allclose(tail.predict(activations, verbose=0),
                               1 / (1 + np.exp(-logits.predict(activations, verbose=0) / 2.0)), rtol=1e-5)


def test_vgg16_models_take_pixels_at_the_size_their_base_sees() -> None:
    """No resizing inside: the pixels (decoded from the file at pretrained.input_size) go to the base as they are."""
    model = build_vgg16_classifier(64, None, 0.0, None)
    assert model.input_shape == (None, 64, 64, 3) and model.get_layer("vgg16").input_shape == (None, 64, 64, 3)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.layers.Resizing)]
    extractor = build_vgg16_extractor(None, 64)
    assert extractor.input_shape == (None, 64, 64, 3) and extractor.output_shape == (None, 4, 4, 512)


def test_weights_file_loads_and_bad_weights_fail_loudly(tmp_path: Path) -> None:
    weights = tmp_path / "vgg.weights.h5"
    source = load_vgg16_base(None, 32)
    source.save_weights(weights)
    loaded = load_vgg16_base(str(weights), 64)  # conv weights fit any input size
    np.testing.assert_array_equal(loaded.get_layer("block1_conv1").kernel.numpy(),
                                  source.get_layer("block1_conv1").kernel.numpy())
    with pytest.raises(WeightsError, match="pretrained.weights"):
        load_vgg16_base(str(tmp_path / "missing.h5"), 64)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"<html>not weights</html>")
    with pytest.raises(WeightsError, match="cannot load VGG16 weights"):
        load_vgg16_base(str(corrupt), 64)
