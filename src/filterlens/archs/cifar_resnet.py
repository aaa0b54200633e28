"""CIFAR ResNets of He et al. (2016), as in akamaster/pytorch_resnet_cifar10.

Three stages of ``n`` BasicBlocks with 16/32/64 channels, identity shortcuts that
subsample and zero-pad the channels ("option A", parameter-free), BN, and a ``linear``
64 -> classes head. Depth = 6n + 2: ResNet-20/32/44/56/110/1202.

State-dict keys match that repository's checkpoints (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.bn1``, ..., ``linear``) once a ``module.`` prefix from
``DataParallel`` is stripped.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.init as init

from ..errors import ArchitectureError
from ._common import Stats, check_num_classes, conv3x3, make_normalization, stack_blocks
from .registry import ArchInfo, register_arch, register_pattern

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ShortcutA",
    "cifar_resnet",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
]


class ShortcutA(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad ``pad`` channels on each side.

    The original wraps the same expression in a ``LambdaLayer``; a named module is picklable
    and traces with ``torch.fx`` to a slice and an ``F.pad``. It has no parameters.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an option-A identity shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # As in the original: planes // 4 zero channels on each side (16 -> 32 -> 64).
            self.shortcut = ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


def _weights_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """The CIFAR ResNet: conv1/bn1, three stages ``layer1..layer3``, global pool, ``linear``."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        mean: Stats = None,
        std: Stats = None,
    ) -> None:
        super().__init__()
        self.normalize = make_normalization(mean, std, 3)
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1, planes = stack_blocks(BasicBlock, 16, 16, num_blocks[0], stride=1)
        self.layer2, planes = stack_blocks(BasicBlock, planes, 32, num_blocks[1], stride=2)
        self.layer3, planes = stack_blocks(BasicBlock, planes, 64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        # The original pools with a kernel of the map's width: a global average pool.
        out = F.adaptive_avg_pool2d(out, 1)
        out = torch.flatten(out, 1)
        return self.linear(out)


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ArchitectureError(
            f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, 1202, ...); got {depth}"
        )
    return (depth - 2) // 6


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    mean: Stats = None,
    std: Stats = None,
) -> CifarResNet:
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (akamaster/pytorch_resnet_cifar10)."""
    n = _check_depth(depth)
    return CifarResNet([n, n, n], num_classes=check_num_classes(num_classes), mean=mean, std=std)


@register_arch(
    "cifar_resnet20", description="CIFAR ResNet-20 (akamaster, option-A shortcuts, 0.27M params)"
)
def cifar_resnet20(num_classes: int = 10, mean: Stats = None, std: Stats = None) -> CifarResNet:
    """CIFAR ResNet-20 (3 x 3 BasicBlocks) of akamaster/pytorch_resnet_cifar10."""
    return cifar_resnet(20, num_classes=num_classes, mean=mean, std=std)


@register_arch(
    "cifar_resnet32", description="CIFAR ResNet-32 (akamaster, option-A shortcuts, 0.46M params)"
)
def cifar_resnet32(num_classes: int = 10, mean: Stats = None, std: Stats = None) -> CifarResNet:
    """CIFAR ResNet-32 (3 x 5 BasicBlocks) of akamaster/pytorch_resnet_cifar10."""
    return cifar_resnet(32, num_classes=num_classes, mean=mean, std=std)


@register_arch(
    "cifar_resnet44", description="CIFAR ResNet-44 (akamaster, option-A shortcuts, 0.66M params)"
)
def cifar_resnet44(num_classes: int = 10, mean: Stats = None, std: Stats = None) -> CifarResNet:
    """CIFAR ResNet-44 (3 x 7 BasicBlocks) of akamaster/pytorch_resnet_cifar10."""
    return cifar_resnet(44, num_classes=num_classes, mean=mean, std=std)


@register_arch(
    "cifar_resnet56", description="CIFAR ResNet-56 (akamaster, option-A shortcuts, 0.85M params)"
)
def cifar_resnet56(num_classes: int = 10, mean: Stats = None, std: Stats = None) -> CifarResNet:
    """CIFAR ResNet-56 (3 x 9 BasicBlocks) of akamaster/pytorch_resnet_cifar10."""
    return cifar_resnet(56, num_classes=num_classes, mean=mean, std=std)


@register_arch(
    "cifar_resnet110", description="CIFAR ResNet-110 (akamaster, option-A shortcuts, 1.7M params)"
)
def cifar_resnet110(num_classes: int = 10, mean: Stats = None, std: Stats = None) -> CifarResNet:
    """CIFAR ResNet-110 (3 x 18 BasicBlocks) of akamaster/pytorch_resnet_cifar10."""
    return cifar_resnet(110, num_classes=num_classes, mean=mean, std=std)


def _resolve(m: re.Match) -> tuple[ArchInfo, dict]:
    depth = int(m.group(1))
    _check_depth(depth)
    info = ArchInfo(
        name=f"cifar_resnet{depth}",
        builder=cifar_resnet,
        input_shape=(3, 32, 32),
        num_classes=10,
        description=f"CIFAR ResNet-{depth} (akamaster, option-A shortcuts)",
        defaults={"depth": depth},
    )
    return info, {"depth": depth}


# Any other depth 6n + 2, e.g. ``cifar_resnet1202`` (names are normalised to ``-``).
register_pattern(r"cifar-?resnet-?(\d+)", _resolve)
