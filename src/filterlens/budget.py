"""Perturbation budgets as users write them: ``8/255``, ``0.03``, ``0.3``."""

from __future__ import annotations

import math
from fractions import Fraction


def parse_fraction(value: str | float | int) -> float:
    """A number, or a fraction such as ``8/255``, as a float.

    Raises ``ValueError`` on text that is neither, and on a non-finite result; range checks
    are the caller's (an attack needs ``[0, 1]``, a database record only ``>= 0``).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        try:
            number = float(Fraction(text)) if "/" in text else float(text)
        except ZeroDivisionError:
            raise ValueError(f"division by zero in {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number
