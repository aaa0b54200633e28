"""``filterlens first-layer``: do robust first-layer filters eliminate adversarial perturbations?"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FilterlensError
from .console import emit, err, out, rich_table

TABLE_COLUMNS = ["model", "group", "layer", "activation", "clean_acc", "adv_acc", "rel_change", "rel_change_nonsparse",
                 "pass_ratio", "low_freq_share", "centre_peaked_share", "single_tap_share", "peak_energy_share",
                 "sparse_share"]
STATS_COLUMNS = ["level", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal", "diff", "ci_low",
                 "ci_high", "p_value"]


def _training_of(card: dict | None) -> str | None:
    if not card:
        return None
    t = card.get("training")
    if isinstance(t, dict) and t.get("method"):
        return str(t["method"])
    if isinstance(t, str) and t:
        return t
    if "robust" in card:
        return "robust" if card["robust"] else "normal"
    return None


def resolve_model(spec: str, arch: Optional[str] = None):
    """``(name, module in eval mode, card or None)`` of one MODEL argument.

    ``zoo:NAME`` is a bundled zoo model; a ``.safetensors`` file with its ``.json`` card beside
    it a filterlens model file; any other checkpoint (``.pt .pth .th .ckpt .bin .safetensors``)
    needs ``arch`` and is loaded into the registered architecture as it is (so it must take
    inputs in [0, 1] and normalise inside, if at all, as the shared LeNet5s do).
    """
    if spec.startswith("zoo:"):
        from .. import zoo

        name = spec[4:]
        module, card = zoo.load(name)
        return name, module.eval(), card
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FilterlensError(f"{spec}: no such model file (use zoo:NAME for a bundled zoo model)")
    from ..robust.card import card_path, load_model

    if path.suffix == ".safetensors" and card_path(path).is_file():  # the card names the architecture
        module, card = load_model(path)
        return str(card.get("name") or path.stem), module.eval(), card
    lower = path.name.lower()
    if lower.endswith(".onnx") or lower.endswith(".onnx.gz"):
        raise FilterlensError(f"{spec}: ONNX models cannot be attacked here; pass a torch checkpoint with --arch")
    if not arch:
        raise FilterlensError(f"{spec}: a checkpoint needs --arch NAME (or give a filterlens model file with its "
                              ".json card beside it)")
    from ..archs import arch_info
    from ..sources.checkpoint import infer_num_classes, load_into, read_state_dict

    info, kwargs = arch_info(arch)
    state = read_state_dict(path)
    n = infer_num_classes(state)
    if n and "num_classes" not in kwargs:
        kwargs["num_classes"] = n
    module = info.builder(**kwargs)
    load_into(module, state, info.name)
    return path.stem, module.eval(), None


def _trainings(values: Optional[List[str]], names: List[str], specs: List[str]) -> dict[str, str]:
    """``--training`` values: ``MODEL=TRAINING`` (MODEL a name or the argument as given) or,
    without ``=``, one per model in order."""
    if not values:
        return {}
    keyed = [v for v in values if "=" in v]
    plain = [v for v in values if "=" not in v]
    out: dict[str, str] = {}
    if plain:
        if len(plain) != len(names):
            raise FilterlensError(f"--training without MODEL= needs one value per model ({len(names)}), "
                                  f"got {len(plain)}")
        out.update(zip(names, plain))
    for item in keyed:
        key, value = item.split("=", 1)
        key = key.strip()
        if key in names:
            out[key] = value.strip()
        elif key in specs:
            out[names[specs.index(key)]] = value.strip()
        else:
            raise FilterlensError(f"--training {item!r}: no model {key!r} (models: {', '.join(names)})")
    return out


def first_layer(
    models: List[str] = typer.Argument(..., help="Models: filterlens model files (.safetensors with the .json card), "
                                       "zoo:NAME, or checkpoints with --arch.", show_default=False),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cifar10 | mnist (default: the cards')."),
    eps: Optional[str] = typer.Option(None, "--eps", help="L-inf budget, e.g. 8/255 or 0.3 (default: 8/255 for "
                                      "cifar10, 0.3 for mnist)."),
    n: int = typer.Option(200, "--n", min=1, help="Test images (a fixed class-balanced subset)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture of checkpoint MODELs (e.g. lenet5)."),
    transfer_from: Optional[str] = typer.Option(None, "--transfer-from", help="Craft the perturbations against this "
                                                "model (same forms as MODEL) and feed them to every model."),
    training: Optional[List[str]] = typer.Option(None, "--training", "-t", help="Override the group: MODEL=robust|"
                                                 "normal (or a training method), or one value per model in order."),
    steps: int = typer.Option(10, "--steps", min=0, help="PGD steps."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="PGD random restarts."),
    n_banks: int = typer.Option(8, "--banks", min=1, help="Random filter banks for the pass ratio."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the image subset, PGD starts and random banks."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the tables (CSV), JSON, figures "
                                           "(PNG+PDF) and a standalone HTML page."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json (stdout)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FILTERLENS_DATA"),
    threads: int = typer.Option(2, "--threads", min=1, help="Torch threads."),
    channels: int = typer.Option(8, "--channels", min=1, help="Channels per model in the activation figure."),
) -> None:
    """Measure how much of an adversarial perturbation each model's first conv layer lets through.

    Relative activation change, pass ratio vs random filters, kernel frequency/shape; robust vs normal statistics.
    """
    from ..analysis.first_layer import first_layer_study, training_group
    from ..data import load_dataset
    from ..robust.attacks import format_eps, parse_eps
    from ..robust.pipeline import DEFAULT_EPS
    from ..robust.train import torch_settings

    if fmt not in ("table", "csv", "json"):
        raise FilterlensError(f"unknown format {fmt!r}; choose table, csv or json")
    loaded = [resolve_model(spec, arch) for spec in models]
    names: list[str] = []
    for name, _, _ in loaded:  # unique names
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    cards = [c for _, _, c in loaded]
    ds_cards = {str(c["dataset"]).lower() for c in cards if c and c.get("dataset")}
    if dataset is None:
        if len(ds_cards) != 1:
            raise FilterlensError("pass --dataset (the models' cards name " +
                                  (", ".join(sorted(ds_cards)) if ds_cards else "no data set") + ")")
        dataset = ds_cards.pop()
    dataset = dataset.lower().replace("-", "").replace("_", "")
    for (name, _, card) in loaded:
        if card and card.get("dataset") and str(card["dataset"]).lower() != dataset:
            err.print(f"warning: {name} was trained on {card['dataset']}, measured on {dataset}", markup=False)
    budget = parse_eps(eps) if eps is not None else DEFAULT_EPS.get(dataset, 8 / 255)
    overrides = _trainings(training, names, list(models))
    entries = []
    for name, (_, module, card) in zip(names, loaded):
        t = overrides.get(name, _training_of(card))
        if training_group(t) == "unknown":
            err.print(f"warning: {name}: training unknown (no card); pass --training {name}=robust|normal to put it "
                      "in a group", markup=False)
        extra = {"arch": card.get("arch")} if card else {"arch": arch}
        entries.append((name, module, t, extra))
    source = None
    if transfer_from:
        sname, smodule, _ = resolve_model(transfer_from, arch)
        source = (sname, smodule)
    test = load_dataset(dataset, "test", data_dir=data_dir).subset(n, seed=seed)
    x, y = test.tensors()
    err.print(f"first layer: {len(entries)} model(s), {len(x)} {dataset} test images, PGD-{steps} eps "
              f"{format_eps(budget)}" + (f" transferred from {source[0]}" if source else ""), markup=False)
    with torch_settings(threads, False):
        try:
            result = first_layer_study(entries, x, y, budget, steps=steps, restarts=restarts, transfer_from=source,
                                       n_banks=n_banks, seed=seed, dataset=dataset)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FilterlensError(f"a model does not run on {dataset} images {tuple(x.shape[1:])}: {first}") from None
    if out_dir is not None:
        _write_outputs(result, out_dir, channels)
    if fmt == "json":
        print(result.to_json())
    elif fmt == "csv":
        emit(result.per_model, "csv", None)
    else:
        out.print(rich_table(result.per_model, TABLE_COLUMNS, title="first layer, per model"))
        stats = result.stats[result.stats["n_robust"].gt(0) & result.stats["n_normal"].gt(0)]
        if len(stats):
            from ..analysis.first_layer import first_layer_claims

            out.print(rich_table(stats, STATS_COLUMNS, title="robust vs normal"))
            out.print(rich_table(first_layer_claims(result.stats), ["claim", "level", "verdict", "diff", "p_value",
                                                                    "detail"], title="the paper's first-layer claim"))
        for note in result.notes:
            err.print(f"note: {note}", markup=False)
    if out_dir is not None:
        err.print(f"wrote {out_dir}/ (per_model.csv, per_filter.csv, per_kernel.csv, stats.csv, first_layer.json, "
                  "figures, first_layer.html)", markup=False)


def _write_outputs(result, out_dir: Path, channels: int) -> None:
    from ..report.figures import save_figure
    from ..report.first_layer import build_first_layer_figures, write_first_layer_html

    out_dir.mkdir(parents=True, exist_ok=True)
    result.save(out_dir)
    figs = build_first_layer_figures(result, channels)
    for fid, (fig, _) in figs.items():
        save_figure(fig, out_dir / fid)
    write_first_layer_html(result, out_dir / "first_layer.html", figs)


def register(app: typer.Typer) -> None:
    """Add ``first-layer`` to ``app``."""
    app.command("first-layer")(first_layer)
