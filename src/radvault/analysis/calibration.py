"""Calibration on the validation split: temperature scaling, optionally with class biases.

Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` divides the logits
before the softmax; it changes no prediction, only how confident the
probabilities are. Bias-corrected temperature scaling (BCTS, Alexandari et al.
2020) also adds one bias per class (the first fixed at 0), which corrects a
shift of class priors or of appearance between training and validation data and
so can change predictions. Both minimise the negative log-likelihood on
validation data; :func:`compare_calibrations` says, by grouped cross-validation
inside the validation split, whether the biases generalise or only fit noise.
Pure numpy/scipy, so serving never needs torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from radvault.errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["Calibration", "compare_calibrations", "fit_bias_temperature", "fit_temperature",
           "nll", "softmax"]


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in numpy (serving must not import scipy/sklearn)."""
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _scaled(logits: Any, temperature: float, bias: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return z if bias is None else z + np.asarray(bias, dtype=np.float64)


def softmax(logits: Any, temperature: float = 1.0, bias: Any = None) -> np.ndarray:
    """Softmax of ``logits / temperature + bias`` along the last axis (float64, stable).

    Raises
    ------
    ModelError
        If the temperature is not positive.
    """
    if not temperature > 0:
        raise ModelError("temperature must be positive")
    return np.exp(log_softmax(_scaled(logits, temperature, bias), axis=-1))


def nll(logits: Any, labels: Any, temperature: float = 1.0, bias: Any = None) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits / T + bias)``."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    z = _scaled(logits, temperature, bias)
    return float(-log_softmax(z, axis=-1)[np.arange(len(y)), y].mean())


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature (and class biases) and what it did on the data it was fitted on."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    bias: tuple[float, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the model card."""
        out: dict[str, Any] = {
            "method": "temperature" if self.bias is None else "bias_temperature",
            "temperature": self.temperature, "nll_before": self.nll_before,
            "nll_after": self.nll_after, "ece_before": self.ece_before,
            "ece_after": self.ece_after}
        if self.bias is not None:
            out["class_bias"] = list(self.bias)
        return out


def _check(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ModelError("calibration needs logits (N, K) and N labels, N > 0")
    return z, y


def fit_temperature(logits: Any, labels: Any, *, bounds: tuple[float, float] = (0.05, 20.0)
                    ) -> Calibration:
    """Fit the temperature that minimises validation NLL.

    Parameters
    ----------
    logits : array-like, shape (N, K)
    labels : array-like of int, shape (N,)
    bounds : (float, float)
        Search range for ``T``; searched on a log scale.

    Returns
    -------
    Calibration

    Raises
    ------
    ModelError
        If shapes disagree or there is no data.
    """
    from scipy.optimize import minimize_scalar

    from radvault.analysis.metrics import expected_calibration_error

    z, y = _check(logits, labels)
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda t: nll(z, y, float(np.exp(t))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(res.x))
    before, after = nll(z, y, 1.0), nll(z, y, temperature)
    if after > before:  # never make it worse than no scaling
        temperature, after = 1.0, before
    elif min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
        # the best temperature lies outside the search range: the model is far from
        # calibrated on this split (often a validation split the model cannot rank)
        log.warning("temperature stopped at the edge of its range (T=%.3f of %s-%s): the "
                    "model's confidence is far off on this split", temperature, *bounds)
    return Calibration(
        temperature=temperature, nll_before=before, nll_after=after,
        ece_before=expected_calibration_error(y, softmax(z)),
        ece_after=expected_calibration_error(y, softmax(z, temperature)),
    )


def fit_bias_temperature(logits: Any, labels: Any) -> Calibration:
    """Fit a temperature and one bias per class (the first 0) minimising validation NLL.

    Starts from the fitted temperature, so the result is never worse on the
    data it is fitted on than temperature scaling alone.

    Raises
    ------
    ModelError
        If shapes disagree or there is no data.
    """
    from scipy.optimize import minimize

    from radvault.analysis.metrics import expected_calibration_error

    z, y = _check(logits, labels)
    base = fit_temperature(z, y)
    k = z.shape[1]
    rows = np.arange(len(y))

    def loss(params: np.ndarray) -> float:
        bias = np.concatenate([[0.0], params[1:]])
        return float(-log_softmax(z / np.exp(params[0]) + bias)[rows, y].mean())

    start = np.concatenate([[np.log(base.temperature)], np.zeros(k - 1)])
    res = minimize(loss, start, method="L-BFGS-B",
                   bounds=[(np.log(0.05), np.log(20.0))] + [(-20.0, 20.0)] * (k - 1))
    if not res.fun < base.nll_after:
        return base
    temperature = float(np.exp(res.x[0]))
    bias = tuple(float(b) for b in np.concatenate([[0.0], res.x[1:]]))
    return Calibration(
        temperature=temperature, nll_before=base.nll_before,
        nll_after=nll(z, y, temperature, bias), ece_before=base.ece_before,
        ece_after=expected_calibration_error(y, softmax(z, temperature, bias)), bias=bias)


def compare_calibrations(logits: Any, labels: Any, groups: Any, *, folds: int = 5,
                         repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Out-of-fold NLL and accuracy of temperature scaling with and without class biases.

    Cross-validation inside the validation split, by group (patient or slice
    series) and stratified by class, repeated with ``repeats`` shuffles: each
    fold is calibrated on the others. Biases fitted to a few series can fit
    noise; this says whether they help on series they were not fitted to,
    without looking at the test split. ``choice`` is the method with the lower
    mean out-of-fold NLL.

    Raises
    ------
    ModelError
        If shapes disagree, or there are fewer than two groups.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    z, y = _check(logits, labels)
    g = np.asarray(groups)
    if g.shape[0] != y.shape[0]:
        raise ModelError("one group per validation image is needed")
    n_splits = min(folds, len(np.unique(g)))
    if n_splits < 2:
        raise ModelError("cross-validation needs at least two groups")
    fitters = {"temperature": fit_temperature, "bias_temperature": fit_bias_temperature}
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in fitters}
    for r in range(repeats):
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + r)
        losses = {name: np.zeros(len(y)) for name in fitters}
        hits = {name: np.zeros(len(y)) for name in fitters}
        for train_idx, test_idx in cv.split(z, y, g):
            for name, fit in fitters.items():
                cal = fit(z[train_idx], y[train_idx])
                logp = log_softmax(_scaled(z[test_idx], cal.temperature, cal.bias))
                losses[name][test_idx] = -logp[np.arange(len(test_idx)), y[test_idx]]
                hits[name][test_idx] = logp.argmax(axis=1) == y[test_idx]
        for name in fitters:
            scores[name].append((float(losses[name].mean()), float(hits[name].mean())))
    report: dict[str, Any] = {"folds": n_splits, "repeats": repeats, "groups":
                              len(np.unique(g))}
    for name, values in scores.items():
        arr = np.asarray(values)
        report[name] = {"nll_mean": float(arr[:, 0].mean()), "nll_sd": float(arr[:, 0].std()),
                        "accuracy_mean": float(arr[:, 1].mean()),
                        "accuracy_sd": float(arr[:, 1].std())}
    report["choice"] = min(fitters, key=lambda name: report[name]["nll_mean"])
    return report
