"""Train a variant of a zoo recipe entry, to test a change of the recipe before adopting it.

    python scripts/zoo_probe.py cifar10_resnet20_fgsmrs_s0 --training pgd --attack-steps 3
    python scripts/zoo_probe.py cifar10_resnet20_normal_s0 --set lr=0.01 --set weight_decay=0.01 --tag wd
    python scripts/zoo_probe.py ... --resume          # continue after an interruption (same arguments)
    python scripts/zoo_probe.py cifar10_resnet20_normal_s0 --set schedule=step --set step_every=10 --tag step10 \
        --branch-from zoo-probe/states/cifar10_resnet20_normal_step15_s0.e10.pt   # start from another run's epoch 10

The variant keeps everything of the entry that is not changed (data, epochs, seed, the
evaluation); a change applied to both arms of a pair keeps them a pair. ``--set KEY=VALUE`` sets a
``TrainConfig`` field (lr, weight_decay, batch_size, schedule, step_every, ...) or the entry's
``epochs``. The variant is named after its changes (``--tag``), and written as
``<out-dir>/<name>.safetensors`` with its card, never into the package's zoo. ``--branch-from``
starts from another run's training state when that run's finished epochs are exactly this one's
(``robust.train.is_prefix``); the result is then the direct run's, bit for bit
(``tests/test_training_resume.py``), so its card describes the direct run. Compare variants with
``python scripts/zoo_table.py <out-dir>``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from filterlens.zoo.recipe import get, train_one


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word, e.g. schedule=step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("entry", help="a recipe entry, e.g. cifar10_resnet20_fgsmrs_s0")
    ap.add_argument("--training", default=None, help="pgd | trades | fgsm-rs (robust entries only)")
    ap.add_argument("--attack-steps", type=int, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig field or the epochs to change (repeatable)")
    ap.add_argument("--tag", default=None, help="added to the name for --set changes")
    ap.add_argument("--out-dir", type=Path, default=Path("zoo-probe"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu | cuda: where to train and evaluate (the random draws "
                    "are the same on both; a state resumes on either)")
    ap.add_argument("--branch-from", type=Path, default=None, metavar="STATE",
                    help="start from this training state of another run whose finished epochs are exactly "
                         "this run's (a step schedule decaying later, or a shorter run); copied, never changed")
    args = ap.parse_args()
    base = get(args.entry)
    if (args.training or args.attack_steps) and base.training == "normal":
        ap.error(f"{args.entry} is a normal model; --training and --attack-steps change robust ones")
    if args.sets and not args.tag:
        ap.error("--set needs a --tag, so that the variant cannot be mistaken for the recipe's model")
    options, fields = dict(base.options), {}
    for item in args.sets:
        key, sep, text = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: use KEY=VALUE")
        # epochs and n_train are fields of the entry; everything else is a TrainConfig option
        (fields if key in ("epochs", "n_train") else options)[key] = _value(text)
    if args.attack_steps is not None:
        options["attack_steps"] = args.attack_steps
    training = args.training or base.training
    parts = base.name.split("_")  # dataset_arch_method_sSEED
    if args.training or args.attack_steps:
        parts[2] = training.replace("-", "") + (str(args.attack_steps) if args.attack_steps else "")
    if args.tag:
        parts.insert(3, args.tag)
    entry = replace(base, name="_".join(parts), training=training, options=options, **fields)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.branch_from is not None:
        _branch(args.branch_from, args.out_dir / f"{entry.name}.train-state.pt", ap)
    # a resumed probe may still hold the state it branched from, so resuming accepts a prefix too
    train_one(entry, out_dir=args.out_dir, threads=args.threads, resume=args.resume or bool(args.branch_from),
              branch=True, device=args.device)


def _branch(source: Path, state: Path, ap: argparse.ArgumentParser) -> None:
    """Copy another run's state to this run's state path; ``train_one(branch=True)`` then checks it."""
    from filterlens.atomic import write_bytes_atomic

    if not source.is_file():
        ap.error(f"--branch-from {source}: no such training state")
    if state.exists():
        ap.error(f"{state} exists; continue it with --resume instead of --branch-from")
    write_bytes_atomic(state, source.read_bytes())


if __name__ == "__main__":
    main()
