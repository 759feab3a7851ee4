"""Temperature scaling lowers NLL and ECE on an over-confident toy model."""

from __future__ import annotations

import numpy as np
import pytest

from radvault.analysis.calibration import fit_temperature, nll, softmax
from radvault.errors import ModelError


def overconfident(n=2000, k=3, scale=4.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0  # well calibrated at T = 1 ...
    return logits * scale, y  # ... and over-confident once multiplied


def test_temperature_undoes_the_overconfidence():
    logits, y = overconfident()
    cal = fit_temperature(logits, y)
    assert cal.temperature == pytest.approx(4.0, rel=0.15)
    assert cal.nll_after < cal.nll_before
    assert cal.ece_after < cal.ece_before / 2


def test_temperature_keeps_every_prediction():
    logits, y = overconfident(n=200)
    t = fit_temperature(logits, y).temperature
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_never_worse_than_no_scaling():
    logits, y = overconfident(scale=1.0)
    cal = fit_temperature(logits, y)
    assert cal.nll_after <= nll(logits, y) + 1e-12


def test_bad_input_is_refused():
    with pytest.raises(ModelError):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ModelError):
        softmax([[1.0, 2.0]], temperature=0)


def test_a_temperature_at_the_edge_of_its_range_is_warned_about(caplog):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(0, 1, (300, 3)) * 200.0  # confident and unrelated to the labels
    with caplog.at_level("WARNING", logger="radvault.analysis.calibration"):
        cal = fit_temperature(logits, y)
    assert cal.temperature == pytest.approx(20.0, rel=1e-2)
    assert "edge of its range" in caplog.text
    caplog.clear()
    good, y = overconfident()
    with caplog.at_level("WARNING", logger="radvault.analysis.calibration"):
        fit_temperature(good, y)
    assert "edge of its range" not in caplog.text
