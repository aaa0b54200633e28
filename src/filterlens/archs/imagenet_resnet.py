"""ImageNet ResNet-18/50 and Wide ResNet-50-2 in torchvision's layout, without torchvision.

Keys as ``torchvision.models.resnet``: ``conv1`` (7x7, stride 2), ``bn1``, ``layer1..4`` of
blocks ``{conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0, downsample.1}``, ``fc``.
Stride sits on the 3x3 conv of a bottleneck (ResNet v1.5), as in torchvision.

RobustBench wraps these as ``Sequential(normalize=ImageNormalizer(mean, std), model=net)``;
``wrap=True`` builds that wrapper (:class:`NormalizedModel`), whose ``normalize.mean`` /
``normalize.std`` are persistent buffers, so the keys are ``normalize.mean`` and ``model.*``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Type

import torch
import torch.nn as nn

from ..errors import ArchitectureError
from ._common import Stats, check_num_classes, conv1x1, conv3x3
from .registry import register_arch

__all__ = ["ImageNetResNet", "ImageNormalizer", "NormalizedModel", "tv_resnet18", "tv_resnet50",
           "tv_wide_resnet50_2"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 64) -> None:
        super().__init__()
        if base_width != 64:
            raise ArchitectureError("BasicBlock only supports base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """torchvision's ResNet (ImageNet stem: 7x7 conv, max-pool)."""

    def __init__(self, block: Type[nn.Module], layers: Sequence[int], num_classes: int = 1000,
                 width_per_group: int = 64) -> None:
        super().__init__()
        self.inplanes = 64
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, base_width=self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ImageNormalizer(nn.Module):
    """RobustBench's ``ImageNormalizer``: ``(x - mean) / std`` with *persistent* buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(float(s) == 0 for s in std):
            raise ArchitectureError("the ImageNet normaliser needs 3 means and 3 non-zero stds")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Sequential):
    """RobustBench's ``normalize_model``: ``Sequential(normalize=..., model=...)``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(OrderedDict([("normalize", ImageNormalizer(mean, std)), ("model", model)]))


def _build(block, layers, num_classes, width, mean: Stats, std: Stats, wrap: bool) -> nn.Module:
    net = ImageNetResNet(block, layers, check_num_classes(num_classes), width)
    if wrap:
        return NormalizedModel(net, IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std)
    if mean is not None or std is not None:
        raise ArchitectureError("mean/std of a torchvision-layout ResNet need wrap=True (RobustBench's wrapper)")
    return net


_INFO = {"input_shape": (3, 224, 224), "num_classes": 1000}


@register_arch("tv-resnet18", description="ImageNet ResNet-18, torchvision layout (wrap=True: RobustBench's "
               "normalisation wrapper), 11.7M params", **_INFO)
def tv_resnet18(num_classes: int = 1000, mean: Stats = None, std: Stats = None, wrap: bool = False) -> nn.Module:
    """torchvision's ``resnet18`` (``wrap=True``: inside RobustBench's ``normalize_model``)."""
    return _build(TVBasicBlock, [2, 2, 2, 2], num_classes, 64, mean, std, wrap)


@register_arch("tv-resnet50", description="ImageNet ResNet-50, torchvision layout (wrap=True: RobustBench's "
               "normalisation wrapper), 25.6M params", **_INFO)
def tv_resnet50(num_classes: int = 1000, mean: Stats = None, std: Stats = None, wrap: bool = False) -> nn.Module:
    """torchvision's ``resnet50`` (``wrap=True``: inside RobustBench's ``normalize_model``)."""
    return _build(TVBottleneck, [3, 4, 6, 3], num_classes, 64, mean, std, wrap)


@register_arch("tv-wide-resnet50-2", description="ImageNet Wide ResNet-50-2, torchvision layout (wrap=True: "
               "RobustBench's normalisation wrapper), 68.9M params", **_INFO)
def tv_wide_resnet50_2(num_classes: int = 1000, mean: Stats = None, std: Stats = None,
                       wrap: bool = False) -> nn.Module:
    """torchvision's ``wide_resnet50_2`` (``wrap=True``: inside RobustBench's ``normalize_model``)."""
    return _build(TVBottleneck, [3, 4, 6, 3], num_classes, 128, mean, std, wrap)
