"""Load a RobustBench checkpoint the way RobustBench does, but safely.

RobustBench's ``load_model`` (``robustbench/utils.py``) unpickles with ``torch.load``
defaults and downloads what is missing. filterlens reads the local file only, with
``weights_only=True`` (through :func:`filterlens.sources.checkpoint.read_torch_checkpoint`),
then applies the entry's rules from the snapshot, in RobustBench's order:

1. containers: ``last`` (Kireev2021Effectiveness, Andriushchenko2020Understanding), then
   ``state_dict`` when the dict has one (``state_dict?``); a file that is already a plain
   state dict is taken as it is;
2. prefixes: ``module.`` and ``model.`` removed (RobustBench removes them where the key
   contains them; filterlens where the key starts with them, the only place they occur), and
   ``model.`` added for ImageNet models behind the normalisation wrapper;
3. keys: a checkpoint may lack exactly the entry's ``missing_ok`` keys (input statistics that
   then keep the architecture's values, as RobustBench's non-strict load does) and carry
   exactly its ``unexpected_ok`` keys (ignored); anything else is a mismatch error that lists
   every key.

Ensembles are stored one member per file, ``<name>.pt_m{i}.pt``, loaded into member ``i``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ...errors import SourceError
from ...types import ConvLayer, ModelFilters
from .snapshot import RobustBenchEntry

#: Where RobustBench keeps weights: ``<dir>/<dataset>/<threat_model>/<name>.pt``.
DEFAULT_MODEL_DIR = "models"
MODEL_DIR_ENV = "FILTERLENS_ROBUSTBENCH_DIR"

_HTML_STARTS = (b"<", b"\xef\xbb\xbf<")


def model_root(model_dir: str | Path | None = None) -> Path:
    """``model_dir``, else ``$FILTERLENS_ROBUSTBENCH_DIR``, else ``./models`` (RobustBench's default)."""
    return Path(model_dir or os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR).expanduser()


def weight_paths(entry: RobustBenchEntry, model_dir: str | Path | None = None) -> list[Path]:
    """The checkpoint file(s) of ``entry``: ``<root>/<dataset>/<threat_model>/<file>``."""
    folder = model_root(model_dir) / entry.dataset / entry.threat_model
    return [folder / f for f in entry.files]


def is_web_page(path: Path) -> bool:
    """Whether the file is HTML (what Google Drive sends instead of a file it will not serve)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip()
    return head.startswith(_HTML_STARTS) or head[:15].lower().startswith(b"<!doctype html")


def web_page_error(path: Path, entry: RobustBenchEntry | None = None) -> SourceError:
    what = f"robustbench:{entry.name}: " if entry else ""
    return SourceError(
        f"{what}{path} is a saved web page, not weights (invalid load key '<'): the Google Drive download "
        f"failed (quota or a confirmation page). Delete the file and download it again"
        + (f" (filterlens robustbench download {entry.name} --dataset {entry.dataset})" if entry else ""))


def read_checkpoint(path: Path, entry: RobustBenchEntry | None = None) -> object:
    """The unpickled checkpoint (``weights_only=True``); a web page gets its own message."""
    from ..checkpoint import read_torch_checkpoint

    if is_web_page(path):
        raise web_page_error(path, entry)
    try:
        return read_torch_checkpoint(path)
    except SourceError as exc:
        if "invalid load key, '<'" in str(exc) or "invalid load key '<'" in str(exc):
            raise web_page_error(path, entry) from None
        raise


def apply_rules(checkpoint: object, entry: RobustBenchEntry, source: str) -> dict[str, torch.Tensor]:
    """The state dict RobustBench would load: containers, then prefix removal and addition."""
    obj = checkpoint
    for step in entry.container:
        if not isinstance(obj, Mapping):
            break
        if step == "state_dict?":
            if isinstance(obj.get("state_dict"), Mapping):
                obj = obj["state_dict"]
        elif isinstance(obj.get(step), Mapping):
            obj = obj[step]
        # else: a file re-saved as a plain state dict; the key check below judges it
    if not isinstance(obj, Mapping):
        raise SourceError(f"{source}: expected a state dict, got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise SourceError(f"{source}: no weights found in the checkpoint (top-level keys: {keys})")
    for prefix in entry.strip:
        state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    if entry.add_prefix:  # the wrapper's own keys (normalize.*) stay: a file saved from the wrapper loads too
        state = {(k if k in entry.missing_ok else entry.add_prefix + k): v for k, v in state.items()}
    return state


def fit_state(module: nn.Module, state: dict[str, torch.Tensor], entry: RobustBenchEntry) -> dict[str, torch.Tensor]:
    """``state`` with the tolerated extra keys dropped and the tolerated missing ones taken
    from ``module`` (its constructor's values, as RobustBench's non-strict load keeps them)."""
    own = module.state_dict()
    fitted = {k: v for k, v in state.items() if k not in entry.unexpected_ok}
    for k in entry.missing_ok:
        if k not in fitted and k in own:
            fitted[k] = own[k]
    return fitted


def load_entry_module(entry: RobustBenchEntry, model_dir: str | Path | None = None) -> nn.Module:
    """Build ``entry``'s architecture and load its local weights (every member of an ensemble)."""
    from ...archs import create_arch
    from ..checkpoint import load_into

    if entry.arch is None:
        raise SourceError(f"robustbench:{entry.name}: {entry.note or 'an architecture filterlens does not build'}; "
                          "filterlens cannot load it")
    paths = weight_paths(entry, model_dir)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SourceError(missing_weights_message(entry, missing, paths))
    module = create_arch(entry.arch, **entry.arch_kwargs)
    if entry.is_ensemble:
        members = dict(module.members)  # type: ignore[attr-defined]
        for member, path in zip(entry.members or (), paths):
            state = apply_rules(read_checkpoint(path, entry), entry, str(path))
            target = members[member]
            load_into(target, fit_state(target, state, entry), f"{entry.arch} member {member} ({path.name})")
    else:
        state = apply_rules(read_checkpoint(paths[0], entry), entry, str(paths[0]))
        load_into(module, fit_state(module, state, entry), entry.arch)
    return module.eval()


def missing_weights_message(entry: RobustBenchEntry, missing: list[Path], paths: list[Path]) -> str:
    urls = entry.download_urls()
    where = ", ".join(str(p) for p in missing)
    how = (f"run 'filterlens robustbench download {entry.name} --dataset {entry.dataset}' or open "
           + " / ".join(f"{u} (save as {p.name})" for u, p in zip(urls, paths) if p in missing)
           if urls else "RobustBench publishes no download for it")
    return (f"robustbench:{entry.name}: weights not found at {where}; {how} "
            f"(weights live in <model-dir>/{entry.dataset}/{entry.threat_model}/: --model-dir or {MODEL_DIR_ENV})")


def model_filters(entry: RobustBenchEntry, module: nn.Module, name: str, source: str) -> ModelFilters:
    """Conv layers with depth from the graph; an ensemble's members each from their own graph,
    their layers named ``<member>.<layer>``."""
    from ..torch_module import from_module

    if not entry.is_ensemble:
        return from_module(module, name=name, source=source, input_shape=entry.input_shape, arch=entry.arch)
    layers: list[ConvLayer] = []
    notes: list[str] = []
    sources = set()
    for member, sub in module.members:  # type: ignore[attr-defined]
        mf = from_module(sub, name=f"{name}.{member}", source=source, input_shape=entry.input_shape)
        for layer in mf.layers:
            layer.name = f"{member}.{layer.name}"
        layers += mf.layers
        notes += [f"{member}: {w}" for w in mf.warnings]
        sources.add(mf.depth_source)
    notes.append(f"ensemble of {len(entry.files)} members; each member's depth from its own graph")
    return ModelFilters(name=name, source=source, layers=layers, depth_source="+".join(sorted(sources)),
                        arch=entry.arch, warnings=notes)
