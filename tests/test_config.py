"""params.yaml -> typed, frozen objects; bad params fail and name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from catsdogs.config import ConfigError, Params, build, flatten, load_params
from conftest import ROOT, make_params, params_dict


def test_project_params_load_with_pinned_defaults() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.data.url == "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
    assert params.data.sha256 is None
    assert params.image_size == 150
    assert params.pretrained.weights == "imagenet"
    assert params.pretrained.input_size == 224  # the VGG16 models take ImageNet's size, the CNNs the book's 150
    assert params.vgg16_input_size == 224
    assert make_params(**{"pretrained.input_size": None}).vgg16_input_size == 150  # as in the book
    assert (params.split.train, params.split.val, params.split.test) == (1000, 250, 250)
    assert not params.split.uses_fractions
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.image_size = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.sha256": "abc"}, "data.sha256"),
        ({"image_size": "big"}, "image_size must be int"),
        ({"image_size": 32}, "image_size must be in"),
        ({"split.train": 0.7, "split.val": 0.2, "split.test": 0.2}, "fractions"),
        ({"split.train": 1000, "split.val": 0.5}, "whole image counts"),
        # every split is needed downstream, so a fraction of 1 (all images in one split) cannot be asked for
        ({"split.train": 1.0, "split.val": 0, "split.test": 0}, r"split.val and split.test must be > 0"),
        ({"split.test": 0}, r"split.val and split.test must be > 0"),
        ({"pretrained.weights": "resnet"}, "pretrained.weights"),
        ({"pretrained.input_size": 16}, "pretrained.input_size must be null or in 32..1024"),
        ({"pretrained.input_size": "large"}, "pretrained.input_size"),
        ({"data.retries": -1}, "data.retries"),
        ({"data.url": "  "}, "data.url is empty"),
        ({"train.seed": -1}, r"train.seed must be in 0..2\*\*32-1"),
        ({"mlflow.experiment": " "}, "mlflow.experiment must name an experiment"),
        ({"mlflow.tracking_uri": ""}, "mlflow.tracking_uri must be a store's URI"),
        ({"register.name": "cats/dogs"}, "register.name must be a name without '/' or ':'"),
        ({"register.name": ""}, "register.name must be a name"),
        ({"register.alias": "v1"}, "register.alias must be letters, digits"),
        ({"register.alias": "Latest"}, "not 'latest' or v<number>"),
        ({"register.alias": "best model"}, "register.alias must be letters, digits"),
        ({"models.scratch.schedule": "linear"}, "schedule must be one of constant, plateau, cosine"),
        ({"models.scratch.schedule": "plateau"}, "reduce_lr_patience must be > 0 with schedule: plateau"),
        ({"models.scratch.reduce_lr_patience": 2}, "reduce_lr_patience must be > 0 with schedule: plateau"),
        ({"models.scratch.early_stopping_patience": -2}, r"models\.scratch\.early_stopping_patience must be >= 0"),
        ({"models.scratch.reduce_lr_patience": -1}, r"models\.scratch\.reduce_lr_patience must be >= 0"),
        ({"models.scratch.init_from": "augmented"}, "models.scratch.init_from must be null"),
        ({"models.augmented.init_from": "feature_extraction"}, "models.augmented.init_from must be one of scratch"),
        ({"models.fine_tuning.init_from": "scratch"}, "init_from must be one of feature_extraction"),
        ({"register.metric": "val_f1"}, "register.metric must be one of val_accuracy, val_loss"),
        ({"register.metric": "test_accuracy"}, "register.metric must be one of"),  # test data never chooses
        ({"register.min_delta": 0}, "register.min_delta must be > 0"),  # a tie is no improvement
        ({"register.min_val_accuracy": 1.5}, r"register.min_val_accuracy must be in \[0, 1\] or null"),
        ({"register.max_val_loss": 0}, "register.max_val_loss must be > 0 or null"),
        ({"models.fine_tuning.label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"models.feature_extraction.weight_decay": -1}, "models.feature_extraction.weight_decay must be >= 0"),
        ({"compress.calibration_images": 0}, "compress.calibration_images must be > 0"),
        ({"models.fine_tuning.views": [0, 0]}, r"views must be null or distinct view numbers >= 0, got \[0, 0\]"),
        ({"models.fine_tuning.views": []}, "views must be null or distinct view numbers"),
        ({"models.fine_tuning.views": [-1]}, "views must be null or distinct view numbers"),
        ({"models.fine_tuning.views": 2}, "models.fine_tuning.views must be a list"),
        ({"models.fine_tuning.views": [0, 3]}, r"asks for view 3, but features.views caches views 0\.\.2"),
        ({"features.views": 2}, r"models.fine_tuning.views \[0, 1, 2\] asks for view 2"),  # set views with it
        ({"models.feature_extraction.augment": False}, r"views must be null or \[0\] with augment: false"),
        ({"models.augmented.views": [0]}, "models.augmented.views must be null: only the VGG16 models"),
    ],
)
def test_bad_values_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_params(**overrides)


def test_unknown_and_missing_keys_name_themselves(tmp_path: Path) -> None:
    raw = params_dict()
    raw["split"]["sede"] = 1
    with pytest.raises(ConfigError, match=r"unknown key split\.sede"):
        build(Params, raw, where="")
    raw = params_dict()
    del raw["data"]["url"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"missing key data\.url"):
        load_params(path)
    with pytest.raises(ConfigError, match="is missing"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("stage", ["download", "split", "features", "train scratch", "evaluate fine_tuning",
                                   "compress", "register"])
def test_each_stage_says_a_bad_params_file_in_one_line(stage: str, tmp_path: Path, monkeypatch) -> None:
    """What `dvc exp run -S` with a bad value shows: the stage's name and the key, not a traceback."""
    import importlib

    raw = params_dict()
    raw["models"]["scratch"]["epochs"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    module, *argv = stage.split()
    main = importlib.import_module(f"catsdogs.{module}").main
    with pytest.raises(SystemExit) as exited:
        main(argv) if argv else main()
    message = str(exited.value.code)
    assert message.startswith(f"{stage}: ") and "models.scratch.epochs" in message and "\n" not in message


def test_training_views_default_to_every_view_with_augmentation_and_the_images_without() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.training_views("feature_extraction") == (0, 1)
    assert params.training_views("fine_tuning") == (0, 1, 2)  # with one feature extraction never trained on
    free = {"models.feature_extraction.views": None, "models.fine_tuning.views": None, "features.views": 10}
    assert make_params(**free).training_views("fine_tuning") == tuple(range(10))
    assert make_params(**free, **{"models.fine_tuning.augment": False}).training_views("fine_tuning") == (0,)
    assert make_params(**{"models.fine_tuning.views": [2, 0]}).training_views("fine_tuning") == (2, 0)


def test_fractions_and_flatten() -> None:
    params = make_params(**{"split.train": 0.7, "split.val": 0.15, "split.test": 0.15})
    assert params.split.uses_fractions
    flat = flatten(params)
    assert flat["split.train"] == 0.7 and flat["data.url"].startswith("https://")
    assert set(flat) >= {"image_size", "pretrained.weights", "data.sha256"}
