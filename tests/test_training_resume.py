"""Training survives interruptions: per-epoch state, exact resume, and the bundled CIFAR-10 sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from filterlens.archs import create_arch
from filterlens.robust.train import TrainConfig, TrainingError, train_model


class _Killed(Exception):
    """Stands in for the process being killed right after an epoch's state was written."""


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 32, 32, 3)) * 255).astype(np.uint8), rng.integers(0, 10, n)


def _train(method, state_file=None, resume=False, kill_after=None, epochs=3):
    torch.manual_seed(0)
    model = create_arch("small_vgg8", width=8)
    cfg = TrainConfig(method=method, epochs=epochs, batch_size=64, threads=1, guard_n=64, lr=0.05)

    def log(msg):
        if kill_after is not None and f"epoch {kill_after}/" in msg:
            raise _Killed

    result = train_model(model, _data(), cfg, progress=False, log=log, state_file=state_file, resume=resume)
    return model.state_dict(), result


@pytest.mark.parametrize("method", ["normal", "fgsm-rs"])
def test_resumed_run_gives_the_weights_of_an_uninterrupted_one(tmp_path, method):
    full, full_result = _train(method)
    state = tmp_path / "m.train-state.pt"
    with pytest.raises(_Killed):
        _train(method, state, kill_after=1)
    assert state.is_file()
    with pytest.raises(_Killed):  # killed a second time, after resuming once
        _train(method, state, resume=True, kill_after=2)
    resumed, resumed_result = _train(method, state, resume=True)
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert [h["loss"] for h in resumed_result.history] == [h["loss"] for h in full_result.history]
    assert len(resumed_result.history) == 3


def test_uninterrupted_and_different_state_are_refused(tmp_path):
    state = tmp_path / "s.pt"
    with pytest.raises(_Killed):
        _train("normal", state, kill_after=1)
    before = state.read_bytes()
    with pytest.raises(TrainingError, match="--resume"):
        _train("normal", state)  # never silently overwritten
    with pytest.raises(TrainingError, match="other settings"):
        _train("fgsm-rs", state, resume=True)
    assert state.read_bytes() == before
    state.write_bytes(b"<html>not a state</html>")
    with pytest.raises(TrainingError, match="not a readable training state"):
        _train("normal", state, resume=True)


def test_bundled_cifar_sample_is_small_balanced_and_plain_arrays():
    from filterlens.data.sample import SAMPLE_FILE, load_cifar10_sample

    assert SAMPLE_FILE.stat().st_size < 2_000_000
    ds = load_cifar10_sample()
    assert ds.images.shape == (500, 32, 32, 3) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels, minlength=10).tolist() == [50] * 10
    assert len(np.unique(ds.sample_indices)) == 500 and ds.sample_indices.max() < 10000
    with np.load(SAMPLE_FILE, allow_pickle=False) as z:  # nothing in it needs unpickling
        assert {k for k in z.files} == {"images", "labels", "indices", "origin"}


@pytest.mark.shared
def test_bundled_sample_equals_the_test_images_it_names():
    from conftest import shared_path
    from filterlens.data import load_dataset
    from filterlens.data.sample import load_cifar10_sample

    data_dir = shared_path("data", "cifar10-jpeg.tar.gz").parent
    sample = load_cifar10_sample()
    test = load_dataset("cifar10", "test", data_dir=data_dir, download=False)
    assert np.array_equal(test.images[sample.sample_indices], sample.images)
    assert np.array_equal(test.labels[sample.sample_indices], sample.labels)


def test_demo_first_layer_runs_offline_on_the_bundled_sample(monkeypatch):
    import filterlens.data as data
    from filterlens import demo, zoo

    if not any(m.get("dataset") == "cifar10" for m in zoo.list_models()):
        pytest.skip("the bundled zoo has no CIFAR-10 models")

    def no_data(*args, **kwargs):
        raise data.DataNotFoundError("no CIFAR-10 here")

    monkeypatch.setattr(data, "load_dataset", no_data)
    result, note = demo.zoo_first_layer(n=16, steps=1, n_boot=50)
    assert result is not None
    assert "bundled sample of 500 CIFAR-10 test images" in note and "no CIFAR-10 data set was found" in note
    assert len(result.per_model) == sum(m.get("dataset") == "cifar10" for m in zoo.list_models())


def test_one_output_is_trained_by_one_process_at_a_time(tmp_path):
    from filterlens.errors import FilterlensError
    from filterlens.robust.pipeline import _exclusive, train_and_save, train_state_path

    out = tmp_path / "m.safetensors"
    with _exclusive(train_state_path(out).with_suffix(".pt.lock")):
        with pytest.raises(FilterlensError, match="being trained by another process"):
            train_and_save(dataset="cifar10", arch="small_vgg8", out=out, epochs=1)
    assert not out.exists() and not train_state_path(out).exists()


def test_overfitting_guard_attacks_images_of_every_class_even_when_the_data_is_sorted():
    from filterlens.robust.train import guard_indices

    labels = np.repeat(np.arange(10), 5000)  # stored sorted by class, as image folders are
    idx = guard_indices(len(labels), 256, seed=0).numpy()
    assert len(idx) == 256 and len(set(idx)) == 256
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.min() >= 10  # every class present (expected 25.6 each)
    assert np.array_equal(idx, guard_indices(len(labels), 256, seed=0).numpy())
    assert len(guard_indices(100, 256, seed=0)) == 100


def _train_cfg(cfg, state_file=None, resume=False, branch=False, log=None):
    torch.manual_seed(0)
    model = create_arch("small_vgg8", width=8)
    result = train_model(model, _data(), cfg, progress=False, state_file=state_file, resume=resume, branch=branch,
                         log=log)
    return model.state_dict(), result


def _step(**kw):
    return TrainConfig(**{**dict(method="fgsm-rs", epochs=3, batch_size=64, threads=1, guard_n=64, lr=0.05,
                                 schedule="step", step_every=1, step_gamma=0.5), **kw})


def test_a_branched_run_gives_the_weights_of_a_direct_one(tmp_path):
    """A 4-epoch run with a decay after epoch 1, continued after its epoch 2 as a 3-epoch run that
    decays after epoch 2 (the same learning rate until then), is that 3-epoch run bit for bit."""
    direct, direct_result = _train_cfg(_step(epochs=3, step_every=2))
    state = tmp_path / "b.train-state.pt"
    with pytest.raises(_Killed):  # stop the longer run after its epoch 2
        torch.manual_seed(0)
        model = create_arch("small_vgg8", width=8)

        def log(msg):
            if "epoch 2/" in msg:
                raise _Killed

        train_model(model, _data(), _step(epochs=4, step_every=3), progress=False, log=log, state_file=state)
    with pytest.raises(TrainingError, match="other settings"):  # a plain resume still refuses it
        _train_cfg(_step(epochs=3, step_every=2), state, resume=True)
    logged = []
    branched, branched_result = _train_cfg(_step(epochs=3, step_every=2), state, resume=True, branch=True,
                                           log=logged.append)
    assert "resumed after epoch 2/3" in logged[0] and len(logged) == 2  # it ran only epoch 3
    for key in direct:
        assert torch.equal(direct[key], branched[key]), key
    assert [h["loss"] for h in branched_result.history] == [h["loss"] for h in direct_result.history]


def test_a_branch_whose_finished_epochs_differ_is_refused(tmp_path):
    from filterlens.robust.train import is_prefix

    after2 = _step(epochs=4, step_every=3).to_dict()
    assert is_prefix(after2, _step(epochs=6, step_every=2), 2)  # a later decay, a longer run
    assert is_prefix(after2, _step(epochs=2, step_every=5), 2)
    assert not is_prefix(after2, _step(epochs=4, step_every=1), 2)  # epoch 2 would have decayed
    assert not is_prefix(after2, _step(epochs=1, step_every=3), 2)  # shorter than the state
    assert not is_prefix(after2, _step(epochs=4, step_every=3, lr=0.1), 2)
    assert not is_prefix(after2, _step(epochs=4, step_every=3, weight_decay=1e-3), 2)
    # milestones: decays after epochs 2 and 5, so the first two epochs match a decay every 3
    assert is_prefix(after2, _step(epochs=8, milestones=[5, 2]), 2)
    assert not is_prefix(after2, _step(epochs=8, milestones=[1, 5]), 2)
    onecycle = _step(schedule="onecycle")
    assert not is_prefix({**onecycle.to_dict(), "epochs": 5}, onecycle, 1)  # its lr depends on the length
    ramp = _step(eps_warmup=0.5)
    assert not is_prefix({**ramp.to_dict(), "epochs": 5}, ramp, 1)
    state = tmp_path / "r.train-state.pt"
    _train_cfg(_step(epochs=2, step_every=3), state)
    before = state.read_bytes()
    with pytest.raises(TrainingError, match="not those of this run"):
        _train_cfg(_step(epochs=4, step_every=1), state, resume=True, branch=True)
    assert state.read_bytes() == before


def test_step_schedule_milestones():
    from filterlens.robust.train import lr_at

    cfg = TrainConfig(schedule="step", lr=0.1, step_gamma=0.1, milestones=[7, 21], epochs=28)
    lrs = [lr_at(cfg, e * 10 + 3, 280, 10) for e in range(28)]
    assert lrs[:7] == [0.1] * 7 and lrs[7:21] == [pytest.approx(0.01)] * 14 and lrs[21:] == [pytest.approx(0.001)] * 7
    assert "milestones" not in TrainConfig(schedule="step").to_dict()  # older states still resume
    assert cfg.to_dict()["milestones"] == [7, 21]
    with pytest.raises(TrainingError, match="milestones"):
        TrainConfig(schedule="step", milestones=[0, 3])
