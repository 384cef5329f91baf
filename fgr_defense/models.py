"""Classifiers of the paper (VGG-11, ResNet-18), for 32x32 RGB and 28x28 grayscale, and a small CNN.

All models take ``[0, 1]`` images ``(B, C, H, W)`` and return logits ``(B, num_classes)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = ["MODELS", "SmallCNN", "build_model", "resnet18", "vgg11"]


class SmallCNN(nn.Module):
    """A small CNN for fast CPU runs (two conv layers, two linear layers).

    Args:
        in_channels: input channels.
        num_classes: number of classes.
        size: input height/width.
        width: channels of the first conv layer (the second has twice as many).

    Example:
        >>> SmallCNN()(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 28, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * (size // 4) * (size // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


_VGG11_CFG: list[Any] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    """VGG with batch norm for small images (CIFAR style: one linear classifier layer)."""

    def __init__(self, cfg: list[Any], in_channels: int = 3, num_classes: int = 10, size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        pools = 0
        for v in cfg:
            if v == "M":
                # 28x28 inputs: skip the last pooling so the feature map stays 1x1 (28/16 -> 1).
                if size == 28 and pools == 4:
                    continue
                layers.append(nn.MaxPool2d(2))
                pools += 1
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11(in_channels: int = 3, num_classes: int = 10, size: int = 32) -> nn.Module:
    """VGG-11 with batch norm, CIFAR style.

    Example:
        >>> vgg11(1, 10, 28)(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    return VGG(_VGG11_CFG, in_channels, num_classes, size)


def resnet18(in_channels: int = 3, num_classes: int = 10, size: int = 32) -> nn.Module:
    """ResNet-18 in CIFAR style (3x3 stem, no max-pool), from torchvision's building blocks.

    Example:
        >>> resnet18(3, 10, 32)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()  # type: ignore[assignment]
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": lambda in_channels=1, num_classes=10, size=28: SmallCNN(in_channels, num_classes, size),
    # Half the channels (16 and 32): about 2.5x cheaper to train and attack on a CPU (the mnist5k presets).
    "smallcnn16": lambda in_channels=1, num_classes=10, size=28: SmallCNN(in_channels, num_classes, size, width=16),
    "vgg11": vgg11,
    "resnet18": resnet18,
}


def build_model(name: str, in_channels: int, num_classes: int, size: int) -> nn.Module:
    """Build a model by name: ``"smallcnn"``, ``"smallcnn16"``, ``"vgg11"`` or ``"resnet18"``.

    Example:
        >>> build_model("smallcnn", 1, 10, 28).__class__.__name__
        'SmallCNN'
    """
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, size=size)
