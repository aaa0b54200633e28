"""DeepMind's pre-activation ResNet-18/34 (RobustBench ``DMPreActResNet``).

Used by Gowal2021Improving_R18, Rebuffi2021Fixing_R18 and Rade2021Helper_R18. Keys:
``conv_2d``, ``layer_0..layer_3`` of blocks ``{batchnorm_0, conv_2d_1, batchnorm_1,
conv_2d_2, shortcut}``, ``batchnorm``, ``logits``. Unlike the kuangliu PreActBlock, the
shortcut is a *3x3* conv on the raw (padded) input, and the strided convs pad 'SAME' by
hand (``(0, 1, 0, 1)`` at stride 2). ``mean``/``std`` are non-persistent buffers.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArchitectureError
from ._common import check_num_classes, conv3x3
from .registry import register_arch
from .wide_resnet import CIFAR10_MEAN, CIFAR10_STD, resolve_activation

__all__ = ["DMPreActBlock", "DMPreActResNet", "dm_preact_resnet18"]

_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class DMPreActBlock(nn.Module):
    """BN-act-conv twice; a 3x3 conv shortcut on the padded raw input where the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ArchitectureError(f"unsupported stride {stride}")
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_2d_1 = conv3x3(in_planes, out_planes, stride, padding=0)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_2d_2 = conv3x3(out_planes, out_planes)
        self.has_shortcut = stride != 1 or in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = conv3x3(in_planes, out_planes, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(_same_pad(x, self.stride)) if self.has_shortcut else x
        out = self.conv_2d_1(_same_pad(out, self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return out + shortcut


class DMPreActResNet(nn.Module):
    """DeepMind PreAct ResNet (64..512 planes, CIFAR stem), input normalised inside."""

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 18,
        activation: str = "relu",
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        padding: int = 0,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ArchitectureError(f"a DeepMind PreAct ResNet has depth 18 or 34; got {depth!r}")
        act = resolve_activation(activation)
        mean_v, std_v = [float(v) for v in mean], [float(v) for v in std]
        if len(mean_v) != 3 or len(std_v) != 3 or any(v == 0 for v in std_v):
            raise ArchitectureError("mean and std need 3 values each, std without zeros")
        self.register_buffer("mean", torch.tensor(mean_v).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_v).view(3, 1, 1), persistent=False)
        self.padding = padding
        self.conv_2d = conv3x3(3, 64)
        planes = [64, 64, 128, 256, 512]
        for i, n in enumerate(_DEPTHS[depth]):
            stride = 1 if i == 0 else 2
            blocks = [DMPreActBlock(planes[i] if j == 0 else planes[i + 1], planes[i + 1],
                                    stride if j == 0 else 1, act) for j in range(n)]
            setattr(self, f"layer_{i}", nn.Sequential(*blocks))
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = act()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.conv_2d((x - self.mean) / self.std)
        out = self.layer_3(self.layer_2(self.layer_1(self.layer_0(out))))
        out = self.relu(self.batchnorm(out))
        out = F.avg_pool2d(out, 4)
        return self.logits(torch.flatten(out, 1))


@register_arch(
    "dm-preact-resnet18",
    description="DeepMind PreAct ResNet-18 (RobustBench DMPreActResNet; 3x3 conv shortcuts), 12.5M params",
)
def dm_preact_resnet18(
    num_classes: int = 10,
    activation: str = "relu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    padding: int = 0,
) -> DMPreActResNet:
    """DeepMind PreAct ResNet-18 with RobustBench's key names (``activation="swish"`` for
    the Gowal/Rebuffi/Rade R18 checkpoints)."""
    if (mean is None) != (std is None):
        raise ArchitectureError("give both mean and std for input normalisation, or neither")
    return DMPreActResNet(check_num_classes(num_classes), 18, activation,
                          CIFAR10_MEAN if mean is None else mean, CIFAR10_STD if std is None else std, padding)
