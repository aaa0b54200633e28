"""Conv layers and their depth from an ONNX file (plain or gzip-compressed).

Every ``Conv`` / ``ConvTranspose`` node of the main graph whose weight is 4-D (a 2-D
convolution) and constant is collected. A weight is constant when it is a graph initializer,
the output of a ``Constant`` node, or either of those reached through ``Identity`` nodes.

Depth follows ``docs/definitions.md``: the graph is the ONNX node graph (a node's predecessors are
the producers of its inputs), the real graph inputs are source nodes of depth 0, and a node's
depth is the length of its longest path from a graph input. Initializers, ``Constant`` nodes
and anything computed from constants alone are not reachable from an input and carry no depth.
Graph inputs that are also initializers (listed by exporters of older IR versions) are
weights, not inputs.

Weights stored as external data are read from next to the model file, and only those of the
conv layers are read.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import SourceError
from ..types import ConvLayer, ModelFilters
from .depth import assign_conv_depths, longest_path_depths, topological_order

__all__ = ["load_onnx"]

_GZIP_MAGIC = b"\x1f\x8b"
_DEFAULT_DOMAINS = ("", "ai.onnx")
#: (domain, op_type) of the ops collected, and the ``op_type`` they are recorded as.
_CONV_OPS = {
    ("", "Conv"): "Conv",
    ("ai.onnx", "Conv"): "Conv",
    ("", "ConvTranspose"): "ConvTranspose",
    ("ai.onnx", "ConvTranspose"): "ConvTranspose",
    # onnxruntime's offline-optimised graphs fuse Conv + activation; the weight is unchanged.
    ("com.microsoft", "FusedConv"): "Conv",
}
#: Quantised convolutions: their integer weights are not filters in the paper's sense.
_QUANTISED_CONV_OPS = {"QLinearConv", "ConvInteger"}
#: Weight dtypes kept as they are; any other float type (bfloat16, float8) becomes float32.
_NATIVE_FLOATS = (np.float16, np.float32, np.float64)

_PARAM_NAME = re.compile(r"[A-Za-z_][\w\-]*(?:[./][\w\-]+)*")
_SCOPE_NAME = re.compile(r"((?:/[^/]+)+)/(?:Conv|ConvTranspose|FusedConv)(?:_\d+)?")

#: Most bytes a gzip file may expand to (a zip bomb of a few MB otherwise fills the memory). 2 GiB
#: is protobuf's own limit for one serialized ONNX model; override with the environment
#: variable ``FILTERLENS_MAX_DECOMPRESSED`` (bytes, or with a K/M/G suffix, e.g. ``4G``).
MAX_DECOMPRESSED_BYTES = 2 << 30
MAX_DECOMPRESSED_ENV = "FILTERLENS_MAX_DECOMPRESSED"


def max_decompressed_bytes() -> int:
    """The decompression cap: :data:`MAX_DECOMPRESSED_ENV` if set, else :data:`MAX_DECOMPRESSED_BYTES`."""
    import os

    text = os.environ.get(MAX_DECOMPRESSED_ENV, "").strip()
    if not text:
        return MAX_DECOMPRESSED_BYTES
    m = re.fullmatch(r"(\d+)\s*([kKmMgGtT]?)i?[bB]?", text)
    if not m:
        raise SourceError(f"{MAX_DECOMPRESSED_ENV}={text!r}: expected a number of bytes, e.g. 4G or 500M")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def gunzip_bounded(data: bytes, path: Path | str, limit: int | None = None) -> bytes:
    """Decompress gzip ``data`` (all members) to at most ``limit`` bytes (default
    :func:`max_decompressed_bytes`); a larger output is refused with a clear :class:`SourceError`
    before it is held in memory."""
    limit = max_decompressed_bytes() if limit is None else limit
    out = bytearray()
    view = memoryview(data)
    try:
        while view.nbytes:
            d = zlib.decompressobj(wbits=31)  # one gzip member
            chunk = view
            while True:
                piece = d.decompress(chunk, max(1, limit + 1 - len(out)))
                out += piece
                if len(out) > limit:
                    raise SourceError(
                        f"{path}: the gzip file expands to more than {limit:,} bytes; refusing to decompress it "
                        f"(set {MAX_DECOMPRESSED_ENV}, e.g. {MAX_DECOMPRESSED_ENV}=8G, to allow larger files)")
                chunk = d.unconsumed_tail
                if d.eof or not chunk:
                    break
            if not d.eof:
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            view = memoryview(d.unused_data)
            if view.nbytes and bytes(view[:2]) != _GZIP_MAGIC:
                break  # trailing garbage after the last member (as gzip tolerates zeros)
    except (zlib.error, EOFError) as exc:
        raise SourceError(f"{path}: gzip data is corrupt or truncated ({_first_line(exc)})") from None
    except MemoryError:
        raise SourceError(f"{path}: not enough memory to decompress the gzip file "
                          f"(cap {limit:,} bytes, {MAX_DECOMPRESSED_ENV})") from None
    return bytes(out)


def load_onnx(path: str | Path, name: str | None = None) -> ModelFilters:
    """Read the 2-D conv layers of an ONNX model file, with their depth in the node graph.

    ``path`` may be gzip-compressed (detected by its magic bytes, whatever the file name).
    ``name`` defaults to the file name without ``.onnx`` / ``.gz``. Raises
    :class:`~filterlens.errors.SourceError` when the file is missing, is not a readable ONNX
    model, has a cyclic graph or has no 2-D convolution with a constant weight.
    """
    path = Path(path)
    model = _read_model(path)
    base_dir = str(path.parent)
    notes: list[str] = []

    if model.functions and _functions_have_convs(model):
        try:
            import onnx.inliner

            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:  # pragma: no cover - depends on the onnx version
            notes.append(f"could not inline the model's local functions ({type(exc).__name__}: "
                         f"{_first_line(exc)}); convolutions inside them are not extracted")

    graph = model.graph
    nodes = list(graph.node)
    if not nodes:
        raise SourceError(f"{path}: the ONNX graph has no nodes (not a model, or an empty one)")

    initializers = {t.name: t for t in graph.initializer}
    sparse_initializers = {t.values.name: t for t in graph.sparse_initializer}
    constant_names = set(initializers) | set(sparse_initializers)
    real_inputs = list(dict.fromkeys(
        i.name for i in graph.input if i.name and i.name not in constant_names))

    producer: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = idx

    # Predecessors of every node: the producers of its inputs, and of the outer-scope values
    # its subgraphs (If / Loop / Scan bodies) use.
    input_keys = {n: ("input", n) for n in real_inputs}
    predecessors: dict[Any, list[Any]] = {}
    subgraph_convs = 0
    for idx, node in enumerate(nodes):
        used: list[str] = [i for i in node.input if i]
        for sub in _subgraphs(node):
            free, convs = _scan_subgraph(sub)
            used.extend(sorted(free))
            subgraph_convs += convs
        preds = []
        for tensor in used:
            if tensor in producer:
                preds.append(producer[tensor])
            elif tensor in input_keys:
                preds.append(input_keys[tensor])
        predecessors[idx] = preds
    if subgraph_convs:
        notes.append(f"{subgraph_convs} convolution node(s) inside subgraphs (If / Loop / Scan "
                     "bodies) are not extracted")

    graph_nodes: list[Any] = [input_keys[n] for n in real_inputs] + list(range(len(nodes)))
    try:
        order = topological_order(graph_nodes, predecessors)
    except ValueError:
        raise SourceError(f"{path}: the ONNX graph has a cycle (a node depends on its own "
                          "output); not a valid model") from None
    depths = longest_path_depths(order, predecessors, [input_keys[n] for n in real_inputs])

    layers: list[ConvLayer] = []
    weight_cache: dict[Any, np.ndarray] = {}
    used_names: set[str] = set()
    not_2d: Counter[int] = Counter()
    runtime_weights: list[str] = []
    quantised = 0
    no_depth: list[str] = []

    for key in order:
        if not isinstance(key, int):
            continue
        node = nodes[key]
        recorded_as = _CONV_OPS.get((node.domain, node.op_type))
        if recorded_as is None:
            if node.domain in _DEFAULT_DOMAINS and node.op_type in _QUANTISED_CONV_OPS:
                quantised += 1
            continue
        label = node.name or f"{node.op_type} node #{key}"
        if len(node.input) < 2 or not node.input[1]:
            runtime_weights.append(label)  # malformed; nothing to extract
            continue
        root = _resolve_constant(node.input[1], nodes, producer, initializers,
                                 sparse_initializers)
        if root is None:
            rank = _kernel_rank(node)
            if rank is not None and rank != 2:
                not_2d[rank] += 1
            else:
                runtime_weights.append(label)
            continue
        cache_key, tensor, root_name = root
        dims = _tensor_dims(tensor)
        if len(dims) != 4:
            not_2d[len(dims) - 2] += 1
            continue
        weight = weight_cache.get(cache_key)
        if weight is None:
            weight = _to_numpy(tensor, base_dir, path, label)
            weight_cache[cache_key] = weight

        lname = _unique(_layer_name(root_name, node.input[1], node.name, len(layers)), used_names)
        layer = ConvLayer(
            name=lname,
            weight=weight,
            groups=_int_attr(node, "group", 1),
            transposed=recorded_as == "ConvTranspose",
            op_type=recorded_as,
            depth=depths.get(key),
        )
        if layer.depth is None:
            no_depth.append(lname)
        layers.append(layer)

    if quantised:
        notes.append(f"{quantised} quantised convolution node(s) (QLinearConv / ConvInteger) "
                     "are not extracted")
    if runtime_weights:
        notes.append(f"{len(runtime_weights)} convolution node(s) skipped because their weight is "
                     f"computed at run time, not a constant: {_short_list(runtime_weights)}")
    if not_2d:
        kinds = ", ".join(f"{n} {d}-D" for d, n in sorted(not_2d.items()))
        notes.append(f"convolutions that are not 2-D are not extracted ({kinds})")
    if no_depth:
        notes.append("conv layers not reachable from a graph input (no depth): "
                     + _short_list(no_depth))

    if not layers:
        detail = ""
        if runtime_weights:
            detail = (f" with a constant weight ({len(runtime_weights)} compute their weight at "
                      "run time)")
        elif not_2d or quantised or subgraph_convs:
            detail = " (" + "; ".join(notes) + ")"
        raise SourceError(f"{path}: the ONNX model contains no 2-D convolution layers{detail}")

    assign_conv_depths(layers)
    return ModelFilters(
        name=name if name is not None else _default_name(path),
        source=str(path),
        layers=layers,
        depth_source="onnx",
        warnings=notes,
    )


# --- reading ----------------------------------------------------------------------------------


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory, not an ONNX file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise SourceError(f"{path}: the file is empty, not an ONNX model")

    fmt_path = path
    if data[:2] == _GZIP_MAGIC:
        data = gunzip_bounded(data, path)
        if path.suffix.lower() == ".gz":
            fmt_path = path.with_suffix("")
        if not data:
            raise SourceError(f"{path}: the gzip file holds no data, not an ONNX model")

    fmt = _format_for(fmt_path)
    try:
        model = onnx.load_model_from_string(data, format=fmt)
    except MemoryError:
        raise SourceError(f"{path}: not enough memory to parse the ONNX model ({len(data):,} bytes)") from None
    except Exception as exc:  # DecodeError, text-format ParseError, ...
        raise SourceError(f"{path}: not an ONNX model, or the file is corrupt or truncated "
                          f"({type(exc).__name__}: {_first_line(exc)}){_magic_hint(data)}") \
            from None
    del data
    if not model.HasField("graph") or not model.graph.node:
        raise SourceError(f"{path}: not an ONNX model (no graph found in the file)"
                          f"{_magic_hint(b'')}")
    return model


def _format_for(path: Path) -> str:
    """The ONNX serialisation format for the file's extension (protobuf unless told)."""
    try:
        from onnx import serialization

        fmt = serialization.registry.get_format_from_file_extension(path.suffix.lower())
    except Exception:  # pragma: no cover - onnx internals
        fmt = None
    return fmt or "protobuf"


def _magic_hint(data: bytes) -> str:
    if data[:4] == b"PK\x03\x04":
        return "; it is a zip archive (a PyTorch checkpoint?)"
    if data[:1] == b"\x80":
        return "; it looks like a Python pickle (a PyTorch checkpoint?)"
    if data[:4] == b"\x89HDF":
        return "; it is an HDF5 file (a Keras model?)"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- graph helpers ----------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _scan_subgraph(graph: onnx.GraphProto) -> tuple[set[str], int]:
    """Outer-scope names a subgraph uses, and how many conv nodes it (recursively) holds."""
    defined = {i.name for i in graph.input}
    defined.update(t.name for t in graph.initializer)
    defined.update(t.values.name for t in graph.sparse_initializer)
    used: set[str] = set()
    convs = 0
    for node in graph.node:
        defined.update(node.output)
        if (node.domain, node.op_type) in _CONV_OPS:
            convs += 1
        used.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            free, inner = _scan_subgraph(sub)
            used.update(free)
            convs += inner
    used.update(o.name for o in graph.output)
    return used - defined, convs


def _functions_have_convs(model: onnx.ModelProto) -> bool:
    return any((n.domain, n.op_type) in _CONV_OPS for f in model.functions for n in f.node)


def _resolve_constant(
    tensor_name: str,
    nodes: list[onnx.NodeProto],
    producer: dict[str, int],
    initializers: dict[str, onnx.TensorProto],
    sparse_initializers: dict[str, onnx.SparseTensorProto],
) -> tuple[Any, Any, str] | None:
    """Follow ``Identity`` nodes back to an initializer or a ``Constant`` node.

    Returns ``(cache key, TensorProto or SparseTensorProto, name of the constant)``, or
    ``None`` when the value is computed at run time (or is a plain graph input).
    """
    name = tensor_name
    seen: set[str] = set()
    while name not in seen:
        seen.add(name)
        # Initializers take precedence over (invalid) duplicate producers.
        if name in initializers:
            return ("init", name), initializers[name], name
        if name in sparse_initializers:
            return ("init", name), sparse_initializers[name], name
        idx = producer.get(name)
        if idx is None:
            return None
        node = nodes[idx]
        if node.domain not in _DEFAULT_DOMAINS:
            return None
        if node.op_type == "Identity" and node.input and node.input[0]:
            name = node.input[0]
            continue
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    return ("const", idx), attr.t, name
                if attr.name == "sparse_value" and attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    return ("const", idx), attr.sparse_tensor, name
        return None
    return None  # a cycle of Identity nodes; the topological sort has reported it already


def _kernel_rank(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "kernel_shape":
            return len(attr.ints)
    return None


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _tensor_dims(tensor) -> list[int]:
    return list(tensor.dims)


def _to_numpy(tensor, base_dir: str, path: Path, label: str) -> np.ndarray:
    try:
        if isinstance(tensor, onnx.SparseTensorProto):
            array = _sparse_to_dense(tensor)
        else:
            array = numpy_helper.to_array(tensor, base_dir=base_dir)
    except MemoryError:
        raise
    except Exception as exc:
        where = ""
        if isinstance(tensor, onnx.TensorProto) and onnx.external_data_helper.uses_external_data(
            tensor
        ):
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            where = f" (stored in the external data file '{loc}', expected next to the model)"
        raise SourceError(f"{path}: cannot read the weight of {label}{where}: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from None
    if array.dtype.type in _NATIVE_FLOATS:
        return array
    return array.astype(np.float32)  # bfloat16 / float8 (ml_dtypes) for plain numpy maths


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
    if indices.ndim == 2:  # (nnz, rank) coordinates
        indices = np.ravel_multi_index(tuple(indices.T), dims)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(dims)


# --- names ------------------------------------------------------------------------------------


def _layer_name(root_name: str, weight_input: str, node_name: str, index: int) -> str:
    for candidate in (root_name, weight_input):
        param = _param_name(candidate)
        if param:
            return param
    if node_name:
        scope = _SCOPE_NAME.fullmatch(node_name)
        if scope:
            return _scope_to_path(scope.group(1))
        return node_name
    return f"conv_{index}"


def _param_name(name: str) -> str | None:
    """``name`` without ``.weight`` when it looks like a parameter name, else ``None``.

    Exporter-generated names (``onnx::Conv_12``, ``123``) do not qualify; ``layer1.0.conv1.weight``,
    ``0.weight`` and ``conv1_w`` do.
    """
    if not name or "::" in name:
        return None
    if name.endswith(".weight") and len(name) > len(".weight"):
        stem = name[: -len(".weight")]
        if _PARAM_NAME.fullmatch(stem) or re.fullmatch(r"\d+(?:\.[\w\-]+)*", stem):
            return stem
        return None
    if _PARAM_NAME.fullmatch(name):
        return name
    return None


def _scope_to_path(scope: str) -> str:
    """The module path from the torch exporter's scope node name.

    ``/layer1/layer1.0/sc/sc.0`` (each component named relative to a container's name) becomes
    ``layer1.0.sc.0``.
    """
    parts: list[str] = []
    for comp in scope.strip("/").split("/"):
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts)


def _unique(name: str, used: set[str]) -> str:
    candidate, k = name, 1
    while candidate in used:
        candidate = f"{name}_{k}"
        k += 1
    used.add(candidate)
    return candidate


def _short_list(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _default_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".onnx"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name
