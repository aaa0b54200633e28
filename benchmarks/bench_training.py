"""Training throughput of filterlens against a plain PyTorch loop of the same model, same process.

    python benchmarks/bench_training.py [--arch small_resnet14] [--width 16] [--n 2560] [--threads 2]

For each method (normal, fgsm-rs) it trains a fresh model one warm-up epoch and then ``--epochs``
timed epochs, once with ``filterlens.robust.train_model`` (uint8 data in memory, vectorised crop +
flip, channels_last, deterministic algorithms, lr schedule, progress off) and once with a plain loop
(``DataLoader`` over a float ``TensorDataset``, no augmentation, default memory format, constant lr),
and prints images/second and the ratio (best of ``--repeat`` alternating runs). Synthetic CIFAR-shaped data, so no data set is needed.
The machine may be shared: run it when it is quiet, and compare figures from one run only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from filterlens.archs import create_arch
from filterlens.data import ArrayDataset
from filterlens.robust.train import TrainConfig, train_model


def plain_loop(model, x, y, *, method: str, eps: float, batch_size: int, epochs: int, warmup_epochs: int = 1) -> float:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                         shuffle=True, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    alpha = 1.25 * eps
    seen, t0 = 0, None
    for epoch in range(warmup_epochs + epochs):
        if epoch == warmup_epochs:
            t0, seen = time.perf_counter(), 0
        for xb, yb in loader:
            if method == "fgsm-rs":
                delta = torch.empty_like(xb).uniform_(-eps, eps)
                delta.requires_grad_(True)
                loss = F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
                loss.backward()
                delta = (delta + alpha * delta.grad.sign()).clamp(-eps, eps).detach()
                xb = (xb + delta).clamp(0, 1)
                opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(yb)
    return seen / (time.perf_counter() - t0)


def filterlens_loop(model, data: ArrayDataset, *, method: str, eps: float, batch_size: int, epochs: int,
                    threads: int, warmup_epochs: int = 1) -> float:
    cfg = TrainConfig(method=method, epochs=warmup_epochs + epochs, batch_size=batch_size, lr=0.05, eps=eps,
                      threads=threads, guard=False)
    res = train_model(model, data, cfg, progress=False)
    timed = res.history[warmup_epochs:]
    n = (len(data) // batch_size) * batch_size
    return n * len(timed) / sum(h["seconds"] for h in timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_resnet14")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n", type=int, default=2560, help="training images (synthetic, 32x32 RGB)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="normal,fgsm-rs")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repetitions; the best of each is reported")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n)
    data = ArrayDataset(images, labels, tuple(map(str, range(10))), "synthetic", "train")
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255
    y = torch.from_numpy(labels)
    kw = {"width": args.width, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    print(f"{args.arch} width {args.width}, {args.n} images x {args.epochs} epochs, batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    for method in args.methods.split(","):
        plain_runs, fl_runs = [], []
        for _ in range(args.repeat):  # alternate, and keep the best of each: the machine may be shared
            torch.manual_seed(0)
            plain_runs.append(plain_loop(create_arch(args.arch, **kw), x, y, method=method, eps=8 / 255,
                                         batch_size=args.batch_size, epochs=args.epochs))
            torch.manual_seed(0)
            fl_runs.append(filterlens_loop(create_arch(args.arch, **kw), data, method=method, eps=8 / 255,
                                           batch_size=args.batch_size, epochs=args.epochs, threads=args.threads))
        plain, fl = max(plain_runs), max(fl_runs)
        print(f"{method:8s} plain PyTorch {plain:8.0f} img/s   filterlens {fl:8.0f} img/s   ratio {fl / plain:5.2f}x"
              f"   (best of {args.repeat}; all: {[round(v) for v in plain_runs]} vs {[round(v) for v in fl_runs]})",
              flush=True)


if __name__ == "__main__":
    main()
