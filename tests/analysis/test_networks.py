"""MONAI networks behind one classifier shape (features -> pool -> dropout -> linear)."""

from __future__ import annotations

import pytest
import torch

from radvault.analysis.networks import build_network
from radvault.errors import ModelError


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet-b0"])
def test_each_network_classifies_3_channel_2d_images(name):
    torch.manual_seed(0)
    net = build_network(name, 4, width=0.25).eval()
    with torch.no_grad():
        logits, fmap = net.forward_features(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 4)
    assert fmap.ndim == 4 and fmap.shape[1] == net.fc.in_features
    assert net.dropout.p == pytest.approx(0.30)


def test_resnet_stem_has_stride_two():
    net = build_network("resnet18", 2)
    conv1 = net.backbone[0]
    assert conv1.stride == (2, 2) and conv1.kernel_size == (7, 7)
    assert net.fc.in_features == 512  # standard ResNet-18 width
    assert build_network("resnet18", 2, width=0.5).fc.in_features == 256


def test_the_small_stem_keeps_a_28_pixel_image_big_enough_for_four_stages():
    net = build_network("resnet18", 2, width=0.25, stem="small").eval()
    conv1 = net.backbone[0]
    assert conv1.stride == (1, 1) and conv1.kernel_size == (3, 3)
    with torch.no_grad():
        _, small = net.forward_features(torch.rand(1, 3, 28, 28))
        _, imagenet = build_network("resnet18", 2, width=0.25).eval().forward_features(
            torch.rand(1, 3, 28, 28))
    assert small.shape[-2:] == (4, 4) and imagenet.shape[-2:] == (1, 1)


def test_bad_arguments_are_refused():
    with pytest.raises(ModelError, match="unknown network"):
        build_network("vgg", 2)
    with pytest.raises(ModelError):
        build_network("resnet18", 1)
    with pytest.raises(ModelError):
        build_network("resnet18", 2, dropout=1.0)
    with pytest.raises(ModelError, match="unknown stem"):
        build_network("resnet18", 2, stem="tiny")
