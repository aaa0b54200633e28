"""Atomic output files for the report, analysis and demo writers.

A result file is written under a temporary name beside its destination, flushed, and renamed
over it (atomic on POSIX). A writer that fails half-way, or never reaches the rename, leaves
the previous file byte for byte as it was and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | PathLike, *, tmp_dir: str | PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path; it replaces ``path`` only if the block succeeds.

    The temporary file lies beside ``path``, or in ``tmp_dir`` (on the same file system; a
    database keeps its own so a killed writer's leftovers are collected there). The parent
    folder must exist. The file gets the usual permissions (``0666 & ~umask``), not
    ``mkstemp``'s private 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=tmp_dir or path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        with open(tmp, "rb") as f:  # the data reach the disk before the name does
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes_atomic(path: str | PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
