"""Chen et al. 2020's three-branch ensemble (RobustBench ``Chen2020AdversarialNet``).

Three pre-activation-bottleneck ResNet-50s (``branch1..branch3``, CIFAR stem) share one
normalised input; the output is the mean of their softmax probabilities. As in RobustBench,
the same three modules are also held in ``models`` (a ModuleList), so every weight has two
state-dict keys (``branch1.conv1.weight`` and ``models.0.conv1.weight``); the input
statistics are the persistent buffers ``mu``/``sigma``. Module names (and so layer names)
are the branch names: ``named_modules`` lists each shared module once, under ``branchN``.

RobustBench stores each member in its own file (``<name>.pt_m{i}.pt``) and loads it into
``models[i]``; :attr:`Chen2020Ensemble.members` gives that order.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._common import NormalizedInput, Stats, check_num_classes
from .registry import register_arch
from .resnet import PreActBottleneck, ResNet

__all__ = ["Chen2020Ensemble", "chen2020_ensemble"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Chen2020Ensemble(NormalizedInput):
    """Mean softmax of ``n_members`` pre-activation-bottleneck ResNets (3-4-6-3 by default)."""

    def __init__(
        self,
        num_classes: int = 10,
        n_members: int = 3,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        mean: Stats = IMAGENET_MEAN,
        std: Stats = IMAGENET_STD,
        stats_keys: Sequence[str] | None = ("mu", "sigma"),
    ) -> None:
        super().__init__()
        members = [ResNet(PreActBottleneck, list(num_blocks), num_classes) for _ in range(n_members)]
        for i, member in enumerate(members):
            setattr(self, f"branch{i + 1}", member)
        self.models = nn.ModuleList(members)
        self.setup_input(mean, std, 3, stats_keys)

    @property
    def members(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of each member in file order (``_m0``, ``_m1``, ...)."""
        return [(f"branch{i + 1}", m) for i, m in enumerate(self.models)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.normalize_input(x)
        probs = [torch.softmax(m(out), dim=1) for m in self.models]
        total = probs[0]
        for p in probs[1:]:
            total = total + p
        return total / len(probs)


@register_arch(
    "chen2020-ensemble",
    description="Chen et al. 2020: mean softmax of 3 pre-activation-bottleneck ResNet-50s "
    "(RobustBench Chen2020AdversarialNet), 3 x 23.5M params",
)
def chen2020_ensemble(
    num_classes: int = 10,
    n_members: int = 3,
    num_blocks: Sequence[int] = (3, 4, 6, 3),
    mean: Stats = IMAGENET_MEAN,
    std: Stats = IMAGENET_STD,
    stats_keys: Sequence[str] | None = ("mu", "sigma"),
) -> Chen2020Ensemble:
    """The three-branch ensemble with RobustBench's key names (``num_blocks`` per stage)."""
    return Chen2020Ensemble(check_num_classes(num_classes), n_members, num_blocks, mean=mean, std=std,
                            stats_keys=stats_keys)
