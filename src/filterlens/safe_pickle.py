"""Unpickling untrusted files without running their code.

Two formats filterlens reads are pickle by definition: the object columns (and node attributes)
of a pandas/PyTables HDF5 table, and the batches of the original CIFAR-10 python archive. A
pickle can name any importable callable and have it called; :func:`loads` refuses every global
except the few needed to rebuild plain data:

- ``str``, ``bytes``, numbers, ``bool``, ``None``, lists, tuples, dicts and sets of those (pickle
  builds these with opcodes, no globals);
- numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct`` / ``scalar``,
  ``numpy.ndarray``, ``numpy.dtype``) — never object arrays of other classes, since their items
  go through this same unpickler;
- ``complex``, ``set``, ``frozenset``, ``bytearray``, ``collections.OrderedDict`` and
  ``_codecs.encode`` (how protocol-2 pickles spell ``bytes``).

Anything else raises :class:`UnsafePickleError` naming the refused global.
"""

from __future__ import annotations

import io
import pickle
import threading
import types
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import FilterlensError

_NUMPY = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in _NUMPY}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
       ("numpy._core.numeric", "_frombuffer")}
    | {("builtins", n) for n in ("complex", "set", "frozenset", "bytearray")}
    | {("__builtin__", n) for n in ("complex", "set", "frozenset", "bytearray")}
    | {("collections", "OrderedDict"), ("_codecs", "encode")}
)


#: Also allowed in PyTables' own attributes: its ``FILTERS`` attribute is a pickled
#: ``tables.filters.Filters`` (a plain record of compression settings), built by
#: ``copy_reg._reconstructor(Filters, object, None)``; ``_reconstructor`` can only build classes
#: this allow-list admits.
PYTABLES_ALLOWED: frozenset[tuple[str, str]] = ALLOWED | {
    ("tables.filters", "Filters"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
}


class UnsafePickleError(FilterlensError):
    """A pickle asked for something other than plain data (and was not unpickled)."""


class _Unpickler(pickle.Unpickler):
    allowed: frozenset[tuple[str, str]] = ALLOWED

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise UnsafePickleError(f"the pickled data asks for {module}.{name}, which could run code; "
                                "only plain data (text, numbers, numpy arrays, lists, dicts) is read")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the pickled data uses persistent ids, which filterlens does not read")


def loads(data: bytes | bytearray | memoryview, *, encoding: str = "ASCII", errors: str = "strict",
          allowed: frozenset[tuple[str, str]] = ALLOWED) -> Any:
    """:func:`pickle.loads` restricted to plain data (see the module docstring); ``allowed``
    the ``(module, name)`` globals admitted.

    Raises :class:`UnsafePickleError` for a refused global, :class:`pickle.UnpicklingError`
    (or ``EOFError``, ``ValueError``...) for damaged data, exactly as :func:`pickle.loads` would.
    """
    unpickler = _Unpickler(io.BytesIO(bytes(data)), encoding=encoding, errors=errors)
    unpickler.allowed = allowed
    return unpickler.load()


# PyTables unpickles node attributes and object atoms through ``pickle.loads`` of the module
# ``pickle`` as bound in tables.attributeset / tables.atom (pandas also re-points the real
# ``pickle.loads`` while reading). Rebinding those two names to a shim confines every unpickle
# PyTables does to :func:`loads`, whatever pandas patches meanwhile.
_PYTABLES_MODULES = ("tables.attributeset", "tables.atom")
_patch_lock = threading.RLock()


def _shim(refused: list[UnsafePickleError]) -> types.SimpleNamespace:
    def guarded_loads(data, *args, **kwargs):
        try:
            return loads(data, *args, allowed=PYTABLES_ALLOWED, **kwargs)
        except UnsafePickleError as exc:  # PyTables swallows unpickling errors of attributes: remember it
            refused.append(exc)
            raise

    return types.SimpleNamespace(loads=guarded_loads, dumps=pickle.dumps, HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL,
                                 UnpicklingError=pickle.UnpicklingError, PicklingError=pickle.PicklingError)


@contextmanager
def pytables_guard() -> Iterator[None]:
    """While active, everything PyTables (and so ``pandas.HDFStore``) unpickles goes through
    :func:`loads`; a refused pickle raises :class:`UnsafePickleError` when the block ends, even
    where PyTables caught it. Re-entrant; serialised across threads."""
    import importlib

    with _patch_lock:
        mods = [importlib.import_module(m) for m in _PYTABLES_MODULES]
        saved = [m.__dict__.get("pickle") for m in mods]
        if any(s is None for s in saved):  # a PyTables that no longer reads pickles this way
            raise RuntimeError("PyTables layout changed: cannot confine its unpickling; refusing to read")
        refused: list[UnsafePickleError] = []
        shim = _shim(refused)
        try:
            for m in mods:
                m.pickle = shim
            try:
                yield
            except Exception:
                if refused:
                    raise refused[0] from None
                raise
            if refused:
                raise refused[0]
        finally:
            for m, s in zip(mods, saved):
                m.pickle = s
