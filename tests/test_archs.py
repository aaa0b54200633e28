"""The architecture registry: every arch builds, traces, has the published size and the
original key names, and the real checkpoints in ../shared load strictly and predict well."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx

from filterlens.archs import arch_info, create_arch, list_archs
from filterlens.errors import ArchitectureError

SHARED = Path(__file__).parents[1].parent / "shared"
MODELS = SHARED / "models"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

REGISTERED = {
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
    "preact_resnet18",
    "wrn-28-10",
    "wrn-34-10",
    "wrn-34-20",
    "wrn-70-16",
    "dm-wrn-28-10",
    "dm-wrn-70-16",
    "lenet5",
    "dm-preact-resnet18",
    "wrn-34-r",
    "pssilu-wrn-28-10",
    "chen2020-ensemble",
    "tv-resnet18",
    "tv-resnet50",
    "tv-wide-resnet50-2",
}
IMAGENET_ARCHS = {"tv-resnet18", "tv-resnet50", "tv-wide-resnet50-2"}
# Every registered name (including any registered elsewhere in the package) plus small
# members of the parametric families, which run the code of the big ones for real.
ALL_NAMES = sorted({i.name for i in list_archs()} | REGISTERED)
SMALL_FAMILY_MEMBERS = ["wrn-16-2", "dm-wrn-16-2", "cifar_resnet8"]
# Above this many parameters a model is built and run on the meta device (shapes only):
# too slow for a unit test on a shared CPU.
BIG = 30_000_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batches gain nothing from threads, and on a busy shared CPU the idle threads'
    spin-waiting makes the module several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_arch(name: str, **kwargs) -> torch.nn.Module:
    """Build on the meta device: shapes and counts only, no memory, no init cost."""
    with torch.device("meta"):
        return create_arch(name, **kwargs)


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared models and data live in ../shared)")
    return path


def test_registered_names() -> None:
    assert REGISTERED <= {i.name for i in list_archs()}


@pytest.mark.parametrize("name", ALL_NAMES + SMALL_FAMILY_MEMBERS)
def test_forward_and_fx_trace(name: str) -> None:
    info, _ = arch_info(name)
    torch.manual_seed(0)
    big = n_params(meta_arch(name)) > BIG
    device = "meta" if big else "cpu"
    model = (meta_arch(name) if big else create_arch(name)).eval()
    x = torch.rand(2, *info.input_shape, device=device)
    traced = torch.fx.symbolic_trace(model)
    called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not getattr(model, "sub_block1", None):  # sub_block1 is never called
        assert sorted(c for c in called if c in convs) == sorted(convs)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, info.num_classes)
        if not big:
            torch.testing.assert_close(traced(x), out)


def test_num_classes_and_input_shapes() -> None:
    out = create_arch("cifar_resnet20", num_classes=100)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert meta_arch("wrn-28-10", num_classes=100).fc.out_features == 100
    assert meta_arch("dm-wrn-28-10", num_classes=100).logits.out_features == 100
    assert arch_info("lenet5")[0].input_shape == (1, 28, 28)
    assert all(arch_info(n)[0].input_shape == (3, 32, 32) for n in REGISTERED - {"lenet5"} - IMAGENET_ARCHS)
    assert all(arch_info(n)[0].input_shape == (3, 224, 224) for n in IMAGENET_ARCHS)
    assert create_arch("wrn-16-2", sub_block1=True).sub_block1 is not None


# Published sizes: akamaster's table (0.27M, 0.46M, 0.66M, 0.85M, 1.7M), kuangliu's
# ResNet-18 11.17M, WRN-28-10 36.5M and WRN-34-10 46.2M (Zagoruyko & Komodakis; TRADES),
# WRN-70-16 266.8M (Gowal et al. 2020). Counts are parameters incl. BN affine, no buffers.
@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar_resnet20", 269_722),
        ("cifar_resnet32", 464_154),
        ("cifar_resnet44", 658_586),
        ("cifar_resnet56", 853_018),
        ("cifar_resnet110", 1_727_962),
        ("resnet18", 11_173_962),
        ("resnet34", 21_282_122),
        ("resnet50", 23_520_842),
        ("preact_resnet18", 11_172_170),
        ("wrn-28-10", 36_479_194),
        ("wrn-34-10", 46_160_474),
        ("wrn-34-20", 184_531_674),
        ("wrn-70-16", 266_796_506),
        ("dm-wrn-28-10", 36_479_194),
        ("dm-wrn-70-16", 266_796_506),
        ("lenet5", 648_226),
        # torchvision's published sizes: 11,689,512 / 25,557,032 / 68,883,240
        ("tv-resnet18", 11_689_512),
        ("tv-resnet50", 25_557_032),
        ("tv-wide-resnet50-2", 68_883_240),
    ],
)
def test_parameter_counts(name: str, expected: int) -> None:
    assert n_params(meta_arch(name)) == expected


def test_parameter_counts_variants() -> None:
    # RobustBench's PreActResNet18() (no final BN), 1202-layer CIFAR ResNet (19.4M).
    assert n_params(meta_arch("preact_resnet18", bn_before_fc=False)) == 11_171_146
    assert n_params(meta_arch("cifar_resnet1202")) == 19_421_274  # akamaster: 19.4M


def keys(name: str, **kwargs) -> set[str]:
    return set(meta_arch(name, **kwargs).state_dict())


def test_key_names_match_the_original_code() -> None:
    k = keys("cifar_resnet20")
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.2.bn2.bias"} <= k
    assert {"linear.weight", "linear.bias"} <= k
    assert not any("shortcut" in key for key in k)  # option A has no parameters

    k = keys("resnet50")
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.weight", "linear.bias"} <= k
    assert {"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_mean"} <= k
    assert "layer2.1.shortcut.0.weight" not in k

    k = keys("preact_resnet18")
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight"} <= k
    assert {"bn.weight", "linear.weight"} <= k
    assert not any(key.startswith("layer1.0.shortcut") for key in k)
    assert "bn.weight" not in keys("preact_resnet18", bn_before_fc=False)

    k = keys("wrn-28-10")
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight"} <= k
    assert {"block3.layer.3.conv2.weight", "bn1.running_mean", "fc.weight", "fc.bias"} <= k
    assert "block1.layer.1.convShortcut.weight" not in k
    assert not any(key.startswith("sub_block1") for key in k)
    assert "sub_block1.layer.4.conv2.weight" in keys("wrn-34-10", sub_block1=True)
    assert "fc.bias" not in keys("wrn-28-10", bias_last=False)

    k = keys("dm-wrn-28-10")
    assert {"init_conv.weight", "batchnorm.running_var", "logits.weight"} <= k
    assert not {"mean", "std"} & k  # non-persistent, as in RobustBench
    block = "layer.0.block.0."
    assert {block + p for p in ("batchnorm_0.weight", "conv_0.weight", "shortcut.weight")} <= k
    assert "layer.2.block.3.conv_1.weight" in k and "layer.0.block.1.shortcut.weight" not in k

    assert list(meta_arch("lenet5").state_dict()) == [
        f"{layer}.{p}"
        for layer in ("conv1", "conv2", "linear1", "linear2")
        for p in ("weight", "bias")
    ]


def test_normalization_is_not_in_the_state_dict() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    for name in ("cifar_resnet20", "resnet18", "preact_resnet18", "wrn-28-10"):
        plain, normed = meta_arch(name), meta_arch(name, mean=mean, std=std)
        assert list(plain.state_dict()) == list(normed.state_dict()), name
    torch.manual_seed(0)
    plain = create_arch("cifar_resnet20").eval()
    normed = create_arch("cifar_resnet20", mean=mean, std=std).eval()
    normed.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), plain((x - m) / s))
    lenet = create_arch("lenet5", mean=[0.1307], std=[0.3081])
    assert lenet(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    traced = torch.fx.symbolic_trace(normed)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), normed(x))


def test_parametric_names() -> None:
    info, kwargs = arch_info("wideresnet-34-10")
    assert (info.name, kwargs) == ("wrn-34-10", {"depth": 34, "widen_factor": 10})
    info, kwargs = arch_info("WRN_40_2")
    assert (info.name, kwargs) == ("wrn-40-2", {"depth": 40, "widen_factor": 2})
    model = create_arch("wrn-16-2").eval()
    assert len(model.block1.layer) == 2 and model.fc.in_features == 128
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    dm = meta_arch("dm-wrn-106-16")
    assert len(dm.layer[0].block) == 17 and dm.logits.in_features == 1024
    swish = meta_arch("dm-wrn-28-10", activation="swish")
    assert isinstance(swish.layer[0].block[0].relu_0, torch.nn.SiLU)
    assert arch_info("cifar_resnet1202")[1] == {"depth": 1202}
    assert arch_info("CIFAR-ResNet20")[0].name == "cifar_resnet20"


def test_errors() -> None:
    with pytest.raises(ArchitectureError, match="Did you mean preact-resnet18"):
        create_arch("preact-resnet-18")
    with pytest.raises(ArchitectureError, match="unknown architecture 'vgg16'"):
        create_arch("vgg16")
    with pytest.raises(ArchitectureError, match=r"\(D - 4\) % 6 == 0.*got 30"):
        create_arch("wrn-30-10")
    with pytest.raises(ArchitectureError, match=r"\(D - 4\) % 6 == 0"):
        create_arch("dm-wrn-30-10")
    with pytest.raises(ArchitectureError, match="6n \\+ 2"):
        create_arch("cifar_resnet21")
    with pytest.raises(ArchitectureError, match="both mean and std"):
        create_arch("resnet18", mean=(0.5, 0.5, 0.5))
    with pytest.raises(ArchitectureError, match="input channel"):
        create_arch("resnet18", mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ArchitectureError, match="sequence of numbers"):
        create_arch("resnet18", mean="abc", std=(0.5, 0.5, 0.5))
    with pytest.raises(ArchitectureError, match="num_classes"):
        create_arch("lenet5", num_classes=0)


# --------------------------------------------------------------------------------------
# Real checkpoints and data in ../shared


def read_idx(path: Path, count: int) -> np.ndarray:
    """The first ``count`` items of a gzipped MNIST IDX file (images or labels)."""
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        assert head[:2] == b"\x00\x00" and head[2] == 0x08, "not an unsigned-byte IDX file"
        ndim = head[3]
        dims = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
        per_item = int(np.prod(dims[1:])) if ndim > 1 else 1
        data = np.frombuffer(f.read(count * per_item), dtype=np.uint8)
    return data.reshape(count, *dims[1:])


@pytest.mark.shared
@pytest.mark.parametrize("which", ["clntrained", "advtrained"])
def test_lenet5_checkpoints_load_and_classify_mnist(which: str) -> None:
    ckpt = need_shared(MODELS / f"mnist_lenet5_{which}.pt")
    mnist = need_shared(SHARED / "data" / "mnist")
    model = create_arch("lenet5").eval()
    model.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu"), strict=True)
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz", 1000)
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz", 1000)
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    with torch.no_grad():
        accuracy = (model(x).argmax(1).numpy() == labels).mean()
    assert accuracy >= 0.97, accuracy


def load_resnet20() -> torch.nn.Module:
    path = need_shared(MODELS / "cifar10_resnet20-12fca82f.th")
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert set(ckpt) == {"best_prec1", "state_dict"}
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    model = create_arch("cifar_resnet20", mean=IMAGENET_MEAN, std=IMAGENET_STD).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.shared
def test_resnet20_checkpoint_loads_strictly() -> None:
    model = load_resnet20()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(torch.rand(8, 3, 32, 32))
    assert torch.isfinite(logits).all()
    assert logits.std(0).min() > 0  # not a constant output


@pytest.mark.shared
def test_resnet20_classifies_cifar10_jpeg() -> None:
    """50 test images per class: 91.7 % on the original, about 10 points less on the JPEGs."""
    Image = pytest.importorskip("PIL.Image")
    archive = need_shared(SHARED / "data" / "cifar10-jpeg.tar.gz")
    model = load_resnet20()
    classes = "airplane automobile bird cat deer dog frog horse ship truck".split()
    images, labels = [], []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")  # cifar10-jpeg/test/<class>/NNNN.jpg
            is_test = member.isfile() and len(parts) == 4 and parts[1] == "test"
            if is_test and int(parts[3][:4]) < 50:
                data = tar.extractfile(member).read()
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                labels.append(classes.index(parts[2]))
    assert len(images) == 500
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert accuracy >= 0.70, accuracy
