"""Seed ensembles: several trained models of one task, served as one signed model folder.

Training from scratch on a few thousand images is unstable: validation AUC swings
between epochs and a second seed moves the results (radbench ``BASELINE.md``).
Averaging the logits of independently trained seeds is the standard remedy. The
ensemble is one ONNX graph, so serving code does not know it is one: the members
run side by side on the same ``image`` input, their logits are averaged, and their
feature maps are concatenated, with the linear weights concatenated and divided
by the member count, so the class activation map stays exact. The ensemble is
calibrated again on the validation split, measured on validation and test, and
written and signed like any model (:func:`radvault.analysis.export.write_model`).

ONNX graph surgery is written here by hand (with ``onnx.compose.add_prefix`` for
the renaming): no library combines classifiers side by side on one input.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radvault.analysis.calibration import fit_temperature, softmax
from radvault.analysis.export import ONNX_FILE, Signer, write_model
from radvault.analysis.inference import LoadedModel, load_model, onnx_logits
from radvault.analysis.metrics import compute_metrics, held_out_metrics
from radvault.errors import ModelError

if TYPE_CHECKING:
    from radvault.analysis.export import ModelKeyring
    from radvault.analysis.training import DataSource

__all__ = ["build_ensemble", "merge_onnx"]


def merge_onnx(members: Sequence[bytes]) -> bytes:
    """One ONNX model running ``members`` on one input: mean logits, concatenated features.

    Raises
    ------
    ModelError
        With fewer than two members, or members whose inputs or outputs differ.
    """
    import onnx
    from onnx import TensorProto, compose, helper

    if len(members) < 2:
        raise ModelError("an ensemble needs at least two members")
    models = [onnx.load_from_string(m) for m in members]
    first = models[0]
    names = [([i.name for i in m.graph.input], [o.name for o in m.graph.output]) for m in models]
    if any(n != (["image"], ["logits", "features"]) for n in names):
        raise ModelError("ensemble members must be RadVault classifiers (image -> logits, "
                         "features)")
    nodes, initializers = [], []
    for index, model in enumerate(models):
        prefix = f"m{index}_"
        renamed = compose.add_prefix(model, prefix=prefix)
        for node in renamed.graph.node:
            for k, name in enumerate(node.input):
                if name == prefix + "image":
                    node.input[k] = "image"
        nodes.extend(renamed.graph.node)
        initializers.extend(renamed.graph.initializer)
    count = len(models)
    initializers.append(helper.make_tensor("ensemble_scale", TensorProto.FLOAT, [],
                                           [1.0 / count]))
    nodes += [
        helper.make_node("Sum", [f"m{i}_logits" for i in range(count)], ["ensemble_sum"],
                         name="ensemble_sum"),
        helper.make_node("Mul", ["ensemble_sum", "ensemble_scale"], ["logits"],
                         name="ensemble_mean"),
        helper.make_node("Concat", [f"m{i}_features" for i in range(count)], ["features"],
                         name="ensemble_features", axis=1),
    ]
    logits_out = copy.deepcopy(first.graph.output[0])
    features_out = copy.deepcopy(first.graph.output[1])
    channels = features_out.type.tensor_type.shape.dim[1]
    if channels.HasField("dim_value"):
        channels.dim_value *= count
    graph = helper.make_graph(nodes, "radvault_ensemble", [copy.deepcopy(first.graph.input[0])],
                              [logits_out, features_out], initializers)
    merged = helper.make_model(graph, opset_imports=first.opset_import,
                               producer_name="radvault-ensemble")
    merged.ir_version = first.ir_version
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def _check_compatible(models: Sequence[LoadedModel]) -> None:
    first = models[0].card
    for model in models[1:]:
        card = model.card
        if (card.task, tuple(card.classes), card.size) != (first.task, tuple(first.classes),
                                                            first.size):
            raise ModelError(f"{card.model_id}: task, classes or input size differ from "
                             f"{first.model_id}")
        if dict(card.preprocessing) != dict(first.preprocessing):
            raise ModelError(f"{card.model_id}: preprocessing differs from {first.model_id}")


def build_ensemble(member_dirs: Sequence[str | PathLike[str]], source: DataSource,
                   out_dir: str | PathLike[str], *, signer: Signer | None,
                   keyring: ModelKeyring | None = None, val_split: str = "val",
                   test_split: str = "test",
                   cache_dir: str | PathLike[str] | None = None) -> dict[str, Any]:
    """Combine signed model folders of one task into one calibrated, signed ensemble.

    Parameters
    ----------
    member_dirs : sequence of path
        Model folders (each verified on load) of the same task, classes, input
        size and preprocessing.
    source : DataSource
        The data the members were trained on (its validation split calibrates
        the ensemble; test, if not ``""``, is only measured).
    out_dir : path
        The ensemble's model folder.
    signer : Signer or None
    keyring : ModelKeyring, optional
        Keys that verify the members (default: ``<member>/../keys``).

    Returns
    -------
    dict
        The ensemble's model card.

    Raises
    ------
    ModelError
        Fewer than two members, a member that fails verification, or members
        that do not fit together.
    """
    members = [load_model(d, keyring=keyring) for d in member_dirs]
    if len(members) < 2:
        raise ModelError("an ensemble needs at least two members")
    _check_compatible(members)
    if tuple(source.task.class_names) != tuple(members[0].card.classes):
        raise ModelError("the data source's classes differ from the members'")
    onnx_bytes = merge_onnx([(Path(d) / ONNX_FILE).read_bytes() for d in member_dirs])
    settings = members[0].card.preprocess_settings
    classes = tuple(members[0].card.classes)
    val = source.load(val_split, settings, cache_dir=cache_dir)
    val_logits = onnx_logits(onnx_bytes, val.images)
    calibration = fit_temperature(val_logits, val.labels)
    temperature = calibration.temperature
    metrics: dict[str, Any] = {
        "val": compute_metrics(val.labels, softmax(val_logits, temperature), classes),
        "test": None}
    if test_split:
        test = source.load(test_split, settings, cache_dir=cache_dir)
        test_logits = onnx_logits(onnx_bytes, test.images)
        metrics["test"] = held_out_metrics(test.labels, test_logits, classes, temperature)
    raws = [m.card.raw for m in members]
    weights = [np.asarray(r["cam"]["weight"], dtype=np.float64) for r in raws]
    biases = [np.asarray(r["cam"]["bias"], dtype=np.float64) for r in raws]
    card = {key: copy.deepcopy(raws[0][key]) for key in
            ("task", "task_definition", "classes", "input", "preprocessing", "trained_on",
             "class_trained_on") if key in raws[0]}
    card.update({
        "network": {"name": "ensemble", "combine": "mean of member logits",
                    "members": [r["network"] for r in raws]},
        "training": {
            "manifest_sha256": raws[0]["training"]["manifest_sha256"],
            "seed": [r["training"]["seed"] for r in raws],
            "splits": {"train": _common_train_split(raws), "val": val_split,
                       "test": test_split or None},
            "epochs_run": max(r["training"]["epochs_run"] for r in raws),
            "seconds": round(sum(r["training"]["seconds"] for r in raws), 1),
            "members": [{"model_id": r["model_id"], "onnx_sha256": r["onnx_sha256"],
                         "seed": r["training"]["seed"],
                         "val_auc": r["metrics"]["val"]["auc_macro"]} for r in raws],
        },
        "temperature": temperature,
        "calibration": calibration.as_dict(),
        "metrics": metrics,
        "cam": {"output": "features",
                "weight": (np.concatenate(weights, axis=1) / len(raws)).tolist(),
                "bias": (np.sum(biases, axis=0) / len(raws)).tolist()},
    })
    return write_model(out_dir, onnx_bytes, card, signer)


def _common_train_split(cards: list[dict[str, Any]]) -> str | None:
    """The split every member trained on (what leakage is checked against), if they agree."""
    names = {((c.get("training") or {}).get("splits") or {}).get("train") for c in cards}
    return names.pop() if len(names) == 1 else None
