"""Fetch missing RobustBench weights from Google Drive with gdown (optional), verified.

Offline, or without gdown, nothing is written: :func:`download` reports for each file the URL
to open in a browser and the path to save it under. A download goes to a temporary file
beside its target and replaces it only once it is verified: not a web page, readable with
``weights_only=True``, and fitting the entry's architecture.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import SourceError
from .loading import apply_rules, fit_state, read_checkpoint, weight_paths
from .snapshot import RobustBenchEntry


@dataclass
class DownloadResult:
    """``status``: ``present`` (already there and valid), ``downloaded``, ``manual`` (download
    it yourself: ``message`` says how) or ``failed``."""

    name: str
    path: Path
    status: str
    message: str = ""


def verify_file(entry: RobustBenchEntry, path: Path, member: str | None = None) -> None:
    """Raise :class:`SourceError` unless ``path`` holds weights that fit ``entry``."""
    from ...archs import create_arch
    from ..checkpoint import load_into

    state = apply_rules(read_checkpoint(path, entry), entry, str(path))
    if entry.arch is None:
        return
    import torch

    import warnings

    with torch.device("meta"):  # keys and shapes only: no memory, and loading copies nothing
        module = create_arch(entry.arch, **entry.arch_kwargs)
    target = dict(module.members)[member] if member else module  # type: ignore[attr-defined]
    with warnings.catch_warnings():  # "copying into a meta parameter is a no-op": intended
        warnings.simplefilter("ignore", UserWarning)
        load_into(target, fit_state(target, state, entry), entry.arch)


def _gdown():
    try:
        import gdown  # noqa: F401  (optional: pip install 'filterlens[robustbench]')
    except ImportError:
        return None
    return gdown


def download(entry: RobustBenchEntry, model_dir: str | Path | None = None, force: bool = False) -> list[DownloadResult]:
    """Make every file of ``entry`` present and verified; one result per file."""
    if not entry.gdrive_ids or len(entry.gdrive_ids) != len(entry.files):
        return [DownloadResult(entry.name, p, "failed", "RobustBench publishes no file for it")
                for p in weight_paths(entry, model_dir)]
    gdown = _gdown()
    results = []
    members = entry.members or (None,) * len(entry.files)
    for path, gid, url, member in zip(weight_paths(entry, model_dir), entry.gdrive_ids, entry.download_urls(),
                                      members):
        manual = f"open {url} in a browser and save the file as {path}"
        if path.exists() and not force:
            try:
                verify_file(entry, path, member)
                results.append(DownloadResult(entry.name, path, "present"))
            except SourceError as exc:
                results.append(DownloadResult(entry.name, path, "failed",
                                              f"{exc}; --force downloads it again and replaces it"))
            continue
        if gdown is None:
            results.append(DownloadResult(entry.name, path, "manual",
                                          f"gdown is not installed (pip install gdown); {manual}"))
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        except OSError as exc:
            results.append(DownloadResult(entry.name, path, "failed", f"cannot write {path.parent} ({exc.strerror})"))
            continue
        import os

        os.close(fd)
        tmp_path = Path(tmp)
        try:
            try:
                got = gdown.download(id=gid, output=str(tmp_path), quiet=False)
            except Exception as exc:  # gdown raises many kinds offline or at a quota page
                got = None
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
            else:
                reason = "no file came back"
            if not got or not tmp_path.exists() or tmp_path.stat().st_size == 0:
                results.append(DownloadResult(entry.name, path, "manual", f"download failed ({reason}); {manual}"))
                continue
            try:
                verify_file(entry, tmp_path, member)
            except SourceError as exc:
                results.append(DownloadResult(entry.name, path, "manual", f"{exc}; {manual}"))
                continue
            os.replace(tmp_path, path)
            results.append(DownloadResult(entry.name, path, "downloaded"))
        finally:
            tmp_path.unlink(missing_ok=True)
    return results
