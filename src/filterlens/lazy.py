"""Lazy package exports (PEP 562): a name's module is imported on first use.

A package lists ``{public name: module}`` and hands its namespace to :func:`lazy_exports`, so
importing the package stays cheap (no torch, pandas or numba until a name that needs them is
used) while ``package.name`` and ``from package import name`` work as usual.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Parameters
    ----------
    package : str
        The package's ``__name__`` (relative module names in ``table`` are resolved against it).
    table : mapping of str to str
        Public name -> module that defines it, e.g. ``{"measure": ".measure"}``.
    namespace : dict
        The package's ``globals()``: a name, once imported, is stored there, so later look-ups
        no longer go through ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
