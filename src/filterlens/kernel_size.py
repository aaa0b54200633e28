"""Kernel sizes, spelled one way: ``3`` (square), ``(1, 3)`` (kh, kw) or None (any size).

Every part of filterlens that selects layers by kernel size (measuring, the database, the
comparisons, the command line) reads and normalises it here.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import FilterlensError

#: A kernel size as the API takes it: ``3``, ``(kh, kw)`` or None for any.
KernelSize = int | tuple[int, int] | None


def kernel_pair(kernel_size: KernelSize) -> tuple[int, int] | None:
    """``3`` -> ``(3, 3)``, ``(1, 3)`` -> ``(1, 3)``, None -> None."""
    if kernel_size is None:
        return None
    if isinstance(kernel_size, (int, np.integer)):
        return int(kernel_size), int(kernel_size)
    kh, kw = kernel_size
    return int(kh), int(kw)


def kernel_label(kernel_size: KernelSize) -> str:
    """``3`` -> ``"3x3"``, ``(1, 3)`` -> ``"1x3"``, ``None`` -> ``"any"``."""
    pair = kernel_pair(kernel_size)
    return "any" if pair is None else f"{pair[0]}x{pair[1]}"


def parse_kernel_size(value: Any) -> tuple[int, int] | None:
    """Read a stored or written kernel size leniently: ``"3x3"``, ``"(3, 3)"``, ``(3, 3)``,
    ``[3, 3]`` or ``3`` -> ``(3, 3)``; anything else (None, no or too many numbers) -> None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, str):
        digits = [int(t) for t in "".join(c if c.isdigit() else " " for c in value).split()]
        if len(digits) == 1:
            return digits[0], digits[0]
        return (digits[0], digits[1]) if len(digits) == 2 else None
    try:
        seq = [int(v) for v in value]
    except (TypeError, ValueError):
        return None
    return (seq[0], seq[1]) if len(seq) == 2 else None


def parse_kernel_option(text: str, option: str = "--kernel-size") -> KernelSize:
    """A kernel size as a user types it: ``3`` -> 3, ``1x3`` -> (1, 3), ``3x3`` -> 3, ``all``
    -> None; anything else is a :class:`FilterlensError` naming ``option``."""
    text = text.strip().lower()
    if text == "all":
        return None
    if not re.fullmatch(r"\d+(?:x\d+)?", text):
        raise FilterlensError(f"{option} must be like 3, 1x3 or all, not {text!r}")
    kh, kw = parse_kernel_size(text)
    return kh if kh == kw else (kh, kw)
