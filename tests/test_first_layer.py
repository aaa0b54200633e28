"""Tests of the first-layer study: hand-made cases with known answers, the real LeNet5 pair,
the figures, the report section and the command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import shared_path
from matplotlib.figure import Figure

from filterlens.firstlayer import (
    capture, centre_peaked, find_first_conv, first_layer_claims, first_layer_study, low_freq_share, measure_first_layer,
    pass_ratio, peak_energy_share, random_bank, relative_change, single_tap, spectral_centroid, training_group,
)
from filterlens.firstlayer.study import _perturb

CHECKER = np.array([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]])
DELTA = np.array([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]])


# --- kernels: frequency and shape ------------------------------------------------------------

def test_low_freq_share_known_kernels():
    kernels = np.stack([np.ones((3, 3)), CHECKER, DELTA, CHECKER - CHECKER.mean(), np.zeros((3, 3))])
    share = low_freq_share(kernels)
    assert share[0] == pytest.approx(1.0)  # pure DC
    assert share[1] == pytest.approx(1 / 81)  # checkerboard: (sum w)^2 / (9 * 9)
    assert share[1] < 0.02
    assert share[2] == pytest.approx(1 / 9)  # delta: flat spectrum
    assert share[3] == pytest.approx(0.0, abs=1e-12)  # zero-mean
    assert np.isnan(share[4])
    # scale-free, and a 4-D weight is flattened to its kernels
    assert low_freq_share(5 * np.ones((2, 1, 3, 3))) == pytest.approx([1.0, 1.0])
    # 5x5: the lowest ring is part of the low band with radius=1
    smooth = np.outer(np.hanning(7)[1:-1], np.hanning(7)[1:-1])
    assert low_freq_share(smooth, radius=1)[0] > 0.99 > low_freq_share(smooth)[0]


def test_spectral_centroid_orders_smooth_flat_and_checkerboard():
    c = spectral_centroid(np.stack([np.ones((3, 3)), DELTA, CHECKER]))
    assert c[0] < c[1] < c[2]
    assert c[2] > 0.5 and c[0] < 0.2
    assert 0 <= c.min() and c.max() <= np.sqrt(0.5)


def test_centre_peaked_and_single_tap():
    off = np.zeros((3, 3))
    off[0, 2] = -2.0
    blob = np.outer([0.2, 1, 0.2], [0.2, 1, 0.2])
    ring = np.ones((3, 3))
    kernels = np.stack([DELTA, -3 * DELTA, off, blob, ring, np.zeros((3, 3))])
    assert centre_peaked(kernels).tolist() == [True, True, False, True, False, False]
    assert single_tap(kernels).tolist() == [True, True, True, False, False, False]
    assert peak_energy_share(kernels)[:3] == pytest.approx([1.0, 1.0, 1.0])
    assert peak_energy_share(ring)[0] == pytest.approx(1 / 9)
    # random kernels are rarely centre-peaked
    rnd = np.random.default_rng(0).standard_normal((2000, 3, 3))
    assert centre_peaked(rnd).mean() < 0.1
    assert single_tap(rnd).mean() < 0.05
    # 5x5: a profile that grows outwards is not centre-weighted even with a big centre tap
    k5 = np.zeros((5, 5))
    k5[1:4, 1:4] = 0.1
    k5[2, 2] = 1.0
    k5[0, :] = 0.5
    assert not centre_peaked(k5)[0]
    k5[0, :] = 0.05  # ring means 1 > 0.1 > 0.016: centre-weighted
    assert centre_peaked(k5)[0]
    assert not centre_peaked(np.ones((1, 2, 2)))[0]  # even kernels have no centre


def test_training_group():
    assert training_group("pgd") == training_group("fgsm-rs") == training_group("robust") == "robust"
    assert training_group("normal") == training_group("Standard") == "normal"
    assert training_group(None) == training_group("") == "unknown"


# --- random banks and the pass ratio ----------------------------------------------------------

def test_random_bank_matches_norms():
    w = torch.randn(8, 3, 3, 3)
    w[0, 1] = 0
    g = torch.Generator().manual_seed(1)
    r = random_bank(w, g)
    assert r.shape == w.shape
    assert torch.allclose(r.flatten(2).norm(dim=2), w.flatten(2).norm(dim=2), atol=1e-5)
    assert torch.all(r[0, 1] == 0)
    assert not torch.allclose(r, w)
    rc = random_bank(w, g, match="channel")
    assert torch.allclose(rc.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), atol=1e-5)


def test_pass_ratio_of_a_random_bank_is_one():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3, 3, 3, generator=g) * torch.rand(64, 3, 1, 1, generator=g)  # unequal norms
    d = (torch.rand(16, 3, 24, 24, generator=g) * 2 - 1).sign() * 0.03
    per_channel, per_model = pass_ratio(w, d, n_banks=16, seed=3)
    assert per_model == pytest.approx(1.0, abs=0.05)
    assert np.nanmean(per_channel) == pytest.approx(1.0, abs=0.1)
    # the real bank is itself one of the reference banks: ~1 as well
    bank = random_bank(w, torch.Generator().manual_seed(7))
    _, same = pass_ratio(bank, d, banks=[bank, bank])
    assert same == pytest.approx(1.0)


def test_pass_ratio_low_pass_suppresses_a_checkerboard_perturbation():
    """At the Nyquist frequency a 3x3 constant kernel has gain 1 and a 3x3 checkerboard 9, both of
    l2 norm 3, against an rms gain of 3 for random kernels of norm 3: ratios ~1/3 and ~3."""
    checker = torch.tensor(CHECKER, dtype=torch.float32)
    i = torch.arange(24)
    board = (-1.0) ** (i[:, None] + i[None, :])
    d = 0.03 * board.expand(4, 1, 24, 24).clone()
    dc = torch.ones(4, 1, 3, 3)
    _, low = pass_ratio(dc, d, n_banks=64)
    _, high = pass_ratio(checker.expand(4, 1, 3, 3).clone(), d, n_banks=64)
    assert low == pytest.approx(1 / 3, rel=0.2)
    assert high == pytest.approx(3, rel=0.2)


# --- relative change ----------------------------------------------------------------------------

def test_relative_change_by_hand():
    a = torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]]])  # one image, channel 1 dead
    b = a.clone()
    b[0, 0, 0, 0] = 0.0
    per_channel, per_model = relative_change(a, b)
    assert per_channel[0] == pytest.approx(3 / 5)
    assert np.isnan(per_channel[1])
    assert per_model == pytest.approx(3 / 5)
    pc, pm = relative_change(a, a)
    assert pm == 0 and pc[0] == 0


class Tiny(nn.Module):
    """Normalisation, a 3x3 first conv with a chosen bank and bias, ReLU, then a classifier."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = True,
                 mean: float = 0.0, std: float = 1.0, size: int = 12):
        super().__init__()
        c_out, c_in = weight.shape[:2]
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.fc = nn.Linear(c_out * size * size, 10)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias if bias is not None else torch.zeros(c_out))
        torch.manual_seed(0)
        nn.init.normal_(self.fc.weight, std=0.05)

    def forward(self, x):
        x = (x - self.mean) / self.std
        return self.fc(self.act(self.conv(x)).flatten(1))


def _binary_images(n=32, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, size, size, generator=g) < 0.25).float()
    return x, torch.randint(0, 10, (n,), generator=g)


def test_zero_eps_changes_nothing():
    x, y = _binary_images()
    g = torch.Generator().manual_seed(1)
    model = Tiny(torch.randn(8, 1, 3, 3, generator=g)).eval()
    res = first_layer_study([("m", model, "normal")], x, y, 0.0, steps=3, n_boot=100)
    row = res.per_model.iloc[0]
    assert row["linf"] == 0
    assert row["rel_change"] == 0 and row["rel_change_pre"] == 0
    assert (res.per_filter["rel_change"].dropna() == 0).all()


def test_pgd_perturbations_stay_in_the_eps_ball():
    x, y = _binary_images(16)
    model = Tiny(torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(2))).eval()
    for eps in (0.1, 0.3):
        adv = _perturb(model, x, y, eps, steps=3, alpha=None, restarts=1, seed=0, batch_size=8)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert (adv - x).abs().max() > 0.5 * eps
        assert adv.min() >= 0 and adv.max() <= 1
    res = first_layer_study([("m", model, "normal")], x, y, 0.1, steps=3, n_boot=100)
    assert 0 < res.per_model.loc[0, "linf"] <= 0.1 + 1e-6


def test_identity_filter_gives_the_input_change():
    """No activation, a centre delta of weight 1 and no bias: a = normalised x, so the relative
    change is ||d|| / ||x|| per image, and the hook sees the normalised input."""
    x, y = _binary_images(8)
    x = 0.2 + 0.6 * x
    d = 0.05 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    w = torch.tensor(DELTA, dtype=torch.float32).view(1, 1, 3, 3)
    model = Tiny(w, relu=False, mean=0.5, std=0.25).eval()
    fc = find_first_conv(model, x)
    assert fc.activation == "none"
    zin, _ = capture(model, fc, x)
    assert torch.allclose(zin, (x - 0.5) / 0.25)
    m = measure_first_layer(model, x, x + d)
    expected = ((d / 0.25).flatten(1).norm(dim=1) / ((x - 0.5) / 0.25).flatten(1).norm(dim=1)).mean()
    assert m["model_rel_change"] == pytest.approx(float(expected), rel=1e-5)
    # a delta passes a perturbation like a random filter of its norm would, on average
    assert m["model_pass_ratio"] == pytest.approx(1.0, abs=0.25)


def test_thresholding_centre_filters_eliminate_more_than_random_filters():
    """Binary images (strokes 1, background 0). Centre deltas with bias -0.5 and a ReLU are
    thresholding filters: they ignore the background as long as 0 + d < 0.5.

    - d = +0.3 everywhere (clipped to [0, 1], so only the background changes): the thresholding
      layer's activation does not change at all; random filters of the same norms pass it;
    - d = +-0.3 at random: the background is still ignored, half of the stroke pixels drop by 0.3
      from an activation of 0.5, so the relative change is 0.3 / 0.5 / sqrt(2) = 0.42."""
    x, y = _binary_images(32, seed=4)
    n = 8
    delta = torch.tensor(DELTA, dtype=torch.float32).expand(n, 1, 3, 3).clone()
    thresh = Tiny(delta, torch.full((n,), -0.5)).eval()
    rnd = Tiny(random_bank(delta, torch.Generator().manual_seed(6))).eval()
    models = [("thresholding", thresh, "robust"), ("random", rnd, "normal")]
    res = first_layer_study(models, x, y, 0.3, x_adv=(x + 0.3).clamp(0, 1), n_boot=200)
    pm = res.per_model.set_index("model")
    assert pm.loc["thresholding", "rel_change"] == 0.0
    assert pm.loc["random", "rel_change"] > 0.1
    assert pm.loc["thresholding", "rel_change_pre"] > 0.1  # the conv alone passes it: the ReLU removes it
    assert pm.loc["thresholding", "centre_peaked_share"] == 1.0
    assert pm.loc["thresholding", "single_tap_share"] == 1.0
    assert pm.loc["thresholding", "low_freq_share"] == pytest.approx(1 / 9)
    assert pm.loc["random", "centre_peaked_share"] < 0.5
    assert pm.loc["thresholding", "attack"] == "given"
    sign = torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(5)))
    res2 = first_layer_study(models[:1], x, y, 0.3, x_adv=(x + 0.3 * sign).clamp(0, 1), n_boot=200)
    assert res2.per_model.loc[0, "rel_change"] == pytest.approx(0.6 / np.sqrt(2), abs=0.03)
    # statistics: filter level has 8 vs 8 filters; model level has too few models
    st = res.stats.set_index(["level", "metric"])
    assert st.loc[("filter", "rel_change"), "diff"] < 0
    assert st.loc[("filter", "rel_change"), "p_value"] < 0.01
    assert "too few" in st.loc[("model", "rel_change"), "note"]


# --- finding the first conv ---------------------------------------------------------------------

class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace this
            x = self.stem(x)
        return self.head(x.mean((2, 3)))


def test_find_first_conv_and_its_activation():
    from filterlens.archs import create_arch

    lenet = create_arch("lenet5").eval()
    fc = find_first_conv(lenet, torch.rand(1, 1, 28, 28))
    assert (fc.name, fc.activation, fc.found_by) == ("conv1", "relu", "fx")
    resnet = create_arch("small_resnet14", width=4).eval()  # F.relu(bn1(conv1(x)))
    fc = find_first_conv(resnet, torch.rand(1, 3, 32, 32))
    assert (fc.name, fc.activation) == ("conv1", "bn-relu")
    vgg = create_arch("small_vgg8", width=4, mean=[0.5] * 3, std=[0.25] * 3).eval()
    fc = find_first_conv(vgg, torch.rand(1, 3, 32, 32))
    assert (fc.name, fc.activation) == ("features.0", "bn-relu")
    fc = find_first_conv(Untraceable().eval(), torch.rand(1, 1, 8, 8))
    assert (fc.name, fc.activation, fc.found_by) == ("stem.0", "bn-relu", "hooks")
    z = torch.randn(2, 4, 5, 5)
    assert torch.allclose(fc.activate(z), F.relu(fc.post[0](z)))


def test_in_place_relu_does_not_corrupt_the_captured_output():
    from filterlens.archs import create_arch

    lenet = create_arch("lenet5").eval()  # relu1 is in place
    x = torch.rand(3, 1, 28, 28)
    fc = find_first_conv(lenet, x)
    _, out = capture(lenet, fc, x)
    assert torch.allclose(out, lenet.conv1(x))
    assert (out < 0).any()


# --- the real LeNet5 pair -------------------------------------------------------------------------

def _lenet(path):
    from filterlens.firstlayer import resolve_model

    return resolve_model(str(path), "lenet5")[1]


@pytest.fixture(scope="module")
def lenet_result():
    adv = _lenet(shared_path("models", "mnist_lenet5_advtrained.pt"))
    cln = _lenet(shared_path("models", "mnist_lenet5_clntrained.pt"))
    from filterlens.data import load_dataset

    shared_path("data", "mnist")
    x, y = load_dataset("mnist", "test").subset(200, seed=0).tensors()
    res = first_layer_study([("adv", adv, "robust"), ("clean", cln, "normal")], x, y, 0.3, steps=5, n_boot=2000,
                            dataset="mnist")
    transfer = first_layer_study([("adv", adv, "robust"), ("clean", cln, "normal")], x, y, 0.3, steps=5,
                                 transfer_from=("clean", cln), n_boot=500, dataset="mnist")
    return res, transfer


def test_lenet5_robust_first_layer_passes_less_of_the_perturbation(lenet_result):
    """Measured (n=200 MNIST test images, eps 0.3, PGD-5 against each model): the PGD-trained
    LeNet5's first-layer activations change about half as much (rel_change 0.28 vs 0.56); its
    filters are single-tap thresholding filters (71 % of its non-sparse kernels, 0 % in the
    normal model; 25 % of its kernels are sparse), and its linear filters pass the perturbation
    like random filters (pass ratio 1.00) while the normal model's pass 15 % more (1.15)."""
    res, transfer = lenet_result
    pm = res.per_model.set_index("model")
    adv, cln = pm.loc["adv"], pm.loc["clean"]
    assert adv["activation"] == cln["activation"] == "relu"
    assert adv["adv_acc"] > 0.8 > 0.2 > cln["adv_acc"]
    assert adv["rel_change"] < 0.7 * cln["rel_change"]
    assert adv["rel_change_nonsparse"] < 0.7 * cln["rel_change"]
    assert adv["rel_change_pre"] < cln["rel_change_pre"]
    assert adv["pass_ratio"] < cln["pass_ratio"]
    assert adv["single_tap_share"] > 0.5 > 0.1 > cln["single_tap_share"]
    assert adv["peak_energy_share"] > cln["peak_energy_share"]
    assert adv["sparse_share"] > cln["sparse_share"]
    st = res.stats.set_index(["level", "metric"])
    assert st.loc[("filter", "rel_change"), "ci_high"] < 0  # robust - normal, bootstrap CI below 0
    assert st.loc[("filter", "rel_change"), "p_value"] < 1e-3
    claims = first_layer_claims(res.stats).set_index("claim")
    assert claims.loc["activations_change_less", "verdict"] == "supported"
    assert claims.loc["thresholding", "verdict"] == "supported"
    assert claims.loc["thresholding", "level"] == "filter"  # one model per group
    # the same perturbations (crafted against the normal model) for both: the same answer
    tm = transfer.per_model.set_index("model")
    assert (tm["attack"] == "transfer:clean").all()
    assert tm.loc["adv", "rel_change"] < 0.7 * tm.loc["clean", "rel_change"]
    assert tm.loc["clean", "rel_change"] == pytest.approx(cln["rel_change"])


def test_lenet5_result_outputs(lenet_result, tmp_path):
    from filterlens.report.figures import save_figure
    from filterlens.report.first_layer import activation_figure, build_first_layer_figures, write_first_layer_html

    res, _ = lenet_result
    paths = res.save(tmp_path)
    assert {p.name for p in paths} >= {"per_model.csv", "per_filter.csv", "stats.csv", "first_layer.json"}
    data = json.loads((tmp_path / "first_layer.json").read_text())
    assert {r["model"] for r in data["per_model"]} == {"adv", "clean"}
    assert len(pd.read_csv(tmp_path / "per_filter.csv")) == 64
    figs = build_first_layer_figures(res, max_channels=4)
    assert set(figs) == {"first_layer_activations", "first_layer_metrics"}
    fig = activation_figure([res.examples["adv"], res.examples["clean"]], res.per_model, 4)
    assert isinstance(fig, Figure)
    png, pdf = save_figure(fig, tmp_path / "act")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:5] == b"%PDF-"
    page = write_first_layer_html(res, tmp_path / "fl.html", figs).read_text()
    assert '<section id="first-layer">' in page and page.count("data:image/png;base64,") == 2


# --- the report section and the hook in html.py ---------------------------------------------------

@pytest.fixture(scope="module")
def small_result():
    x, y = _binary_images(12, seed=8)
    g = torch.Generator().manual_seed(9)
    delta = torch.tensor(DELTA, dtype=torch.float32).expand(4, 1, 3, 3).clone()
    models = [("<b>evil</b>", Tiny(delta, torch.full((4,), -0.5)).eval(), "pgd"),
              ("plain", Tiny(torch.randn(4, 1, 3, 3, generator=g)).eval(), "normal")]
    return first_layer_study(models, x, y, 0.2, steps=2, n_boot=100)


def test_section_html_escapes_and_holds_tables(small_result):
    from filterlens.report.first_layer import first_layer_section, first_layer_section_from_result

    html = first_layer_section(small_result.per_model, small_result.stats)
    assert html.startswith('<section id="first-layer">') and html.endswith("</section>")
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert "rel_change" in html and "Robust vs normal" in html
    full = first_layer_section_from_result(small_result)
    assert full.count("data:image/png;base64,") == 2


def test_render_html_places_the_first_layer_section(small_result):
    from test_analysis import MIDDLE, build, chunker

    from filterlens.analysis import compare
    from filterlens.report import render_html
    from filterlens.report.first_layer import first_layer_section

    models, layers, weights = build(n_models=4, differ=(0, MIDDLE), seed=3)
    res = compare(models, layers, chunker(weights), n_boot=100)
    plain = render_html(res, figures={})
    assert 'id="first-layer"' not in plain and 'href="#first-layer"' not in plain
    section = first_layer_section(small_result.per_model, small_result.stats)
    for given in (section, small_result.per_model, {"per_model": small_result.per_model, "stats": small_result.stats},
                  small_result):
        page = render_html(res, figures={}, first_layer=given)
        assert page.count('<section id="first-layer">') == 1
        assert page.index('id="first-layer"') < page.index('<section id="settings">')
        assert '<a href="#first-layer">' in page
    # without the section the page is the same apart from the time stamp
    strip = lambda s: "\n".join(line for line in s.splitlines() if "generated" not in line)  # noqa: E731
    assert strip(plain) == strip(render_html(res, figures={}))


# --- the command ----------------------------------------------------------------------------------

def test_cli_first_layer(tmp_path):
    from typer.testing import CliRunner

    from filterlens.archs import create_arch
    from filterlens.cli.main import app
    from filterlens.robust.card import save_model

    clean = shared_path("models", "mnist_lenet5_clntrained.pt")
    shared_path("data", "mnist")
    kw = {"in_channels": 1, "width": 4, "mean": [0.1307], "std": [0.3081]}
    torch.manual_seed(0)
    mfile = tmp_path / "tiny.safetensors"
    save_model(create_arch("small_vgg8", **kw), mfile,
               {"name": "tiny", "arch": "small_vgg8", "arch_kwargs": kw, "dataset": "mnist",
                "training": {"method": "pgd"}})
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(app, ["first-layer", str(mfile), str(clean), "--arch", "lenet5", "--n", "20", "--steps", "2",
                            "--banks", "2", "-t", f"{clean}=normal", "--format", "json", "--out", str(out),
                            "--threads", "1"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[r.stdout.index("{"):])
    rows = {row["model"]: row for row in data["per_model"]}
    assert rows["tiny"]["group"] == "robust" and rows["tiny"]["activation"] == "bn-relu"
    assert rows["mnist_lenet5_clntrained"]["group"] == "normal"
    assert all(0 < row["linf"] <= 0.3 + 1e-6 for row in rows.values())
    for name in ("per_model.csv", "stats.csv", "first_layer.json", "first_layer.html",
                 "first_layer_activations.png", "first_layer_activations.pdf"):
        assert (out / name).is_file(), name
    bad = runner.invoke(app, ["first-layer", str(clean), "--dataset", "mnist"])
    assert bad.exit_code != 0 and "--arch" in str(bad.exception or bad.output)
