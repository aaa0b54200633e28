#!/usr/bin/env python
"""Regenerate filterlens's snapshot of RobustBench's model table, and the key signatures
the tests compare filterlens's architectures against.

RobustBench itself does not import on a CPU-only machine (it needs torchvision and timm),
so this script imports only its model definitions (``robustbench/model_zoo``) from a
checkout of its GitHub repository, with ``timm``, ``torchvision`` and the other optional
imports replaced by inert stubs, and builds every model on the meta device (no memory, no
weights). torchvision's ImageNet ResNets, which RobustBench takes from torchvision, come
from a copy of ``torchvision/models/resnet.py`` (any version with ``wide_resnet50_2``; it
is loaded with its ``.utils`` import stubbed).

For every entry of the L-inf CIFAR-10, CIFAR-100 and ImageNet leaderboards it records the
leaderboard metadata (``model_info/<dataset>/Linf/<name>.json``), RobustBench's loading
rules for that entry (container, prefixes, tolerated keys, ensemble files), and the
filterlens architecture with its arguments, found by matching the module RobustBench builds;
entries of families filterlens does not implement are kept with ``arch = null`` and a note.
The paper's 71 robust models get their normal counterpart from the paper's repository
(``robust_vs_normal_pairings.csv``, ``meta.csv``).

Usage (the checkouts are not part of filterlens; fetch them anywhere)::

    git clone https://github.com/RobustBench/robustbench /tmp/rb
    git clone https://github.com/paulgavrikov/cvpr22w_RobustnessThroughTheLens /tmp/paper
    # torchvision/models/resnet.py, e.g. from any torchvision wheel (unzip -p ... > /tmp/tv_resnet.py)
    python scripts/robustbench_snapshot.py --robustbench /tmp/rb --paper /tmp/paper \\
        --torchvision-resnet /tmp/tv_resnet.py

It writes ``src/filterlens/sources/robustbench/models.json`` (the snapshot) and
``tests/data/robustbench_signatures.json.gz`` (state-dict key -> shape of RobustBench's own
module for every entry filterlens builds), and fails if any filterlens module differs.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "src" / "filterlens" / "sources" / "robustbench" / "models.json"
SIGNATURES = ROOT / "tests" / "data" / "robustbench_signatures.json.gz"
DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT = "Linf"

# ---------------------------------------------------------------------------------------
# Stubs: importable modules whose every attribute is an inert class.


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(name)

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:  # used as a decorator
            return args[0]
        return _stub("result")

    def __getitem__(cls, key):
        return cls


def _stub(name: str):
    return _StubMeta(str(name), (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub(name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stubs the packages in ``roots``; with ``roots=None`` (last on the path) any package
    no other finder found that a file under ``importer_dir`` imports: RobustBench's optional
    dependencies (torchdiffeq, ...)."""

    def __init__(self, roots, importer_dir: Path | None = None):
        self.roots = None if roots is None else tuple(roots)
        self.importer_dir = str(importer_dir) if importer_dir else None

    def _imported_from_importer_dir(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        return frame is not None and frame.f_code.co_filename.startswith(self.importer_dir)

    def find_spec(self, fullname, path, target=None):
        top = fullname.split(".")[0]
        if top in ("robustbench", "filterlens"):
            return None
        if self.roots is None and not self._imported_from_importer_dir():
            return None
        if (self.roots is None or top in self.roots) and fullname not in sys.modules:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_model_zoo(rb_dir: Path, tv_resnet: Path | None):
    """RobustBench's ``model_zoo`` package, its optional imports stubbed."""
    stubbed = ["timm", "torchvision", "autoattack", "gdown", "requests", "geotorch", "yaml"]
    sys.meta_path.insert(0, _StubFinder(stubbed))
    sys.meta_path.append(_StubFinder(None, rb_dir))
    if tv_resnet is not None:
        import torchvision.models as tvm  # the stub package

        sys.modules["torchvision.models.utils"] = _StubModule("torchvision.models.utils")
        spec = importlib.util.spec_from_file_location("torchvision.models.resnet", tv_resnet)
        resnet = importlib.util.module_from_spec(spec)
        resnet.__package__ = "torchvision.models"
        sys.modules["torchvision.models.resnet"] = resnet
        spec.loader.exec_module(resnet)
        for fn in ("resnet18", "resnet50", "wide_resnet50_2"):
            setattr(tvm, fn, getattr(resnet, fn))
    pkg = types.ModuleType("robustbench")  # without running robustbench/__init__.py
    pkg.__path__ = [str(rb_dir / "robustbench")]
    sys.modules["robustbench"] = pkg
    from robustbench.model_zoo import model_dicts

    return model_dicts


def git_head(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------
# RobustBench's loading rules (robustbench/utils.py: load_model, _safe_load_state_dict).


def loading_rules(rb_dir: Path) -> dict:
    """The literal sets RobustBench's loader branches on, read from ``utils.py``'s source."""
    source = (rb_dir / "robustbench" / "utils.py").read_text()
    tree = ast.parse(source)
    rules = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("known_failing_models", "failure_messages"):
                rules[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            test = node.test
            if (isinstance(test.left, ast.Name) and test.left.id == "model_name"
                    and isinstance(test.ops[0], ast.NotIn) and isinstance(test.comparators[0], ast.List)):
                body = ast.unparse(node.body[0]) if node.body else ""
                if "add_substr_to_state_dict" in body:
                    rules["no_model_prefix"] = ast.literal_eval(test.comparators[0])
    # Rules written as code, not data: check that they are still there, verbatim.
    for snippet in ("'Kireev2021Effectiveness' in model_name or model_name == 'Andriushchenko2020Understanding'",
                    "checkpoint[\n                'last']",
                    "rm_substr_from_state_dict(checkpoint['state_dict'],\n                                                   'module.')",
                    "state_dict = rm_substr_from_state_dict(state_dict, 'model.')",
                    "'{}_m{}.pt'.format(model_path, i)"):
        if snippet not in source:
            raise SystemExit(f"robustbench/utils.py changed: {snippet!r} not found; review the loading rules")
    missing = {"known_failing_models", "failure_messages", "no_model_prefix"} - set(rules)
    if missing:
        raise SystemExit(f"robustbench/utils.py changed: could not read {', '.join(sorted(missing))}")
    return rules


_TOLERATED_MISSING = {  # failure message -> keys it lets a checkpoint lack
    'Missing key(s) in state_dict: "mu", "sigma".': ["mu", "sigma"],
    'Missing key(s) in state_dict: "normalize.mean", "normalize.std"': ["normalize.mean", "normalize.std"],
    'Missing key(s) in state_dict: "mean", "std".': ["mean", "std"],
}
_TOLERATED_EXTRA = {
    'Unexpected key(s) in state_dict: "model_preact_hl1.1.weight"': ["model_preact_hl1.1.weight"],
    'Unexpected key(s) in state_dict: "conv1.scores"': ["conv1.scores"],
}


def entry_rules(name: str, dataset: str, keys: set[str], rules: dict, ensemble: bool) -> dict:
    """Container, prefixes and tolerated keys of one entry, as ``load_model`` applies them."""
    out = {"container": [], "strip": ["module."] if ensemble else ["module.", "model."], "add_prefix": None,
           "missing_ok": [], "unexpected_ok": []}
    if not ensemble and ("Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding"):
        out["container"] = ["last"]
    out["container"].append("state_dict?")  # 'state_dict' when present, else the dict itself
    if dataset == "imagenet" and not ensemble and name not in rules["no_model_prefix"]:
        out["add_prefix"] = "model."
    tolerant = name in rules["known_failing_models"] or dataset == "imagenet"
    if tolerant:
        for msg in rules["failure_messages"]:
            out["missing_ok"] += [k for k in _TOLERATED_MISSING.get(msg, []) if k in keys]
        # An unexpected key is only tolerated where RobustBench met it (the list).
        if name == "Andriushchenko2020Understanding":
            out["unexpected_ok"] += _TOLERATED_EXTRA['Unexpected key(s) in state_dict: "model_preact_hl1.1.weight"']
    return out


# ---------------------------------------------------------------------------------------
# RobustBench module -> filterlens architecture


def _f32(v) -> float:
    """A float32 statistic as the shortest decimal that reads back to it (0.4914, not 0.49140000343)."""
    import numpy as np

    return float(str(np.float32(float(v))))


def _stats(module, names=("mu", "sigma")):
    bufs = dict(module.named_buffers(recurse=False))
    if all(n in bufs for n in names):
        return [_f32(v) for v in bufs[names[0]].flatten()], [_f32(v) for v in bufs[names[1]].flatten()]
    return None


_TV_NAMES = {(False, (2, 2, 2, 2), 64): "tv-resnet18", (True, (3, 4, 6, 3), 64): "tv-resnet50",
             (True, (3, 4, 6, 3), 128): "tv-wide-resnet50-2"}


def _torchvision_resnet(inner) -> str | None:
    if type(inner).__name__ != "ResNet" or not hasattr(inner, "maxpool") or not hasattr(inner, "fc"):
        return None
    layers = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
    bottleneck = hasattr(inner.layer1[0], "conv3")
    width = inner.layer1[0].conv1.out_channels if bottleneck else 64
    return _TV_NAMES.get((bottleneck, layers, width))


_CIFAR10_STATS = ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616])


def _dm_stats(module) -> dict:
    """DeepMind nets keep their input statistics in non-persistent buffers: record them where
    they are not the builders' CIFAR-10 defaults (the CIFAR-100 models)."""
    mean, std = [_f32(v) for v in module.mean.flatten()], [_f32(v) for v in module.std.flatten()]
    return {} if (mean, std) == _CIFAR10_STATS else {"mean": mean, "std": std}


def describe(module, num_classes: int) -> tuple[str | None, dict, str]:
    """``(arch, kwargs, rb_class)`` of the filterlens module matching ``module``, or ``(None, {}, note)``."""
    if not isinstance(module, torch.nn.Module):  # built by the (stubbed) timm
        return None, {}, "a timm model (not in filterlens)"
    cls = type(module).__name__
    mro = [c.__name__ for c in type(module).__mro__]
    kw: dict = {}
    if num_classes != 10:
        kw["num_classes"] = num_classes
    stats = _stats(module)
    if stats is not None:
        kw.update(mean=stats[0], std=stats[1], stats_keys=["mu", "sigma"])
    if _torchvision_resnet(module):  # a bare torchvision ResNet (Chen2024Data_WRN_50_2)
        return _torchvision_resnet(module), ({"num_classes": num_classes} if num_classes != 1000 else {}), \
            "torchvision ResNet"
    if isinstance(module, torch.nn.Sequential) and hasattr(module, "normalize") and hasattr(module, "model"):
        name = _torchvision_resnet(module.model)
        if name is None:
            return None, {}, f"{type(module.model).__name__} (timm/torchvision, not in filterlens)"
        m, s = _stats(module.normalize, ("mean", "std"))
        return name, {"mean": m, "std": s, "wrap": True, **({"num_classes": num_classes}
                                                              if num_classes != 1000 else {})}, "torchvision ResNet"
    if cls == "DMWideResNet":
        groups = module.layer
        depth = 6 * len(groups[0].block) + 4
        width = groups[0].block[0].conv_0.out_channels // 16
        act = type(groups[0].block[0].relu_0).__name__
        kw = {"num_classes": num_classes} if num_classes != 10 else {}
        kw.update(activation="swish" if act in ("Swish", "SiLU") else "relu")
        if module.padding:
            kw["padding"] = module.padding
        kw.update(_dm_stats(module))
        return f"dm-wrn-{depth}-{width}", kw, cls
    if "DMPreActResNet" in mro:
        if [len(getattr(module, f"layer_{i}")) for i in range(4)] != [2, 2, 2, 2]:
            return None, {}, "DMPreActResNet-34 not in filterlens"
        act = type(module.relu).__name__
        kw = {"num_classes": num_classes} if num_classes != 10 else {}
        kw["activation"] = "swish" if act in ("Swish", "SiLU") else "relu"
        kw.update(_dm_stats(module))
        return "dm-preact-resnet18", kw, cls
    if cls == "Chen2020AdversarialNet":
        return "chen2020-ensemble", kw if num_classes != 10 else {}, cls
    if "PAF_WideResNet" in mro:
        return "pssilu-wrn-28-10", {"num_classes": num_classes} if num_classes != 10 else {}, cls
    if "RobustWideResNet" in mro:
        kw = {"num_classes": num_classes} if num_classes != 10 else {}
        kw["channel_configs"] = list(module.channel_configs)
        kw["depth_configs"] = list(module.depth_configs)
        kw["stride_config"] = list(module.stride_config)
        return "wrn-34-r", kw, cls
    if "WideResNet" in mro and hasattr(module, "block1") and type(module.block1).__name__ == "NetworkBlock" \
            and type(module.block1.layer[0]).__name__ == "BasicBlock":
        depth = 6 * len(module.block1.layer) + 4
        width = module.block1.layer[0].conv1.out_channels // 16
        if hasattr(module, "sub_block1"):
            kw["sub_block1"] = True
        if module.fc.bias is None:
            kw["bias_last"] = False
        if cls == "Hendrycks2019UsingNet":  # x -> 2x - 1
            kw.update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
        if cls == "Ding2020MMANet":
            kw["per_image"] = True
        if cls == "BoostingWideResNet":
            kw["hypersphere"] = True
        if cls not in ("WideResNet",) and stats is None and cls not in ("Hendrycks2019UsingNet", "Ding2020MMANet"):
            return None, {}, f"{cls}: forward differs from the TRADES WideResNet"
        return f"wrn-{depth}-{width}", kw, cls
    if "PreActResNet" in mro and hasattr(module, "layer1"):
        blocks = [len(getattr(module, f"layer{i}")) for i in range(1, 5)]
        block = type(module.layer1[0]).__name__
        if blocks != [2, 2, 2, 2] or block not in ("PreActBlock", "PreActBlockV2"):
            return None, {}, f"PreActResNet {blocks} of {block} not in filterlens"
        kw["bn_before_fc"] = bool(module.bn_before_fc)
        if block == "PreActBlockV2" or module.out_shortcut:
            kw["out_shortcut"] = True
        return "preact_resnet18", kw, cls
    if "ResNet" in mro and hasattr(module, "linear") and hasattr(module, "layer4") and not hasattr(module, "maxpool"):
        blocks = [len(getattr(module, f"layer{i}")) for i in range(1, 5)]
        block = type(module.layer1[0]).__name__
        name = {("BasicBlock", (2, 2, 2, 2)): "resnet18", ("BasicBlock", (3, 4, 6, 3)): "resnet34",
                ("Bottleneck", (3, 4, 6, 3)): "resnet50"}.get((block, tuple(blocks)))
        if name is None:
            return None, {}, f"ResNet {blocks} of {block} not in filterlens"
        return name, kw, cls
    return None, {}, f"{cls} not in filterlens"


def signature(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------
# Leaderboard and paper


def eps_value(text) -> float | None:
    try:
        return float(Fraction(str(text).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        return None


def leaderboard(rb_dir: Path, dataset: str, name: str) -> dict | None:
    path = rb_dir / "model_info" / dataset / THREAT / f"{name}.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    keep = ("name", "link", "authors", "venue", "architecture", "eps", "clean_acc", "autoattack_acc",
            "reported", "additional_data", "number_forward_passes", "unreliable", "footnote")
    out = {k: info[k] for k in keep if k in info}
    out["eps_value"] = eps_value(info.get("eps"))
    return out


def paper_pairs(paper_dir: Path) -> dict[tuple[str, str], dict]:
    """``(name, dataset) -> {robust_id, normal, arch, normal_clean_acc}`` for the paper's 71."""
    meta = {row["Name"]: row for row in csv.DictReader(open(paper_dir / "meta.csv", newline=""))}
    out = {}
    for row in csv.DictReader(open(paper_dir / "robust_vs_normal_pairings.csv", newline="")):
        rid, ds = row["Robust"], row["Dataset"]
        prefix, suffix = "robustbench_", f"_{ds}_linf_13"
        if not (rid.startswith(prefix) and rid.endswith(suffix)):
            raise SystemExit(f"unexpected robust id in the pairings: {rid}")
        name = rid[len(prefix):-len(suffix)]
        normal = meta.get(row["Normal"], {})
        out[(name, ds)] = {"robust_id": rid, "normal": row["Normal"], "arch": row["Arch"],
                           "robust_clean_acc": meta.get(rid, {}).get("Clean Accuracy"),
                           "robust_robust_acc": meta.get(rid, {}).get("Robust Accuracy"),
                           "normal_clean_acc": normal.get("Clean Accuracy") or None}
    return out


class _ParamsOnMeta(torch.overrides.TorchFunctionMode):
    """Allocate parameters and BN statistics (``torch.empty/zeros/ones``) on the meta device
    but keep ``torch.tensor`` on the CPU, so the input statistics keep their values."""

    _FACTORIES = {torch.empty, torch.zeros, torch.ones}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self._FACTORIES:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_meta(fn):
    with _ParamsOnMeta():
        return fn()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robustbench", type=Path, required=True, help="checkout of RobustBench/robustbench")
    ap.add_argument("--paper", type=Path, required=True, help="checkout of cvpr22w_RobustnessThroughTheLens")
    ap.add_argument("--torchvision-resnet", type=Path, help="a copy of torchvision/models/resnet.py")
    ap.add_argument("--out", type=Path, default=SNAPSHOT)
    ap.add_argument("--signatures", type=Path, default=SIGNATURES)
    args = ap.parse_args(argv)

    model_dicts = import_model_zoo(args.robustbench, args.torchvision_resnet)
    rules = loading_rules(args.robustbench)
    pairs = paper_pairs(args.paper)
    sys.path.insert(0, str(ROOT / "src"))
    from filterlens.archs import create_arch

    entries, sigs, sig_of = [], {}, {}
    problems = []
    for ds_enum, by_threat in model_dicts.items():
        dataset = ds_enum.value
        if dataset not in DATASETS:
            continue
        for tm_enum, models in by_threat.items():
            if tm_enum.value != THREAT:
                continue
            for name, spec in models.items():
                gid = spec.get("gdrive_id")
                ensemble = isinstance(gid, list)
                num_classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
                entry = {"name": name, "dataset": dataset, "threat_model": THREAT, "arch": None, "arch_kwargs": {},
                         "rb_class": None, "note": None}
                try:
                    module = build_meta(spec["model"])
                    arch, kwargs, rb_class = describe(module, num_classes)
                except Exception as exc:  # a stubbed (timm) model or an exotic constructor
                    module, arch, kwargs, rb_class = None, None, {}, None
                    entry["note"] = f"not built here ({type(exc).__name__}: {str(exc)[:80]}); not in filterlens"
                if arch is None and entry["note"] is None:
                    entry["note"] = rb_class
                    rb_class = None
                keys = set(module.state_dict()) if module is not None and arch is not None else set()
                entry.update(arch=arch, arch_kwargs=kwargs, rb_class=rb_class)
                if ensemble:
                    entry["files"] = [f"{name}.pt_m{i}.pt" for i in range(len(gid))]
                    entry["members"] = [f"branch{i + 1}" for i in range(len(gid))] if arch else None
                else:
                    entry["files"] = [f"{name}.pt"]
                entry["gdrive_ids"] = gid if ensemble else ([gid] if gid else [])
                entry["preprocessing"] = spec.get("preprocessing")
                entry.update(entry_rules(name, dataset, keys, rules, ensemble))
                if ensemble and arch:  # members load into models[i]: keys of one member
                    entry["missing_ok"] = []
                entry["leaderboard"] = leaderboard(args.robustbench, dataset, name)
                entry["paper"] = pairs.get((name, dataset))
                if arch is not None:
                    sig = signature(module)
                    with torch.device("meta"):
                        mine = create_arch(arch, **kwargs)
                    if signature(mine) == sig:
                        h = hashlib.sha1(json.dumps(sorted(sig.items())).encode()).hexdigest()[:12]
                        sigs.setdefault(h, sig)
                        sig_of[f"{dataset}/{name}"] = {"signature": h, "arch": arch, "arch_kwargs": kwargs}
                    else:
                        # a subclass with extra layers (MeanSparse's DMWideResNet): not supported
                        print(f"note: {dataset}/{name}: {rb_class} differs from filterlens {arch}; "
                              "recorded as not supported", file=sys.stderr)
                        entry.update(arch=None, arch_kwargs={}, rb_class=None,
                                     note=f"{rb_class} with layers filterlens's {arch} lacks; not in filterlens")
                entries.append(entry)
    missing_pairs = sorted(set(pairs) - {(e["name"], e["dataset"]) for e in entries})
    if missing_pairs:
        problems.append(f"paper models not on the leaderboards: {missing_pairs}")
    unsupported_paper = [f"{e['dataset']}/{e['name']}" for e in entries if e["paper"] and not e["arch"]]
    if unsupported_paper:
        problems.append(f"paper models without a filterlens architecture: {unsupported_paper}")
    snapshot = {
        "format": 1,
        "source": {"robustbench": "https://github.com/RobustBench/robustbench",
                   "robustbench_commit": git_head(args.robustbench),
                   "paper": "https://github.com/paulgavrikov/cvpr22w_RobustnessThroughTheLens",
                   "paper_commit": git_head(args.paper),
                   "generator": "scripts/robustbench_snapshot.py"},
        "entries": entries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(snapshot, indent=1, sort_keys=False) + "\n")
    args.signatures.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"entries": sig_of, "signatures": sigs}, sort_keys=True).encode()
    with open(args.signatures, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(payload)  # mtime=0: the same sources give the same bytes
    n_arch = sum(e["arch"] is not None for e in entries)
    print(f"{len(entries)} entries ({n_arch} with a filterlens architecture, "
          f"{sum(e['paper'] is not None for e in entries)} of the paper) -> {args.out}")
    print(f"{len(sig_of)} signatures ({len(sigs)} distinct) -> {args.signatures}")
    for p in problems:
        print("problem:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
