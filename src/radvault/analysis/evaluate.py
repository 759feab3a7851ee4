"""Evaluate a loaded model on one split of a data source (no torch needed).

The images are preprocessed with the settings stored in the model card, so
evaluation sees exactly what service sees; probabilities are calibrated with
the card's temperature. :func:`metrics_report` renders the result for people
(every figure of issue #4) and :func:`metrics_json` for programs (strict JSON).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from radvault.analysis.calibration import softmax
from radvault.analysis.export import jsonable
from radvault.analysis.metrics import held_out_metrics
from radvault.errors import ModelError

if TYPE_CHECKING:
    from radvault.analysis.inference import LoadedModel
    from radvault.analysis.training import DataSource

__all__ = ["evaluate_model", "metrics_json", "metrics_report"]

log = logging.getLogger(__name__)


def evaluate_model(model: LoadedModel, source: DataSource, split: str = "test", *,
                   cache_dir: str | PathLike[str] | None = None,
                   threshold: float | None = None) -> dict[str, Any]:
    """Compute every metric of a model on one split.

    Parameters
    ----------
    model : LoadedModel
    source : DataSource
        A :class:`~radvault.analysis.datasets.ManifestSource` or
        :class:`~radvault.analysis.datasets.MedMNISTSource` whose task has the
        model's classes (same names, same order).
    split : str
        Any split name of the source.
    cache_dir : path, optional
        Cache of preprocessed public images.
    threshold : float, optional
        Refer threshold for the ``referred_fraction`` figure (default the model's).

    Returns
    -------
    dict
        :func:`~radvault.analysis.metrics.compute_metrics` output plus
        ``ece_uncalibrated`` (the ECE of the plain softmax of the logits, to set
        beside ``ece``), ``model_id``, ``task``, ``split``, ``referred_fraction``,
        and the raw ``y_true`` / ``probs`` / ``modalities`` lists under ``predictions``.

    Raises
    ------
    ModelError
        If the task's classes differ from the model's.
    DatasetError
        If the split is unusable.
    """
    classes = tuple(source.task.class_names)
    if classes != tuple(model.card.classes):
        raise ModelError(f"task classes {list(classes)} differ from the model's "
                         f"{list(model.card.classes)}")
    data = source.load(split, model.card.preprocess_settings, cache_dir=cache_dir)
    logits = model.logits(data.images).astype(np.float64)
    card = model.card
    metrics = held_out_metrics(data.labels, logits, classes, card.temperature, card.class_bias)
    probs = softmax(logits, card.temperature, card.class_bias)  # = model.probabilities
    thr = model.refer_threshold if threshold is None else threshold
    metrics.update({
        "model_id": model.card.model_id, "task": source.task.name, "split": split,
        "referred_fraction": float((probs.max(axis=1) < thr).mean()),
        "refer_threshold": thr,
        "predictions": {"y_true": data.labels.tolist(), "probs": probs.round(6).tolist(),
                        "modalities": list(data.modalities)},
    })
    return metrics


def metrics_json(metrics: Mapping[str, Any]) -> str:
    """Metrics as strict JSON (RFC 8259): every non-finite float becomes ``null``.

    Python's ``json`` writes ``NaN`` for, say, the precision of a class the
    model never predicts, and strict parsers (JavaScript, ``jq``) reject it.

    Raises
    ------
    ModelError
        If a value is not JSON-serialisable.
    """
    try:
        return json.dumps(jsonable(metrics), indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"metrics are not valid JSON ({exc})") from None


def _num(value: Any, digits: int = 4) -> str:
    """A figure, or ``n/a`` where it is undefined (``None`` or NaN)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def metrics_report(metrics: Mapping[str, Any]) -> str:
    """The figures ``radvault evaluate`` prints below its one-line summary.

    Every figure issue #4 asks for, labelled: MCC, Jaccard, both balanced
    accuracies (mean recall, and the paper's (sensitivity + specificity) / 2),
    Cohen's kappa, AUC, the Diagnostic Reliability Index, ECE before and after
    calibration (where known), a per-class table and the confusion matrix with
    class names. Undefined figures read ``n/a``.

    Parameters
    ----------
    metrics : mapping
        :func:`evaluate_model` (or :func:`~radvault.analysis.metrics.compute_metrics`) output.

    Returns
    -------
    str
        Several lines, no trailing newline.
    """
    classes = list(metrics["classes"])
    lines = [
        f"  images {metrics['n']}   Diagnostic Reliability Index (DRI = accuracy, eq. 9) "
        f"{_num(metrics['dri'])}",
        f"  MCC (multi-class) {_num(metrics['mcc'])}   Jaccard (macro) "
        f"{_num(metrics['jaccard_macro'])}   Cohen's kappa {_num(metrics['cohen_kappa'])}   "
        f"AUC (one vs rest, macro) {_num(metrics.get('auc_macro'))}",
        f"  balanced accuracy: mean recall {_num(metrics['balanced_accuracy'])}   "
        f"paper's (sens + spec) / 2, macro {_num(metrics['balanced_accuracy_paper'])}",
    ]
    if metrics.get("ece_uncalibrated") is not None:
        lines.append(f"  ECE {_num(metrics['ece_uncalibrated'])} before calibration, "
                     f"{_num(metrics['ece'])} after   NLL {_num(metrics['nll'])}")
    else:
        lines.append(f"  ECE {_num(metrics['ece'])}   NLL {_num(metrics['nll'])}")
    if "referred_fraction" in metrics:
        lines.append(f"  referred (top probability below {metrics['refer_threshold']:.2f}): "
                     f"{metrics['referred_fraction']:.1%}")
    corner = "true \\ pred"
    w = max(len(corner), *(len(c) for c in classes))
    lines += ["  per class:",
              f"    {'class':<{w}} {'support':>7} {'sensitivity':>11} {'specificity':>11} "
              f"{'BA (paper)':>10} {'precision':>9} {'AUC':>6}"]
    for name in classes:
        pc = metrics["per_class"][name]
        lines.append(f"    {name:<{w}} {pc['support']:>7} {_num(pc['sensitivity']):>11} "
                     f"{_num(pc['specificity']):>11} {_num(pc['balanced_accuracy']):>10} "
                     f"{_num(pc['precision']):>9} {_num(pc['auc'], 3):>6}")
    cm = metrics["confusion_matrix"]
    cols = [max(len(c), *(len(str(row[j])) for row in cm)) for j, c in enumerate(classes)]
    lines += ["  confusion matrix (rows true, columns predicted):",
              f"    {corner:<{w}} "
              + " ".join(f"{c:>{n}}" for c, n in zip(classes, cols, strict=True))]
    for name, row in zip(classes, cm, strict=True):
        lines.append(f"    {name:<{w}} " + " ".join(
            f"{v:>{n}}" for v, n in zip(row, cols, strict=True)))
    return "\n".join(lines)
