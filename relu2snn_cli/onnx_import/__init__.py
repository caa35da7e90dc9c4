"""ONNX → IR: one converter per ONNX op type, registered in a table, plus the folding rules of docs/math.md §7 and docs/supported-operators.md.

The converters live in ``linear``, ``pooling``, ``movement``, ``activations`` and ``constants``; ``core`` holds the values,
the node wrapper, the table and the helpers they share. This module reads a file and drives them.

The importer walks the graph in topological order and gives every ONNX tensor a
symbolic value:

- ``Const``: a constant array (initializer or Constant node);
- ``Pop``: a spike-coded population a (the input, or a ReLU output, pooled or
  flattened) seen through a pending elementwise affine map, tensor = scale·a + shift.
  Affine maps after a ReLU (BatchNorm, Mul/Add by constants) stay pending here and
  fold *forward* into the next linear layer;
- ``Lin``: a linear layer applied to a population and not yet followed by its ReLU.
  Affine maps before the ReLU fold *backward* into its weights and bias;
- ``Pooled``: a pending average pooling of a population;
- ``Sum``: several populations added, each under its own pending map — the terms of a
  piecewise-linear activation, or a linear layer split as relu(z) − relu(−z) (docs/math.md §8).
  Data movement reaches a Sum, and a linear layer read by it, through ``core.convert``.

A ReLU turns a ``Lin`` into an IR node with ``relu=True``; the ``Lin`` left at the graph
output becomes the readout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import onnx
import onnx.version_converter
from onnx import external_data_helper, numpy_helper

from .. import ir
from ..errors import ModelError, UnsupportedOperatorError
from . import activations, constants, linear, movement, pooling
from .core import (CONVERTERS, SUPPORTED_DOC, Context, Lin, OnnxNode, Pooled, Pop, Sum, as_linear, convert,
                   identity_pop, wrap_node)

MIN_OPSET = 11  # the oldest opset the converters read; older files are upgraded to it on import
OLDEST_OPSET = 7  # the oldest opset upgraded (onnx's version converter has adapters from opset 7 on for the ops here)
CONVERTER_MODULES = (linear, pooling, movement, constants, activations)  # importing them fills CONVERTERS


@dataclass(frozen=True)
class Imported:
    """The result of an import: the IR graph and facts about the source model."""

    graph: ir.Graph
    opset: int  # the file's own opset
    sha256: str
    file_name: str
    imported_opset: int = 0  # the opset the converters read: the file's, or MIN_OPSET after an upgrade
    output: str = ""  # the ONNX tensor converted: the graph's output, or the one chosen among several


def load_model(path: str | Path) -> tuple[onnx.ModelProto, str]:
    """Read and check an ONNX file, with weights stored beside it as external data.

    Returns the model (external data loaded) and a sha256 of the file and of its
    external data files, in the order the initializers name them.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read the model ({e.strerror or e})") from None
    digest = hashlib.sha256(raw)
    try:
        model = onnx.load_from_string(raw)
        locations = []
        for tensor in model.graph.initializer:
            if external_data_helper.uses_external_data(tensor):
                info = external_data_helper.ExternalDataInfo(tensor)
                if info.location not in locations:
                    locations.append(info.location)
        for location in locations:
            digest.update((path.parent / location).read_bytes())
        if locations:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        sort_nodes(model.graph)
        onnx.checker.check_model(model)
        for tensor in model.graph.initializer:  # the checker does not compare dims with the stored data
            numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises several unrelated types for broken files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a valid ONNX model ({first})") from None
    return model, digest.hexdigest()


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the nodes in topological order if they are not (keras2onnx 1.5 writes them unsorted, and
    onnxruntime sorts them itself): repeated passes take, in file order, every node whose inputs are known.
    A graph that cannot be sorted (a cycle, an input nothing computes) is left as it is for the checker."""
    known = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    remaining, order = list(range(len(graph.node))), []
    while remaining:
        rest = []
        for i in remaining:
            if all(name in known for name in graph.node[i].input):
                order.append(i)
                known.update(graph.node[i].output)
            else:
                rest.append(i)
        if len(rest) == len(remaining):
            return
        remaining = rest
    if order != sorted(order):
        nodes = [onnx.NodeProto.FromString(graph.node[i].SerializeToString()) for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no default-domain opset")


def upgrade(model: onnx.ModelProto, opset: int, path) -> onnx.ModelProto:
    """A model of opset 7–10 converted to MIN_OPSET with onnx's version converter (docs/supported-operators.md);
    a model it cannot convert is refused naming the first node whose conversion fails."""
    if opset < OLDEST_OPSET:
        raise ModelError(f"{path}: opset {opset} is older than {OLDEST_OPSET}, the oldest relu2snn upgrades; "
                         f"re-export with opset {MIN_OPSET} or newer")
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # the converter raises RuntimeError or its own ConvertError with a C++ assertion text
        reason = _converter_reason(e)
    for i, proto in enumerate(model.graph.node):
        try:
            onnx.version_converter.convert_version(_one_node_model(proto, opset), MIN_OPSET)
        except Exception as e:
            raise ModelError(f"{path}: opset {opset} cannot be upgraded to {MIN_OPSET}: {proto.op_type} node "
                             f"'{proto.name or f'{proto.op_type}_{i}'}' does not convert ({_converter_reason(e)})"
                             ) from None
    raise ModelError(f"{path}: opset {opset} cannot be upgraded to {MIN_OPSET} ({reason})")


def _one_node_model(proto: onnx.NodeProto, opset: int) -> onnx.ModelProto:
    """A graph of the node alone, its inputs and outputs untyped, at the model's opset."""
    untyped = onnx.TypeProto()
    graph = onnx.helper.make_graph([proto], "node", [onnx.helper.make_value_info(n, untyped) for n in proto.input if n],
                                   [onnx.helper.make_value_info(n, untyped) for n in proto.output if n])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def _converter_reason(e: Exception) -> str:
    """The converter's message without its source location and assertion: what failed, in one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text.split(" failed: ", 1)[-1]


def input_spec(model: onnx.ModelProto) -> tuple[str, tuple[int, ...], int | None]:
    """The one real (non-initializer) graph input: its name, its shape without the batch axis, and the batch
    size if the model fixes one (None if it is dynamic)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs; relu2snn converts models with exactly one")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise ModelError(f"input '{inp.name}' has element type "
                         f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; a float input is needed")
    dims = tt.shape.dim
    shape = []
    for i, d in enumerate(dims[1:], 1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise ModelError(f"input '{inp.name}' has a dynamic dimension {i} ('{d.dim_param}'); "
                             "only the batch dimension may be dynamic")
        shape.append(d.dim_value)
    if len(shape) not in (1, 2, 3):
        raise ModelError(f"input '{inp.name}' has shape {_dims(dims)}; expected (batch, features), (batch, C, L) "
                         "or (batch, C, H, W)")
    first = dims[0] if len(dims) else None
    batch = first.dim_value if first is not None and first.HasField("dim_value") and first.dim_value > 0 else None
    return inp.name, tuple(shape), batch


def _dims(dims) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _output_tail(nodes: list[OnnxNode], output: str) -> set[str]:
    """The graph output and the tensors that reach it through Identity or Dropout nodes only."""
    tail = {output}
    for node in reversed(nodes):
        if node.op_type in ("Identity", "Dropout") and node.outputs[0] in tail:
            tail.add(node.inputs[0])
    return tail


def _used(nodes: list) -> tuple:
    """The nodes the readout (the last node) depends on, in order: unused branches and reshapes dropped."""
    needed = {nodes[0].name, nodes[-1].name}
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    return tuple(n for n in nodes if n.name in needed)


def keep_output(model: onnx.ModelProto, output: str) -> None:
    """Make ``output`` (a graph output or any tensor a node computes) the model's only output, and drop the
    nodes it does not depend on (the ArgMax, Cast and ZipMap of a label output, say)."""
    infos = {o.name: o for o in model.graph.output}
    info = infos[output] if output in infos else onnx.helper.make_empty_tensor_value_info(output)
    needed, keep = {output}, []
    for node in reversed(model.graph.node):
        if any(name in needed for name in node.output):
            keep.append(onnx.NodeProto.FromString(node.SerializeToString()))
            needed.update(node.input)
    info = onnx.ValueInfoProto.FromString(info.SerializeToString())
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    del model.graph.output[:]
    model.graph.output.append(info)


def _describe_outputs(model: onnx.ModelProto) -> str:
    def kind(o):
        if o.type.HasField("tensor_type"):
            return onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type).lower()
        return o.type.WhichOneof("value") or "untyped"
    return ", ".join(f"'{o.name}' ({kind(o)})" for o in model.graph.output)


def choose_output(model: onnx.ModelProto, output: str | None, opset: int, path) -> str | None:
    """The tensor to convert: ``output`` if given (it must exist); with one graph output, that one (None: keep
    the graph as it is); with several, the only float output whose import succeeds (skl2onnx writes a label
    and the probabilities), else a refusal listing the outputs and the option (docs/cli.md)."""
    produced = {name for node in model.graph.node for name in node.output}
    if output is not None:
        if output not in produced and output not in {o.name for o in model.graph.output}:
            raise ModelError(f"{path}: --onnx-output '{output}' is not a tensor of the model (its outputs: "
                             f"{_describe_outputs(model)})")
        return output
    if len(model.graph.output) == 1:
        return None
    input_spec(model)   # its refusals first: they hold for every output
    floats = [o.name for o in model.graph.output if o.type.HasField("tensor_type")
              and o.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)]
    viable = []
    for name in floats:
        trial = onnx.ModelProto.FromString(model.SerializeToString())
        keep_output(trial, name)
        try:
            _graph(trial, opset, path)
        except ModelError:
            continue
        viable.append(name)
    if len(viable) == 1:
        return viable[0]
    argmax = [node.input[0] for node in model.graph.node if node.op_type == "ArgMax" and node.input[0] in produced]
    hint = f" (e.g. '{argmax[0]}', the tensor an ArgMax reads)" if argmax else ""
    found = "none is" if not viable else f"{len(viable)} are"
    raise ModelError(f"{path}: the model has {len(model.graph.output)} outputs, {_describe_outputs(model)}, and "
                     f"{found} a float tensor computed by a linear layer; pass --onnx-output NAME to choose the "
                     f"tensor to convert{hint}")


def import_model(path: str | Path, output: str | None = None) -> Imported:
    """Read an ONNX file into the IR, folding affine maps and removing a final softmax (docs/supported-operators.md).
    ``output`` names the tensor to convert when the model has several outputs (``choose_output``)."""
    model, sha = load_model(path)
    source_opset = opset = model_opset(model)
    if opset < MIN_OPSET:
        model, opset = upgrade(model, opset, path), MIN_OPSET
    chosen = choose_output(model, output, opset, path)
    if chosen is not None:
        keep_output(model, chosen)
    return Imported(_graph(model, opset, path), source_opset, sha, Path(path).name, opset,
                    model.graph.output[0].name)


def _graph(model: onnx.ModelProto, opset: int, path) -> ir.Graph:
    """The IR graph of a model of one output, at an opset the converters read."""
    in_name, in_shape, batch = input_spec(model)
    nodes = [wrap_node(p, p.name or f"{p.op_type}_{i}", opset) for i, p in enumerate(model.graph.node)]
    constant = constants.constant_tensors(model.graph)
    folded = {i for i, p in enumerate(model.graph.node)
              if p.op_type not in ("Constant", "Shape") and constants.foldable(p, constant)}
    missing = tuple((n.name, n.op_type) for i, (n, p) in enumerate(zip(nodes, model.graph.node))
                    if i not in folded and (n.op_type not in CONVERTERS or p.domain not in ("", "ai.onnx")))
    if missing:
        listing = ", ".join(f"{op} '{name}'" for name, op in missing)
        raise UnsupportedOperatorError(
            f"{path}: {len(missing)} node(s) without an exact spiking mapping: {listing} "
            f"(supported: {SUPPORTED_DOC})", missing)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    readers: dict[str, list[OnnxNode]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.inputs) if i not in folded else ():
            readers.setdefault(name, []).append(node)
    ctx = Context(consts, model.graph.output[0].name, _output_tail(nodes, model.graph.output[0].name), batch,
                  {k: tuple(v) for k, v in readers.items()})
    ctx.add(ir.Input(in_name, in_shape))
    ctx.values[in_name] = identity_pop(in_name, in_shape, relu=False)
    for i, (node, proto) in enumerate(zip(nodes, model.graph.node)):
        if i in folded:
            constants.fold(proto, node, ctx, opset)
        else:
            convert(node, ctx)
    out = ctx.values.get(ctx.graph_output)
    if isinstance(out, Pooled):
        out = ctx.materialize(ctx.graph_output, out)
    readout = OnnxNode("readout", "Identity", (ctx.graph_output,), (ctx.logits_tensor,), MappingProxyType({}))
    if isinstance(out, Lin):
        ctx.add(replace(out.layer, source=ctx.logits_tensor))
    elif isinstance(out, Sum) or isinstance(out, Pop) and out.node != in_name:
        # a ReLU (or pooling) at the output: read the population through its pending affine map
        ctx.add(replace(as_linear(readout, ctx, out), source=ctx.logits_tensor))
    else:
        raise ModelError(f"{path}: the output '{ctx.graph_output}' is not computed from a linear layer")
    graph = ir.Graph(_used(ctx.nodes), input_name=in_name, output_name=ctx.logits_tensor, removed=tuple(ctx.removed))
    return graph
