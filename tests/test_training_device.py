"""Training on a GPU: the same random draws as on the CPU, states that resume on either device.

The CUDA tests run where a GPU is present (they are skipped on the CPU-only CI machine); the
refusals run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from filterlens.archs import create_arch
from filterlens.robust.evaluate import pgd_accuracy
from filterlens.robust.train import TrainConfig, TrainingError, resolve_device, train_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 32, 32, 3)) * 255).astype(np.uint8), rng.integers(0, 10, n)


def _model():
    torch.manual_seed(0)
    return create_arch("small_vgg8", width=8)


def test_unknown_or_missing_devices_are_refused():
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(TrainingError, match="not supported"):
        resolve_device("meta")
    with pytest.raises(TrainingError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cli_train_on_a_missing_gpu_is_one_line_and_writes_nothing(tmp_path, capsys):
    from security_helpers import assert_one_error_line, run_cli  # imported here: it needs the database stack

    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "train", "-d", "cifar10", "-a", "small_vgg8", "-o", out, "--device", "cuda",
                           "--no-progress")
    assert code != 0
    assert_one_error_line(err, "no CUDA GPU", "--device cpu")
    assert list(tmp_path.iterdir()) == []


def _training_inputs(method: str, device: str, seed: int = 0) -> list[torch.Tensor]:
    """What the model is fed at the start of every training step: the augmented batch (normal)
    or the attack's random start (pgd, fgsm-rs), which depend on the draws alone, not on the
    weights. (Later attack steps follow gradient signs, which rounding can flip.)"""
    per_step = {"normal": 1, "fgsm-rs": 2, "pgd": 3}[method]  # forward calls per step (pgd: 2 steps)
    seen: list[torch.Tensor] = []
    model = _model()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().cpu().contiguous())
                                    if m.training else None)  # the guard's evaluation runs in eval mode
    cfg = TrainConfig(method=method, epochs=2, batch_size=64, threads=1, guard_n=64, lr=0.05, attack_steps=2,
                      seed=seed)
    result = train_model(model, _data(), cfg, progress=False, device=device)
    assert [h["device"] for h in result.history] == [device, device]
    assert next(model.parameters()).device.type == device  # the model is left on its device
    assert len(seen) == per_step * 2 * (256 // 64)
    return seen[::per_step]


@cuda
@pytest.mark.parametrize("method", ["normal", "pgd", "fgsm-rs"])
def test_gpu_training_draws_what_cpu_training_draws(method):
    """The same data order, augmentation and attack starts on both devices; another seed differs."""
    on_cpu, on_gpu = _training_inputs(method, "cpu"), _training_inputs(method, "cuda")
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(on_cpu, on_gpu))
    other = _training_inputs(method, "cpu", seed=1)
    assert not any(torch.allclose(a, b) for a, b in zip(on_cpu, other))


@cuda
def test_a_gpu_state_resumes_on_the_cpu_and_back(tmp_path):
    state = tmp_path / "m.train-state.pt"

    def run(epochs, dev):
        model = _model()
        cfg = TrainConfig(method="fgsm-rs", epochs=epochs, batch_size=64, threads=1, guard_n=64, lr=0.05,
                          schedule="constant")
        return model, train_model(model, _data(), cfg, progress=False, state_file=state, resume=True,
                                  branch=True, device=dev)

    run(1, "cuda")
    saved = torch.load(state, weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["model"].values())
    run(2, "cpu")
    model, result = run(3, "cuda")
    assert [h["device"] for h in result.history] == ["cuda", "cpu", "cuda"]
    assert all(np.isfinite(h["loss"]) for h in result.history)


@cuda
def test_pgd_evaluation_starts_alike_on_both_devices():
    x = torch.rand(200, 3, 32, 32)
    y = torch.randint(0, 10, (200,))
    model = _model().eval()
    on_cpu = pgd_accuracy(model, x, y, 8 / 255, steps=5, seed=0)
    on_gpu = pgd_accuracy(model.cuda(), x.cuda(), y.cuda(), 8 / 255, steps=5, seed=0)
    assert abs(on_cpu - on_gpu) <= 2 / 200
