"""Temperature scaling and the calibration measures, on synthetic logits with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from catsdogs.calibration import TEMPERATURE_RANGE, expected_calibration_error, fit_temperature
from catsdogs.evaluate import chance_ece


def _overconfident(scale: float, n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(u), and a model's logits scale * u: calibrated by a temperature of `scale`."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-u))).astype(float)
    return scale * u, y


def test_the_fitted_temperature_undoes_overconfidence() -> None:
    logits, y = _overconfident(4.0)
    assert fit_temperature(logits, y) == pytest.approx(4.0, rel=0.08)
    logits, y = _overconfident(0.5)  # an under-confident model gets T < 1
    assert fit_temperature(logits, y) == pytest.approx(0.5, rel=0.08)


def test_the_temperature_stays_in_range_for_separable_data() -> None:
    """Perfectly separated labels would drive T to 0 (infinitely sure): the range stops it."""
    logits = np.array([-3.0, -1.0, 1.0, 3.0])
    assert fit_temperature(logits, np.array([0, 0, 1, 1])) == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)
    with pytest.raises(ValueError, match="3 logits for 2 labels"):
        fit_temperature(logits[:3], np.array([0, 1]))


def test_expected_calibration_error() -> None:
    # bin [0.1, 0.2): p 0.15 twice, one positive (0.5): gap 0.35; bin [0.9, 1]: p 0.95 twice, both positive: 0.05
    y = np.array([0, 1, 1, 1])
    p = np.array([0.15, 0.15, 0.95, 0.95])
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.35 + 2 * 0.05) / 4)
    assert expected_calibration_error(np.array([1]), np.array([1.0])) == 0.0  # p = 1 falls in the last bin
    logits, y = _overconfident(4.0)
    calibrated = 1 / (1 + np.exp(-logits / 4.0))
    assert expected_calibration_error(y, calibrated) < 0.02 < expected_calibration_error(y, 1 / (1 + np.exp(-logits)))


def test_chance_ece_is_what_a_calibrated_model_measures_on_few_images() -> None:
    """A perfectly calibrated model still measures an ECE on a finite test set; chance_ece is its spread, shrinking
    as 1 / sqrt(images), nothing for certain answers, and below what a miscalibrated model measures."""
    rng = np.random.default_rng(1)
    assert not chance_ece(np.array([0.0, 1.0, 1.0, 0.0])).any()  # sure and right: no gap to draw
    small, large = chance_ece(rng.random(100), draws=300), chance_ece(rng.random(10000), draws=300)
    assert small.mean() / large.mean() == pytest.approx(10, rel=0.25)
    assert np.array_equal(chance_ece(np.full(50, 0.7), seed=3), chance_ece(np.full(50, 0.7), seed=3))
    # 500 images of a calibrated model: its own ECE sits inside the spread; shifted probabilities fall outside it
    logits, y = _overconfident(1.0, n=500, seed=2)
    p = 1 / (1 + np.exp(-logits))
    spread = chance_ece(p)
    assert np.percentile(spread, 5) < expected_calibration_error(y, p) < np.percentile(spread, 95)
    assert expected_calibration_error(y, 1 / (1 + np.exp(-3 * logits))) > np.percentile(spread, 95)
