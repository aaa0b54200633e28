"""The first-layer study from model files: load, pick the images, attack, measure, compare.

:func:`run_study` is what ``filterlens first-layer`` runs, callable from a notebook with the
same arguments: model specs (files or ``zoo:NAME``), a data set and a budget in, a
:class:`~filterlens.firstlayer.result.FirstLayerResult` out.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch.nn as nn

from ..errors import FilterlensError
from ..training import card_training
from .result import FirstLayerResult
from .settings import FirstLayerSettings
from .stats import UNKNOWN, training_group
from .study import first_layer_study

#: Suffixes of ONNX files, which hold no torch module to attack.
_ONNX_SUFFIXES = (".onnx", ".onnx.gz")


def resolve_model(spec: str, arch: str | None = None) -> tuple[str, nn.Module, dict | None]:
    """``(name, module in eval mode, card or None)`` of one model spec.

    Parameters
    ----------
    spec : str
        ``zoo:NAME`` (a bundled zoo model), a filterlens model file (``.safetensors`` with its
        ``.json`` card beside it, which names the architecture), or any other checkpoint
        (``.pt .pth .th .ckpt .bin .safetensors``), which needs ``arch``.
    arch : str, optional
        The registered architecture of a plain checkpoint. The weights are loaded into it as
        they are, so the model must take inputs in [0, 1] and normalise inside, if at all (as
        the shared LeNet5s do).
    """
    if spec.startswith("zoo:"):
        from .. import zoo

        name = spec[4:]
        module, card = zoo.load(name)
        return name, module.eval(), card
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FilterlensError(f"{spec}: no such model file (use zoo:NAME for a bundled zoo model)")
    from ..robust.card import card_path, load_module_and_card

    if path.suffix == ".safetensors" and card_path(path).is_file():  # the card names the architecture
        module, card = load_module_and_card(path)
        return str(card.get("name") or path.stem), module.eval(), card
    if path.name.lower().endswith(_ONNX_SUFFIXES):
        raise FilterlensError(f"{spec}: ONNX models cannot be attacked here; pass a torch checkpoint with --arch")
    if not arch:
        raise FilterlensError(f"{spec}: a checkpoint needs --arch NAME (or give a filterlens model file with its "
                              ".json card beside it)")
    from ..sources import arch_module
    from ..sources.checkpoint import read_state_dict

    module, _ = arch_module(read_state_dict(path), arch)
    return path.stem, module.eval(), None


def run_study(
    models: Sequence[str],
    *,
    dataset: str | None = None,
    eps: float | str | None = None,
    n_images: int = 200,
    arch: str | None = None,
    trainings: Mapping[str, str] | Sequence[str] | None = None,
    transfer_from: str | None = None,
    data_dir: str | Path | None = None,
    settings: FirstLayerSettings | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> FirstLayerResult:
    """Load ``models``, attack them on a class-balanced test subset and measure their first layers.

    Parameters
    ----------
    models : sequence of str
        Model specs, as for :func:`resolve_model`; repeated names get ``-2``, ``-3`` ...
    dataset : str, optional
        ``cifar10`` or ``mnist``; default: the one data set the models' cards name.
    eps : float or str, optional
        L-inf budget, a number or a fraction such as ``"8/255"``; default 8/255 for cifar10,
        0.3 for mnist.
    n_images : int
        Test images, a fixed class-balanced subset drawn with ``settings.seed``.
    arch : str, optional
        Architecture of the plain checkpoints among ``models`` (and ``transfer_from``).
    trainings : mapping or sequence of str, optional
        The training of each model, overriding its card: ``{name or spec: training}``, one
        value per model in order, or ``["NAME=training", ...]`` strings (both forms may be
        mixed as the command line's ``--training`` allows). Any word
        :func:`filterlens.training.training_label` accepts.
    transfer_from : str, optional
        A model spec; its PGD perturbations are fed to every model.
    data_dir : str or Path, optional
        Where the data sets are (default: ``FILTERLENS_DATA`` or the cache).
    settings : FirstLayerSettings, optional
        Attack, measure and statistics settings.
    threads : int, optional
        Torch threads while the study runs.
    echo : callable, optional
        Receives one line per step and warning (``"warning: ..."``); without it warnings go
        to :func:`warnings.warn`.

    Returns
    -------
    FirstLayerResult
    """
    from ..data import load_dataset
    from ..robust.attacks import format_eps, parse_eps
    from ..robust.pipeline import DEFAULT_EPS
    from ..robust.train import torch_settings

    s = settings or FirstLayerSettings()
    say = echo or _warn_only
    loaded = [resolve_model(spec, arch) for spec in models]
    names = _unique([name for name, _, _ in loaded])
    cards = [card for _, _, card in loaded]
    dataset = _dataset(dataset, cards)
    for name, card in zip(names, cards):
        if card and card.get("dataset") and str(card["dataset"]).lower() != dataset:
            say(f"warning: {name} was trained on {card['dataset']}, measured on {dataset}")
    budget = parse_eps(eps) if isinstance(eps, str) else (float(eps) if eps is not None else
                                                          DEFAULT_EPS.get(dataset, 8 / 255))
    overrides = _training_overrides(trainings, names, list(models))
    entries = []
    for name, (_, module, card) in zip(names, loaded):
        training = overrides.get(name, card_training(card))
        if training_group(training) == UNKNOWN:
            say(f"warning: {name}: training unknown (no card); pass --training {name}=robust|normal to put it "
                "in a group")
        entries.append((name, module, training, {"arch": card.get("arch") if card else arch}))
    source = None
    if transfer_from:
        sname, smodule, _ = resolve_model(transfer_from, arch)
        source = (sname, smodule)
    x, y = load_dataset(dataset, "test", data_dir=data_dir).subset(n_images, seed=s.seed).tensors()
    say(f"first layer: {len(entries)} model(s), {len(x)} {dataset} test images, PGD-{s.steps} eps "
        f"{format_eps(budget)}" + (f" transferred from {source[0]}" if source else ""))
    with torch_settings(threads, False):
        try:
            return first_layer_study(entries, x, y, budget, s, transfer_from=source, dataset=dataset)
        except RuntimeError as e:  # a shape or dtype mismatch inside a model: the user's model/data pairing
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FilterlensError(f"a model does not run on {dataset} images {tuple(x.shape[1:])}: {first}") from None


def _warn_only(line: str) -> None:
    if line.startswith("warning: "):
        warnings.warn(line[len("warning: "):], stacklevel=3)


def _unique(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        base, k = name, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def _dataset(dataset: str | None, cards: Sequence[dict | None]) -> str:
    """The data set given, else the one the cards agree on; normalised (``CIFAR-10`` -> ``cifar10``)."""
    if dataset is None:
        named = {str(c["dataset"]).lower() for c in cards if c and c.get("dataset")}
        if len(named) != 1:
            raise FilterlensError("pass --dataset (the models' cards name " +
                                  (", ".join(sorted(named)) if named else "no data set") + ")")
        dataset = named.pop()
    return dataset.lower().replace("-", "").replace("_", "")


def _training_overrides(values: Mapping[str, str] | Sequence[str] | None, names: list[str],
                        specs: list[str]) -> dict[str, str]:
    """Trainings by model name from a mapping or ``--training`` values: ``MODEL=TRAINING`` (MODEL a
    name or the spec as given) or, without ``=``, one per model in order."""
    if not values:
        return {}
    if isinstance(values, Mapping):
        keyed = [(str(k), str(v)) for k, v in values.items()]
        plain: list[str] = []
    else:
        keyed = [tuple(v.split("=", 1)) for v in values if "=" in v]
        plain = [v for v in values if "=" not in v]
    out: dict[str, str] = {}
    if plain:
        if len(plain) != len(names):
            raise FilterlensError(f"--training without MODEL= needs one value per model ({len(names)}), "
                                  f"got {len(plain)}")
        out.update(zip(names, plain))
    for key, value in keyed:
        key = key.strip()
        if key in names:
            out[key] = value.strip()
        elif key in specs:
            out[names[specs.index(key)]] = value.strip()
        else:
            raise FilterlensError(f"--training {key + '=' + value!r}: no model {key!r} (models: {', '.join(names)})")
    return out


__all__ = ["resolve_model", "run_study"]
