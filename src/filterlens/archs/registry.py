"""A registry of architectures by name, so that a checkpoint finds its module by a string."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import ArchitectureError


@dataclass(frozen=True)
class ArchInfo:
    """What the registry knows of one architecture."""

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]  # (channels, height, width) of one input image
    num_classes: int = 10
    description: str = ""
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ArchInfo] = {}
# Parametric families: a regex over the name and a function from the match to (info, kwargs).
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], tuple[ArchInfo, dict]]]] = []


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_arch(
    name: str,
    *,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    description: str = "",
    **defaults,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(**kwargs) -> nn.Module`` under ``name``.

    Names are case-insensitive and ``_`` equals ``-``.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = _key(name)
        if key in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[key] = ArchInfo(name, builder, input_shape, num_classes, description, defaults)
        return builder

    return wrap


def register_pattern(pattern: str, resolve: Callable[[re.Match], tuple[ArchInfo, dict]]) -> None:
    """Register a parametric family, e.g. ``wrn-(\\d+)-(\\d+)`` for WideResNets of any size."""
    _PATTERNS.append((re.compile(pattern, re.IGNORECASE), resolve))


def arch_info(name: str) -> tuple[ArchInfo, dict]:
    """Look up ``name``; returns the entry and the keyword arguments the name implies."""
    key = _key(name)
    if key in _REGISTRY:
        info = _REGISTRY[key]
        return info, dict(info.defaults)
    for pattern, resolve in _PATTERNS:
        m = pattern.fullmatch(key)
        if m:
            return resolve(m)
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ArchitectureError(
        f"unknown architecture {name!r}.{hint} Run 'filterlens archs' to list the known ones."
    )


def create_arch(name: str, **kwargs) -> nn.Module:
    """Build the module registered as ``name`` (extra ``kwargs`` override its defaults)."""
    info, implied = arch_info(name)
    return info.builder(**{**implied, **kwargs})


def list_archs() -> list[ArchInfo]:
    """All registered architectures, sorted by name (parametric families show their examples)."""
    return sorted(_REGISTRY.values(), key=lambda i: i.name)
