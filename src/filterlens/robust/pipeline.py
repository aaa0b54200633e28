"""Train a named architecture on a named data set, evaluate it, and write weights + model card."""

from __future__ import annotations

import datetime as _dt
import inspect
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import FilterlensError
from .attacks import format_eps
from .card import load_module_and_card, read_card, save_model, update_card
from .evaluate import evaluate_dataset
from .train import TrainConfig, resolve_device, seed_everything, torch_settings, train_model

DEFAULT_EPS = {"cifar10": 8 / 255, "mnist": 0.3}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("filterlens")
    except Exception:  # run from a checkout without installing it
        from .._version import __version__

        return __version__


def train_state_path(out: str | Path) -> Path:
    """Where training of ``out`` (``x.safetensors``) keeps its per-epoch state: ``x.train-state.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".train-state.pt")


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``: one process trains one output at a time."""
    import fcntl

    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FilterlensError(f"{lock_file.name[:-len('.train-state.pt.lock')]} is being trained by another "
                                  f"process (lock {lock_file})") from None
        yield  # the lock goes with the file's closing; the empty file stays (unlinking it would race)


def device_description(threads: int | None, device: str | torch.device | None = None) -> str:
    """What trained the model, for its card: ``cpu: <processor> (<n> threads)`` or ``cuda: <GPU name>``."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    n = threads or torch.get_num_threads()
    return f"cpu: {cpu} ({n} thread{'s' if n != 1 else ''})"


def arch_kwargs_for(arch: str, dataset: str, extra: dict | None = None) -> dict:
    """Keyword arguments for ``create_arch``: the data set's mean/std (and any ``extra``)."""
    from ..archs import arch_info, small  # noqa: F401  (small registers the zoo's nets)
    from ..data import NORMALIZATION

    info, _ = arch_info(arch)
    mean, std = NORMALIZATION[dataset]
    kw = {"mean": list(mean), "std": list(std)}
    kw.update(extra or {})
    params = inspect.signature(info.builder).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kw if k not in params and not accepts_any]
    if unknown:
        raise FilterlensError(f"architecture {arch!r} does not take {', '.join(unknown)}")
    return kw


def train_and_save(
    *,
    dataset: str,
    arch: str,
    out: str | Path,
    training: str = "normal",
    eps: float | None = None,
    epochs: int = 10,
    seed: int = 0,
    n_train: int | None = None,
    data_dir: str | Path | None = None,
    arch_kwargs: dict | None = None,
    n_eval: int | None = None,
    n_attack: int = 1000,
    pgd_steps: int = 20,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    name: str | None = None,
    card_extra: dict | None = None,
    resume: bool = False,
    branch: bool = False,
    device: str | None = None,
    **train_options,
) -> dict:
    """Train, evaluate (clean on ``n_eval`` test images, PGD-``pgd_steps`` on ``n_attack``), save.

    ``train_options`` are further :class:`TrainConfig` fields (``lr``, ``batch_size``, ``schedule``,
    ``attack_steps``, ``threads`` ...). The training state is checkpointed after every epoch to
    :func:`train_state_path` ``(out)``; with ``resume`` an interrupted run continues from there and
    gives the weights an uninterrupted run gives. ``device`` (``cpu`` by default, or ``cuda``) runs
    training and evaluation there; a state resumes on either. Returns the model card that was written.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise FilterlensError(f"--out must end in .safetensors, got {out.name}")
    if not out.parent.is_dir():
        raise FilterlensError(f"{out}: the folder {out.parent} does not exist")
    resolve_device(device)  # a missing GPU is a one-line error before anything is loaded or written
    with _exclusive(train_state_path(out).with_suffix(".pt.lock")):
        return _train_and_save(
            dataset=dataset, arch=arch, out=out, training=training, eps=eps, epochs=epochs, seed=seed,
            n_train=n_train, data_dir=data_dir, arch_kwargs=arch_kwargs, n_eval=n_eval, n_attack=n_attack,
            pgd_steps=pgd_steps, progress=progress, log=log, name=name, card_extra=card_extra, resume=resume,
            branch=branch, device=device, **train_options)


def _train_and_save(*, dataset, arch, out: Path, training, eps, epochs, seed, n_train, data_dir, arch_kwargs,
                    n_eval, n_attack, pgd_steps, progress, log, name, card_extra, resume, branch, device,
                    **train_options) -> dict:
    from ..archs import create_arch
    from ..data import load_dataset

    if out.suffix != ".safetensors":
        raise FilterlensError(f"--out must end in .safetensors, got {out.name}")
    from ..data import dataset_key

    dataset = dataset_key(dataset)
    eps = DEFAULT_EPS.get(dataset, 8 / 255) if eps is None else float(eps)
    if dataset == "mnist":
        train_options.setdefault("crop_padding", 0)
        train_options.setdefault("flip", False)
    cfg = TrainConfig(method=training, epochs=epochs, seed=seed, eps=eps, **train_options)
    kw = arch_kwargs_for(arch, dataset, arch_kwargs)

    train_ds = load_dataset(dataset, "train", data_dir=data_dir)
    test_ds = load_dataset(dataset, "test", data_dir=data_dir)
    sub = train_ds.subset(n_train, seed=seed)

    with torch_settings(cfg.threads, cfg.deterministic):
        seed_everything(seed)
        model = create_arch(arch, **kw)
        if log:
            log(f"{name or out.stem}: {arch} on {dataset} ({len(sub)} images), {cfg.method}"
                f"{' eps ' + format_eps(eps) if cfg.method != 'normal' else ''}, {epochs} epochs, seed {seed}")
        state_file = train_state_path(out)
        result = train_model(model, sub, cfg, progress=progress, log=log, description=name or out.stem,
                             state_file=state_file, resume=resume, branch=branch, device=device)
        te = time.perf_counter()
        results = evaluate_dataset(model, test_ds, eps, attack="pgd", n_clean=n_eval, n_attack=n_attack,
                                   steps=pgd_steps, seed=0)
        eval_seconds = time.perf_counter() - te
        model.cpu()

    card = {
        "name": name or out.stem,
        "arch": arch,
        "arch_kwargs": kw,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dataset": dataset,
        "data_source": train_ds.source,
        "input_range": [0.0, 1.0],
        "n_train": len(sub),
        "subset_seed": seed if n_train is not None and n_train < len(train_ds) else None,
        "training": {**cfg.to_dict(), "eps_str": format_eps(eps) if cfg.method != "normal" else None},
        "threat_model": {"norm": "Linf", "eps": eps, "eps_str": format_eps(eps)},
        "robust": cfg.method != "normal",
        "epochs": epochs,
        "seed": seed,
        "results": results,
        "training_time_s": round(result.seconds, 1),
        "eval_time_s": round(eval_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "stopped_early": result.stopped_early,
        "note": result.note or None,
        "history": result.history,
        "torch_version": torch.__version__,
        "filterlens_version": _version(),
        "python": platform.python_version(),
        "threads": cfg.threads,
        "device": device_description(cfg.threads, device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(card_extra or {}),
    }
    save_model(model, out, card)
    state_file.unlink(missing_ok=True)  # the weights are written: the interrupted-run state is spent
    if log:
        r = results
        log(f"  -> {out}: clean {r['clean']['accuracy']:.4f} (n={r['clean']['n']}), PGD-{pgd_steps} "
            f"{r['pgd']['accuracy']:.4f} (n={r['pgd']['n']}), train {result.seconds:.0f} s, eval {eval_seconds:.0f} s")
    return read_card(out)


def evaluate_model_file(
    path: str | Path,
    *,
    dataset: str | None = None,
    attack: str = "pgd",
    eps: float | None = None,
    n: int = 1000,
    n_clean: int | None = None,
    steps: int = 20,
    restarts: int = 1,
    data_dir: str | Path | None = None,
    threads: int | None = 2,
    version: str = "standard",
    write: bool = True,
) -> dict:
    """Evaluate a saved model and (with ``write``) merge the results into its card."""
    from ..data import load_dataset

    from ..data import dataset_key

    model, card = load_module_and_card(path)
    dataset = dataset or card.get("dataset")
    if not dataset:
        raise FilterlensError("the card names no data set; pass --dataset")
    dataset = dataset_key(dataset)
    if eps is None:
        eps = card.get("threat_model", {}).get("eps", DEFAULT_EPS.get(dataset, 8 / 255))
    test_ds = load_dataset(dataset, "test", data_dir=data_dir)
    with torch_settings(threads, True):
        results = evaluate_dataset(model, test_ds, float(eps), attack=attack, n_clean=n_clean, n_attack=n,
                                   steps=steps, restarts=restarts, version=version)
    if write:
        update_card(path, results=results)
    return results
