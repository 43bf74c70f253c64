"""The training stage on generated data: all four models, their DVC outputs and MLflow runs, resuming."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from sklearn.metrics import log_loss

import catsdogs
from catsdogs.calibration import fit_temperature, logit_model
from catsdogs.config import BACKUP_DIR, FEATURES_DIR, MODEL_NAMES, MODELS_DIR, SPLITS_DIR, load_params
from catsdogs.data import MissingInputError, image_dataset, manifest_path, read_manifest
from catsdogs.features import compute_features
from catsdogs.images import load_pixels
from catsdogs.models import build_scratch_cnn, build_vgg16_extractor
from catsdogs.train import (
    VAL_BLOCK4_FILE,
    calibrate,
    compile_model,
    feature_extraction_job,
    fine_tuning_job,
    float32_tensor,
    load_features,
    predict_in_chunks,
    train_model,
)
from conftest import SIZE, make_params

CNN = make_params().cnn



def test_features_cache_views_and_labels(in_project: Path, tmp_path: Path) -> None:
    meta = json.loads((FEATURES_DIR / "meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and meta["views"] == 3
    train_x = np.load(FEATURES_DIR / "train_block4.npy", mmap_mode="r")
    assert train_x.shape == (72, 3, 3, 512) and train_x.dtype == np.float16  # 24 images x 3 views at 48 px
    labels = np.load(FEATURES_DIR / "train_labels.npy")
    np.testing.assert_array_equal(labels[:24], labels[24:48])  # view-major: same order in each view
    np.testing.assert_array_equal(labels[:24], labels[48:])
    assert not np.array_equal(train_x[:24], train_x[24:48]), "view 1 is augmented"
    assert not np.array_equal(train_x[24:48], train_x[48:]), "each augmented view is drawn afresh"
    assert meta["image_size"] == SIZE  # the side the images were decoded at
    chosen = load_features(FEATURES_DIR, views=(2, 0), input_size=SIZE)  # the views asked for, in that order
    assert [len(rows) for rows in chosen["train_x"]] == [24, 24]
    np.testing.assert_array_equal(chosen["train_x"][0], train_x[48:])
    np.testing.assert_array_equal(chosen["train_x"][1], train_x[:24])
    np.testing.assert_array_equal(chosen["train_y"], np.concatenate([labels[48:], labels[:24]]))
    with pytest.raises(MissingInputError, match=r"caches views 0\.\.2, the params ask for view 3.*dvc repro features"):
        load_features(FEATURES_DIR, views=(0, 3), input_size=SIZE)
    with pytest.raises(MissingInputError, match=f"activations of {SIZE}px images, the params ask for 64px.*"
                                                "dvc repro features"):
        load_features(FEATURES_DIR, views=(0,), input_size=64)
    old = tmp_path / "old_features"  # a cache of the code that resized the decoded images inside the model
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({**meta, "input_size": 64}))
    with pytest.raises(MissingInputError, match=f"activations of {SIZE}px images resized to 64px, the params "
                                                f"ask for {SIZE}px.*dvc repro features"):
        load_features(old, views=(0,), input_size=SIZE)


def test_cached_activations_are_read_a_chunk_at_a_time(tmp_path: Path) -> None:
    """A frozen part run over the float16 cache gives what it gives on the whole float32 copy, for a row count
    that is no multiple of the chunk; training gets one float32 tensor of every row."""
    cached = np.random.default_rng(0).normal(size=(10, 3, 3, 8)).astype(np.float16)
    np.save(tmp_path / "cache.npy", cached)
    mapped = np.load(tmp_path / "cache.npy", mmap_mode="r")
    inputs = keras.Input((3, 3, 8))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    whole = model.predict(cached.astype(np.float32), verbose=0)
    np.testing.assert_allclose(predict_in_chunks(model, [mapped], chunk=4), whole, rtol=1e-6, atol=1e-6)
    tensor = float32_tensor([mapped], chunk=4)
    assert tensor.dtype == "float32" and tensor.shape == cached.shape
    np.testing.assert_array_equal(np.asarray(tensor), cached.astype(np.float32))
    # TensorFlow's kernels take the buffer it was given (they abort on a misaligned one), as training's gather does
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.take(tensor, [9, 0], axis=0)),
                                  cached[[9, 0]].astype(np.float32))
    # several arrays (the chosen views) are read in turn, as one: rows in order, none dropped at a seam
    parts = [mapped[7:], mapped[:7]]
    np.testing.assert_allclose(predict_in_chunks(model, parts, chunk=4), np.concatenate([whole[7:], whole[:7]]),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(float32_tensor(parts, chunk=4)),
                                  np.concatenate([cached[7:], cached[:7]]).astype(np.float32))


def _one_view(**changes) -> dict:
    """Params of the tiny project's features stage with the images alone (view 0), changed by `changes`."""
    return make_params(**{"image_size": SIZE, "pretrained.weights": "vgg.weights.h5", "pretrained.input_size": None,
                          "features.views": 1, "models.feature_extraction.views": None,
                          "models.fine_tuning.views": None, **changes})


def test_features_run_in_the_training_precision(in_project: Path, tmp_path: Path) -> None:
    """Without features.int8, OpenVINO runs blocks 1-4 in the precision the VGG16 models train in, not in one it
    picks for the CPU (bfloat16 on CPUs that have it): float32 gives the Keras float32 extractor's activations.
    Where the CPU has no bfloat16, OpenVINO computes in float32 even when asked for bfloat16, as meta.json says."""
    activations, computed_in = {}, {}
    for precision in ("float32", "mixed_bfloat16"):
        params = _one_view(**{"train.precision": precision, "features.int8": False})
        meta = compute_features(params, Path("data/splits"), tmp_path / precision)
        assert meta["precision"] == precision and meta["runtime"] == "openvino" and meta["int8"] is False
        activations[precision] = np.load(tmp_path / precision / "val_block4.npy").astype(np.float32)
        computed_in[precision] = meta["inference_precision"]
    exact, coarse = activations["float32"], activations["mixed_bfloat16"]
    assert computed_in["float32"] == "f32"
    if computed_in["mixed_bfloat16"] == "bf16":
        assert not np.array_equal(exact, coarse), "bfloat16 rounds: the activations differ"
        assert np.abs(coarse - exact).mean() < 0.05 * np.abs(exact).mean()  # ... by bfloat16's precision, no more
    else:  # OpenVINO has no bfloat16 on this CPU (AVX2): it computes in float32, and the cache says so
        assert computed_in["mixed_bfloat16"] == "f32" and not catsdogs.cpu_has_fast_bfloat16()
        np.testing.assert_array_equal(exact, coarse)
    val = read_manifest(manifest_path("val", SPLITS_DIR))
    pixels = np.stack([x for x, _ in image_dataset(val, ("cat", "dog"), SIZE, params.split.max_pixels)])
    keras.mixed_precision.set_global_policy("float32")
    keras_activations = build_vgg16_extractor("vgg.weights.h5", SIZE).predict(pixels, verbose=0)
    assert exact.shape == keras_activations.shape
    # only the cache's float16 storage (3 significant digits) between them; bfloat16 would be off by more
    np.testing.assert_allclose(exact, keras_activations, rtol=2e-3, atol=1e-3 * np.abs(keras_activations).max())


def test_int8_features_approximate_the_float32_ones(in_project: Path, tmp_path: Path) -> None:
    """features.int8 quantizes blocks 1-4 on the seeded calibration images before caching: activations close to
    the float32 ones but rounded, the same from one run to the next, and meta.json says how they were made."""
    exact = compute_features(_one_view(**{"train.precision": "float32", "features.int8": False}), SPLITS_DIR,
                             tmp_path / "float32")
    assert exact["int8"] is False
    runs = [compute_features(_one_view(**{"train.precision": "float32", "features.int8": True,
                                          "compress.calibration_images": 12}), SPLITS_DIR, tmp_path / f"int8-{i}")
            for i in range(2)]
    assert runs[0]["int8"] is True and runs[0]["inference_precision"] == "f32"
    float32, int8, again = (np.load(tmp_path / folder / "val_block4.npy").astype(np.float32)
                            for folder in ("float32", "int8-0", "int8-1"))
    np.testing.assert_array_equal(int8, again)
    assert not np.array_equal(int8, float32), "int8 rounds"
    assert np.corrcoef(int8.reshape(-1), float32.reshape(-1))[0, 1] > 0.99
    assert np.abs(int8 - float32).mean() < 0.1 * np.abs(float32).mean()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_trains_and_logs_one_run(trained: dict, in_project: Path, name: str) -> None:
    metrics = trained[name]
    out = MODELS_DIR / name
    assert {p.name for p in out.iterdir()} >= {"model.keras", "history.csv", "metrics.json", "run.json"}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["epochs"] == 1
    assert not (BACKUP_DIR / name).exists(), "a finished run leaves no backup"

    run_info = json.loads((out / "run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{in_project}/mlflow.db")
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == name
    assert run.data.tags["dvc_stage"] == f"train_{name}" and len(run.data.tags["data_hash"]) == 64
    assert "git_commit" in run.data.tags
    assert run.data.tags["pipeline"].startswith("manual ")  # trained outside DVC
    assert run.data.params["model"] == name and run.data.params["image_size"] == str(SIZE)
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 1, metric
    assert not {"validation_loss", "validation_accuracy"} & set(run.data.metrics), "one name per quantity"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "learning_curves.png" in artifacts

    saved = keras.models.load_model(out / "model.keras")
    logged = mlflow.tensorflow.load_model(run_info["model_uri"])
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype("float32")
    expected = saved.predict(pixels, verbose=0)
    np.testing.assert_allclose(logged.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert saved.input_shape == (None, SIZE, SIZE, 3)


def _val_photos() -> tuple[np.ndarray, np.ndarray]:
    """The tiny project's validation photos as the models take them (float32 pixels) and whether each is a dog."""
    val = read_manifest(manifest_path("val", SPLITS_DIR))
    pixels = np.stack([load_pixels(image.path, SIZE, 10**8) for image in val]).astype("float32")
    return pixels, np.array([image.label == "dog" for image in val])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_is_saved_calibrated_on_the_validation_set(trained: dict, in_project: Path, name: str) -> None:
    """The temperature minimises the validation log loss of the saved model itself, run on the validation photos
    (T = 1, the plain sigmoid, is a candidate): for a VGG16 model, not of the cached activations it trained on.
    The saved model carries it, and its validation log loss is the calibrated one."""
    metrics = trained[name]
    saved = keras.models.load_model(MODELS_DIR / name / "model.keras")
    assert float(saved.get_layer("p_dog").temperature.numpy()) == pytest.approx(metrics["temperature"], rel=1e-6)
    assert metrics["val_loss"] <= metrics["val_loss_uncalibrated"] + 1e-6
    pixels, y = _val_photos()
    p, logits = (out.reshape(-1).astype(np.float64) for out in logit_model(saved).predict(pixels, verbose=0))
    assert fit_temperature(logits, y) == pytest.approx(metrics["temperature"], rel=1e-4)
    assert log_loss(y, p, labels=[0, 1]) == pytest.approx(metrics["val_loss"], abs=1e-4)
    assert np.mean((p >= 0.5) == y) == pytest.approx(metrics["val_accuracy"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_run_logs_its_own_settings_under_plain_names(trained: dict, in_project: Path, name: str) -> None:
    """Comparable across runs: the model's own section as epochs, learning_rate, ...; no other model's section."""
    params = load_params()
    run = mlflow.MlflowClient().get_run(json.loads((MODELS_DIR / name / "run.json").read_text())["run_id"])
    logged = run.data.params
    settings = params.models[name]
    for key in ("epochs", "learning_rate", "optimizer", "batch_size", "dropout", "augment", "init_from", "schedule",
                "weight_decay"):
        assert logged[key] == str(getattr(settings, key)), key
    assert not [key for key in logged if key.startswith("models.")], "other models' sections are not logged"
    assert logged["train.seed"] == str(params.train.seed) and logged["train.precision"] == params.train.precision
    assert logged["precision"] in ("float32", "mixed_bfloat16", "mixed_float16")  # what `auto` resolved to
    vgg16 = name in ("feature_extraction", "fine_tuning")
    assert ("pretrained.weights" in logged) == vgg16 and ("features.views" in logged) == vgg16
    # the cached views it trained on, null resolved: fine-tuning's include one feature extraction never saw
    expected = {"feature_extraction": "0,1", "fine_tuning": "0,1,2"}.get(name, "None")
    assert logged["views"] == expected
    assert ("cnn.initializer" in logged) == (not vgg16)
    assert ("augment.rotation_degrees" in logged) == settings.augment


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_run_logs_its_datasets_and_system_metrics(trained: dict, in_project: Path, name: str) -> None:
    from catsdogs.tracking import data_hash

    run = mlflow.MlflowClient().get_run(json.loads((MODELS_DIR / name / "run.json").read_text())["run_id"])
    inputs = {tag.value: item.dataset for item in run.inputs.dataset_inputs for tag in item.tags
              if tag.key == "mlflow.data.context"}
    assert {"training", "validation"} <= set(inputs)
    assert inputs["training"].name == "train" and inputs["validation"].name == "val"
    assert inputs["training"].digest == data_hash()[:12]
    assert load_params().data.url in json.loads(inputs["training"].source).values()
    train_rows = len((SPLITS_DIR / "train.csv").read_text().splitlines()) - 1
    assert json.loads(inputs["training"].profile)["num_rows"] == train_rows
    assert any(key.startswith("system/cpu_utilization_percentage") for key in run.data.metrics), run.data.metrics


def test_the_experiment_is_a_model_training_experiment(trained: dict, in_project: Path) -> None:
    experiment = mlflow.MlflowClient().get_experiment_by_name(load_params().mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_temperature_comes_from_the_whole_model_on_the_validation_photos(trained: dict, in_project: Path) -> None:
    """A VGG16 model trains and validates on cached activations, but is saved, evaluated and served whole: its
    temperature is fitted on the whole model's logits for the validation photos, whatever training validated on."""
    params = load_params()
    job = feature_extraction_job(params, params.models["feature_extraction"])
    blank = (np.zeros_like(job.val_data[0]), job.val_data[1])  # activations that would give every photo one logit
    value, logits, labels, _ = calibrate(dataclasses.replace(job, val_data=blank))
    pixels, y = _val_photos()
    own = logit_model(job.model).predict(pixels, verbose=0)[1].reshape(-1).astype(np.float64)
    np.testing.assert_allclose(logits, own, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, y)
    assert np.ptp(own) > 0 and value == pytest.approx(fit_temperature(own, labels), rel=1e-4)
    assert float(job.model.get_layer("p_dog").temperature.numpy()) == pytest.approx(value, rel=1e-6)


def test_fine_tuning_calibrates_on_feature_extractions_blocks_1_4(trained: dict, in_project: Path,
                                                                 tmp_path: Path) -> None:
    """Feature extraction keeps its calibration's block4 activations of the validation photos; fine-tuning, whose
    blocks 1-4 are the same frozen layers, reuses them (their key matches) and runs only block5 and the head.
    Activations saved under another key (other weights, photos or decoding) are not used."""
    params = load_params()
    saved = dict(np.load(MODELS_DIR / "feature_extraction" / VAL_BLOCK4_FILE))
    job = fine_tuning_job(params, params.models["fine_tuning"])
    assert job.block4 is not None and job.block4.source == MODELS_DIR / "feature_extraction" / VAL_BLOCK4_FILE
    assert str(saved["key"]) == job.block4.key
    pixels, y = _val_photos()
    np.testing.assert_array_equal(saved["labels"].reshape(-1), y)
    np.testing.assert_allclose(saved["activations"], job.block4.front.predict(pixels, verbose=0), rtol=1e-5, atol=1e-6)
    own = logit_model(job.model).predict(pixels, verbose=0)[1].reshape(-1)

    blank = tmp_path / VAL_BLOCK4_FILE  # activations that would give every photo one logit
    for key, reused in ((job.block4.key, True), ("another front", False)):
        np.savez(blank, activations=np.zeros_like(saved["activations"]), labels=saved["labels"], key=np.array(key))
        _, logits, labels, _ = calibrate(dataclasses.replace(job, block4=dataclasses.replace(job.block4,
                                                                                             source=blank)))
        np.testing.assert_array_equal(labels, y)
        if reused:
            assert np.ptp(logits) == 0
        else:
            np.testing.assert_allclose(logits, own, rtol=1e-4, atol=1e-5)
    assert not (MODELS_DIR / "fine_tuning" / VAL_BLOCK4_FILE).exists()  # only the start keeps them


def test_fine_tuning_starts_from_the_feature_extraction_head(trained: dict, in_project: Path) -> None:
    head = keras.models.load_model(MODELS_DIR / "feature_extraction" / "model.keras").get_layer("head_dense")
    tuned = keras.models.load_model(MODELS_DIR / "fine_tuning" / "model.keras")
    assert head.kernel.shape == tuned.get_layer("head_dense").kernel.shape
    # A few steps at a learning rate of 2e-5 move the head only a little from where it started.
    assert np.abs(head.kernel.numpy() - tuned.get_layer("head_dense").kernel.numpy()).max() < 0.05
    # It trained on the plain logit, then got a temperature of its own (not feature extraction's)
    fitted = float(tuned.get_layer("p_dog").temperature.numpy())
    assert fitted == pytest.approx(trained["fine_tuning"]["temperature"], rel=1e-6)


def test_augmented_starts_from_the_trained_scratch_cnn(trained: dict, in_project: Path) -> None:
    scratch = keras.models.load_model(MODELS_DIR / "scratch" / "model.keras")
    augmented = keras.models.load_model(MODELS_DIR / "augmented" / "model.keras")
    random = build_scratch_cnn(SIZE, 0.5, None, CNN)
    for start, tuned in zip(scratch.trainable_weights, augmented.trainable_weights, strict=True):
        # a few Adam steps at augmented's learning rate move each weight by a few thousandths; a fresh start is far away
        assert np.abs(start.numpy() - tuned.numpy()).max() < 0.01
    assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(augmented.trainable_weights,
                                                                    random.trainable_weights, strict=True)) > 0.05


def test_cosine_schedule_decays_over_the_epoch_budget() -> None:
    params = make_params(**{"models.scratch.schedule": "cosine", "models.scratch.epochs": 4})
    model = build_scratch_cnn(SIZE, 0.0, None, CNN)
    compile_model(model, params.models["scratch"], steps_per_epoch=10)
    schedule = model.optimizer._learning_rate  # the public learning_rate is its current value
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert float(schedule(0)) == pytest.approx(params.models["scratch"].learning_rate)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_shrinks_each_weight_apart_from_its_gradient(optimizer: str) -> None:
    """Decoupled, as AdamW: one step with weight_decay d ends learning_rate * d * w below the same step without."""
    x, y = np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]], np.float32), np.array([[1.0], [0.0]], np.float32)
    ends = {}
    for decay in (0.0, 16.0):
        settings = make_params(**{"models.scratch.schedule": "constant", "models.scratch.optimizer": optimizer,
                                  "models.scratch.weight_decay": decay}).models["scratch"]
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
        model.set_weights([np.array([[0.5], [-0.25], [1.0]], np.float32), np.zeros(1, np.float32)])
        compile_model(model, settings, steps_per_epoch=1)
        model.train_on_batch(x, y)
        ends[decay] = model.get_weights()[0]
    expected = settings.learning_rate * 16.0 * np.array([[0.5], [-0.25], [1.0]])
    np.testing.assert_allclose(ends[0.0] - ends[16.0], expected, rtol=0.02)


class _Interrupt(Exception):
    pass


def test_interrupted_training_resumes_in_the_same_run(in_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params()
    settings = params.models["scratch"].__class__(**{**params.models["scratch"].__dict__, "epochs": 2})
    params = params.__class__(**{**params.__dict__, "models": {**params.models, "scratch": settings}})
    out, backup = in_project / "resume_out", in_project / ".backup" / "resume"

    calls = []

    def interrupt_after_first_epoch(self, epoch, logs=None):
        calls.append(epoch)
        raise _Interrupt

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.keras.MlflowCallback, "on_epoch_end", interrupt_after_first_epoch)
        with pytest.raises(_Interrupt):
            train_model("scratch", params, out, backup)
    assert calls == [0] and (backup / "run_id").is_file()
    assert not (out / "model.keras").exists(), "no model is written for an interrupted run"
    first_run = (backup / "run_id").read_text()

    metrics = train_model("scratch", params, out, backup)
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] == first_run
    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"] and metrics["epochs"] == 2


def test_a_backup_left_with_other_params_is_discarded(in_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params()
    out, backup = in_project / "stale_out", in_project / ".backup" / "stale"
    with monkeypatch.context() as patch:
        patch.setattr(mlflow.keras.MlflowCallback, "on_epoch_end", _raise_interrupt)
        with pytest.raises(_Interrupt):
            train_model("scratch", params, out, backup)
    stale_run = (backup / "run_id").read_text()
    (backup / "params.json").write_text("{}")  # as if the interrupted run had other params
    train_model("scratch", params, out, backup)
    client = mlflow.MlflowClient()
    assert json.loads((out / "run.json").read_text())["run_id"] != stale_run
    assert client.get_run(stale_run).info.status == "KILLED"


def _raise_interrupt(self, epoch, logs=None):
    raise _Interrupt
