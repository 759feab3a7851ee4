"""Explanations: CAM from ONNX features equals MONAI Grad-CAM; overlays are PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from radvault.analysis.datasets import ManifestSource
from radvault.analysis.explain import (
    cam_from_features,
    gradcam,
    gradcam_overlay,
    heatmap_only_png,
)
from radvault.analysis.inference import load_model
from radvault.analysis.networks import build_network
from radvault.errors import ModelError


@pytest.fixture(scope="module")
def image(toy_manifest, toy_task_file, tiny_settings):
    split = ManifestSource(toy_manifest, toy_task_file).load("test", tiny_settings)
    return split.images[0].astype(np.float32)


def test_cam_from_the_onnx_model_has_image_shape_and_unit_range(trained, signer, image):
    model = load_model(trained.model_dir, signer.verifier())
    heat = model.cam(image)
    assert heat.shape == (32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)


def test_cam_equals_monai_gradcam_for_a_pooled_linear_head():
    torch.manual_seed(0)
    net = build_network("resnet18", 3, width=0.25).eval()
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        logits, fmap = net.forward_features(x[None])
    k = int(logits.argmax())
    ours = cam_from_features(fmap[0].numpy(), net.fc.weight.detach().numpy(), k, 64)
    monai = gradcam(net, x.numpy(), k)
    assert monai.shape == (64, 64)
    assert np.corrcoef(ours.ravel(), monai.ravel())[0, 1] > 0.95


def test_overlay_is_an_rgb_png_of_the_image_size(image):
    png = gradcam_overlay(image, np.linspace(0, 1, 64).reshape(8, 8).repeat(4, 0).repeat(4, 1))
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"


def test_a_heatmap_alone_is_black_where_the_model_did_not_look():
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[0, 0] = 1.0  # the model looked at the top-left corner only
    with Image.open(io.BytesIO(heatmap_only_png(heat, size=64))) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
        pixels = np.asarray(im)
    assert pixels[:8, :8].max() > 100  # coloured where it looked
    assert pixels[32:, 32:].max() == 0  # black everywhere it did not
    with Image.open(io.BytesIO(heatmap_only_png(np.zeros((4, 4)), size=16))) as im:
        assert np.asarray(im).max() == 0  # no activation, nothing drawn


def test_mismatched_shapes_are_refused():
    with pytest.raises(ModelError):
        cam_from_features(np.zeros((4, 2, 2)), np.zeros((3, 5)), 0, 8)
    with pytest.raises(ModelError):
        cam_from_features(np.zeros((4, 2, 2)), np.zeros((3, 4)), 3, 8)
    with pytest.raises(ModelError):
        gradcam_overlay(np.zeros((32, 32)), np.zeros((32, 32)))
    with pytest.raises(ModelError):
        heatmap_only_png(np.zeros((3, 4, 4)), size=16)
    with pytest.raises(ModelError):
        heatmap_only_png(np.zeros((4, 4)), size=0)
