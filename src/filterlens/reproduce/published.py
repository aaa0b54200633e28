"""The paper's published numbers (docs/definitions.md, "The published numbers"), keyed as the output."""

from __future__ import annotations

from typing import Any, Iterator

from ..analysis.bins import DECILES, FIRST

_KL_DEPTH = {
    "cifar10": [.4724, .0241, .0273, .0577, .0143, .0135, .0498, .0278, .1113, 1.0960, 1.5359],
    "cifar100": [.6258, .0186, .0285, .0610, .0109, .0235, .1125, .0959, .0417, .2878, .7857],
    "imagenet": [None, .0371, .0393, .0275, .0147, .0362, .0480, .0242, .1584, .0184, .0357],
}

#: The published values, in the layout of :meth:`ReproduceResult.numbers`.
PUBLISHED: dict[str, Any] = {
    "sparse_share": {"robust": 0.094475, "normal": 0.394804},
    "pca_entropy": {"full": 0.687796, "robust": 0.750203, "normal": 0.517639},
    "pairs_robust_flatter": {"count": 70, "of": 71, "exceptions": ["Salman2020Do_50_2"]},
    "kl_by_dataset": {"cifar10": 0.62169, "cifar100": 0.17417, "imagenet": 0.018077},
    "kl_by_dataset_each_model_once": {"cifar10": 0.55328, "cifar100": 0.16285, "imagenet": 0.016086},
    "kl_by_depth": {ds: dict(zip([FIRST, *DECILES], v)) for ds, v in _KL_DEPTH.items()},
    "spearman": {"cifar10": {"entropy": 0.438, "sparsity": -0.274},
                 "cifar100": {"entropy": 0.130, "sparsity": -0.203},
                 "imagenet": {"entropy": -0.6, "sparsity": -0.1}},
}

#: How exactly each published value is known (the KL by depth was read off a figure).
PRECISION = {"kl_by_depth": "read from the paper's figure, about +-0.001"}


def published_values() -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(path, value)`` of every published number, e.g. ``(("kl_by_dataset", "cifar10"), 0.62169)``
    (a path, since bin labels like ``(0.0, 0.1]`` hold dots)."""

    def walk(prefix: tuple[str, ...], obj: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk((*prefix, str(k)), v)
        else:
            yield prefix, obj

    yield from walk((), PUBLISHED)
