"""filterlens against RobustBench's own model code: same outputs, same filters.

Needs a checkout of github.com/RobustBench/robustbench (``FILTERLENS_TEST_ROBUSTBENCH=<dir>``)
and, for the ImageNet models, a copy of torchvision's ``models/resnet.py``
(``FILTERLENS_TEST_TV_RESNET=<file>``); skipped without them. For one entry of every family,
RobustBench's class builds the model (random weights; ``FILTERLENS_TEST_ROBUSTBENCH_ALL=1``:
every entry filterlens builds, not one per family), its ``state_dict()`` is saved in
RobustBench's layout, and filterlens loads that file: the logits on the same input must
equal RobustBench's, and every layer's filters must be the file's.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import filterlens.sources.robustbench as rb
from filterlens.sources.robustbench import find_entry

RB_DIR = os.environ.get("FILTERLENS_TEST_ROBUSTBENCH")
TV_RESNET = os.environ.get("FILTERLENS_TEST_TV_RESNET")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not RB_DIR, reason="set FILTERLENS_TEST_ROBUSTBENCH to a "
                                                                      "checkout of RobustBench/robustbench")]

CASES = [
    ("cifar10", "Carmon2019Unlabeled"), ("cifar10", "Rice2020Overfitting"), ("cifar10", "Pang2020Boosting"),
    ("cifar10", "Ding2020MMA"), ("cifar10", "Hendrycks2019Using"), ("cifar10", "Gowal2020Uncovering_28_10_extra"),
    ("cifar100", "Rebuffi2021Fixing_28_10_cutmix_ddpm"), ("cifar100", "Rebuffi2021Fixing_R18_ddpm"),
    ("cifar10", "Gowal2021Improving_R18_ddpm_100m"), ("cifar10", "Andriushchenko2020Understanding"),
    ("cifar10", "Wong2020Fast"), ("cifar100", "Rice2020Overfitting"), ("cifar10", "Addepalli2021Towards_RN18"),
    ("cifar10", "Engstrom2019Robustness"), ("cifar10", "Huang2021Exploring"), ("cifar10", "Dai2021Parameterizing"),
    ("cifar10", "Chen2020Adversarial"), ("imagenet", "Salman2020Do_R18"), ("imagenet", "Salman2020Do_R50"),
    ("imagenet", "Salman2020Do_50_2"), ("imagenet", "Chen2024Data_WRN_50_2"),
]


if os.environ.get("FILTERLENS_TEST_ROBUSTBENCH_ALL"):  # every entry filterlens builds (minutes)
    from filterlens.sources.robustbench import list_entries

    CASES = [(e.dataset, e.name) for e in list_entries() if e.arch is not None]


@pytest.fixture(scope="module")
def model_dicts():
    spec = importlib.util.spec_from_file_location(
        "robustbench_snapshot", Path(__file__).parents[1] / "scripts" / "robustbench_snapshot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.import_model_zoo(Path(RB_DIR), Path(TV_RESNET) if TV_RESNET else None)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point and not name.endswith(("mu", "sigma", "mean", "std")):
                fan_in = t[0].numel() if t.dim() > 1 else 1  # keeps deep random nets (WRN-106) finite
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)


@pytest.mark.parametrize("dataset, name", CASES)
def test_same_outputs_and_filters_as_robustbench(model_dicts, tmp_path, monkeypatch, dataset, name):
    if dataset == "imagenet" and not TV_RESNET:
        pytest.skip("set FILTERLENS_TEST_TV_RESNET to a copy of torchvision/models/resnet.py")
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.set_num_threads(1)
    spec = model_dicts[BenchmarkDataset(dataset)][ThreatModel("Linf")][name]
    theirs = spec["model"]().eval()
    _randomize(theirs, 0)
    entry = find_entry(name, dataset)
    folder = tmp_path / dataset / "Linf"
    folder.mkdir(parents=True)
    if entry.is_ensemble:
        for i, member in enumerate(theirs.models):
            torch.save({"state_dict": member.state_dict()}, folder / entry.files[i])
    else:
        state = theirs.state_dict()
        if entry.add_prefix:  # RobustBench's ImageNet files hold the bare network's keys
            state = {k[len(entry.add_prefix):]: v for k, v in state.items() if k.startswith(entry.add_prefix)}
        torch.save({"last": state, "best": {}} if "last" in entry.container else state, folder / entry.files[0])
    ours = rb.load_entry_module(entry, tmp_path)
    size = 224 if dataset == "imagenet" else 32
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ran: set[str] = set()  # the convs RobustBench's own forward pass calls (hooks, no filterlens code)
    hooks = [m.register_forward_hook(lambda *_, n=n: ran.add(n)) for n, m in theirs.named_modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    for h in hooks:
        h.remove()
    # float32 noise (e.g. RobustBench's Swish vs SiLU) grows through deep random nets: judge it
    # against the logits' scale
    assert torch.isfinite(want).all() and (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-6
    mf = rb.model_filters(entry, ours, name, f"robustbench:{name}")
    theirs_convs = {n: m.weight for n, m in theirs.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {l.name for l in mf.layers} == set(theirs_convs)
    if not entry.is_ensemble:  # unused: exactly the convs RobustBench's forward never calls (sub_block1)
        assert {l.name for l in mf.layers if l.unused} == set(theirs_convs) - ran
        assert all(l.depth is None and l.conv_depth is None for l in mf.layers if l.unused)
    for layer in mf.layers:
        assert torch.equal(torch.from_numpy(layer.weight), theirs_convs[layer.name].detach())
