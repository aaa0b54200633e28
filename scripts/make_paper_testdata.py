"""Build a small ``dataset.h5`` with the paper's own pipeline (for tests/data/paper/).

The paper's filter data came from onnxzoo2filterdb (``create_filter_storage.py`` then
``extract_filters.py``) and the last cell of ``generate_filter_db.ipynb`` in the paper's
repository. This script runs exactly that code on a tiny zoo of ONNX models exported here:

- three architectures: a VGG-like net and a ResNet-like net (1x1 projection shortcut) with a
  3x3 stem, and a net with a 7x7 stem (no 3x3 first layer) that also holds a ConvTranspose;
- CIFAR-10 and CIFAR-100 models, robust (``robustbench_..._linf_13``) and normal
  (``hso_normal_training_robustbench_..._13``) as the paper named them;
- a normal model serving in two pairs (CIFAR-10) and one serving in three (CIFAR-100), models
  in the file that are in no pair, one of them without a ``Robust`` value in ``meta.csv`` (the
  paper reads it as robust).

The weights are random (seeded), normal models with more near-zero filters, so the numbers
differ between groups. Usage::

    python scripts/make_paper_testdata.py [--out tests/data/paper] [--peers /tmp/filterlens_peers] \
        [--peer-python /tmp/refenv/bin/python]

The peers' code was written for pandas 1.x: run it with a Python of that era, e.g. a venv with
``numpy==1.26.4 pandas==1.5.3 scipy==1.13.1 h5py==3.11.0 tables==3.9.2 scikit-learn==1.5.2 tqdm
onnx==1.16.2`` (the reference values in tests/data/paper/reference.json came from that).

The peers' repositories are cloned into ``--peers`` when absent (or pass existing checkouts);
none of their code is copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPOS = {
    "onnxzoo2filterdb": "https://github.com/paulgavrikov/onnxzoo2filterdb",
    "cvpr22w_RobustnessThroughTheLens": "https://github.com/paulgavrikov/cvpr22w_RobustnessThroughTheLens",
}

META_COLUMNS = ["Name", "Paper", "Tracer Warning", "Selection", "Hide", "Robust", "Clean Accuracy",
                "Robust Accuracy", "Network", "Backbone", "Framework", "Pretraining-Dataset",
                "Training-Dataset", "Visual Category", "Visual Category_micro", "Precision",
                "Conv Weight Initializer", "Optimizer", "Task", "Input Shape", "Accessible"]

# name, arch, dataset, robust (None: no value in meta.csv), clean acc, robust acc, sparse share, seed
MODELS = [
    ("robustbench_Alpha2020_cifar10_linf_13", "vgg", "cifar10", True, 84.1, 51.2, 0.05, 1),
    ("robustbench_Beta2021_cifar10_linf_13", "vgg", "cifar10", True, 86.3, 55.0, 0.10, 2),
    ("robustbench_Gamma2021_cifar10_linf_13", "resnet", "cifar10", True, 88.0, 57.9, 0.15, 3),
    ("robustbench_Zeta2021_cifar10_linf_13", "resnet", "cifar10", True, 83.5, 49.8, 0.08, 10),
    ("robustbench_Delta2020_cifar100_linf_13", "stem7", "cifar100", True, 60.2, 28.1, 0.05, 4),
    ("robustbench_Epsilon2021_cifar100_linf_13", "stem7", "cifar100", True, 62.7, 30.4, 0.12, 5),
    ("robustbench_Eta2022_cifar100_linf_13", "stem7", "cifar100", True, 58.9, 26.6, 0.20, 11),
    ("hso_normal_training_robustbench_Alpha2020_cifar10_13", "vgg", "cifar10", False, 94.0, 0.0, 0.40, 6),
    ("hso_normal_training_robustbench_Gamma2021_cifar10_13", "resnet", "cifar10", False, 95.1, 0.0, 0.45, 7),
    ("hso_normal_training_robustbench_Delta2020_cifar100_13", "stem7", "cifar100", False, 76.0, 0.0, 0.35, 8),
    ("robustbench_Extra2022_cifar10_linf_13", "vgg", "cifar10", None, 80.0, 45.0, 0.30, 9),
]
# (robust, normal, arch, dataset); the normal Alpha model serves two pairs, Delta three; Zeta is in no pair
PAIRS = [
    ("robustbench_Alpha2020_cifar10_linf_13", "hso_normal_training_robustbench_Alpha2020_cifar10_13", "VGG", "cifar10"),
    ("robustbench_Beta2021_cifar10_linf_13", "hso_normal_training_robustbench_Alpha2020_cifar10_13", "VGG", "cifar10"),
    ("robustbench_Gamma2021_cifar10_linf_13", "hso_normal_training_robustbench_Gamma2021_cifar10_13", "ResNet", "cifar10"),
    ("robustbench_Delta2020_cifar100_linf_13", "hso_normal_training_robustbench_Delta2020_cifar100_13", "Stem7Net", "cifar100"),
    ("robustbench_Epsilon2021_cifar100_linf_13", "hso_normal_training_robustbench_Delta2020_cifar100_13", "Stem7Net", "cifar100"),
    ("robustbench_Eta2022_cifar100_linf_13", "hso_normal_training_robustbench_Delta2020_cifar100_13", "Stem7Net", "cifar100"),
]


def build(arch: str, n_classes: int):
    import torch.nn as nn

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            c = [3, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16]  # 11 conv levels: every decile holds a layer
            layers = []
            for i in range(11):
                layers += [nn.Conv2d(c[i], c[i + 1], 3, padding=1), nn.ReLU()]
                if i in (1, 4):
                    layers.append(nn.MaxPool2d(2))
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(16, n_classes)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.sc = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

        def forward(self, x):
            y = self.c2(self.c1(x).relu())
            return (y + (x if self.sc is None else self.sc(x))).relu()

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1), Block(8, 16, 2), Block(16, 16, 1), Block(16, 16, 1))
            self.fc = nn.Linear(16, n_classes)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x).relu()).mean((2, 3)))

    class Stem7(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 7, stride=2, padding=3)
            c = [8, 8, 8, 8, 8, 16, 16, 16, 16, 16]
            self.convs = nn.Sequential(*[m for i in range(9) for m in (nn.Conv2d(c[i], c[i + 1], 3, padding=1), nn.ReLU())])
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)  # not a Conv node: takes no part in depth
            self.head = nn.Conv2d(8, 16, 3, padding=1)
            self.fc = nn.Linear(16, n_classes)

        def forward(self, x):
            return self.fc(self.head(self.up(self.convs(self.stem(x).relu())).relu()).mean((2, 3)))

    return {"vgg": VGG, "resnet": ResNet, "stem7": Stem7}[arch]()


def make_zoo(zoo: Path) -> None:
    import torch

    for name, arch, dataset, robust, _, _, sparse, seed in MODELS:
        torch.manual_seed(seed)
        model = build(arch, 100 if dataset == "cifar100" else 10).eval()
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
                    w = m.weight
                    mask = rng.random(w.shape[:2]) < sparse  # near-zero filters: sparse ones
                    mask[0, 0] = False  # never a whole layer
                    w[torch.as_tensor(mask)] *= 1e-3
        sub = zoo / ("robust" if robust is not False else "normal")
        sub.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(sub / f"{name}.onnx"), dynamo=False,
                          input_names=["input"], output_names=["output"])


def write_meta(path: Path) -> None:
    import pandas as pd

    rows = []
    for name, arch, dataset, robust, clean, rob, _, _ in MODELS:
        row = {c: "" for c in META_COLUMNS}
        row.update({"Name": name, "Paper": "https://example.org/test", "Robust": "" if robust is None else robust,
                    "Clean Accuracy": f"{clean:.2f}", "Robust Accuracy": f"{rob:.2f}" if robust is not False else "",
                    "Network": arch, "Backbone": arch, "Framework": "pytorch", "Pretraining-Dataset": False,
                    "Training-Dataset": dataset, "Visual Category": "natural", "Precision": "fp32",
                    "Task": "Classification"})
        rows.append(row)
    pd.DataFrame(rows, columns=META_COLUMNS).to_csv(path, index=False)


def write_pairs(path: Path) -> None:
    import pandas as pd

    pd.DataFrame(PAIRS, columns=["Robust", "Normal", "Arch", "Dataset"]).to_csv(path)  # unnamed index, as the paper's


def ensure_peers(peers: Path) -> dict[str, Path]:
    out = {}
    for name, url in REPOS.items():
        d = peers / name
        if not d.exists():
            subprocess.run(["git", "clone", "--depth", "1", url, str(d)], check=True)
        out[name] = d
    return out


def notebook_cell(nb: Path, contains: str) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and contains in "".join(c["source"]))


def run_pipeline(peer: dict[str, Path], work: Path, python: str) -> Path:
    zoo_code, lens = peer["onnxzoo2filterdb"], peer["cvpr22w_RobustnessThroughTheLens"]
    out = work / "output" / "20220226_robustness"
    out.mkdir(parents=True)
    write_meta(out / "meta.csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # cells 4 and 5 of generate_filter_db.ipynb
    subprocess.run([python, "create_filter_storage.py", str(work / "zoo") + "/", str(out / "meta.csv"),
                    str(out) + "/", "--split_after", "1000", "--force"], cwd=zoo_code, check=True, env=env)
    subprocess.run([python, "extract_filters.py", str(out) + "/", str(out / "datastorage.meta.csv"),
                    str(out / "filterinfo.csv"), str(out) + "/"], cwd=zoo_code, check=True, env=env)
    # cell 7, as written, with the output root of this run
    pkg = work / "pkg"
    pkg.mkdir()
    (pkg / "onnxzoo2filterdb").symlink_to(zoo_code, target_is_directory=True)
    cell = notebook_cell(lens / "generate_filter_db.ipynb", "fid_by_mid_with_meta")
    cell = cell.replace('root_path = "/data/output"', f"root_path = {str(work / 'output')!r}")
    code = f"import sys; sys.path.insert(0, {str(pkg)!r})\nID = '20220226_robustness'\n" + cell
    subprocess.run([python, "-c", code], check=True, env=env)
    return out / "dataset.h5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" / "paper")
    ap.add_argument("--peers", type=Path, default=Path(tempfile.gettempdir()) / "filterlens_peers")
    ap.add_argument("--peer-python", default=sys.executable,
                    help="Python that runs the peers' code (the paper's era: pandas 1.5, numpy 1.26, onnx, h5py, "
                         "tables, tqdm); the models are exported with this one (needs torch)")
    args = ap.parse_args()
    peer = ensure_peers(args.peers)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_zoo(work / "zoo")
        h5 = run_pipeline(peer, work, args.peer_python)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(h5, args.out / "dataset.h5")
        shutil.copy(work / "output" / "20220226_robustness" / "meta.csv", args.out / "meta.csv")
        shutil.copy(work / "zoo" / "robust" / "robustbench_Delta2020_cifar100_linf_13.onnx",
                    args.out / "stem7_with_convtranspose.onnx")
    write_pairs(args.out / "robust_vs_normal_pairings.csv")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
