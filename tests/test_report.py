"""Tests of filterlens.report: figures and the self-contained HTML report."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from test_analysis import MIDDLE, build, chunker

from filterlens.analysis import ALL, GroupSpec, compare
from filterlens.report import build_figures, render_html, write_html
from filterlens.report import figures as F

SECTIONS = ["groups", "models", "figures", "statistics", "shift", "correlations", "claims", "settings", "notes"]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def data():
    models, layers, weights = build(n_models=4, differ=(0, MIDDLE), seed=3)
    # a hostile name: must come out escaped everywhere
    evil = "<script>alert('x')</script>&"
    rename = {"cifar10-rob0": evil}
    models["model"] = models["model"].replace(rename)
    layers["model"] = layers["model"].replace(rename)
    weights = {(rename.get(m, m), layer): w for (m, layer), w in weights.items()}
    spec = GroupSpec(name_a="robust <b>", name_b="normal")
    res = compare(models, layers, chunker(weights), groups=spec, n_boot=300)
    return models, layers, weights, res, evil


def test_figures_return_figures_and_save(tmp_path, data):
    models, layers, weights, res, _ = data
    sr = res.shift_result
    names = res.group_names
    w0 = weights[("cifar10-nor1", "conv0")]
    figs = {
        "metrics": F.metric_by_depth(res.per_model, names, save=tmp_path / "metrics"),
        "shift": F.shift_by_depth(sr.table, save=tmp_path / "shift"),
        "basis": F.pca_basis(sr.bases[("cifar10", ALL)], save=tmp_path / "basis"),
        "violins": F.coefficient_violins(sr.histograms[("cifar10", ALL)], names, save=tmp_path / "violins"),
        "cumvar": F.cumulative_variance(sr.own_pca, names, "cifar10", save=tmp_path / "cumvar"),
        "grid": F.filter_grid(w0, save=tmp_path / "grid"),
        "grid3": F.filter_grid(w0.reshape(-1, 3, 3), max_filters=20, save=tmp_path / "grid3"),
        "rgb": F.rgb_filters(w0, save=tmp_path / "rgb"),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
    # the main figure: one panel per metric, two groups' boxes in each
    assert len(figs["metrics"].axes) == 3
    assert len(figs["basis"].axes) == 9 + 1  # nine basis images and a colour bar


def test_filter_grid_is_symmetric_around_zero():
    w = np.zeros((2, 2, 3, 3))
    w[0, 0, 1, 1] = 0.5
    w[1, 1, 0, 0] = -2.0
    fig = F.filter_grid(w)
    im = fig.axes[0].images[0]
    assert im.get_clim() == (-2.0, 2.0)
    assert im.get_cmap().name == F.DIVERGING_CMAP
    zero = F.filter_grid(np.zeros((1, 1, 3, 3))).axes[0].images[0]
    assert zero.get_clim() == (-1.0, 1.0)


def test_rgb_filters_min_max_scaled():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3))
    w[3] = 0.7  # constant filter: mid-grey
    fig = F.rgb_filters(w)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 4 and images[0].shape == (3, 3, 3)
    for img in images[:3]:
        assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    assert np.all(np.asarray(images[3]) == 0.5)
    np.testing.assert_allclose(images[0][..., 0], (w[0, 0] - w[0].min()) / (w[0].max() - w[0].min()))
    with pytest.raises(ValueError):
        F.rgb_filters(rng.normal(size=(4, 8, 3, 3)))


def test_html_is_self_contained_and_complete(tmp_path, data):
    models, layers, weights, res, evil = data
    path = write_html(res, tmp_path / "out" / "report.html", layers, chunker(weights), title="t <i>")
    text = path.read_text("utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text and "@import" not in text and "url(" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for section in SECTIONS:
        assert f'<section id="{section}">' in text, section
    figs = build_figures(res, layers, chunker(weights))
    expected = {"metrics_cifar10", "shift_by_depth", "basis_cifar10", "violins_cifar10", "cumvar_cifar10",
                "filters_a", "rgb_a", "filters_b", "rgb_b"}
    assert expected <= set(figs)
    assert len(srcs) == len(figs)
    # user strings are escaped: the hostile model name and group name never appear raw
    assert evil not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in text
    assert "robust <b>" not in text and "robust &lt;b&gt;" in text
    assert "t &lt;i&gt;" in text
    # the statistics, claims and settings are there
    assert "(0.4, 0.5]" in text and "p (Holm)" in text
    for verdict in set(res.claims["verdict"]):
        assert f'verdict {verdict}"' in text
    for claim in res.claims["claim"]:
        assert claim in text
    assert "n_boot" in text and "range_mode" in text


def test_render_html_without_shift(data):
    models, layers, _, _, _ = data
    res = compare(models, layers, n_boot=100)
    text = render_html(res)
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert "not computed" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium for a browser screenshot")
def test_browser_screenshot(tmp_path, data):
    *_, res, _ = data
    page = write_html(res, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1280,2000", page.as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
