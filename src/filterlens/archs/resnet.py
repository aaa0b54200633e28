"""ResNet-18/34/50 with a CIFAR stem (3x3 conv, no max-pool), as in kuangliu/pytorch-cifar.

The same code (and key names) is RobustBench's ``model_zoo/architectures/resnet.py``:
``conv1``, ``bn1``, ``layer1..layer4`` of blocks with ``conv1/bn1/conv2/bn2`` (plus
``conv3/bn3`` in a Bottleneck), a projection ``shortcut`` = Sequential(conv 1x1, BN)
where the shape changes (an empty Sequential otherwise), and ``linear``.
"""

from __future__ import annotations

from typing import Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import NormalizedInput, Stats, check_num_classes, conv1x1, conv3x3, stack_blocks
from .registry import register_arch

__all__ = ["BasicBlock", "Bottleneck", "PreActBottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty ``Sequential``) where the shape is kept, else a strided 1x1 conv + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a (projection where needed) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN, and a shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, self.expansion * planes)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck of Chen et al. 2020 (RobustBench's
    ``BottleneckChen2020AdversarialNet``): ``bn0``-ReLU first, no BN after ``conv3``, no final
    ReLU; a projection shortcut takes the pre-activated input, the identity the raw one."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, self.expansion * planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn0(x))
        out = F.relu(self.bn1(self.conv1(pre)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.conv3(out)
        return out + self.shortcut(x if len(self.shortcut) == 0 else pre)


class ResNet(NormalizedInput):
    """ResNet with a CIFAR stem: conv1/bn1, ``layer1..layer4`` (64..512 planes), ``linear``.

    ``stats_keys=("mu", "sigma")`` keeps the input statistics in the state dict, as
    RobustBench's Engstrom2019Robustness and similar classes do.
    """

    def __init__(
        self,
        block: Type[nn.Module],
        num_blocks: Sequence[int],
        num_classes: int = 10,
        mean: Stats = None,
        std: Stats = None,
        stats_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.setup_input(mean, std, 3, stats_keys)
        self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, planes = stack_blocks(block, 64, 64, num_blocks[0], stride=1)
        self.layer2, planes = stack_blocks(block, planes, 128, num_blocks[1], stride=2)
        self.layer3, planes = stack_blocks(block, planes, 256, num_blocks[2], stride=2)
        self.layer4, planes = stack_blocks(block, planes, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize_input(x))))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = torch.flatten(out, 1)
        return self.linear(out)


@register_arch(
    "resnet18", description="ResNet-18, CIFAR stem (kuangliu / RobustBench naming), 11.2M params"
)
def resnet18(
    num_classes: int = 10, mean: Stats = None, std: Stats = None, stats_keys: Sequence[str] | None = None
) -> ResNet:
    """ResNet-18 with a CIFAR stem (BasicBlocks 2-2-2-2)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], check_num_classes(num_classes), mean, std, stats_keys)


@register_arch(
    "resnet34", description="ResNet-34, CIFAR stem (kuangliu / RobustBench naming), 21.3M params"
)
def resnet34(
    num_classes: int = 10, mean: Stats = None, std: Stats = None, stats_keys: Sequence[str] | None = None
) -> ResNet:
    """ResNet-34 with a CIFAR stem (BasicBlocks 3-4-6-3)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], check_num_classes(num_classes), mean, std, stats_keys)


@register_arch(
    "resnet50", description="ResNet-50, CIFAR stem (kuangliu / RobustBench naming), 23.5M params"
)
def resnet50(
    num_classes: int = 10, mean: Stats = None, std: Stats = None, stats_keys: Sequence[str] | None = None
) -> ResNet:
    """ResNet-50 with a CIFAR stem (Bottlenecks 3-4-6-3)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], check_num_classes(num_classes), mean, std, stats_keys)
