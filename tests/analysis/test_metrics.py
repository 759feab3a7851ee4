"""Each metric against values worked out by hand on a small confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radvault.analysis.metrics import compute_metrics, expected_calibration_error, roc_curve_png
from radvault.errors import ModelError

# 3 classes, 10 samples. Confusion matrix (rows true, cols predicted):
#   [[3, 1, 0],
#    [0, 3, 1],
#    [1, 0, 1]]
Y = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
PRED = [0, 0, 0, 1, 1, 1, 1, 2, 0, 2]


def onehotish(pred, k=3, top=0.8):
    p = np.full((len(pred), k), (1 - top) / (k - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def test_confusion_matrix_and_simple_rates():
    m = compute_metrics(Y, onehotish(PRED), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 3, 1], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(0.7) and m["dri"] == m["accuracy"]
    # recalls 3/4, 3/4, 1/2 -> mean 2/3
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["sensitivity"] == pytest.approx(0.5)
    # specificity of a: TN = 10 - 4 - 1(fp) = 5 -> 5/6
    assert m["per_class"]["a"]["specificity"] == pytest.approx(5 / 6)


def test_jaccard_kappa_mcc_by_hand():
    m = compute_metrics(Y, onehotish(PRED), ["a", "b", "c"])
    # Jaccard per class TP/(TP+FP+FN): a 3/5, b 3/5, c 1/3
    assert m["jaccard_macro"] == pytest.approx((3 / 5 + 3 / 5 + 1 / 3) / 3)
    # kappa: po = .7, pe = (4*4 + 4*4 + 2*2)/100 = .36
    assert m["cohen_kappa"] == pytest.approx((0.7 - 0.36) / (1 - 0.36))
    # Gorodkin's multi-class MCC: (c*s - sum p_k t_k) / sqrt((s^2 - sum p^2)(s^2 - sum t^2))
    c, s = 7, 10
    pk, tk = [4, 4, 2], [4, 4, 2]
    num = c * s - sum(p * t for p, t in zip(pk, tk, strict=True))
    den = math.sqrt((s * s - sum(p * p for p in pk)) * (s * s - sum(t * t for t in tk)))
    assert m["mcc"] == pytest.approx(num / den)


def test_paper_balanced_accuracy_is_mean_of_sensitivity_and_specificity():
    m = compute_metrics(Y, onehotish(PRED), ["a", "b", "c"])
    sens = [3 / 4, 3 / 4, 1 / 2]
    spec = [5 / 6, 5 / 6, 7 / 8]
    assert m["balanced_accuracy_paper"] == pytest.approx(
        np.mean([(a + b) / 2 for a, b in zip(sens, spec, strict=True)]))


def test_auc_perfect_ranking_and_chance():
    y = [0, 0, 1, 1]
    assert compute_metrics(y, [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]],
                           ["n", "p"])["auc_macro"] == pytest.approx(1.0)
    # class 1 scores: 0.6, 0.6 for negatives and positives alike -> 0.5
    assert compute_metrics(y, [[0.4, 0.6]] * 4, ["n", "p"])["auc_macro"] == pytest.approx(0.5)


def test_ece_by_hand():
    # two bins used: conf .9 (2 samples, 1 right) and .6 (2 samples, 2 right)
    probs = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]]
    y = [0, 1, 1, 1]
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(y, probs) == pytest.approx(expected)


def test_shape_mismatch_is_refused():
    with pytest.raises(ModelError):
        compute_metrics([0, 1], [[0.5, 0.5]], ["a", "b"])
    with pytest.raises(ModelError):
        compute_metrics([0, 3], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"])


def test_roc_png_is_a_png():
    png = roc_curve_png(Y, onehotish(PRED), ["a", "b", "c"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_roc_png_has_a_title_and_labelled_axes():
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(roc_curve_png(
        Y, onehotish(PRED), ["a", "b", "c"], size=400, title="toy on test"))).convert("L"))
    assert img.shape == (400, 400)
    dark = img < 128
    assert dark[:30, 60:340].any()  # the title, above the plot
    assert dark[:, :50].sum() > 200  # tick values and the sideways y label, left of the axis
    assert dark[360:, 60:].sum() > 200  # tick values and the x label, below the plot
