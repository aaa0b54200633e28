"""Two WideResNet variants of RobustBench, in its key names.

- ``RobustWideResNet`` (Huang et al. 2021, "Exploring Architectural Ingredients"; RobustBench
  ``robust_wide_resnet.py``): free channel and depth per stage. Keys ``stem_conv``,
  ``blocks.{i}.layer.{j}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``. Its WRN-34-R
  is channels ``[16, 320, 640, 512]``, 5 blocks per stage.
- ``PSSiLUWideResNet`` (Dai et al. 2021, "Parameterizing Activation Functions"; RobustBench
  ``paf_wide_resnet.py``): the TRADES WideResNet with one *shared* learnable PSSiLU
  activation. The shared module is held by every block, so its ``alpha``/``beta`` appear
  under every block's ``activation.`` prefix and at the top, as in the original.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArchitectureError
from ._common import check_num_classes, conv1x1, conv3x3
from .registry import register_arch
from .wide_resnet import NetworkBlock, _blocks_per_stage, init_like_trades

__all__ = ["RobustWideResNet", "PSSiLU", "PSSiLUWideResNet", "robust_wide_resnet", "pssilu_wrn_28_10"]


class RobustWideResNet(nn.Module):
    """WideResNet with per-stage channels/depths/strides; global average pool before ``fc``."""

    def __init__(
        self,
        num_classes: int = 10,
        channel_configs: Sequence[int] = (16, 160, 320, 640),
        depth_configs: Sequence[int] = (5, 5, 5),
        stride_config: Sequence[int] = (1, 2, 2),
    ) -> None:
        super().__init__()
        channels, depths, strides = list(channel_configs), list(depth_configs), list(stride_config)
        if not (len(channels) - 1 == len(depths) == len(strides)) or min(depths, default=0) < 1:
            raise ArchitectureError(
                f"channel_configs needs one more entry than depth_configs and stride_config, "
                f"with at least one block per stage; got {channels}, {depths}, {strides}")
        self.stem_conv = conv3x3(3, channels[0])
        self.blocks = nn.ModuleList(
            NetworkBlock(depths[i], channels[i], channels[i + 1], strides[i]) for i in range(len(depths)))
        self.bn1 = nn.BatchNorm2d(channels[-1])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[-1], num_classes)
        init_like_trades(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem_conv(x)
        for block in self.blocks:
            out = block(out)
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


@register_arch(
    "wrn-34-r",
    description="RobustWideResNet WRN-34-R of Huang et al. 2021 (channels 16-320-640-512, 5-5-5), 68.1M params",
)
def robust_wide_resnet(
    num_classes: int = 10,
    channel_configs: Sequence[int] = (16, 320, 640, 512),
    depth_configs: Sequence[int] = (5, 5, 5),
    stride_config: Sequence[int] = (1, 2, 2),
) -> RobustWideResNet:
    """RobustBench's ``RobustWideResNet`` (default: the WRN-34-R of Huang2021Exploring)."""
    return RobustWideResNet(check_num_classes(num_classes), channel_configs, depth_configs, stride_config)


class PSSiLU(nn.Module):
    """``x * (sigmoid(|alpha| x) - |beta|) / (1 - |beta|)`` with learnable ``alpha``, ``beta``."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor([1e-8]))
        self.alpha = nn.Parameter(torch.tensor([1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = torch.abs(self.beta)
        return x * (torch.sigmoid(torch.abs(self.alpha) * x) - beta) / (1 - beta)


class _PAFBlock(nn.Module):
    """The TRADES WideResNet block with a given (shared) activation module."""

    def __init__(self, activation: nn.Module, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.activation = activation
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else conv1x1(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equal_in_out:
            out = self.activation(self.bn1(x))
            shortcut = x
        else:
            x = self.activation(self.bn1(x))
            out = x
            shortcut = self.convShortcut(x)
        out = self.activation(self.bn2(self.conv1(out)))
        return torch.add(shortcut, self.conv2(out))


class _PAFStage(nn.Module):
    def __init__(self, activation: nn.Module, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            _PAFBlock(activation, in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class PSSiLUWideResNet(nn.Module):
    """WideResNet-D-W with one shared PSSiLU activation (RobustBench ``PAF_WideResNet``)."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        n = _blocks_per_stage(depth, widen_factor)
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        act = PSSiLU()
        self.conv1 = conv3x3(3, channels[0])
        self.block1 = _PAFStage(act, n, channels[0], channels[1], 1)
        self.block2 = _PAFStage(act, n, channels[1], channels[2], 2)
        self.block3 = _PAFStage(act, n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.activation = act
        self.fc = nn.Linear(channels[3], num_classes)
        init_like_trades(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.activation(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        return self.fc(torch.flatten(out, 1))


@register_arch(
    "pssilu-wrn-28-10",
    description="WideResNet-28-10 with a shared PSSiLU activation (Dai et al. 2021), 36.5M params",
)
def pssilu_wrn_28_10(num_classes: int = 10, depth: int = 28, widen_factor: int = 10) -> PSSiLUWideResNet:
    """RobustBench's ``pssilu_wrn_28_10`` (Dai2021Parameterizing)."""
    return PSSiLUWideResNet(depth, widen_factor, check_num_classes(num_classes))
