"""WideResNets (Zagoruyko & Komodakis 2016) in the two codings RobustBench uses.

- ``WideResNet``: the TRADES / RobustBench ``wide_resnet.py`` coding, names ``wrn-D-W``.
  Keys: ``conv1``, ``block1.layer.0.{bn1,conv1,bn2,conv2,convShortcut}``, ``block2``,
  ``block3``, ``bn1``, ``fc`` (plus the unused ``sub_block1`` of some checkpoints, with
  ``sub_block1=True``).
- ``DMWideResNet``: DeepMind's coding (RobustBench ``dm_wide_resnet.py``), names
  ``dm-wrn-D-W``. Keys: ``mean``, ``std``, ``init_conv``,
  ``layer.0.block.0.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``,
  ``logits``. Its ``mean``/``std`` are non-persistent buffers, as in RobustBench.

Depth D must satisfy (D - 4) % 6 == 0: (D - 4) / 6 blocks per stage, 3 stages.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ArchitectureError
from ._common import NormalizedInput, Stats, check_num_classes, conv1x1, conv3x3
from .registry import ArchInfo, register_arch, register_pattern

__all__ = [
    "WideResNet",
    "DMWideResNet",
    "wide_resnet",
    "dm_wide_resnet",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def init_like_trades(model: nn.Module) -> None:
    """The TRADES WideResNet's initialisation: He-normal convs (fan-out), BN 1/0, zero linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def resolve_activation(name: str) -> type[nn.Module]:
    """The activation module class named ``name`` (case-insensitive), or an ``ArchitectureError``."""
    try:
        return _ACTIVATIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ArchitectureError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}") from None


def _blocks_per_stage(depth: int, width: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise ArchitectureError(
            "a WideResNet needs depth D with (D - 4) % 6 == 0 "
            f"(10, 16, 22, 28, 34, 40, 70, ...); got {depth}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ArchitectureError(f"a WideResNet needs a positive integer width; got {width!r}")
    return (depth - 4) // 6


# ---------------------------------------------------------------------------------------
# TRADES / RobustBench coding


class BasicBlock(nn.Module):
    """Pre-activation block; a 1x1 ``convShortcut`` where the channel count changes."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = conv1x1(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equal_in_out:
            out = self.relu1(self.bn1(x))
            out = self.relu2(self.bn2(self.conv1(out)))
            shortcut = x
        else:
            # As in the original: the shortcut takes the pre-activated input.
            x = self.relu1(self.bn1(x))
            out = self.relu2(self.bn2(self.conv1(x)))
            shortcut = self.convShortcut(x)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return torch.add(shortcut, out)


class NetworkBlock(nn.Module):
    """One stage: ``layer`` = Sequential of ``nb_layers`` BasicBlocks."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            BasicBlock(in_planes, out_planes, stride, drop_rate),
            *[BasicBlock(out_planes, out_planes, 1, drop_rate) for _ in range(nb_layers - 1)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(NormalizedInput):
    """WideResNet-D-W in the TRADES / RobustBench coding.

    ``stats_keys=("mu", "sigma")`` stores the input statistics as RobustBench's subclasses
    do (Rice2020Overfitting, Chen2020Efficient, ...); ``per_image=True`` is Ding2020MMA's
    per-image standardisation; ``hypersphere=True`` l2-normalises the pooled features and
    the rows of ``fc.weight`` before the classifier (Pang2020Boosting's ``BoostingWideResNet``).
    """

    def __init__(
        self,
        depth: int = 28,
        num_classes: int = 10,
        widen_factor: int = 10,
        sub_block1: bool = False,
        drop_rate: float = 0.0,
        bias_last: bool = True,
        mean: Stats = None,
        std: Stats = None,
        stats_keys: Sequence[str] | None = None,
        per_image: bool = False,
        hypersphere: bool = False,
    ) -> None:
        super().__init__()
        n = _blocks_per_stage(depth, widen_factor)
        self.hypersphere = hypersphere
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.setup_input(mean, std, 3, stats_keys, per_image)
        self.conv1 = conv3x3(3, channels[0])
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        if sub_block1:
            # Present in some checkpoints (TRADES, Carmon et al.); unused in forward.
            self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)
        self.nChannels = channels[3]

        init_like_trades(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize_input(x))
        out = self.block1(out)
        out = self.block2(out)
        out = self.block3(out)
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = torch.flatten(out, 1)
        if self.hypersphere:
            return F.linear(F.normalize(out, p=2, dim=1), F.normalize(self.fc.weight, p=2, dim=1), self.fc.bias)
        return self.fc(out)


def wide_resnet(
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    sub_block1: bool = False,
    drop_rate: float = 0.0,
    bias_last: bool = True,
    mean: Stats = None,
    std: Stats = None,
    stats_keys: Sequence[str] | None = None,
    per_image: bool = False,
    hypersphere: bool = False,
) -> WideResNet:
    """WideResNet-``depth``-``widen_factor`` with RobustBench's key names."""
    return WideResNet(
        depth=depth,
        num_classes=check_num_classes(num_classes),
        widen_factor=widen_factor,
        sub_block1=sub_block1,
        drop_rate=drop_rate,
        bias_last=bias_last,
        mean=mean,
        std=std,
        stats_keys=stats_keys,
        per_image=per_image,
        hypersphere=hypersphere,
    )


# The common sizes by name, so that they show in ``list_archs()``; any ``wrn-D-W`` works.
_COMMON_SIZES = ((28, 10, "36.5M"), (34, 10, "46.2M"), (34, 20, "184.5M"), (70, 16, "266.8M"))
for _depth, _width, _params in _COMMON_SIZES:
    register_arch(
        f"wrn-{_depth}-{_width}",
        description=f"WideResNet-{_depth}-{_width} (RobustBench naming), {_params} params",
        depth=_depth,
        widen_factor=_width,
    )(wide_resnet)


def _resolve_wrn(m: re.Match) -> tuple[ArchInfo, dict]:
    depth, width = int(m.group(1)), int(m.group(2))
    _blocks_per_stage(depth, width)
    kwargs = {"depth": depth, "widen_factor": width}
    info = ArchInfo(
        name=f"wrn-{depth}-{width}",
        builder=wide_resnet,
        input_shape=(3, 32, 32),
        num_classes=10,
        description=f"WideResNet-{depth}-{width} (RobustBench naming)",
        defaults=kwargs,
    )
    return info, dict(kwargs)


register_pattern(r"(?:wrn|wideresnet|wide-resnet)-?(\d+)-(\d+)", _resolve_wrn)


# ---------------------------------------------------------------------------------------
# DeepMind coding (Gowal et al. 2020, Rebuffi et al. 2021)


class _Block(nn.Module):
    """DeepMind WRN block: explicit 'SAME' padding before the (strided) first conv."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ArchitectureError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = conv3x3(in_planes, out_planes, stride, padding=0)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = conv3x3(out_planes, out_planes)
        self.has_shortcut = in_planes != out_planes
        self.shortcut: nn.Conv2d | None = None
        if self.has_shortcut:
            self.shortcut = conv1x1(in_planes, out_planes, stride)
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_shortcut:
            x = self.relu_0(self.batchnorm_0(x))
            v = x
        else:
            v = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(F.pad(v, self._pad))
        out = self.relu_1(self.batchnorm_1(out))
        out = self.conv_1(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return torch.add(shortcut, out)


class _BlockGroup(nn.Module):
    """One stage: ``block`` = Sequential of ``_Block``."""

    def __init__(
        self,
        num_blocks: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _Block(in_planes, out_planes, stride, activation),
            *[_Block(out_planes, out_planes, 1, activation) for _ in range(num_blocks - 1)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}


class DMWideResNet(nn.Module):
    """WideResNet in DeepMind's coding; normalises its input with non-persistent ``mean``/``std``."""

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 28,
        width: int = 10,
        activation: str = "relu",
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        padding: int = 0,
        num_input_channels: int = 3,
    ) -> None:
        super().__init__()
        n = _blocks_per_stage(depth, width)
        act = resolve_activation(activation)
        mean_v, std_v = [float(v) for v in mean], [float(v) for v in std]
        if len(mean_v) != num_input_channels or len(std_v) != num_input_channels:
            raise ArchitectureError(f"mean and std need {num_input_channels} values each")
        if any(v == 0 for v in std_v):
            raise ArchitectureError("std must not contain zeros")
        mean_t = torch.tensor(mean_v, dtype=torch.float32)
        std_t = torch.tensor(std_v, dtype=torch.float32)
        # Non-persistent, as in RobustBench: the statistics are not checkpoint keys.
        self.register_buffer("mean", mean_t.view(num_input_channels, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(num_input_channels, 1, 1), persistent=False)
        self.padding = padding
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = conv3x3(num_input_channels, channels[0])
        self.layer = nn.Sequential(
            _BlockGroup(n, channels[0], channels[1], 1, act),
            _BlockGroup(n, channels[1], channels[2], 2, act),
            _BlockGroup(n, channels[2], channels[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = act()
        self.logits = nn.Linear(channels[3], num_classes)
        self.num_channels = channels[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = (x - self.mean) / self.std
        out = self.init_conv(out)
        out = self.layer(out)
        out = self.relu(self.batchnorm(out))
        out = F.avg_pool2d(out, 8)
        out = torch.flatten(out, 1)
        return self.logits(out)


def dm_wide_resnet(
    depth: int = 28,
    width: int = 10,
    num_classes: int = 10,
    activation: str = "relu",
    mean: Stats = None,
    std: Stats = None,
    padding: int = 0,
) -> DMWideResNet:
    """DeepMind WideResNet-``depth``-``width`` (RobustBench ``DMWideResNet`` key names)."""
    if (mean is None) != (std is None):
        raise ArchitectureError("give both mean and std for input normalisation, or neither")
    return DMWideResNet(
        num_classes=check_num_classes(num_classes),
        depth=depth,
        width=width,
        activation=activation,
        mean=CIFAR10_MEAN if mean is None else mean,
        std=CIFAR10_STD if std is None else std,
        padding=padding,
    )


def _resolve_dm(m: re.Match) -> tuple[ArchInfo, dict]:
    depth, width = int(m.group(1)), int(m.group(2))
    _blocks_per_stage(depth, width)
    kwargs = {"depth": depth, "width": width}
    info = ArchInfo(
        name=f"dm-wrn-{depth}-{width}",
        builder=dm_wide_resnet,
        input_shape=(3, 32, 32),
        num_classes=10,
        description=f"DeepMind WideResNet-{depth}-{width} (RobustBench DMWideResNet naming)",
        defaults=kwargs,
    )
    return info, dict(kwargs)


register_pattern(r"dm-?(?:wrn|wideresnet|wide-resnet)-?(\d+)-(\d+)", _resolve_dm)

for _depth, _width in ((28, 10), (70, 16)):
    register_arch(
        f"dm-wrn-{_depth}-{_width}",
        description=f"DeepMind WideResNet-{_depth}-{_width} (RobustBench DMWideResNet naming)",
        depth=_depth,
        width=_width,
    )(dm_wide_resnet)
