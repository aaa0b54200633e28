"""Where raw data is looked up and where decoded arrays are cached."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root when running from a checkout (``src/filterlens/data`` -> repo).
_REPO_ROOT = Path(__file__).resolve().parents[3]


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache for decoded arrays: ``cache``, else ``$FILTERLENS_CACHE``, else ``~/.cache/filterlens``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("FILTERLENS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/filterlens").expanduser()


def data_dirs(data_dir: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> list[Path]:
    """Where raw data is looked for, in order.

    An explicit ``data_dir`` (the ``--data-dir`` flag) is the only place looked at when given.
    Otherwise: ``$FILTERLENS_DATA``; ``../shared/data`` relative to the current directory and to
    the repository; and the cache directory (where downloads go).
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    out: list[Path] = []
    env = os.environ.get("FILTERLENS_DATA")
    if env:
        out += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    else:
        out += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]
    out.append(cache_dir(cache))
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve() if p.exists() else p
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
