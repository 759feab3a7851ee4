"""Temperature scaling (Guo et al. 2017), fitted on the validation split.

One scalar ``T > 0`` divides the logits before the softmax; it changes no
prediction, only how confident the probabilities are. ``T`` is chosen to
minimise the negative log-likelihood on validation data. Pure numpy/scipy, so
serving never needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from radvault.errors import ModelError

__all__ = ["Calibration", "fit_temperature", "nll", "softmax"]


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in numpy (serving must not import scipy/sklearn)."""
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` along the last axis (float64, stable).

    Raises
    ------
    ModelError
        If the temperature is not positive.
    """
    if not temperature > 0:
        raise ModelError("temperature must be positive")
    z = np.asarray(logits, dtype=np.float64) / temperature
    return np.exp(log_softmax(z, axis=-1))


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    return float(-log_softmax(z, axis=-1)[np.arange(len(y)), y].mean())


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the data it was fitted on."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form for the model card."""
        return {"temperature": self.temperature, "nll_before": self.nll_before,
                "nll_after": self.nll_after, "ece_before": self.ece_before,
                "ece_after": self.ece_after}


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

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ModelError("temperature scaling needs logits (N, K) and N labels, N > 0")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda t: nll(z, y, float(np.exp(t))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(res.x))
    before, after = nll(z, y, 1.0), nll(z, y, temperature)
    if after > before:  # never make it worse than no scaling
        temperature, after = 1.0, before
    return Calibration(
        temperature=temperature, nll_before=before, nll_after=after,
        ece_before=expected_calibration_error(y, softmax(z)),
        ece_after=expected_calibration_error(y, softmax(z, temperature)),
    )
