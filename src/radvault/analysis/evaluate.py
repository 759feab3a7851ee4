"""Evaluate a loaded model on one split of a data source (no torch needed).

The images are preprocessed with the settings stored in the model card, so
evaluation sees exactly what service sees; probabilities are calibrated with
the card's temperature.
"""

from __future__ import annotations

import logging
from os import PathLike
from typing import TYPE_CHECKING, Any

from radvault.analysis.metrics import compute_metrics
from radvault.errors import ModelError

if TYPE_CHECKING:
    from radvault.analysis.inference import LoadedModel
    from radvault.analysis.training import DataSource

__all__ = ["evaluate_model"]

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
        ``model_id``, ``task``, ``split``, ``referred_fraction``, and the raw
        ``y_true`` / ``probs`` / ``modalities`` lists under ``predictions``.

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
    probs = model.probabilities(data.images)
    metrics = compute_metrics(data.labels, probs, classes)
    thr = model.refer_threshold if threshold is None else threshold
    metrics.update({
        "model_id": model.card.model_id, "task": source.task.name, "split": split,
        "referred_fraction": float((probs.max(axis=1) < thr).mean()),
        "refer_threshold": thr,
        "predictions": {"y_true": data.labels.tolist(), "probs": probs.round(6).tolist(),
                        "modalities": list(data.modalities)},
    })
    return metrics
