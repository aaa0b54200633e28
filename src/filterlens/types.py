"""The in-memory form of a model's convolution layers, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ConvLayer:
    """One convolution layer and its weight.

    ``weight`` has shape ``(c_out, c_in / groups, kh, kw)`` for a normal conv. For a
    transposed conv it is stored as the framework stores it, ``(c_in, c_out / groups, kh, kw)``;
    a filter is always one ``kh x kw`` slice ``weight[a, b]``.
    """

    name: str
    weight: np.ndarray
    groups: int = 1
    transposed: bool = False
    op_type: str = "Conv2d"
    depth: int | None = None  # longest path from the input, in graph nodes
    conv_depth: int | None = None  # rank of ``depth`` among the distinct conv depths
    conv_depth_norm: float | None = None  # conv_depth / (levels - 1)
    #: The forward pass never calls this conv (e.g. the ``sub_block1`` of RobustBench's
    #: WideResNet): it is stored, with no depth, but left out of every measurement and analysis.
    unused: bool = False

    @property
    def kernel_size(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def out_channels(self) -> int:
        if self.transposed:
            return int(self.weight.shape[1]) * self.groups
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        if self.transposed:
            return int(self.weight.shape[0])
        return int(self.weight.shape[1]) * self.groups

    @property
    def n_filters(self) -> int:
        return int(self.weight.shape[0] * self.weight.shape[1])


@dataclass
class ModelFilters:
    """All conv layers of one model, with where its depth information came from.

    ``depth_source`` is one of ``"fx"`` (torch.fx graph), ``"onnx"`` (ONNX node graph),
    ``"hooks"`` (execution order observed with forward hooks) or ``"order"`` (the order
    of the weights in a state dict; approximate).
    """

    name: str
    source: str
    layers: list[ConvLayer]
    depth_source: str
    arch: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: What the source itself knows of the model (models-table fields such as dataset,
    #: training, eps, clean_acc, robust_acc); explicit metadata overrides it.
    metadata: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)
