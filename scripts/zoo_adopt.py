"""Adopt a finished probe (scripts/zoo_probe.py) as the recipe model it is identical to.

    python scripts/zoo_adopt.py zoo-probe/cifar10_resnet20_normal_paper40_s0.safetensors \
        cifar10_resnet20_normal_s0 --out-dir zoo-v3

A probe trained with exactly the settings that the recipe now gives a model is that model: the
name takes no part in training. This checks that the probe's recorded recipe entry equals the
recipe's (every field but the name and the scheduling cost), then writes the weights and the card
under the recipe's name, the card saying which probe it was (``adopted_from``), and rewrites the
index. An unfinished probe needs no adoption: rename its ``.train-state.pt`` to the recipe's name
and run ``filterlens zoo train --only NAME --resume``, which refuses a state of other settings.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from filterlens.atomic import write_bytes_atomic
from filterlens.errors import FilterlensError
from filterlens.robust.card import read_card, write_card
from filterlens.zoo.recipe import get, write_index


def _comparable(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("name", "cost")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", type=Path, help="the probe's .safetensors file (its .json card beside it)")
    ap.add_argument("entry", help="the recipe entry it becomes, e.g. cifar10_resnet20_normal_s0")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--force", action="store_true", help="replace an existing model of that name")
    args = ap.parse_args()
    try:
        card = read_card(args.probe.with_suffix(".json"))
        target = get(args.entry)
    except FilterlensError as e:
        sys.exit(f"error: {e}")
    if not args.probe.is_file():
        sys.exit(f"error: no such file: {args.probe}")
    want, have = _comparable(asdict(target)), _comparable(card.get("recipe") or {})
    if want != have:
        diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        sys.exit(f"error: {args.probe.name} was not trained as {target.name}; they differ in {', '.join(diff)}")
    out = args.out_dir / f"{target.name}.safetensors"
    if out.exists() and not args.force:
        sys.exit(f"error: {out} exists; pass --force to replace it")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    card.pop("format", None)
    card.update(name=target.name, recipe=asdict(target), adopted_from=card["name"])
    write_card(out.with_suffix(".json"), card)
    write_bytes_atomic(out, args.probe.read_bytes())
    write_index(args.out_dir)
    print(f"{args.probe} -> {out}")


if __name__ == "__main__":
    main()
