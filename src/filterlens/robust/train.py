"""Normal and adversarial training (PGD, FGSM with random start, TRADES) on CPU-sized problems.

Inputs are in [0, 1]; the model normalises them itself. Everything random (initialisation,
shuffling, augmentation, attack starts) is drawn from CPU generators seeded by ``seed``, so two
runs with the same seed and thread count give identical weights, and a run on a GPU sees the same
data order, augmentation and attack starts as one on the CPU (its arithmetic differs in rounding).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FilterlensError

METHODS = ("normal", "pgd", "fgsm-rs", "trades")
SCHEDULES = ("onecycle", "cosine", "step", "constant")


class TrainingError(FilterlensError):
    """A training setting is invalid."""


@dataclass
class TrainConfig:
    """How to train. ``lr`` is the peak learning rate of the schedule.

    ``alpha`` (attack step) defaults to ``1.25 * eps`` for ``fgsm-rs`` (Wong et al. 2020),
    ``2.5 * eps / attack_steps`` for ``pgd`` and ``eps / 4`` for ``trades``.
    """

    method: str = "normal"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.4  # one-cycle: fraction of the run spent rising linearly to ``lr``
    step_every: int = 30  # step schedule: epochs between decays
    milestones: tuple[int, ...] | None = None  # step schedule: decay after these epochs instead
    step_gamma: float = 0.1
    eps: float = 8 / 255
    alpha: float | None = None
    attack_steps: int | None = None  # pgd: 7, trades: 5 by default
    trades_beta: float = 6.0
    eps_warmup: float = 0.0  # fraction of the run over which eps (and alpha) ramp up linearly from 0
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    threads: int | None = 2
    channels_last: bool = True
    deterministic: bool = True
    guard: bool | None = None  # stop and roll back on catastrophic overfitting (default: on for fgsm-rs)
    guard_n: int = 256

    def __post_init__(self) -> None:
        self.method = self.method.lower().replace("_", "-")
        if self.method not in METHODS:
            raise TrainingError(f"unknown training {self.method!r}; use one of {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainingError("epochs and batch size must be positive")
        if self.method != "normal" and not (0 < self.eps <= 1):
            raise TrainingError(f"adversarial training needs 0 < eps <= 1, got {self.eps}")
        if self.attack_steps is None:
            self.attack_steps = {"pgd": 7, "trades": 5}.get(self.method, 1)
        if self.alpha is None:
            self.alpha = {
                "fgsm-rs": 1.25 * self.eps,
                "pgd": 2.5 * self.eps / self.attack_steps,
                "trades": self.eps / 4,
            }.get(self.method, 0.0)
        if self.guard is None:
            self.guard = self.method == "fgsm-rs"
        if self.milestones is not None:
            self.milestones = tuple(sorted(int(m) for m in self.milestones))
            if not self.milestones or self.milestones[0] < 1:
                raise TrainingError(f"milestones must be positive epoch numbers, got {list(self.milestones)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.milestones is None:
            d.pop("milestones")  # as before the field existed, so that older states still resume
        else:
            d["milestones"] = list(self.milestones)
        if self.method == "normal":
            for k in ("eps", "alpha", "attack_steps", "trades_beta", "eps_warmup", "guard", "guard_n"):
                d.pop(k)
        elif self.method != "trades":
            d.pop("trades_beta")
        return d


def lr_at(cfg: TrainConfig, it: int, total: int, per_epoch: int) -> float:
    """The learning rate of iteration ``it`` of ``total``."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        epoch = it // per_epoch
        decays = sum(epoch >= m for m in cfg.milestones) if cfg.milestones else epoch // cfg.step_every
        return cfg.lr * cfg.step_gamma ** decays
    t = (it + 1) / total
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    w = cfg.warmup  # onecycle: linear 0 -> lr -> 0 (Smith; Wong et al.'s cyclic schedule)
    return cfg.lr * (t / w if t < w else max(0.0, (1 - t) / (1 - w)))


@contextmanager
def torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Temporarily set the thread count and deterministic algorithms."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- the inner maximisations -------------------------------------------------------------------

def _rand(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Uniform noise shaped like ``x``, drawn on the (CPU) generator and moved to ``x``'s device."""
    return torch.rand(x.shape, generator=g).to(x.device)


def _fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, g: torch.Generator) -> torch.Tensor:
    delta = (_rand(x, g) * 2 - 1).mul_(eps)
    delta = ((x + delta).clamp_(0, 1) - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp_(-eps, eps)
    return (x + delta).clamp_(0, 1)


def _pgd_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, g: torch.Generator) -> torch.Tensor:
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    x_adv = torch.max(torch.min(x + (_rand(x, g) * 2 - 1) * eps, hi), lo)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.max(torch.min(x_adv.detach() + alpha * grad.sign(), hi), lo)
    return x_adv


def _trades_adv(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int, g: torch.Generator) -> torch.Tensor:
    """TRADES' inner maximisation of KL(f(x) || f(x')) (model in eval mode, as in the reference code)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    x_adv = torch.max(torch.min(x + 0.001 * torch.randn(x.shape, generator=g).to(x.device), hi), lo)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.max(torch.min(x_adv.detach() + alpha * grad.sign(), hi), lo)
    model.train(was)
    return x_adv.detach()


# --- the loop ----------------------------------------------------------------------------------

@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    stopped_early: bool = False
    note: str = ""


def guard_indices(n: int, guard_n: int, seed: int) -> torch.Tensor:
    """The training images the overfitting guard attacks: ``min(guard_n, n)`` drawn at random.

    Training sets are often stored sorted by class, so the first images would all be one class
    (a model that predicts that class would look robust). The draw has its own generator, so
    the data order and augmentation of training do not change.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[: min(guard_n, n)]


def _guard_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, g: torch.Generator) -> float:
    from .attacks import pgd

    model.eval()
    xa = pgd(model, x, y, eps, steps=5, generator=g)
    with torch.inference_mode():
        acc = float((model(xa).argmax(1) == y).float().mean())
    model.train()
    return acc


STATE_FORMAT = "filterlens-train-state/1"


def _state_dict_copy(model: nn.Module) -> dict:
    """A CPU copy of the weights (a state written on a GPU resumes on the CPU and back)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"cpu"`` -> the CPU; ``"cuda"`` (or ``"cuda:N"``) -> that GPU, which must exist."""
    try:
        dev = torch.device(device or "cpu")
    except RuntimeError as e:
        raise TrainingError(f"unknown device {device!r} ({e}); use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise TrainingError(f"device {device!r} is not supported; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use --device cpu")
    return dev


def save_train_state(path: Path, state: dict) -> None:
    """Write a training state atomically (a kill mid-write leaves the previous state)."""
    import io

    from ..atomic import write_bytes_atomic

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(Path(path), buf.getvalue())


def _settings(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "threads"}  # the thread count may change between runs


def is_prefix(state_config: dict, cfg: TrainConfig, epochs_done: int) -> bool:
    """Whether the first ``epochs_done`` epochs of a run of ``state_config`` are those of ``cfg``.

    True when the two differ at most in ``epochs`` and the decays (``step_every``, ``milestones``),
    the schedule is ``step`` or ``constant`` (its learning rate does not depend on the run's
    length), no epsilon warm-up ramps over the run's length, ``cfg`` runs at least ``epochs_done``
    epochs, and the learning rate of every finished epoch is the same under both. A state of such a
    run after ``epochs_done`` epochs is then exactly the state of ``cfg`` after them: e.g. a
    40-epoch run continued to 60, or a 20-epoch run with a decay at 15 branched, after epoch 10,
    into one that decays at 10.
    """
    a, b = _settings(state_config), _settings(cfg.to_dict())
    free = ("epochs", "step_every", "milestones")
    if {k: v for k, v in a.items() if k not in free} != {k: v for k, v in b.items() if k not in free}:
        return False
    if cfg.schedule not in ("step", "constant") or (cfg.eps_warmup > 0 and cfg.method != "normal"):
        return False
    if cfg.epochs < epochs_done:
        return False
    old = replace(cfg, milestones=None, **{k: a[k] for k in free if k in a})
    # the step schedule is constant within an epoch: one iteration per epoch checks it
    return all(lr_at(old, e, 1, 1) == lr_at(cfg, e, 1, 1) for e in range(epochs_done))


def load_train_state(path: Path, cfg: TrainConfig, *, branch: bool = False) -> dict:
    """Read a training state written by :func:`train_model` for the same configuration.

    With ``branch``, a state of another run is accepted too when its finished epochs are exactly
    those of ``cfg`` (:func:`is_prefix`). Read with ``weights_only=True``: a state file is data
    (tensors, numbers, strings), never code.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"{path}: not a readable training state ({type(e).__name__}: {e}); "
                            f"delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a filterlens training state; delete it to start afresh")
    config = state.get("config") or {}
    if _settings(config) == _settings(cfg.to_dict()):
        return state
    if branch:
        if not is_prefix(config, cfg, int(state.get("epoch", 0))):
            raise TrainingError(f"{path}: the training state's {state.get('epoch')} epochs are not those of this run "
                                f"(only a step or constant schedule's length and later decays may differ)")
        return state
    raise TrainingError(f"{path}: the training state was written with other settings; delete it to "
                        f"start afresh, or resume with the settings it was written with")


def train_model(
    model: nn.Module,
    data,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    description: str = "training",
    state_file: str | Path | None = None,
    resume: bool = False,
    branch: bool = False,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` (an ``ArrayDataset`` or ``(uint8 NHWC images, labels)``).

    With ``state_file``, the whole training state (weights, optimiser, both generators — which fix
    the data order, augmentation and attack starts —, the iteration, history and the overfitting
    guard's best weights) is written there atomically after every epoch. With ``resume`` and an
    existing ``state_file``, training continues after the last finished epoch and ends with the
    same weights as an uninterrupted run with the same thread count. Without ``resume``, an existing
    ``state_file`` is an error (it is never overwritten silently). With ``branch`` as well, the
    state may come from a run that differs only after its finished epochs (:func:`is_prefix`); the
    result is the uninterrupted run of ``cfg``. The caller removes the file once the trained weights
    are safely written.

    ``device`` (``cpu`` by default, or ``cuda``) is where the arithmetic runs; the model is left
    there. The random draws stay on CPU generators and the state is written with CPU tensors, so a
    state written on one device resumes on the other; each epoch's history names its device.
    """
    from ..data import BatchLoader

    state_path = Path(state_file) if state_file is not None else None
    resumed: dict | None = None
    if state_path is not None and state_path.exists():
        if not resume:
            raise TrainingError(f"{state_path}: an interrupted training state exists; pass --resume to "
                                f"continue it, or delete it to start afresh")
        resumed = load_train_state(state_path, cfg, branch=branch)

    dev = resolve_device(device)
    with torch_settings(cfg.threads, cfg.deterministic):
        model.to(dev)
        gen = torch.Generator().manual_seed(cfg.seed)
        attack_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        loader = BatchLoader(
            data, cfg.batch_size, shuffle=True, crop_padding=cfg.crop_padding, flip=cfg.flip,
            drop_last=True, channels_last=cfg.channels_last, generator=gen,
        )
        if len(loader) == 0:
            raise TrainingError(f"{loader.num_examples} training examples are fewer than one batch of {cfg.batch_size}")
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
        per_epoch = len(loader)
        total = per_epoch * cfg.epochs
        eps, alpha, steps = cfg.eps, float(cfg.alpha or 0.0), int(cfg.attack_steps or 1)
        guard_x = guard_y = None
        best_guard, best_state = -1.0, None
        if cfg.guard and cfg.method != "normal":
            guard_x, guard_y = BatchLoader(data, cfg.guard_n, channels_last=cfg.channels_last)._batch(
                guard_indices(loader.num_examples, cfg.guard_n, cfg.seed))
            guard_x, guard_y = guard_x.to(dev), guard_y.to(dev)
        result = TrainResult()
        bar = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from rich.console import Console

            bar = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                           console=Console(stderr=True))
            task = bar.add_task(description, total=total, stats="")
            bar.start()
        t0 = time.perf_counter()
        it = 0
        first_epoch = 0
        seconds_before = 0.0
        if resumed is not None:
            model.load_state_dict(resumed["model"])
            opt.load_state_dict(resumed["optimizer"])
            gen.set_state(resumed["generator"])
            attack_gen.set_state(resumed["attack_generator"])
            it, first_epoch = int(resumed["iteration"]), int(resumed["epoch"])
            seconds_before = float(resumed["seconds"])
            result.history = list(resumed["history"])
            best_guard = float(resumed["best_guard"])
            best_state = resumed["best_state"]
            result.stopped_early, result.note = bool(resumed["stopped_early"]), str(resumed["note"])
            if result.stopped_early:
                first_epoch = cfg.epochs
            if log:
                log(f"  resumed after epoch {first_epoch}/{cfg.epochs} from {state_path}")
            if bar is not None:
                bar.update(task, completed=it)
        try:
            for epoch in range(first_epoch, cfg.epochs):
                te = time.perf_counter()
                loss_sum = torch.zeros((), device=dev)
                correct = torch.zeros((), dtype=torch.long, device=dev)
                seen = 0
                for x, y in loader:
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    lr = lr_at(cfg, it, total, per_epoch)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    if cfg.eps_warmup > 0 and cfg.method != "normal":
                        ramp = min(1.0, (it + 1) / (cfg.eps_warmup * total))
                        eps, alpha = cfg.eps * ramp, float(cfg.alpha or 0.0) * ramp
                    if cfg.method == "normal":
                        logits = model(x)
                        loss = F.cross_entropy(logits, y)
                    elif cfg.method == "fgsm-rs":
                        logits = model(_fgsm_rs(model, x, y, eps, alpha, attack_gen))
                        loss = F.cross_entropy(logits, y)
                    elif cfg.method == "pgd":
                        logits = model(_pgd_train(model, x, y, eps, alpha, steps, attack_gen))
                        loss = F.cross_entropy(logits, y)
                    else:  # trades
                        x_adv = _trades_adv(model, x, eps, alpha, steps, attack_gen)
                        logits = model(x)
                        logits_adv = model(x_adv)
                        loss = F.cross_entropy(logits, y) + cfg.trades_beta * F.kl_div(
                            F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach() * len(y)
                    correct += (logits.detach().argmax(1) == y).sum()
                    seen += len(y)
                    it += 1
                    if bar is not None:
                        bar.advance(task)
                if not math.isfinite(float(loss_sum)):
                    raise TrainingError(f"the loss diverged in epoch {epoch + 1}; lower the learning rate")
                rec = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "train_acc": int(correct) / seen,
                       "lr_end": lr, "seconds": round(time.perf_counter() - te, 2), "device": dev.type}
                if guard_x is not None:
                    acc = _guard_accuracy(model, guard_x, guard_y, cfg.eps, attack_gen)
                    rec["guard_pgd5_acc"] = acc
                    if acc >= best_guard or (cfg.eps_warmup > 0 and it <= cfg.eps_warmup * total):
                        best_guard = acc
                        best_state = _state_dict_copy(model)
                    elif best_guard - acc > 0.2:
                        model.load_state_dict(best_state)
                        result.stopped_early = True
                        result.note = (f"catastrophic overfitting in epoch {epoch + 1} (PGD-5 accuracy on "
                                       f"{len(guard_y)} training images fell from {best_guard:.2f} to {acc:.2f}); "
                                       f"rolled back to the best epoch")
                result.history.append(rec)
                if state_path is not None:
                    save_train_state(state_path, {
                        "format": STATE_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1, "iteration": it,
                        "model": _state_dict_copy(model), "optimizer": _to_cpu(opt.state_dict()),
                        "generator": gen.get_state(), "attack_generator": attack_gen.get_state(),
                        "history": result.history, "best_guard": best_guard, "best_state": best_state,
                        "seconds": seconds_before + time.perf_counter() - t0,
                        "stopped_early": result.stopped_early, "note": result.note,
                    })
                if bar is not None:
                    bar.update(task, stats=f"epoch {epoch + 1}: loss {rec['loss']:.3f} acc {rec['train_acc']:.3f}")
                if log:
                    extra = f" guard-pgd {rec['guard_pgd5_acc']:.3f}" if "guard_pgd5_acc" in rec else ""
                    log(f"  epoch {epoch + 1}/{cfg.epochs}: loss {rec['loss']:.4f} train-acc {rec['train_acc']:.4f}"
                        f"{extra} ({rec['seconds']:.0f} s)")
                if result.stopped_early:
                    if log:
                        log("  " + result.note)
                    break
        finally:
            if bar is not None:
                bar.stop()
        result.seconds = seconds_before + time.perf_counter() - t0
        result.images_per_second = it * cfg.batch_size / max(result.seconds, 1e-9)
        model.eval()
        if cfg.channels_last:
            model.to(memory_format=torch.contiguous_format)
        return result
