"""Pieces shared by the architecture modules: input normalisation and argument checks."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import ArchitectureError


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, for models that take images in ``[0, 1]``.

    The buffers are registered with ``persistent=False``, so a model that normalises its
    input has exactly the same state-dict keys as one that does not.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        mean_v, std_v = _floats("mean", mean), _floats("std", std)
        for what, values in (("mean", mean_v), ("std", std_v)):
            if len(values) not in (1, channels):
                raise ArchitectureError(
                    f"{what} has {len(values)} values; the model takes {channels} input channel(s)"
                )
        if any(v == 0 for v in std_v):
            raise ArchitectureError("std must not contain zeros")
        mean_t = torch.tensor(mean_v, dtype=torch.float32)
        std_t = torch.tensor(std_v, dtype=torch.float32)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _floats(what: str, values: Sequence[float] | float) -> list[float]:
    if isinstance(values, (int, float)):
        return [float(values)]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ArchitectureError(f"{what} must be a sequence of numbers, got {values!r}") from None


def make_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> InputNormalization | None:
    """An :class:`InputNormalization` when ``mean`` and ``std`` are given, else ``None``."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ArchitectureError("give both mean and std for input normalisation, or neither")
    return InputNormalization(mean, std, channels)


def check_num_classes(num_classes: int) -> int:
    """Validate ``num_classes`` (a positive int) and return it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ArchitectureError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


#: Type of the optional per-channel ``mean`` / ``std`` arguments of every builder.
Stats = Optional[Sequence[float]]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias (the convs of every ResNet here)."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=padding, bias=False
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (projection shortcuts, bottlenecks)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)


def stack_blocks(
    block: Callable[..., nn.Module], in_planes: int, planes: int, num_blocks: int, stride: int, **kwargs
) -> tuple[nn.Sequential, int]:
    """One ResNet stage: ``num_blocks`` blocks, the first with ``stride``; returns the stage and
    its output channels (``planes * block.expansion``). ``kwargs`` go to every block."""
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
        layers.append(block(in_planes, planes, s, **kwargs))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes
