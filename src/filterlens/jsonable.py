"""Plain JSON values from the numpy / pandas / torch objects results are made of."""

from __future__ import annotations

import math
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Dicts, lists and scalars that ``json.dumps`` writes as strict JSON.

    numpy and torch arrays become lists, numpy scalars Python numbers; NaN, infinities,
    ``pd.NA`` and ``NaT`` become ``None``; anything else unknown becomes its ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, torch tensors
        value = obj.tolist()
        return to_jsonable(value) if isinstance(value, list) else _scalar(value)
    return _scalar(obj)


def _scalar(obj: Any) -> Any:
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    import pandas as pd

    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)
