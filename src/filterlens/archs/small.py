"""Small CIFAR architectures for the bundled model zoo (fast to train on a CPU).

Both take inputs in [0, 1] and normalise them inside the model when given ``mean``/``std``
(non-persistent buffers, so a checkpoint holds the learned weights only), and both are plain
``nn.Module``s that ``torch.fx`` can trace (no data-dependent control flow).

- ``small_resnet14``: a narrow CIFAR ResNet (3 stages of 2 basic blocks, ``width``/2w/4w
  channels, identity shortcuts with zero-padding as in He et al.'s "option A"): 13 3x3 convs.
- ``small_vgg8``: a VGG-style net, 4 stages of two 3x3 conv-BN-ReLU and 2x2 max-pooling: 8 3x3 convs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import Stats, check_num_classes, make_normalization
from .registry import register_arch


class _ShortcutA(nn.Module):
    """Identity shortcut with stride-2 subsampling and zero-padded channels (no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            if (c_out - c_in) % 2:
                raise ValueError("option-A shortcuts need an even channel increase")
            self.shortcut: nn.Module = _ShortcutA((c_out - c_in) // 2)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR ResNet with ``6 * blocks + 2`` layers (``blocks`` basic blocks per stage)."""

    def __init__(
        self,
        blocks: int = 2,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.normalize = make_normalization(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        c = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(_BasicBlock(c, c_out, stride))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class SmallVGG(nn.Module):
    """VGG-style: stages of ``convs_per_stage`` 3x3 conv-BN-ReLU, each stage followed by 2x2 max-pool."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        convs_per_stage: int = 2,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self.normalize = make_normalization(mean, std, in_channels)
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_arch(
    "small_resnet14",
    input_shape=(3, 32, 32),
    description="narrow CIFAR ResNet-14 (3x2 basic blocks, width/2w/4w channels, option-A shortcuts), 13 3x3 convs",
)
def small_resnet14(
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    mean: Stats = None,
    std: Stats = None,
) -> nn.Module:
    return SmallResNet(2, width, check_num_classes(num_classes), in_channels, mean, std)


@register_arch(
    "small_vgg8",
    input_shape=(3, 32, 32),
    description="VGG-style CIFAR net, 4 stages x 2 3x3 conv-BN-ReLU + max-pool (width, 2w, 4w, 8w), 8 3x3 convs",
)
def small_vgg8(
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    mean: Stats = None,
    std: Stats = None,
) -> nn.Module:
    return SmallVGG((width, 2 * width, 4 * width, 8 * width), 2, check_num_classes(num_classes), in_channels, mean, std)
