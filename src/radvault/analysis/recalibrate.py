"""Calibrate a trained model again on the validation split, choosing the method by evidence.

Temperature scaling never changes a prediction; adding a bias per class
(bias-corrected temperature scaling) can, e.g. when a class is under-predicted
on images from series the network never saw. Whether such biases generalise is
decided inside the validation split (:func:`~radvault.analysis.calibration.compare_calibrations`,
grouped by patient or series), never on the test split, which is only measured.
The ONNX file is unchanged; the result is a new signed model folder whose card
holds the temperature, the biases, the cross-validation report and new metrics.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radvault.analysis.calibration import (
    compare_calibrations,
    fit_bias_temperature,
    fit_temperature,
    softmax,
)
from radvault.analysis.export import ONNX_FILE, Signer, write_model
from radvault.analysis.inference import load_model
from radvault.analysis.metrics import compute_metrics, held_out_metrics
from radvault.errors import ModelError

if TYPE_CHECKING:
    from radvault.analysis.export import ModelKeyring
    from radvault.analysis.training import DataSource

__all__ = ["METHODS", "recalibrate_model"]

log = logging.getLogger(__name__)

#: ``auto`` picks the method with the lower out-of-fold NLL inside the validation split.
METHODS = ("auto", "temperature", "bias_temperature")

# Card fields write_model fills in again, and fields that describe the old calibration.
_REWRITTEN = ("format", "onnx_sha256", "model_id", "created", "temperature", "class_bias",
              "calibration", "metrics")


def recalibrate_model(model_dir: str | PathLike[str], source: DataSource,
                      out_dir: str | PathLike[str], *, method: str = "auto",
                      signer: Signer | None, keyring: ModelKeyring | None = None,
                      val_split: str = "val", test_split: str = "test",
                      cache_dir: str | PathLike[str] | None = None) -> dict[str, Any]:
    """Re-fit a model's calibration on ``val_split`` and write it as a new model folder.

    Parameters
    ----------
    model_dir : path
        A signed model folder (verified on load).
    source : DataSource
        The data the model was trained on; its validation split is used, with
        each image's group, and ``test_split`` (``""``: none) only measured.
    out_dir : path
        The new model folder (may be ``model_dir`` itself).
    method : str
        One of :data:`METHODS`.
    signer : Signer or None

    Returns
    -------
    dict
        The new model card.

    Raises
    ------
    ModelError
        Unknown method, a model that fails verification, or classes that differ.
    """
    if method not in METHODS:
        raise ModelError(f"method must be one of {', '.join(METHODS)}")
    model = load_model(model_dir, keyring=keyring)
    classes = tuple(model.card.classes)
    if tuple(source.task.class_names) != classes:
        raise ModelError("the data source's classes differ from the model's")
    settings = model.card.preprocess_settings
    val = source.load(val_split, settings, cache_dir=cache_dir)
    val_logits = model.logits(val.images).astype("float64")
    try:
        report = compare_calibrations(val_logits, val.labels, source.groups(val_split))
    except ModelError as exc:  # e.g. one group only: no evidence either way
        if method == "auto":
            raise ModelError(f"cannot choose a calibration method: {exc}") from None
        report = {"skipped": str(exc)}
    chosen = report["choice"] if method == "auto" else method
    fit = fit_bias_temperature if chosen == "bias_temperature" else fit_temperature
    calibration = fit(val_logits, val.labels)
    t, bias = calibration.temperature, calibration.bias
    metrics: dict[str, Any] = {
        "val": compute_metrics(val.labels, softmax(val_logits, t, bias), classes), "test": None}
    if test_split:
        test = source.load(test_split, settings, cache_dir=cache_dir)
        test_logits = model.logits(test.images).astype("float64")
        metrics["test"] = held_out_metrics(test.labels, test_logits, classes, t, bias)
    raw = model.card.raw
    card = {k: copy.deepcopy(v) for k, v in raw.items() if k not in _REWRITTEN}
    card.update({
        "temperature": t,
        "calibration": {**calibration.as_dict(), "requested": method,
                        "cross_validation": report, "recalibrated_from": model.model_id,
                        "split": val_split},
        "metrics": metrics,
    })
    if bias is not None:
        card["class_bias"] = list(bias)
    onnx_bytes = (Path(model_dir) / ONNX_FILE).read_bytes()
    if hashlib.sha256(onnx_bytes).hexdigest() != model.card.onnx_sha256:
        raise ModelError(f"{model_dir}: {ONNX_FILE} changed while recalibrating")
    written = write_model(out_dir, onnx_bytes, card, signer)
    log.info("recalibrated %s as %s (%s)", model.model_id, written["model_id"], chosen)
    return written
