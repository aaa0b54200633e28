"""Conv layers and their depth from a live ``torch.nn.Module``.

Depth comes from the computation graph, tried in this order:
``fx`` (torch.fx symbolic trace, no input needed), ``export`` (torch.export with an example
input, for modules fx cannot trace), then ``hooks`` (execution order observed with forward
hooks; every conv gets its own level, so parallel branches are not recognised).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from ..errors import SourceError
from ..types import ConvLayer, ModelFilters
from .depth import assign_conv_depths, longest_path_depths
from .weights import from_weights  # noqa: F401  (moved; importable from here as before)

_CONV_FUNCTIONS = {torch.conv2d, torch.nn.functional.conv2d, torch.conv_transpose2d,
                   torch.nn.functional.conv_transpose2d}
_SPATIAL_GUESSES = (32, 28, 64, 224)


def conv_modules(module: nn.Module) -> dict[str, _ConvNd]:
    """All 2-D conv modules (incl. transposed and subclasses) by qualified name, in order."""
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, _ConvNd) and getattr(m, "weight", None) is not None and m.weight.dim() == 4
    }


def _layer(name: str, conv: _ConvNd) -> ConvLayer:
    transposed = bool(conv.transposed)
    return ConvLayer(
        name=name,
        weight=conv.weight.detach().cpu().numpy(),
        groups=int(conv.groups),
        transposed=transposed,
        op_type=type(conv).__name__,
    )


class _ConvLeafTracer(torch.fx.Tracer):
    """Treats every conv module, user subclasses included, as one graph node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _ConvNd) or super().is_leaf_module(m, qualname)


def fx_depths(module: nn.Module, convs: Sequence[str]) -> dict[str, int]:
    """Longest-path depth of each conv module in the torch.fx graph of ``module``."""
    graph = _ConvLeafTracer().trace(module)
    nodes = list(graph.nodes)
    preds = {n: n.all_input_nodes for n in nodes}
    inputs = [n for n in nodes if n.op == "placeholder"]
    depth = longest_path_depths(nodes, preds, inputs)
    wanted = set(convs)
    weight_to_conv = {f"{c}.weight": c for c in convs}
    out: dict[str, int] = {}
    for n in nodes:
        if n not in depth:
            continue
        if n.op == "call_module" and n.target in wanted:
            conv = n.target
        elif (n.op == "call_function" and n.target in _CONV_FUNCTIONS and len(n.args) > 1
              and isinstance(n.args[1], torch.fx.Node) and n.args[1].op == "get_attr"):
            conv = weight_to_conv.get(n.args[1].target)  # F.conv2d(x, self.conv.weight): the module is used
        else:
            continue
        if conv is not None:  # a module called twice keeps its deepest call
            out[conv] = max(out.get(conv, -1), depth[n])
    return out


def export_depths(module: nn.Module, example: torch.Tensor, convs: Sequence[str]) -> dict[str, int]:
    """Longest-path depth of each conv through ``torch.export`` (parameters lifted to inputs)."""
    ep = torch.export.export(module, (example,), strict=False)
    sig = ep.graph_signature
    param_of = dict(sig.inputs_to_parameters)
    user_inputs = set(sig.user_inputs)
    nodes = list(ep.graph.nodes)
    preds = {n: n.all_input_nodes for n in nodes}
    inputs = [n for n in nodes if n.op == "placeholder" and n.name in user_inputs]
    depth = longest_path_depths(nodes, preds, inputs)
    weight_to_conv = {f"{c}.weight": c for c in convs}
    out: dict[str, int] = {}
    for n in nodes:
        if n.op != "call_function" or n not in depth or "conv" not in str(n.target):
            continue
        if len(n.args) < 2 or not isinstance(n.args[1], torch.fx.Node):
            continue
        conv = weight_to_conv.get(param_of.get(n.args[1].name, ""))
        if conv is not None:
            out[conv] = max(out.get(conv, -1), depth[n])
    return out


def hook_depths(module: nn.Module, example: torch.Tensor, convs: Sequence[str]) -> dict[str, int]:
    """Execution order of the conv modules in one forward pass (first call of each)."""
    order: dict[str, int] = {}
    handles = []
    mods = dict(module.named_modules())
    for name in convs:
        def hook(_m, _i, _o, name=name):
            order.setdefault(name, len(order))
        handles.append(mods[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return order


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings and stderr (torch.export logs whole graphs when it fails, through
    handlers it installs lazily, so muting loggers beforehand is not enough)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _example_inputs(module: nn.Module, convs: dict[str, _ConvNd], shape: Sequence[int] | None):
    if shape is not None:
        yield torch.zeros(1, *shape)
        return
    first = next(iter(convs.values()))
    c = first.out_channels if first.transposed else first.in_channels
    for s in _SPATIAL_GUESSES:
        yield torch.zeros(1, c, s, s)


def from_module(
    module: nn.Module,
    name: str = "model",
    source: str = "<nn.Module>",
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
) -> ModelFilters:
    """Extract the conv layers of ``module`` with their depth (see the module docstring).

    ``input_shape`` ``(C, H, W)`` is only needed when fx cannot trace the module; without it,
    the input channels of the first conv and a few common image sizes are tried.
    """
    convs = conv_modules(module)
    if not convs:
        raise SourceError(f"{source}: the model has no 2-D convolution layers")
    layers = [_layer(n, c) for n, c in convs.items()]
    notes: list[str] = []
    was_training = module.training
    module.eval()
    try:
        depths, depth_source = None, None
        try:
            with _quiet():
                depths, depth_source = fx_depths(module, list(convs)), "fx"
        except Exception as exc:  # fx fails on data-dependent control flow and more
            notes.append(f"torch.fx could not trace the model ({type(exc).__name__}: {exc})")
        if depths is None:
            for fallback, label in ((export_depths, "export"), (hook_depths, "hooks")):
                for example in _example_inputs(module, convs, input_shape):
                    try:
                        with _quiet():
                            depths, depth_source = fallback(module, example, list(convs)), label
                        break
                    except Exception:
                        continue
                if depths is not None:
                    break
        if depths is None:
            depths = {n: i for i, n in enumerate(convs)}
            depth_source = "order"
            notes.append("no forward pass succeeded; depth is the registration order (approximate)")
        elif depth_source == "hooks":
            notes.append("depth from execution order (hooks): parallel branches get distinct levels")
    finally:
        module.train(was_training)
    # A conv module of the tree that the traced graph (or the forward pass) never reaches is not
    # part of the network (science.md, "Depth"): recorded as unused, with no depth.
    unused = [l.name for l in layers if l.name not in depths]
    if unused:
        notes.append(f"conv layers never used in the forward pass (unused, no depth, left out of the "
                     f"metrics): {', '.join(unused)}")
    for layer in layers:
        layer.depth = depths.get(layer.name)
        layer.unused = layer.name not in depths
    assign_conv_depths(layers)
    return ModelFilters(name=name, source=source, layers=layers, depth_source=depth_source,
                        arch=arch, warnings=notes)
