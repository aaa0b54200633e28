"""Finding a model's first convolution and what follows it, and capturing its input and output.

**Where the first layer is and what its activation is** (:func:`find_first_conv`): the first
``nn.Conv2d`` *in execution order* (found with forward hooks during one forward pass, so the
input normalisation a model carries inside runs first and the conv sees normalised inputs,
which is what the filters act on). What follows the conv is read from the ``torch.fx`` graph:
a chain of single users made of an optional ``BatchNorm2d`` module and a ReLU (``nn.ReLU``,
``F.relu``, ``torch.relu`` or ``.relu()``). When the model cannot be traced, forward hooks give
the fallback: a ``BatchNorm2d`` / ``nn.ReLU`` module whose input is exactly the previous
output tensor. Anything else (pooling, another non-linearity) ends the chain; the activation
``a`` is then the conv output after the recognised part (``activation`` says which:
``"relu"``, ``"bn-relu"``, ``"bn"`` or ``"none"``). The forward pass is cut short after the
first conv (a hook raises), so the measurement costs one conv per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FirstLayerError


class _Stop(Exception):
    pass


@dataclass
class FirstConv:
    """The first conv of a model (in execution order) and what follows it.

    ``post`` holds the steps applied to the conv output to get the activation: ``BatchNorm``
    modules and the string ``"relu"``. ``activation`` names them (``"bn-relu"``, ``"relu"``,
    ``"bn"``, ``"none"``); ``found_by`` is ``"fx"`` or ``"hooks"``.
    """

    name: str
    conv: nn.Conv2d
    post: list = field(default_factory=list)
    activation: str = "none"
    found_by: str = "hooks"

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """The activation of conv output ``z`` (a new tensor; ``z`` is not changed)."""
        for step in self.post:
            z = F.relu(z) if step == "relu" else step(z)
        return z


_RELU_FUNCS = {F.relu, torch.relu}
_RELU_METHODS = {"relu"}


def _is_relu(node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS or getattr(node.target, "__name__", "") in ("relu", "relu_")
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _post_from_fx(model: nn.Module, conv_name: str) -> list | None:
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return None
    modules = dict(gm.named_modules())
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == conv_name), None)
    if node is None:
        return None
    post: list = []
    while len(node.users) == 1:
        (user,) = node.users
        is_bn = user.op == "call_module" and isinstance(modules.get(user.target), nn.modules.batchnorm._BatchNorm)
        if is_bn and not post:
            post.append(dict(model.named_modules())[user.target])
            node = user
            continue
        if _is_relu(user, modules):
            post.append("relu")
        break
    return post


def _first_conv_by_hooks(model: nn.Module, example: torch.Tensor) -> tuple[str, list]:
    """Run ``model`` on ``example`` and record the leaf modules in execution order with their
    input and output tensor ids; returns the first Conv2d's name and the BN/ReLU chain after it."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module, int, int]] = []
    handles = []

    def hook(module, inputs, output):
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        order.append((names[module], module, id(inp) if inp is not None else -1, id(output)))

    for m in model.modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:
        raise FirstLayerError(f"the model does not run on inputs of shape {tuple(example.shape[1:])}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    finally:
        for h in handles:
            h.remove()
    first = next((i for i, (_, m, _, _) in enumerate(order) if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise FirstLayerError("the model has no nn.Conv2d that runs in its forward pass")
    post: list = []
    last_out = order[first][3]
    for name, m, inp, outp in order[first + 1:]:
        if inp != last_out:
            break
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not post:
            post.append(m)
            last_out = outp
            continue
        if isinstance(m, nn.ReLU):
            post.append("relu")
        break
    return order[first][0], post


def find_first_conv(model: nn.Module, example: torch.Tensor) -> FirstConv:
    """The first ``nn.Conv2d`` in execution order and the BN/ReLU that follow it.

    Parameters
    ----------
    model : nn.Module
        The model, in the mode it is to be measured in.
    example : Tensor
        A batch the model accepts (its first image is used).

    Returns
    -------
    FirstConv
        The conv, its dotted name, the recognised steps after it and how they were found (see
        the module docstring).
    """
    name, post = _first_conv_by_hooks(model, example[:1])
    conv = dict(model.named_modules())[name]
    found_by = "hooks"
    fx_post = _post_from_fx(model, name)
    if fx_post is not None:
        post, found_by = fx_post, "fx"
    parts = ["bn" if step != "relu" else "relu" for step in post]
    return FirstConv(name, conv, post, "-".join(parts) if parts else "none", found_by)


def capture(model: nn.Module, fc: FirstConv, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conv input, conv output)`` of the first conv ``fc`` for the batch ``x``.

    Hooks copy both tensors and stop the forward pass right after the conv, so the rest of the
    model never runs. Raises :class:`~filterlens.errors.FirstLayerError` when the conv did not
    run.
    """
    box: dict[str, torch.Tensor] = {}

    def pre(_m, inputs):
        box["in"] = inputs[0].detach().clone()

    def post(_m, _inputs, output):
        box["out"] = output.detach().clone()
        raise _Stop

    h1 = fc.conv.register_forward_pre_hook(pre)
    h2 = fc.conv.register_forward_hook(post)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h1.remove()
        h2.remove()
    if "out" not in box:
        raise FirstLayerError(f"the first conv {fc.name} did not run")
    return box["in"], box["out"]


__all__ = ["FirstConv", "capture", "find_first_conv"]
