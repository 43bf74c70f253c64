"""Stage `evaluate`: scores one trained model on the held-out test split, which no other stage reads.

    python -m catsdogs.evaluate {scratch|augmented|feature_extraction|fine_tuning}

Reads models/<name>/{model.keras,run.json} and data/splits/test.csv. Writes evaluation/<name>/:
metrics.json (accuracy, precision, recall, F1, ROC AUC, log loss, Brier score, expected calibration
error and what chance alone gives a calibrated model, log loss and ECE before calibration, confusion
matrix), predictions.csv (one row per test image, a DVC confusion plot) and figures (confusion
matrices, ROC curve, reliability diagram, the worst misclassified images); logs all of it into the
model's own MLflow run.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import keras
import matplotlib
import numpy as np
from scipy.special import expit
from sklearn import metrics as skm
from sklearn.calibration import CalibrationDisplay

from catsdogs import configure_logging
from catsdogs.calibration import expected_calibration_error, logit_model, temperature
from catsdogs.config import (
    EVALUATION_DIR,
    MODELS_DIR,
    SPLITS_DIR,
    ConfigError,
    Params,
    load_params,
    parse_model_name,
)
from catsdogs.data import LabelledImage, MissingInputError, batched, image_dataset, manifest_path, read_manifest
from catsdogs.images import read_rgb
from catsdogs.layers import RandomAffine, TemperatureSigmoid, VGG16Preprocess  # noqa: F401  (custom layers of the saved models)
from catsdogs.tracking import TRACKING_ERRORS, log_splits, mlflow, setup_mlflow, tracking_failure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

WORST_SHOWN = 12


def main(argv: list[str] | None = None) -> None:
    name = parse_model_name(argv, __doc__)
    configure_logging()
    try:
        params = load_params()
        setup_mlflow(params.mlflow)
        evaluate_model(params, MODELS_DIR / name, EVALUATION_DIR / name)
    except (MissingInputError, ConfigError) as err:
        sys.exit(f"evaluate {name}: {err}")
    except TRACKING_ERRORS as err:
        sys.exit(f"evaluate {name}: {tracking_failure(err)}")


def evaluate_model(params: Params, model_dir: Path, out_dir: Path) -> dict:
    for required in ("model.keras", "run.json"):
        if not (model_dir / required).is_file():
            raise MissingInputError(f"{model_dir / required} is missing; run: dvc repro train_{model_dir.name}")
    run = json.loads((model_dir / "run.json").read_text())
    class_names = tuple(run["class_names"])
    test = read_manifest(manifest_path("test", SPLITS_DIR))
    model = keras.models.load_model(model_dir / "model.keras")
    size = int(model.input_shape[1])  # image_size for the CNNs, pretrained.input_size for the VGG16 models
    dataset = batched(image_dataset(test, class_names, size, params.split.max_pixels), 32)
    y_true = np.array([class_names.index(image.label) for image in test])
    with_logits = logit_model(model)
    uncalibrated = None
    if with_logits is None:  # saved before calibration existed: its probability is all there is
        p_positive = model.predict(dataset, verbose=0).reshape(-1).astype(np.float64)
    else:
        p, logits = with_logits.predict(dataset, verbose=0)
        p_positive, uncalibrated = p.reshape(-1).astype(np.float64), expit(logits.reshape(-1).astype(np.float64))

    scores = score(y_true, p_positive, class_names)
    scores["temperature"] = temperature(model)
    if uncalibrated is not None:
        scores["log_loss_uncalibrated"] = float(skm.log_loss(y_true, uncalibrated, labels=[0, 1]))
        scores["ece_uncalibrated"] = expected_calibration_error(y_true, uncalibrated)
    figures = {
        "confusion_matrix.png": plot_confusion(y_true, p_positive, class_names, normalize=None),
        "confusion_matrix_normalized.png": plot_confusion(y_true, p_positive, class_names, normalize="true"),
        "roc_curve.png": plot_roc(y_true, p_positive, class_names),
        "reliability_diagram.png": plot_reliability(y_true, p_positive, uncalibrated, class_names,
                                                    scores["temperature"]),
        "worst_misclassified.png": plot_worst(test, y_true, p_positive, class_names, params.split.max_pixels),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_predictions(out_dir / "predictions.csv", test, p_positive, class_names)
    for filename, figure in figures.items():
        figure.savefig(out_dir / filename, dpi=100)

    with mlflow.start_run(run_id=run["run_id"], log_system_metrics=True):
        log_splits(("test",), params.data.url)
        mlflow.log_metrics({f"test_{k}": v for k, v in scores.items() if isinstance(v, float) and k != "temperature"})
        mlflow.log_dict(scores, "evaluation/test_metrics.json")
        for filename, figure in figures.items():
            mlflow.log_figure(figure, f"evaluation/{filename}")
    for figure in figures.values():
        plt.close(figure)
    log.info("%s on %d test images: accuracy %.4f, ROC AUC %.4f", model_dir.name, len(test),
             scores["accuracy"], scores["roc_auc"])
    return scores


def score(y_true: np.ndarray, p_positive: np.ndarray, class_names: tuple[str, ...]) -> dict:
    y_pred = (p_positive >= 0.5).astype(int)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=[0, 1])
    chance = chance_ece(p_positive)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, p_positive)) if len(set(y_true)) == 2 else float("nan"),
        "log_loss": float(skm.log_loss(y_true, p_positive, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, p_positive, pos_label=1)),
        "ece": expected_calibration_error(y_true, p_positive),
        # what a perfectly calibrated model with these probabilities measures on this many images (mean, 95th
        # percentile): how much of the ECE the size of the test split alone explains
        "ece_by_chance": float(chance.mean()),
        "ece_by_chance_p95": float(np.percentile(chance, 95)),
        "images": int(len(y_true)),
        "positive_class": class_names[1],
        "confusion_matrix": {
            "labels": list(class_names),
            "counts": matrix.tolist(),  # rows: true class, columns: predicted class
        },
    }


def chance_ece(p_positive: np.ndarray, draws: int = 1000, seed: int = 0, bins: int = 10) -> np.ndarray:
    """The ECE of `draws` label sets drawn from p_positive itself (each image positive with probability p): what a
    perfectly calibrated model answering these probabilities measures on this many images by chance alone. A
    measured ECE inside this spread cannot tell miscalibration from the luck of which images the split holds.
    (Here, not in calibration.py, which the features and training stages depend on.)"""
    p = np.asarray(p_positive, np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    return np.array([expected_calibration_error(rng.random(len(p)) < p, p, bins) for _ in range(draws)])


def plot_confusion(y_true, p_positive, class_names, normalize: str | None):
    display = skm.ConfusionMatrixDisplay.from_predictions(
        y_true, (p_positive >= 0.5).astype(int), labels=[0, 1], display_labels=list(class_names),
        normalize=normalize, cmap="Blues", colorbar=False, values_format=".2f" if normalize else "d",
    )
    display.ax_.set_title("Test confusion matrix" + (" (normalised by true class)" if normalize else ""))
    display.figure_.tight_layout()
    return display.figure_


def plot_roc(y_true, p_positive, class_names):
    display = skm.RocCurveDisplay.from_predictions(y_true, p_positive, name=f"p({class_names[1]})")
    display.ax_.plot([0, 1], [0, 1], "k:", label="chance")
    display.ax_.set_title("Test ROC curve")
    display.ax_.legend(loc="lower right")
    return display.figure_


def plot_reliability(y_true, p_positive, uncalibrated, class_names, fitted: float | None):
    """Reliability diagram: the share of positives against the mean predicted probability, per bin of 0.1
    (the bins of the ECE), for the model as saved and, dashed, its plain sigmoid before calibration."""
    fig, ax = plt.subplots(figsize=(6, 6))
    name = f"calibrated (T = {fitted:.2f})" if fitted is not None else "model"
    CalibrationDisplay.from_predictions(y_true, p_positive, n_bins=10, name=name, ax=ax)
    if uncalibrated is not None:
        CalibrationDisplay.from_predictions(y_true, uncalibrated, n_bins=10, name="before calibration (T = 1)",
                                            ax=ax, linestyle="--")
    ax.set_xlabel(f"mean predicted p({class_names[1]})")
    ax.set_ylabel(f"share of {class_names[1]}s")
    ax.set_title("Test reliability diagram")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_worst(images: list[LabelledImage], y_true, p_positive, class_names, max_pixels: int):
    """The misclassified test images the model was surest about, with their probabilities."""
    wrong = np.nonzero((p_positive >= 0.5).astype(int) != y_true)[0]
    confidence = np.abs(p_positive[wrong] - 0.5)
    shown = wrong[np.argsort(-confidence, kind="stable")][:WORST_SHOWN]
    columns = 4
    rows = max(1, -(-len(shown) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown, strict=False):
        ax.imshow(read_rgb(images[i].path, max_pixels))
        ax.set_title(f"{images[i].path.name}\ntrue {class_names[y_true[i]]}, p({class_names[1]})={p_positive[i]:.2f}",
                     fontsize=8)
    fig.suptitle(f"Worst misclassified test images ({len(wrong)} wrong in all)")
    fig.tight_layout()
    return fig


def write_predictions(path: Path, images: list[LabelledImage], p_positive, class_names) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "actual", "predicted", f"p_{class_names[1]}"])
        for image, p in zip(images, p_positive, strict=True):
            writer.writerow([image.path.as_posix(), image.label, class_names[int(p >= 0.5)], f"{p:.6f}"])


if __name__ == "__main__":
    main()
