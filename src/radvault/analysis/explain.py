"""Explanations: class activation heatmaps and their overlay PNGs.

Two routes to the same picture:

* :func:`cam_from_features` needs only numpy and OpenCV: the ONNX model's
  ``features`` output (last convolutional map) weighted by the linear layer's
  row for the class (Zhou et al. 2016). With global average pooling and a
  single linear layer this equals Grad-CAM, so service needs no torch.
* :func:`gradcam` runs MONAI's ``GradCAM`` on the torch model (training side,
  or for networks whose head is not a single linear layer).

:func:`gradcam_overlay` blends a heatmap over the preprocessed image and
returns PNG bytes; :func:`heatmap_only_png` draws the heatmap with no image
under it, for a viewer who may see where the model looked but not the image.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from radvault.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["cam_from_features", "gradcam", "gradcam_overlay", "heatmap_only_png"]


def _normalise(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0.0)
    hi = float(cam.max())
    return (cam / hi).astype(np.float32) if hi > 0 else np.zeros_like(cam, dtype=np.float32)


def cam_from_features(features: np.ndarray, weight: np.ndarray, class_index: int,
                      size: int) -> np.ndarray:
    """Class activation map from a feature map and the linear layer's weights.

    Parameters
    ----------
    features : numpy.ndarray
        ``(C, h, w)`` last convolutional feature map of one image.
    weight : numpy.ndarray
        ``(K, C)`` linear layer weights.
    class_index : int
    size : int
        Output side length (the network input size).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(size, size)`` in ``[0, 1]`` (ReLU, then divided by the maximum).

    Raises
    ------
    ModelError
        If the shapes disagree or the class index is out of range.
    """
    f = np.asarray(features, dtype=np.float32)
    w = np.asarray(weight, dtype=np.float32)
    if f.ndim != 3 or w.ndim != 2 or w.shape[1] != f.shape[0]:
        raise ModelError(f"features {f.shape} and weights {w.shape} do not fit")
    if not 0 <= class_index < w.shape[0]:
        raise ModelError(f"class index {class_index} out of range")
    cam = np.tensordot(w[class_index], f, axes=1)
    cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
    return _normalise(cam)


def _identity(x: Any) -> Any:
    return x


def gradcam(model: nn.Module, image: np.ndarray, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM of one image with MONAI, on the torch model.

    Parameters
    ----------
    model : torch.nn.Module
        A :func:`~radvault.analysis.networks.build_network` classifier (its
        backbone's last module is the target layer).
    image : numpy.ndarray
        ``(3, S, S)`` float32 preprocessed image.
    class_index : int, optional
        Default: the predicted class.

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(S, S)`` in ``[0, 1]``.

    Raises
    ------
    ModelError
        If the image has the wrong shape.
    """
    import torch
    from monai.visualize import GradCAM

    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ModelError(f"expected a (3, S, S) image, got {x.shape}")
    names = [n for n, _ in model.named_modules() if n.startswith("backbone.") and n.count(".") == 1]
    target = names[-1]
    was_training = model.training
    model.eval()
    try:
        # MONAI's default post-processing maps (min, max) to (1, 0); keep raw values and
        # normalise like cam_from_features (ReLU, then divide by the maximum).
        cam = GradCAM(nn_module=model, target_layers=target, postprocessing=_identity)
        t = torch.from_numpy(x)[None]
        out = cam(x=t, class_idx=class_index)
    finally:
        model.train(was_training)
    heat = out[0, 0].detach().cpu().numpy().astype(np.float32)
    return _normalise(heat)


def gradcam_overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4) -> bytes:
    """Blend a heatmap (JET colours) over a preprocessed image; return PNG bytes.

    Parameters
    ----------
    image : numpy.ndarray
        ``(3, S, S)`` in ``[0, 1]`` (a preprocessor output).
    heatmap : numpy.ndarray
        ``(S, S)`` in ``[0, 1]``; resized if its size differs.
    alpha : float
        Heatmap weight in ``[0, 1]``.

    Returns
    -------
    bytes
        An RGB PNG.

    Raises
    ------
    ModelError
        If the shapes are wrong or alpha is out of range.
    """
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    heat = np.asarray(heatmap, dtype=np.float32)
    if img.ndim != 3 or img.shape[0] != 3 or heat.ndim != 2:
        raise ModelError("expected an image (3, S, S) and a heatmap (S, S)")
    if not 0.0 <= alpha <= 1.0:
        raise ModelError("alpha must be within [0, 1]")
    h, w = img.shape[1:]
    colour = _jet(heat, h, w)
    base = np.clip(img.transpose(1, 2, 0) * 255.0, 0, 255).astype(np.uint8)
    blended = cv2.addWeighted(base, 1.0 - alpha, colour, alpha, 0.0)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG")
    return buf.getvalue()


def heatmap_only_png(heatmap: np.ndarray, *, size: int) -> bytes:
    """The heatmap alone (JET colours over black, weighted by activation), ``size`` px square.

    For a viewer who may see where the model looked but not the image: nothing of the
    image's pixels is drawn, only the class activation map, whose own resolution is the
    network's last feature map (a few cells across).

    Raises
    ------
    ModelError
        If the heatmap is not 2-D or the size is not positive.
    """
    from PIL import Image

    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.ndim != 2:
        raise ModelError("expected a heatmap (S, S)")
    if size < 1:
        raise ModelError("size must be positive")
    colour = _jet(heat, size, size).astype(np.float32)
    weight = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
    buf = io.BytesIO()
    Image.fromarray((colour * weight).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jet(heat: np.ndarray, h: int, w: int) -> np.ndarray:
    """The heatmap resized to ``(h, w)`` in RGB JET colours (uint8)."""
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
