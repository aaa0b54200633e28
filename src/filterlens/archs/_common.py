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


class PerImageStandardization(nn.Module):
    """Standardise each image by its own mean and std over all pixels and channels:
    ``(x - mean(x)) / max(std(x), 1 / sqrt(C*H*W))`` (the input of RobustBench's
    Ding2020MMA; unbiased std as ``torch.std``). No parameters or buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        std_min = torch.ones_like(std) / (x.shape[1] * x.shape[2] * x.shape[3]) ** 0.5
        return (x - mu) / torch.max(std, std_min)


class NormalizedInput(nn.Module):
    """Base of the nets whose input normalisation may live in the state dict.

    RobustBench's model classes differ only in where ``(x - mean) / std`` keeps its
    statistics: nowhere (``stats_keys=None``: a non-persistent ``normalize`` submodule, no
    keys), or as persistent top-level buffers such as ``mu``/``sigma`` (``stats_keys=("mu",
    "sigma")``, shape ``(1, C, 1, 1)``), which then are state-dict keys like the original's.
    ``per_image=True`` standardises each image by its own statistics instead.
    """

    normalize: Optional[nn.Module]
    _stats_keys: Optional[tuple[str, str]]

    def setup_input(
        self,
        mean: Stats,
        std: Stats,
        channels: int,
        stats_keys: Optional[Sequence[str]] = None,
        per_image: bool = False,
    ) -> None:
        self._stats_keys = None
        if per_image:
            if mean is not None or std is not None or stats_keys:
                raise ArchitectureError("per_image standardisation takes no mean, std or stats_keys")
            self.normalize = PerImageStandardization()
            return
        if not stats_keys:
            self.normalize = make_normalization(mean, std, channels)
            return
        keys = tuple(str(k) for k in stats_keys)
        if len(keys) != 2:
            raise ArchitectureError(f"stats_keys names the mean and std buffers: two names, got {keys!r}")
        norm = make_normalization(mean, std, channels)
        if norm is None:
            raise ArchitectureError("stats_keys needs mean and std")
        self.normalize = None
        self._stats_keys = keys  # type: ignore[assignment]
        self.register_buffer(keys[0], norm.mean.clone())
        self.register_buffer(keys[1], norm.std.clone())

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self._stats_keys is not None:
            return (x - getattr(self, self._stats_keys[0])) / getattr(self, self._stats_keys[1])
        if self.normalize is not None:
            return self.normalize(x)
        return x


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
