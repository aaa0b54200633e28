"""Crash-safe file operations: fsync, atomic replace, the writers' lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_path
from .errors import DatabaseError


def inside(root: Path, rel: Any, subdir: str, resolve: bool = True) -> Path:
    """``root / rel`` after checking that ``rel``, read from a database, is a plain file name
    under ``subdir`` that resolves inside ``root`` (no ``..``, no absolute path, no symlink out).
    Raises :class:`DatabaseError` otherwise: the database is damaged or hostile."""
    if not isinstance(rel, str) or not rel.startswith(f"{subdir}/"):
        raise DatabaseError(f"{root}: corrupt filter database: {rel!r} is not a path under {subdir}/")
    name = rel[len(subdir) + 1:]
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise DatabaseError(f"{root}: corrupt filter database: {rel!r} is not a path under {subdir}/")
    path = root / subdir / name
    if not resolve:  # the name alone is checked (cheap); callers resolve once per snapshot
        return path
    base = (root / subdir).resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        resolved = None
    if resolved is None or resolved.parent != base:
        raise DatabaseError(f"{root}: corrupt filter database: {rel!r} points outside the database")
    return path


def remove_dead_staging(path: Path) -> None:
    """Remove the staging folders ``.NAME.creating-PID-XXXXXXXX`` that a killed ``FilterDB.create``
    of ``path`` left behind (process PID is gone); only folders of exactly that name are touched,
    and one whose PID runs again (reused) is kept."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.creating-(\d+)-[0-9a-f]{{8}}")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # still running (or not ours to signal): leave it
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (PermissionError, OverflowError, OSError):
            continue


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(pairs: list[tuple[Path, Path]]) -> None:
    """For each ``(tmp, dest)``: fsync ``tmp`` and rename it over ``dest`` (atomic on POSIX);
    then fsync the target directories once."""
    for tmp, _ in pairs:
        fsync_file(tmp)
    for tmp, dest in pairs:
        os.replace(tmp, dest)
    for d in dict.fromkeys(dest.parent for _, dest in pairs):
        fsync_dir(d)


def write_json_atomic(path: Path, obj: Any, tmp_dir: Path) -> None:
    """Write ``obj`` as JSON to ``path``: readers see the old or the new file, never a mix. The
    temporary file lies in ``tmp_dir`` (collected if the writer dies); the folder is fsynced."""
    with atomic_path(path, tmp_dir=tmp_dir) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
    fsync_dir(path.parent)


def read_json_retry(path: Path, attempts: int = 3) -> Any:
    """Read a JSON file that is only ever replaced atomically."""
    for i in range(attempts):
        try:
            with open(path) as f:
                return json.load(f)
        except json.JSONDecodeError:
            if i == attempts - 1:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


class WriterLock:
    """An exclusive ``fcntl.flock`` on ``path``, held by at most one writer at a time.

    The lock dies with its process, so a killed writer never leaves the database locked.
    ``timeout`` None waits forever; ``on_wait`` is called once if the lock is busy.
    """

    def __init__(self, path: Path, timeout: float | None = None,
                 on_wait: Callable[[], None] | None = None):
        self.path = path
        self.timeout = timeout
        self.on_wait = on_wait
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not waited and self.on_wait is not None:
                    self.on_wait()
                waited = True
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise DatabaseError(
                        f"{self.path.parent}: another process is writing to this database "
                        f"(waited {self.timeout:g} s for its lock)"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
