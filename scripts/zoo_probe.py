"""Train a variant of a zoo recipe entry's robust arm, to try a stronger robust training.

    python scripts/zoo_probe.py cifar10_resnet20_fgsmrs_s0 --training pgd --attack-steps 3 --out-dir zoo-probe
    python scripts/zoo_probe.py ... --resume          # continue after an interruption (same arguments)

The variant keeps everything else of the recipe (data, epochs, optimiser, schedule, seed, the
evaluation), so it stays paired with the recipe's normal models; only the training method and
its attack change. It writes ``<out-dir>/<name>.safetensors`` and its card, never the package's zoo.
Compare its pooled PCA spectrum entropy with ``python scripts/zoo_table.py <out-dir>``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from filterlens.zoo.recipe import get, train_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entry", help="a robust recipe entry, e.g. cifar10_resnet20_fgsmrs_s0")
    ap.add_argument("--training", default="pgd", help="pgd | trades | fgsm-rs")
    ap.add_argument("--attack-steps", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("zoo-probe"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    base = get(args.entry)
    if base.training == "normal":
        ap.error(f"{args.entry} is a normal model; probe a robust one")
    options = dict(base.options)
    if args.attack_steps is not None:
        options["attack_steps"] = args.attack_steps
    tag = args.training.replace("-", "") + (str(args.attack_steps) if args.attack_steps else "")
    name = base.name.replace(base.name.split("_")[2], tag, 1)
    entry = replace(base, name=name, training=args.training, options=options)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train_one(entry, out_dir=args.out_dir, threads=args.threads, resume=args.resume)


if __name__ == "__main__":
    main()
