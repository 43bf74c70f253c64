"""Calibrated probabilities: temperature scaling (Guo et al., 2017) and the measures of calibration.

A model's `p_dog` layer (catsdogs.layers.TemperatureSigmoid) answers sigmoid(logit / T). After
training, T is the one value that minimises the log loss of the validation set; it cannot change
a prediction's label (the order of the logits stays), only how sure the probabilities are.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from scipy.optimize import minimize_scalar

LOGIT_LAYER = "logit"  # the models' last Dense layer: one logit per image
PROBABILITY_LAYER = "p_dog"  # its TemperatureSigmoid: the model's output
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE minimising the mean log loss of sigmoid(logits / T) against labels (0/1)."""
    z = np.asarray(logits, np.float64).reshape(-1)
    y = np.asarray(labels, np.float64).reshape(-1)
    if len(z) != len(y) or not len(z):
        raise ValueError(f"fit_temperature: {len(z)} logits for {len(y)} labels")

    def log_loss(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))  # -log sigmoid, stable at any logit

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    return round(math.exp(minimize_scalar(log_loss, bounds=(low, high), method="bounded").x), 6)


def logit_model(model: keras.Model) -> keras.Model | None:
    """The same model answering the logit and the probability; None for a model without a temperature layer."""
    try:
        logits = model.get_layer(LOGIT_LAYER).output
    except ValueError:
        return None
    return keras.Model(model.inputs, [model.output, logits], name=f"{model.name}_with_logits")


def temperature(model: keras.Model) -> float | None:
    """The model's fitted temperature, or None for a model saved before calibration existed."""
    try:
        return float(model.get_layer(PROBABILITY_LAYER).temperature.numpy())
    except (ValueError, AttributeError):
        return None


def set_temperature(model: keras.Model, value: float) -> None:
    model.get_layer(PROBABILITY_LAYER).temperature.assign(value)


def expected_calibration_error(y_true: np.ndarray, p_positive: np.ndarray, bins: int = 10) -> float:
    """sum over bins of (images in bin / images) * |share of positives - mean p|, over `bins` equal-width
    bins of p_positive: the gap the reliability diagram (sklearn's CalibrationDisplay, same bins) shows."""
    p = np.asarray(p_positive, np.float64).reshape(-1)
    y = np.asarray(y_true, np.float64).reshape(-1)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p)  # as sklearn.calibration.calibration_curve
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))
    return float(gaps.sum() / max(counts.sum(), 1))
