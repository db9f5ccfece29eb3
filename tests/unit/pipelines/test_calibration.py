import numpy as np
import pytest

from pipelines.training.calibration import PlattScaling, expected_calibration_error, fit_platt


def test_platt_recovers_the_scaling_that_generated_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 200_000)
    labels = (rng.random(logits.size) < PlattScaling(0.5, -3.0)(logits)).astype(float)
    fit = fit_platt(logits, labels)
    assert fit.scale == pytest.approx(0.5, abs=0.02) and fit.bias == pytest.approx(-3.0, abs=0.05)
    raw = 1 / (1 + np.exp(-logits))
    assert expected_calibration_error(fit(logits), labels) < 0.005 < expected_calibration_error(raw, labels)


def test_platt_keeps_the_order_and_stays_finite_on_one_class():
    logits = np.linspace(-3, 3, 50)
    fit = fit_platt(logits, np.zeros(50))
    p = fit(logits)
    assert np.isfinite([fit.scale, fit.bias]).all() and (np.diff(p) >= 0).all() and p.max() < 0.1


def test_platt_refuses_bad_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        fit_platt(np.zeros(3), np.array([0, 2, 1]))
