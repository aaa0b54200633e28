"""``filterlens train``, ``filterlens evaluate`` and ``filterlens zoo ...``: adversarial training,
robustness evaluation, and the bundled model zoo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FilterlensError
from .console import dumps, err, out

TRAININGS = "normal | pgd | fgsm-rs | trades"

#: Optimiser settings by name. ``paper``: how Gavrikov & Keuper trained the normal counterparts
#: (docs/definitions.md): SGD, Nesterov momentum 0.9, lr 0.01, weight decay 0.01, batch 256, x0.1 every 30 epochs.
PRESETS = {
    "fast": dict(batch_size=128, lr=0.1, weight_decay=5e-4, schedule="onecycle", step_every=30),
    "paper": dict(batch_size=256, lr=0.01, weight_decay=0.01, schedule="step", step_every=30),
}


def _preset(name: str) -> dict:
    if name == "zoo":  # the bundled zoo's CIFAR recipe, defined once in zoo/recipe.py
        from ..zoo.recipe import CIFAR_OPTIONS

        return dict(CIFAR_OPTIONS)
    if name not in PRESETS:
        raise FilterlensError(f"unknown preset {name!r}; use fast, zoo or paper")
    return dict(PRESETS[name])


def _eps(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    from ..robust.attacks import parse_eps

    return parse_eps(value)


def _arch_kwargs(items: Optional[List[str]]) -> dict:
    kw: dict = {}
    for item in items or []:
        if "=" not in item:
            raise FilterlensError(f"--arch-kw takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            kw[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            kw[k.strip()] = v
    return kw


DEVICE_HELP = ("cpu | cuda: where to train and evaluate. The random draws are the same on both, and a "
               "checkpointed state resumes on either; bit-for-bit repeats hold on the CPU.")


def _log(msg: str) -> None:
    err.print(msg, highlight=False, markup=False)


def train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="cifar10 | mnist.", show_default=False),
    arch: str = typer.Option(..., "--arch", "-a", help="Architecture name (see 'filterlens archs').", show_default=False),
    out_file: Path = typer.Option(..., "--out", "-o", help="Weights file to write (.safetensors; the card goes "
                                  "beside it as .json).", show_default=False),
    training: str = typer.Option("normal", "--training", "-t", help=TRAININGS),
    eps: Optional[str] = typer.Option(None, "--eps", help="L-inf budget, e.g. 8/255 or 0.03 (default: 8/255 "
                                      "for cifar10, 0.3 for mnist); also the evaluation budget."),
    epochs: int = typer.Option(10, "--epochs", "-e", min=1),
    seed: int = typer.Option(0, "--seed", "-s"),
    n_train: Optional[int] = typer.Option(None, "--n-train", min=1, help="Train on a class-balanced random "
                                          "subset of this size (fixed by the seed)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FILTERLENS_DATA",
                                            help="Where the raw data is (default: ../shared/data, the cache)."),
    preset: str = typer.Option("fast", "--preset", help="fast: batch 128, one-cycle lr 0.1, weight decay 5e-4 "
                               "(zoo v2's); zoo: the bundled zoo's (the same, but lr x0.1 after epochs 7 and 21; "
                               "use --epochs 28); paper: the paper's normal counterparts (batch 256, lr 0.01, weight "
                               "decay 0.01, x0.1 every 30 epochs; use --epochs 125). Options below override it."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    lr: Optional[float] = typer.Option(None, "--lr", help="(Peak) learning rate; SGD with Nesterov momentum 0.9."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="onecycle | cosine | step | constant."),
    step_every: Optional[int] = typer.Option(None, "--step-every", help="step schedule: epochs between x0.1 decays."),
    milestones: Optional[str] = typer.Option(None, "--milestones", help="step schedule: decay x0.1 after these "
                                             "epochs instead, e.g. 7,21 (the zoo's)."),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="Inner attack steps (pgd: 7, trades: 5)."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Inner attack step size (fgsm-rs: 1.25 eps)."),
    trades_beta: float = typer.Option(6.0, "--trades-beta"),
    arch_kw: Optional[List[str]] = typer.Option(None, "--arch-kw", help="Extra architecture argument KEY=VALUE "
                                                "(repeatable), e.g. width=16."),
    threads: int = typer.Option(2, "--threads", min=1, help="Torch threads."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    n_attack: int = typer.Option(1000, "--n-attack", help="Test images for the final PGD-20 evaluation."),
    show_progress: bool = typer.Option(True, "--progress/--no-progress"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last finished "
                                "epoch (the state is checkpointed beside --out as NAME.train-state.pt)."),
) -> None:
    """Train a model (normally or adversarially), evaluate it and write weights + model card.

    The training state is checkpointed after every epoch; after an interruption, the same command
    with --resume continues where it stopped and ends with the weights of an uninterrupted run."""
    from ..robust.pipeline import train_and_save

    if out_file.suffix != ".safetensors":
        raise FilterlensError(f"--out must end in .safetensors, got {out_file.name}")
    if out_file.parent and not out_file.parent.exists():
        raise FilterlensError(f"{out_file}: the folder {out_file.parent} does not exist")
    opts = _preset(preset)
    for key, value in (("batch_size", batch_size), ("lr", lr), ("weight_decay", weight_decay),
                       ("schedule", schedule), ("step_every", step_every)):
        if value is not None:
            opts[key] = value
    opts.update(trades_beta=trades_beta, threads=threads)
    if attack_steps is not None:
        opts["attack_steps"] = attack_steps
    if milestones is not None:
        try:
            opts["milestones"] = [int(m) for m in milestones.split(",")]
        except ValueError:
            raise FilterlensError(f"--milestones {milestones!r}: use epoch numbers separated by commas, "
                                  f"e.g. 7,21") from None
    if alpha is not None:
        opts["alpha"] = _eps(alpha)
    card = train_and_save(
        dataset=dataset, arch=arch, out=out_file, training=training, eps=_eps(eps), epochs=epochs, seed=seed,
        n_train=n_train, data_dir=data_dir, arch_kwargs=_arch_kwargs(arch_kw), n_attack=n_attack,
        progress=show_progress, log=_log, resume=resume, device=device, **opts,
    )
    r = card["results"]
    out.print(f"{out_file}: clean accuracy {r['clean']['accuracy']:.4f} (n={r['clean']['n']}), "
              f"PGD-{r['pgd']['steps']} {r['pgd']['eps_str']} {r['pgd']['accuracy']:.4f} (n={r['pgd']['n']}), "
              f"trained in {card['training_time_s']:.0f} s", highlight=False)


def evaluate(
    model: Path = typer.Argument(..., help="A .safetensors file with its .json card beside it.", show_default=False),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Data set (default: the card's)."),
    attack: str = typer.Option("pgd", "--attack", help="pgd | autoattack."),
    eps: Optional[str] = typer.Option(None, "--eps", help="L-inf budget (default: the card's), e.g. 8/255."),
    n: int = typer.Option(1000, "--n", min=1, help="Test images to attack (a fixed class-balanced subset)."),
    n_clean: Optional[int] = typer.Option(None, "--n-clean", help="Test images for clean accuracy (default: all)."),
    steps: int = typer.Option(20, "--steps", min=1, help="PGD steps."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="PGD random restarts."),
    version: str = typer.Option("standard", "--aa-version", help="AutoAttack version: standard | plus | rand."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FILTERLENS_DATA"),
    threads: int = typer.Option(2, "--threads", min=1),
    write: bool = typer.Option(True, "--write/--no-write", help="Write the results back into the card."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Clean and adversarial (PGD or AutoAttack) accuracy of a saved model; results go into its card."""
    from ..robust.pipeline import evaluate_model_file

    if attack not in ("pgd", "autoattack"):
        raise FilterlensError(f"unknown attack {attack!r}; use pgd or autoattack")
    res = evaluate_model_file(model, dataset=dataset, attack=attack, eps=_eps(eps), n=n, n_clean=n_clean,
                              steps=steps, restarts=restarts, data_dir=data_dir, threads=threads,
                              version=version, write=write)
    if as_json:
        print(dumps(res))
        return
    a = res[attack]
    label = f"PGD-{a['steps']}" if attack == "pgd" else f"AutoAttack ({a['version']})"
    out.print(f"{model}: clean accuracy {res['clean']['accuracy']:.4f} (n={res['clean']['n']}), {label} "
              f"{a['eps_str']} {a['accuracy']:.4f} (n={a['n']})" + (" -> card updated" if write else ""),
              highlight=False)


zoo_app = typer.Typer(help="The bundled model zoo (small CIFAR-10 and MNIST models, normal and robust).",
                      no_args_is_help=True)


@zoo_app.command("train")
def zoo_train(
    only: Optional[List[str]] = typer.Option(None, "--only", help="Train just these models (repeatable)."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Worker processes."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads per worker."),
    force: bool = typer.Option(False, "--force", help="Retrain models whose weights exist."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted models from their last "
                                "finished epoch (their state is kept beside the weights)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to write (default: the package's "
                                           "zoo/weights)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FILTERLENS_DATA"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Train the zoo model by model (each is saved as soon as it is done); see filterlens.zoo.recipe."""
    from ..zoo import recipe

    status = recipe.train_zoo(only or None, out_dir=out_dir or recipe.WEIGHTS_DIR, jobs=jobs, threads=threads,
                              force=force, resume=resume, data_dir=str(data_dir) if data_dir else None,
                              device=device)
    failed = {k: v for k, v in status.items() if v}
    if failed:
        raise FilterlensError(f"{len(failed)} zoo model(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


@zoo_app.command("list")
def zoo_list(
    recipe_only: bool = typer.Option(False, "--recipe", help="List the recipe (what would be trained)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The zoo's models with their clean and PGD accuracy (or the recipe)."""
    import pandas as pd

    from ..zoo import list_models, recipe
    from .console import emit

    if recipe_only:
        rows = [{"name": m.name, "arch": m.arch, "dataset": m.dataset, "training": m.training, "eps": m.eps,
                 "seed": m.seed, "epochs": m.epochs, "n_train": m.n_train,
                 "trained": (recipe.WEIGHTS_DIR / f"{m.name}.safetensors").is_file()} for m in recipe.RECIPE]
    else:
        rows = list_models()
        if not rows:
            raise FilterlensError("no zoo models are trained yet; run 'filterlens zoo train'")
    df = pd.DataFrame(rows).drop(columns=["pgd", "file"], errors="ignore")
    emit(df, "json" if as_json else "table", None)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate`` and the ``zoo`` group to ``app``."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.add_typer(zoo_app, name="zoo")
