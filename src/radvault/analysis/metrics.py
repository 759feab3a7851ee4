"""The paper's evaluation metrics (section 4.4), computed with scikit-learn.

``compute_metrics`` returns one plain dict (JSON-ready) with:

* ``mcc``: multi-class Matthews correlation coefficient;
* ``jaccard_macro``: Jaccard index per class, macro-averaged (the paper's JI);
* ``balanced_accuracy``: mean per-class recall (scikit-learn's definition);
* ``balanced_accuracy_paper``: the paper's (sensitivity + specificity) / 2,
  one-vs-rest per class and macro-averaged;
* ``cohen_kappa``; ``auc_macro``: one-vs-rest ROC AUC, macro over the classes
  present in ``y_true``;
* ``accuracy`` (= ``dri``, the paper's Diagnostic Reliability Index, eq. 9);
* ``ece``: expected calibration error of the top-class probability;
* ``nll``; ``confusion_matrix`` (rows true, columns predicted);
* ``per_class``: sensitivity (recall), specificity, precision, balanced accuracy, AUC.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from sklearn import metrics as skm

from radvault.errors import ModelError

__all__ = ["compute_metrics", "expected_calibration_error", "held_out_metrics", "roc_curve_png"]


def _check(y_true: Any, probs: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(classes):
        raise ModelError(
            f"probabilities must have shape (N, {len(classes)}) matching {y.shape[0]} labels, "
            f"got {p.shape}"
        )
    if y.size == 0:
        raise ModelError("no samples to evaluate")
    if y.min() < 0 or y.max() >= len(classes):
        raise ModelError("labels out of range of the class list")
    return y, p


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence.

    Confidences are grouped into ``n_bins`` equal-width bins over (0, 1]; ECE is
    the sample-weighted mean of ``|accuracy - confidence|`` over the bins
    (Guo et al. 2017).

    Raises
    ------
    ModelError
        If shapes disagree.
    """
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ModelError("probabilities must have shape (N, classes) matching the labels")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def held_out_metrics(y_true: Any, logits: Any, classes: Sequence[str], temperature: float,
                     bias: Any = None) -> dict[str, Any]:
    """:func:`compute_metrics` of calibrated probabilities on a held-out split, plus
    ``ece_uncalibrated``: the ECE the plain softmax of the same logits has."""
    from radvault.analysis.calibration import softmax

    out = compute_metrics(y_true, softmax(logits, temperature, bias), classes)
    out["ece_uncalibrated"] = compute_metrics(y_true, softmax(logits), classes)["ece"]
    return out


def compute_metrics(y_true: Any, probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """All evaluation metrics for class probabilities against true labels.

    Parameters
    ----------
    y_true : array-like of int, shape (N,)
        True class indices.
    probs : array-like, shape (N, K)
        Class probabilities (rows sum to one); the prediction is the arg-max.
    classes : sequence of str
        Class names, ``K`` of them.

    Returns
    -------
    dict
        See the module docstring; floats are plain Python floats, AUC values
        are ``None`` where undefined (a class absent from ``y_true``).

    Raises
    ------
    ModelError
        If shapes or labels are inconsistent.
    """
    y, p = _check(y_true, probs, classes)
    k = len(classes)
    labels = list(range(k))
    pred = p.argmax(axis=1)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    total = cm.sum()
    per_class: dict[str, dict[str, float | None]] = {}
    aucs: list[float] = []
    paper_ba: list[float] = []
    present = [c for c in labels if (y == c).any()]
    for c in labels:
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = total - tp - fn - fp
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        prec = tp / (tp + fp) if tp + fp else float("nan")
        auc: float | None = None
        positives = (y == c)
        if positives.any() and (~positives).any():
            auc = float(skm.roc_auc_score(positives, p[:, c]))
            aucs.append(auc)
        ba_c = (sens + spec) / 2
        if c in present:
            paper_ba.append(ba_c)
        per_class[classes[c]] = {
            "support": int(cm[c].sum()),
            "sensitivity": _f(sens), "specificity": _f(spec), "precision": _f(prec),
            "balanced_accuracy": _f(ba_c), "auc": auc,
        }
    eps = 1e-12
    nll = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))
    accuracy = float(skm.accuracy_score(y, pred))
    return {
        "n": len(y),
        "classes": list(classes),
        "accuracy": accuracy,
        "dri": accuracy,
        "mcc": float(skm.matthews_corrcoef(y, pred)),
        "jaccard_macro": float(skm.jaccard_score(y, pred, labels=present, average="macro",
                                                 zero_division=0)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "balanced_accuracy_paper": float(np.mean(paper_ba)),
        "cohen_kappa": _f(skm.cohen_kappa_score(y, pred, labels=labels)),
        "auc_macro": float(np.mean(aucs)) if aucs else None,
        "f1_macro": float(skm.f1_score(y, pred, labels=present, average="macro",
                                       zero_division=0)),
        "ece": expected_calibration_error(y, p),
        "nll": nll,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


def _f(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else float("nan")


def roc_curve_png(y_true: Any, probs: Any, classes: Sequence[str], *, size: int = 480,
                  title: str = "ROC curves (one vs rest)") -> bytes:
    """Draw one-vs-rest ROC curves (one colour per class) as PNG bytes.

    Drawn with Pillow so that no plotting library is needed. Both axes carry
    ticks at 0, 0.2, ..., 1 with their values and a label, and the plot has a
    title, so the picture can be read on its own (in a report, say); the
    legend gives each class's AUC. A class absent from ``y_true`` (or the only
    class present) has no curve.

    Parameters
    ----------
    y_true, probs, classes
        As for :func:`compute_metrics`.
    size : int
        Side of the square image in pixels.
    title : str
        Drawn above the plot (e.g. the model and the split).

    Raises
    ------
    ModelError
        If shapes disagree.
    """
    from PIL import Image, ImageDraw

    y, p = _check(y_true, probs, classes)
    left, top, right, bottom = 56, 34, size - 16, size - 44
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * (right - left), bottom - tpr * (bottom - top)

    def centred(x: float, y_top: float, text: str, fill: str = "black") -> None:
        draw.text((x - draw.textlength(text) / 2, y_top), text, fill=fill)

    draw.rectangle([left, top, right, bottom], outline="black")
    for i in range(6):  # ticks and their values on both axes
        v = i / 5
        x, _ = xy(v, 0)
        _, y_tick = xy(0, v)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        centred(x, bottom + 6, f"{v:.1f}")
        draw.line([(left - 4, y_tick), (left, y_tick)], fill="black")
        draw.text((left - 26, y_tick - 6), f"{v:.1f}", fill="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(160, 160, 160))
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    legend: list[tuple[str, tuple[int, int, int]]] = []
    for c, name in enumerate(classes):
        positives = y == c
        if not positives.any() or positives.all():
            continue
        fpr, tpr, _ = skm.roc_curve(positives, p[:, c])
        colour = palette[c % len(palette)]
        draw.line([xy(a, b) for a, b in zip(fpr, tpr, strict=True)], fill=colour, width=2)
        legend.append((f"{name}: AUC {skm.auc(fpr, tpr):.3f}", colour))
    # bottom right, below the diagonal, where a useful curve rarely runs
    width = max((draw.textlength(text) for text, _ in legend), default=0)
    for i, (text, colour) in enumerate(legend):
        draw.text((right - 6 - width, bottom - 4 - 12 * (len(legend) - i)), text, fill=colour)
    centred((left + right) / 2, 10, title)
    centred((left + right) / 2, bottom + 22, "false positive rate (1 - specificity)")
    label = "true positive rate (sensitivity)"  # written sideways along the y axis
    side = Image.new("RGB", (int(draw.textlength(label)) + 2, 12), "white")
    ImageDraw.Draw(side).text((1, 0), label, fill="black")
    side = side.rotate(90, expand=True)
    img.paste(side, (4, int((top + bottom - side.height) / 2)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
