"""2D classification networks built from MONAI (no torchvision).

Every network is a :class:`Classifier`: a MONAI backbone up to its last
convolutional feature map, global average pooling, dropout (0.30 by default,
the paper's setting) and one linear layer. Keeping the head this simple means
the class activation map of the predicted class is exactly
``sum_k w[c, k] * features[k]`` (Zhou et al. 2016), which the exported ONNX
model can compute without torch (see :mod:`radvault.analysis.explain`).

Networks: ``resnet18`` (MONAI ResNet, basic blocks [2, 2, 2, 2], 7x7 stem with
stride 2 and max-pooling, i.e. the ImageNet layout), ``densenet121`` and
``efficientnet-b0``. ``width`` scales the ResNet's channel counts (1.0 is
standard ResNet-18; 0.5 has a quarter of the parameters and is what the
shipped CPU models use). ``stem="small"`` gives the ResNet a 3x3 stride-1 stem
without max-pooling (the CIFAR layout MedMNIST v2 uses at 28x28): the ImageNet
stem would shrink a 28-pixel image to 7 pixels before the first block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radvault.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["MIN_INPUT_SIZE", "NETWORKS", "STEMS", "build_network"]

NETWORKS = ("resnet18", "densenet121", "efficientnet-b0")
STEMS = ("imagenet", "small")
#: The smallest square input each network runs on (measured): DenseNet-121's last
#: transition pool and EfficientNet-B0's 5x5 kernels need a 2x2 map where ResNet-18's
#: global pool takes a 1x1 one. (At 28 px the ResNet stem still leaves 1x1; see
#: ``--stem small``.)
MIN_INPUT_SIZE = {"resnet18": 8, "densenet121": 32, "efficientnet-b0": 32,
                  "efficientnet_b0": 32}


def _classifier_class() -> type:
    import torch
    from torch import nn

    class Classifier(nn.Module):
        """Backbone features -> global average pool -> dropout -> linear.

        ``forward`` returns logits; ``forward_features`` returns
        ``(logits, feature_map)`` for export and explanations.
        """

        def __init__(self, backbone: nn.Module, channels: int, num_classes: int,
                     dropout: float) -> None:
            super().__init__()
            self.backbone = backbone
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(channels, num_classes)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x)

        def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fmap = self.backbone(x)
            logits = self.fc(self.dropout(torch.flatten(self.pool(fmap), 1)))
            return logits, fmap

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_features(x)[0]

    return Classifier


def _resnet_backbone(width: float, stem: str) -> tuple[nn.Module, int]:
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import ResNetBlock
    from torch import nn

    planes = [max(8, round(c * width)) for c in (64, 128, 256, 512)]
    small = stem == "small"
    net = ResNet(block=ResNetBlock, layers=[2, 2, 2, 2], block_inplanes=planes,
                 spatial_dims=2, n_input_channels=3, conv1_t_size=3 if small else 7,
                 conv1_t_stride=1 if small else 2, no_max_pool=small, shortcut_type="B",
                 feed_forward=False)
    stem_layers = [net.conv1, net.bn1, net.act] + ([] if small else [net.maxpool])
    body = nn.Sequential(*stem_layers, net.layer1, net.layer2, net.layer3, net.layer4)
    return body, planes[3]


def _densenet_backbone() -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet121
    from torch import nn

    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)
    channels = net.class_layers.out.in_features
    return nn.Sequential(net.features, nn.ReLU()), channels


def _efficientnet_backbone() -> tuple[nn.Module, int]:
    from monai.networks.nets import EfficientNetBN
    from torch import nn

    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2,
                         in_channels=3, num_classes=2)

    class _Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = self.net
            x = n._swish(n._bn0(n._conv_stem(n._conv_stem_padding(x))))
            x = n._blocks(x)
            return n._swish(n._bn1(n._conv_head(n._conv_head_padding(x))))

    return _Features(), net._fc.in_features


def build_network(name: str, num_classes: int, *, dropout: float = 0.30,
                  width: float = 1.0, stem: str = "imagenet") -> nn.Module:
    """Build an untrained classifier.

    Parameters
    ----------
    name : {"resnet18", "densenet121", "efficientnet-b0"}
    num_classes : int
    dropout : float
        Dropout before the linear layer (paper: 0.30).
    width : float
        Channel multiplier for ``resnet18`` (ignored by the others).
    stem : {"imagenet", "small"}
        ``resnet18`` stem: 7x7 stride 2 + max-pool, or 3x3 stride 1 for small
        images (ignored by the others).

    Returns
    -------
    torch.nn.Module
        A ``Classifier`` with ``forward`` (logits) and ``forward_features``.

    Raises
    ------
    ModelError
        If the name is unknown or the arguments are out of range.
    """
    if num_classes < 2:
        raise ModelError("a classifier needs at least two classes")
    if not 0.0 <= dropout < 1.0:
        raise ModelError("dropout must be within [0, 1)")
    if stem not in STEMS:
        raise ModelError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    if name == "resnet18":
        if not 0.05 <= width <= 4.0:
            raise ModelError("width must be within 0.05..4")
        backbone, channels = _resnet_backbone(width, stem)
    elif name == "densenet121":
        backbone, channels = _densenet_backbone()
    elif name in ("efficientnet-b0", "efficientnet_b0"):
        backbone, channels = _efficientnet_backbone()
    else:
        raise ModelError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    return _classifier_class()(backbone, channels, num_classes, dropout)
