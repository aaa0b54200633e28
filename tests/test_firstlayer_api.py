"""The first-layer package's API: settings, the training vocabulary, run_study, import directions."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import shared_path
from hypothesis import given
from hypothesis import strategies as st

from filterlens.errors import FilterlensError, FirstLayerError
from filterlens.firstlayer import FirstLayerSettings, first_layer_study, low_freq_share, run_study, training_group
from filterlens.training import (ADVERSARIAL_WORDS, NORMAL_WORDS, TRAINING_VALUES, TrainingLabelError, card_training,
                                 training_label)

SRC = Path(__file__).resolve().parents[1] / "src" / "filterlens"


# --- one training vocabulary ------------------------------------------------------------------------

@pytest.mark.parametrize("value, label", [
    ("adversarial", "adversarial"), ("robust", "adversarial"), ("AT", "adversarial"), ("PGD", "adversarial"),
    ("fgsm_rs", "adversarial"), ("trades", "adversarial"), ("pgd-l2", "adversarial"), (True, "adversarial"),
    (np.bool_(True), "adversarial"), ("1", "adversarial"), (" Yes ", "adversarial"),
    ("normal", "normal"), ("Standard", "normal"), ("clean", "normal"), ("natural", "normal"), (False, "normal"),
    ("0", "normal"), ("no", "normal"),
    (None, None), ("", None), ("  ", None), ("unknown", None), ("Unknown", None), (float("nan"), None),
])
def test_training_label(value, label):
    assert training_label(value) == label


@pytest.mark.parametrize("value", ["nromal", "robustish", "cifar10", "maybe"])
def test_training_label_refuses_unknown_words(value):
    with pytest.raises(TrainingLabelError, match="unknown training") as info:
        training_label(value)
    assert isinstance(info.value, FilterlensError) and isinstance(info.value, ValueError)


@given(st.sampled_from(sorted(ADVERSARIAL_WORDS | NORMAL_WORDS)), st.sampled_from(["", " ", "\t"]), st.booleans())
def test_training_label_ignores_case_blanks_and_underscores(word, pad, upper):
    spelled = pad + (word.upper() if upper else word).replace("-", "_") + pad
    assert training_label(spelled) == training_label(word) == ("normal" if word in NORMAL_WORDS else "adversarial")


def test_training_values_match_the_database():
    from filterlens.db.schema import TRAINING_VALUES as DB_VALUES

    assert set(TRAINING_VALUES) == set(DB_VALUES)


def test_card_training():
    assert card_training({"training": {"method": "pgd"}}) == "pgd"
    assert card_training({"training": "normal"}) == "normal"
    assert card_training({"robust": True}) == "adversarial"
    assert card_training({"robust": False}) == "normal"
    assert card_training({"arch": "x"}) is None and card_training(None) is None
    assert training_group(card_training({"training": {"method": "fgsm-rs"}})) == "robust"


# --- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("steps", -1), ("restarts", 0), ("n_banks", 0), ("match", "layer"),
                                          ("ci", 1.0), ("single_tap_share", 0.0), ("batch_size", 0)])
def test_settings_validate(field, value):
    with pytest.raises(FirstLayerError, match=field):
        FirstLayerSettings(**{field: value})


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3


def test_settings_object_and_keyword_overrides_agree():
    torch.manual_seed(0)
    a, b = _Tiny().eval(), _Tiny().eval()
    x, y = _data()
    models = [("a", a, "pgd"), ("b", b, "normal")]
    settings = FirstLayerSettings(steps=2, n_banks=2, n_boot=50, seed=3)
    by_object = first_layer_study(models, x, y, 0.1, settings)
    by_keywords = first_layer_study(models, x, y, 0.1, steps=2, n_banks=2, n_boot=50, seed=3)
    mixed = first_layer_study(models, x, y, 0.1, FirstLayerSettings(steps=7, n_banks=2, seed=3), steps=2, n_boot=50)
    for other in (by_keywords, mixed):
        assert other.settings == by_object.settings
        np.testing.assert_array_equal(other.per_model["rel_change"], by_object.per_model["rel_change"])
    assert by_object.settings["steps"] == 2 and by_object.settings["seed"] == 3
    assert list(by_object.per_model["group"]) == ["robust", "normal"]
    with pytest.raises(TypeError):
        first_layer_study(models, x, y, 0.1, stepz=2)


def test_a_misspelt_training_names_the_model():
    x, y = _data()
    with pytest.raises(FirstLayerError, match="b: unknown training 'nromal'"):
        first_layer_study([("a", _Tiny().eval(), "pgd"), ("b", _Tiny().eval(), "nromal")], x, y, 0.1, steps=1)


def test_kernel_measures_take_torch_and_numpy_alike():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(low_freq_share(w), low_freq_share(w.numpy().astype(np.float64)))


# --- run_study: the command's one call ---------------------------------------------------------------

def test_run_study_from_files(tmp_path):
    adv = shared_path("models", "mnist_lenet5_advtrained.pt")
    clean = shared_path("models", "mnist_lenet5_clntrained.pt")
    shared_path("data", "mnist")
    lines: list[str] = []
    res = run_study([str(adv), str(clean)], dataset="MNIST", eps="0.3", n_images=10, arch="lenet5",
                    trainings={"mnist_lenet5_advtrained": "AT", str(clean): "clean"},
                    settings=FirstLayerSettings(steps=1, n_banks=1, n_boot=20), threads=1, echo=lines.append)
    assert list(res.per_model["group"]) == ["robust", "normal"]
    assert list(res.per_model["training"]) == ["AT", "clean"]
    assert res.settings["dataset"] == "mnist" and res.settings["eps"] == pytest.approx(0.3)
    assert any(line.startswith("first layer: 2 model(s), 10 mnist test images") for line in lines)
    # without a training the model is measured, warned about and left out of the statistics
    lines.clear()
    res = run_study([str(adv)], dataset="mnist", n_images=6, arch="lenet5",
                    settings=FirstLayerSettings(steps=1, n_banks=1, n_boot=20), threads=1, echo=lines.append)
    assert res.per_model.loc[0, "group"] == "unknown"
    assert any(line.startswith("warning: mnist_lenet5_advtrained: training unknown") for line in lines)
    with pytest.raises(FilterlensError, match="no model 'nope'"):
        run_study([str(adv)], dataset="mnist", arch="lenet5", trainings=["nope=normal"])


def test_arch_module_is_the_one_way_to_a_module():
    from filterlens.sources import arch_module, load_model
    from filterlens.sources.checkpoint import read_state_dict

    path = shared_path("models", "mnist_lenet5_advtrained.pt")
    module, info = arch_module(read_state_dict(path), "lenet5")
    assert info.name == "lenet5" and isinstance(module, nn.Module)
    first = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
    layers = load_model(path, arch="lenet5").layers
    np.testing.assert_allclose(layers[0].weight, first.weight.detach().numpy().reshape(layers[0].weight.shape))


# --- import directions ------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports at run time (relative imports resolved against its
    package; ``if TYPE_CHECKING:`` blocks left out)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_analysis_imports_no_torch_and_no_robust():
    for path in sorted((SRC / "analysis").glob("*.py")):
        bad = {m for m in _imports(path) if m.split(".")[0] == "torch" or m.startswith("filterlens.robust")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_firstlayer_torch_free_parts():
    for name in ("kernels", "stats", "result", "settings"):
        mods = _imports(SRC / "firstlayer" / f"{name}.py")
        assert not {m for m in mods if m.split(".")[0] == "torch"}, name
        assert not {m for m in mods if m.startswith("filterlens.firstlayer.") and m.split(".")[2] in
                    ("tracing", "response", "study", "run")}, name


def test_report_modules_import_one_way():
    markup = _imports(SRC / "report" / "markup.py")
    assert not {m for m in markup if m.startswith("filterlens.")}, "markup imports nothing of filterlens"
    first_layer = _imports(SRC / "report" / "first_layer.py")
    assert "filterlens.report.html" not in first_layer
    assert not {m for m in first_layer if m.rsplit(".", 1)[-1].startswith("_") and m.startswith("filterlens.")}
    assert "re" not in first_layer  # the CSS is a file of its own, not pulled out of a template
