"""Analysis layer: tasks, datasets, training, calibration, export, inference, explanations, metrics.

Knows nothing of HTTP or storage formats. Names load on first use (PEP 562):
serving needs only ONNX Runtime and numpy, and never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Ed25519Signer",
    "Ed25519Verifier",
    "ImageCheck",
    "LoadedModel",
    "Manifest",
    "ManifestSource",
    "MedMNISTSource",
    "ModelCard",
    "ModelKeyring",
    "ModelRegistry",
    "Optimisation",
    "Prediction",
    "Task",
    "TrainConfig",
    "TrainResult",
    "build_network",
    "cam_from_features",
    "compute_metrics",
    "dicom_folder_manifest",
    "evaluate_model",
    "export_model",
    "fit_temperature",
    "folder_manifest",
    "gradcam",
    "gradcam_overlay",
    "heatmap_only_png",
    "load_manifest",
    "load_model",
    "load_task",
    "roc_curve_png",
    "train",
]

_WHERE = {
    "Ed25519Signer": "export",
    "Ed25519Verifier": "export",
    "ImageCheck": "image_check",
    "LoadedModel": "inference",
    "Manifest": "manifest",
    "ManifestSource": "datasets",
    "MedMNISTSource": "datasets",
    "ModelCard": "inference",
    "ModelKeyring": "export",
    "ModelRegistry": "registry",
    "Optimisation": "training",
    "Prediction": "inference",
    "Task": "tasks",
    "TrainConfig": "training",
    "TrainResult": "training",
    "build_network": "networks",
    "cam_from_features": "explain",
    "compute_metrics": "metrics",
    "dicom_folder_manifest": "datasets",
    "evaluate_model": "evaluate",
    "export_model": "export",
    "fit_temperature": "calibration",
    "folder_manifest": "datasets",
    "gradcam": "explain",
    "gradcam_overlay": "explain",
    "heatmap_only_png": "explain",
    "load_manifest": "manifest",
    "load_model": "inference",
    "load_task": "tasks",
    "roc_curve_png": "metrics",
    "train": "training",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
