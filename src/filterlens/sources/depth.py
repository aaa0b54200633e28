"""Depth of conv layers: longest path from the graph input, ranked over the conv layers.

The graph side (torch.fx or ONNX) only has to supply, for each node, its predecessors;
everything else (longest path, ranking, normalisation) lives here and is shared.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping, Sequence

from ..types import ConvLayer


def longest_path_depths(
    nodes: Sequence[Hashable],
    predecessors: Mapping[Hashable, Iterable[Hashable]],
    inputs: Iterable[Hashable],
) -> dict[Hashable, int]:
    """Length of the longest path from any of ``inputs`` to each reachable node.

    ``nodes`` must be in topological order. An input has depth 0; a node reachable from an
    input has ``1 + max(depth of its reachable predecessors)``. Nodes not reachable from an
    input (weights, constants) are left out of the result.
    """
    depth: dict[Hashable, int] = {n: 0 for n in inputs}
    for node in nodes:
        if node in depth:
            continue
        preds = [depth[p] for p in predecessors.get(node, ()) if p in depth]
        if preds:
            depth[node] = 1 + max(preds)
    return depth


def topological_order(
    nodes: Sequence[Hashable], predecessors: Mapping[Hashable, Iterable[Hashable]]
) -> list[Hashable]:
    """Kahn's algorithm, stable with respect to the given order; raises on a cycle."""
    node_set = set(nodes)
    indeg = {n: 0 for n in nodes}
    succ: dict[Hashable, list[Hashable]] = {n: [] for n in nodes}
    for n in nodes:
        for p in set(predecessors.get(n, ())):
            if p in node_set:
                indeg[n] += 1
                succ[p].append(n)
    position = {n: i for i, n in enumerate(nodes)}
    import heapq

    ready = [(position[n], n) for n in nodes if indeg[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for s in succ[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, (position[s], s))
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order


def assign_conv_depths(layers: Sequence[ConvLayer]) -> None:
    """Fill ``conv_depth`` and ``conv_depth_norm`` from each layer's raw ``depth`` (in place).

    ``conv_depth`` is the index of a layer's depth among the sorted distinct depths of all
    conv layers (so parallel layers at the same depth share it);
    ``conv_depth_norm = conv_depth / (levels - 1)``, 0 with a single level.
    Only ordinary convolutions make levels (docs/definitions.md, "Depth": the paper's extractor counts ONNX
    ``Conv`` nodes), so a transposed conv keeps its raw ``depth`` but gets no ``conv_depth``.
    Layers without a depth keep ``None``.
    """
    levels = sorted({l.depth for l in layers if l.depth is not None and not l.transposed})
    rank = {d: i for i, d in enumerate(levels)}
    top = len(levels) - 1
    for layer in layers:
        if layer.depth is None or layer.transposed:
            layer.conv_depth = layer.conv_depth_norm = None
            continue
        layer.conv_depth = rank[layer.depth]
        layer.conv_depth_norm = layer.conv_depth / top if top > 0 else 0.0
