"""PreAct ResNet-18 (He et al. 2016, identity mappings) as in RobustBench.

Key names follow RobustBench's ``model_zoo/architectures/resnet.py`` (itself from
kuangliu/pytorch-cifar and locuslab/fast_adversarial): ``conv1``, ``layer1..layer4`` of
PreActBlocks (``bn1``, ``conv1``, ``bn2``, ``conv2``, and ``shortcut`` =
Sequential(conv 1x1) only where the shape changes), ``bn`` (the BN-ReLU before the
pool, ``bn_before_fc``) and ``linear``.

Two switches cover RobustBench's variants; neither changes a key name except ``bn``:

- ``bn_before_fc``: the final ``bn`` + ReLU. On by default here (fast_adversarial, Rice et
  al. 2020, Kireev et al. 2021); RobustBench's own ``PreActResNet18()`` and its
  Wong2020Fast / Andriushchenko2020Understanding checkpoints have no ``bn``: pass
  ``bn_before_fc=False`` for those.
- ``out_shortcut``: the projection shortcut takes the pre-activated input
  (RobustBench's ``PreActBlockV2`` / ``out_shortcut=True``) instead of the raw input.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import NormalizedInput, Stats, check_num_classes, conv1x1, conv3x3, stack_blocks
from .registry import register_arch

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """Pre-activation BasicBlock: BN-ReLU-conv twice, plus a shortcut."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, out_shortcut: bool = False
    ) -> None:
        super().__init__()
        self.out_shortcut = out_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                conv1x1(in_planes, self.expansion * planes, stride)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            shortcut = x
        else:
            shortcut = self.shortcut(out if self.out_shortcut else x)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(NormalizedInput):
    """Pre-activation ResNet with a CIFAR stem: conv1, ``layer1..layer4``, (bn), ``linear``."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        bn_before_fc: bool = True,
        out_shortcut: bool = False,
        mean: Stats = None,
        std: Stats = None,
        stats_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.setup_input(mean, std, 3, stats_keys)
        self.bn_before_fc = bn_before_fc
        self.conv1 = conv3x3(3, 64)
        opt = {"out_shortcut": out_shortcut}
        self.layer1, planes = stack_blocks(PreActBlock, 64, 64, num_blocks[0], 1, **opt)
        self.layer2, planes = stack_blocks(PreActBlock, planes, 128, num_blocks[1], 2, **opt)
        self.layer3, planes = stack_blocks(PreActBlock, planes, 256, num_blocks[2], 2, **opt)
        self.layer4, planes = stack_blocks(PreActBlock, planes, 512, num_blocks[3], 2, **opt)
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize_input(x))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        out = torch.flatten(out, 1)
        return self.linear(out)


@register_arch(
    "preact_resnet18",
    description=(
        "PreAct ResNet-18, CIFAR stem (RobustBench naming; "
        "bn_before_fc=False for Wong2020Fast), 11.2M params"
    ),
)
def preact_resnet18(
    num_classes: int = 10,
    bn_before_fc: bool = True,
    out_shortcut: bool = False,
    mean: Stats = None,
    std: Stats = None,
    stats_keys: Sequence[str] | None = None,
) -> PreActResNet:
    """PreAct ResNet-18 (PreActBlocks 2-2-2-2) with RobustBench's key names.

    ``stats_keys=("mu", "sigma")``: input statistics in the state dict (RobustBench's
    Wong2020Fast, Rice2020Overfitting on CIFAR-100, Kireev2021Effectiveness classes).
    """
    return PreActResNet(
        [2, 2, 2, 2], check_num_classes(num_classes), bn_before_fc, out_shortcut, mean, std, stats_keys
    )
