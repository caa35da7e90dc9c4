"""ONNX → IR: one converter per ONNX op type, registered in a table, plus the folding rules of DESIGN §4.

The importer walks the graph in topological order and gives every ONNX tensor a
symbolic value:

- ``Const``: a constant array (initializer or Constant node);
- ``Pop``: a spike-coded population a (the input, or a ReLU output, pooled or
  flattened) seen through a pending elementwise affine map, tensor = scale·a + shift.
  Affine maps after a ReLU (BatchNorm, Mul/Add by constants) stay pending here and
  fold *forward* into the next linear layer;
- ``Lin``: a linear layer applied to a population and not yet followed by its ReLU.
  Affine maps before the ReLU fold *backward* into its weights and bias.

A ReLU turns a ``Lin`` into an IR node with ``relu=True``; the ``Lin`` left at the graph
output becomes the readout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from . import ir, ops
from .errors import ModelError, UnsupportedOperatorError

SUPPORTED_DOC = "docs/supported-operators.md"
MIN_OPSET = 11


# ----------------------------------------------------------------------------- values

@dataclass(frozen=True, eq=False)
class Const:
    value: np.ndarray


@dataclass(frozen=True, eq=False)
class Pop:
    """tensor = scale·a + shift, a the population of IR node ``node`` (shape without batch)."""

    node: str
    shape: tuple[int, ...]
    scale: np.ndarray
    shift: np.ndarray
    nonnegative: bool  # a ≥ 0 and the affine map is the identity (a ReLU output)


@dataclass(frozen=True, eq=False)
class Lin:
    """tensor = layer(a): an affine layer on a population, its ReLU not yet applied."""

    layer: ir.Dense | ir.Conv


def _identity_pop(node: str, shape: tuple[int, ...], nonnegative: bool) -> Pop:
    return Pop(node, tuple(shape), np.ones(()), np.zeros(()), nonnegative)


# ----------------------------------------------------------------------------- nodes

@dataclass(frozen=True)
class OnnxNode:
    """Read-only view of one ONNX node: attributes resolved with their schema defaults."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping = field(hash=False)

    @property
    def label(self) -> str:
        return f"{self.op_type} node '{self.name}'"

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)


def _attr_value(proto):
    value = helper.get_attribute_value(proto)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def wrap_node(proto: onnx.NodeProto, name: str, opset: int) -> OnnxNode:
    """The read-only node: schema defaults for this opset, overridden by the node's own attributes."""
    attrs = {}
    try:
        schema = onnx.defs.get_schema(proto.op_type, opset, proto.domain)
        for key, spec in schema.attributes.items():
            if spec.default_value.type != onnx.AttributeProto.UNDEFINED:
                attrs[key] = _attr_value(spec.default_value)
    except onnx.defs.SchemaError:
        pass
    attrs.update({a.name: _attr_value(a) for a in proto.attribute})
    return OnnxNode(name, proto.op_type, tuple(proto.input), tuple(proto.output), MappingProxyType(attrs))


# ----------------------------------------------------------------------------- registry

Converter = Callable[[OnnxNode, "Context"], None]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str):
    """Register a converter for ONNX op types; registering an op type twice is an error."""
    def register(fn: Converter) -> Converter:
        for op in op_types:
            if op in CONVERTERS:
                raise RuntimeError(f"a converter for {op} is already registered")
            CONVERTERS[op] = fn
        return fn
    return register


class Context:
    """The conversion state: ONNX tensor → value, and the IR nodes made so far."""

    def __init__(self, consts: dict[str, np.ndarray], graph_output: str, output_tail: set[str]):
        self.values: dict[str, Const | Pop | Lin] = {k: Const(v) for k, v in consts.items()}
        self.nodes: list = []
        self.graph_output = graph_output
        self.output_tail = output_tail  # tensors that reach the output through Identity/Dropout only
        self.logits_tensor = graph_output
        self.removed: list[str] = []

    def get(self, node: OnnxNode, i: int):
        if i >= len(node.inputs) or not node.inputs[i]:
            return None
        if node.inputs[i] not in self.values:
            raise unsupported(node, f"its input '{node.inputs[i]}' is a secondary output (a mask or indices) "
                                    "that has no spiking counterpart")
        return self.values[node.inputs[i]]

    def const(self, node: OnnxNode, i: int, what: str) -> np.ndarray:
        v = self.get(node, i)
        if not isinstance(v, Const):
            raise unsupported(node, f"its {what} must be a constant")
        return v.value.astype(np.float64) if v.value.dtype.kind == "f" else v.value

    def pop(self, node: OnnxNode, i: int = 0, rank: tuple[int, ...] = (1, 3)) -> Pop:
        v = self.get(node, i)
        if isinstance(v, Lin):
            raise unsupported(node, "it is applied to a linear layer's output before a ReLU")
        if not isinstance(v, Pop):
            raise unsupported(node, "its input must be an activation, not a constant")
        if len(v.shape) not in rank:
            raise unsupported(node, f"its input has shape {v.shape} (batch axis omitted)")
        return v

    def set(self, node: OnnxNode, value) -> None:
        self.values[node.outputs[0]] = value

    def add(self, node: OnnxNode | None, ir_node) -> str:
        if self.nodes and ir_node.input != self.nodes[-1].name:
            label = node.label if node is not None else f"node '{ir_node.name}'"
            raise UnsupportedOperatorError(
                f"{label} reads a population that another node also reads: branching graphs "
                f"are not supported yet (see {SUPPORTED_DOC})", ((node.name, node.op_type) if node else (ir_node.name, ""),))
        self.nodes.append(ir_node)
        return ir_node.name

    def unique(self, name: str) -> str:
        taken = {n.name for n in self.nodes}
        base, k = name, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name


def unsupported(node: OnnxNode, why: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(f"{node.label} is not supported: {why} (see {SUPPORTED_DOC})",
                                    ((node.name, node.op_type),))


# ----------------------------------------------------------------------------- affine helpers

def _const_for(node: OnnxNode, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A constant operand broadcast against a batch-first tensor of ``shape``: drop its batch axis."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim == len(shape) + 1:
        if c.shape[0] != 1:
            raise unsupported(node, f"its constant of shape {c.shape} varies over the batch")
        c = c[0]
    try:
        np.broadcast_shapes(c.shape, shape)
    except ValueError:
        raise unsupported(node, f"its constant of shape {c.shape} does not broadcast to {shape}") from None
    if np.broadcast_shapes(c.shape, shape) != tuple(shape):
        raise unsupported(node, f"its constant of shape {c.shape} would change the shape {shape}")
    return c


def _per_channel(node: OnnxNode, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """c as one number per channel (axis 0 of ``shape``), or an error if it varies over positions."""
    full = np.broadcast_to(c, shape)
    first = full.reshape(shape[0], -1)[:, :1]
    if not np.all(full.reshape(shape[0], -1) == first):
        raise unsupported(node, "its constant varies over positions within a channel")
    return first[:, 0]


def apply_affine(node: OnnxNode, ctx: Context, value, k: np.ndarray, h: np.ndarray) -> None:
    """tensor ↦ k·tensor + h with constants k, h: folds backward into a Lin, stays pending on a Pop."""
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(h))):
        raise ModelError(f"{node.label}: its constants give a non-finite affine map "
                         "(a division by zero, or a negative variance)")
    if isinstance(value, Lin):
        shape = value.layer.shape
        k = _per_channel(node, _const_for(node, k, shape), shape)
        h = _const_for(node, h, shape)
        ctx.set(node, Lin(ir.scale_outputs(value.layer, k, h)))
    elif isinstance(value, Pop):
        k = _const_for(node, k, value.shape)
        h = _const_for(node, h, value.shape)
        ctx.set(node, replace(value, scale=value.scale * k, shift=value.shift * k + h, nonnegative=False))
    else:
        raise unsupported(node, "both operands are constants (constant folding is not done)")


# ----------------------------------------------------------------------------- converters

@converter("Gemm")
def convert_gemm(node: OnnxNode, ctx: Context) -> None:
    """Y = alpha·A'·B' + beta·C with A the activation (batch, K) and B, C constants."""
    if node.attr("transA", 0):
        raise unsupported(node, "transA=1 on the activation puts the batch axis last")
    a = ctx.pop(node, 0, rank=(1,))
    b = ctx.const(node, 1, "B operand")
    w = node.attr("alpha", 1.0) * (b.T if not node.attr("transB", 0) else b)
    c = ctx.const(node, 2, "C operand") if ctx.get(node, 2) is not None else np.zeros(())
    bias = node.attr("beta", 1.0) * _const_for(node, c, w.shape[:1])
    _linear(node, ctx, a, ir.Dense(node.name, a.node, w, np.broadcast_to(bias, w.shape[:1]), relu=False))


@converter("MatMul")
def convert_matmul(node: OnnxNode, ctx: Context) -> None:
    """Y = A·B with A the activation (batch, K) and B a constant (K, N); an Add after it gives the bias."""
    a = ctx.pop(node, 0, rank=(1,))
    b = ctx.const(node, 1, "second operand")
    if b.ndim != 2:
        raise unsupported(node, f"its constant operand has shape {b.shape}, expected (K, N)")
    _linear(node, ctx, a, ir.Dense(node.name, a.node, b.T, np.zeros(b.shape[1]), relu=False))


@converter("Conv")
def convert_conv(node: OnnxNode, ctx: Context) -> None:
    """2-D convolution with constant weights and bias; group = 1."""
    a = ctx.pop(node, 0, rank=(3,))
    w = ctx.const(node, 1, "weight")
    if w.ndim != 4:
        raise unsupported(node, "only 2-D convolutions are supported")
    if node.attr("group", 1) != 1:
        raise unsupported(node, f"group={node.attr('group')} (grouped convolutions are not supported yet)")
    bias = ctx.const(node, 2, "bias") if ctx.get(node, 2) is not None else np.zeros(w.shape[0])
    strides = tuple(node.attr("strides") or (1, 1))
    dilations = tuple(node.attr("dilations") or (1, 1))
    pads = _pads(node, a.shape[1:], w.shape[2:], strides, dilations)
    if w.shape[1] != a.shape[0]:
        raise ModelError(f"{node.label}: its weight of shape {w.shape} does not fit its input of shape {a.shape}")
    layer = ir.Conv(node.name, a.node, w, bias, relu=False, in_shape=a.shape,
                    strides=strides, pads=pads, dilations=dilations)
    _linear(node, ctx, a, layer)


def _pads(node: OnnxNode, size, kernel, strides, dilations) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads from ``pads`` or ``auto_pad`` (SAME_UPPER/SAME_LOWER/VALID)."""
    mode = node.attr("auto_pad", "NOTSET")
    if mode == "NOTSET":
        pads = tuple(node.attr("pads") or (0, 0, 0, 0))
        if len(pads) != 4:
            raise unsupported(node, f"pads {pads} are not 2-D")
        return pads
    if mode == "VALID":
        return (0, 0, 0, 0)
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        low = total // 2 if mode == "SAME_UPPER" else total - total // 2
        begin.append(low)
        end.append(total - low)
    return (begin[0], begin[1], end[0], end[1])


def _linear(node: OnnxNode, ctx: Context, a: Pop, layer) -> None:
    """A linear layer on a population: fold the population's pending affine map forward (DESIGN §4)."""
    expected = layer.in_shape if isinstance(layer, ir.Conv) else layer.weight.shape[1:]
    if tuple(expected) != tuple(a.shape) or (isinstance(layer, ir.Conv) and layer.weight.shape[1] != a.shape[0]):
        raise ModelError(f"{node.label}: its weight of shape {layer.weight.shape} does not fit its input of shape {a.shape}")
    if min(layer.shape) < 1:
        raise ModelError(f"{node.label}: the kernel does not fit the input {a.shape}: output shape {layer.shape}")
    try:
        layer = ir.fold_input_affine(layer, a.shape, a.scale, a.shift)
    except ir.GraphError as e:
        raise unsupported(node, str(e)) from None
    ctx.set(node, Lin(replace(layer, name=ctx.unique(node.name))))


@converter("Relu")
def convert_relu(node: OnnxNode, ctx: Context) -> None:
    """ReLU of a linear layer: a spiking layer. ReLU of a ReLU output: the identity."""
    v = ctx.get(node, 0)
    if isinstance(v, Lin):
        name = ctx.add(node, replace(v.layer, relu=True, source=node.outputs[0]))
        ctx.set(node, _identity_pop(name, v.layer.shape, nonnegative=True))
    elif isinstance(v, Pop) and v.nonnegative:
        ctx.set(node, v)
    else:
        raise unsupported(node, "a ReLU must follow a linear layer (Conv, Gemm, MatMul) or its affine maps")


@converter("BatchNormalization")
def convert_batchnorm(node: OnnxNode, ctx: Context) -> None:
    """y = γ·(x − μ)/√(σ² + ε) + β per channel: k = γ/√(σ² + ε), h = β − μ·k."""
    if node.attr("training_mode", 0):
        raise unsupported(node, "training_mode=1")
    gamma, beta, mean, var = (ctx.const(node, i, n) for i, n in enumerate(("scale", "bias", "mean", "var"), 1))
    if gamma.ndim != 1 or len({p.shape for p in (gamma, beta, mean, var)}) != 1:
        raise ModelError(f"{node.label}: scale, bias, mean and var must be vectors of one length, got shapes "
                         f"{[p.shape for p in (gamma, beta, mean, var)]}")
    k = gamma / np.sqrt(var + node.attr("epsilon", 1e-5))
    h = beta - mean * k
    v = ctx.get(node, 0)
    rank = len(v.layer.shape if isinstance(v, Lin) else getattr(v, "shape", ()))
    apply_affine(node, ctx, v, ops.channel_axis(k, rank), ops.channel_axis(h, rank))


@converter("Add", "Sub", "Mul", "Div")
def convert_arithmetic(node: OnnxNode, ctx: Context) -> None:
    """An activation and a constant: x+c, x−c, c−x, x·c, x/c as tensor ↦ k·tensor + h."""
    x, y = ctx.get(node, 0), ctx.get(node, 1)
    if not isinstance(x, Const) and not isinstance(y, Const):
        raise unsupported(node, "both operands are activations (residual connections are not supported yet)")
    const_first = isinstance(x, Const)
    value, c = (y, x.value) if const_first else (x, y.value)
    c = np.asarray(c, dtype=np.float64)
    op = node.op_type
    if op == "Add":
        k, h = np.ones(()), c
    elif op == "Sub":
        k, h = (-np.ones(()), c) if const_first else (np.ones(()), -c)
    elif op == "Mul":
        k, h = c, np.zeros(())
    elif const_first:
        raise unsupported(node, "division by an activation")
    else:
        with np.errstate(divide="ignore"):
            k, h = 1.0 / c, np.zeros(())
    apply_affine(node, ctx, value, k, h)


@converter("MaxPool")
def convert_maxpool(node: OnnxNode, ctx: Context) -> None:
    """Max-pooling of a population: the earliest spike (needs a positive per-channel pending scale)."""
    a = ctx.pop(node, 0, rank=(3,))
    scale = _per_channel(node, np.broadcast_to(a.scale, a.shape), a.shape)
    shift = _per_channel(node, np.broadcast_to(a.shift, a.shape), a.shape)
    if np.any(scale <= 0):
        raise unsupported(node, "a non-positive scale sits between the ReLU and the MaxPool")
    kernel = tuple(node.attr("kernel_shape"))
    if len(kernel) != 2:
        raise unsupported(node, "only 2-D max-pooling is supported")
    strides = tuple(node.attr("strides") or (1, 1))
    dilations = tuple(node.attr("dilations") or (1, 1))
    pads = _pads(node, a.shape[1:], kernel, strides, dilations)
    pool = ir.MaxPool(ctx.unique(node.name), a.node, a.shape, kernel, strides, pads, dilations,
                      bool(node.attr("ceil_mode", 0)))
    if min(pool.shape) < 1:
        raise ModelError(f"{node.label}: the window does not fit the input {a.shape}: output shape {pool.shape}")
    ctx.add(node, pool)
    ctx.set(node, Pop(pool.name, pool.shape, ops.channel_axis(scale, 3), ops.channel_axis(shift, 3), a.nonnegative))


def _flatten(node: OnnxNode, ctx: Context, a: Pop) -> None:
    if len(a.shape) == 1:
        ctx.set(node, a)
        return
    flat = ir.Flatten(ctx.unique(node.name), a.node, a.shape)
    ctx.add(node, flat)
    ctx.set(node, Pop(flat.name, flat.shape, np.broadcast_to(a.scale, a.shape).reshape(-1),
                      np.broadcast_to(a.shift, a.shape).reshape(-1), a.nonnegative))


@converter("Flatten")
def convert_flatten(node: OnnxNode, ctx: Context) -> None:
    """Flatten with axis 1: (batch, C, H, W) → (batch, C·H·W)."""
    if node.attr("axis", 1) != 1:
        raise unsupported(node, f"axis={node.attr('axis')} (only axis=1 keeps the batch axis)")
    _flatten(node, ctx, ctx.pop(node, 0))


@converter("Reshape")
def convert_reshape(node: OnnxNode, ctx: Context) -> None:
    """Reshape used as a flatten: a constant target (0 or −1, C·H·W) or (0 or −1, −1)."""
    a = ctx.pop(node, 0)
    target = [int(t) for t in ctx.const(node, 1, "target shape")]
    n = int(np.prod(a.shape))
    if len(target) == 2 and target[0] in (0, -1) and target[1] in (-1, n) and target != [-1, -1]:
        if target[0] == -1 and target[1] == -1:
            raise unsupported(node, f"target shape {target}")
        _flatten(node, ctx, a)
    elif target[1:] == list(a.shape) and target[0] in (0, -1):
        ctx.set(node, a)
    else:
        raise unsupported(node, f"target shape {target} is not a flatten of {a.shape}")


@converter("Identity", "Dropout")
def convert_identity(node: OnnxNode, ctx: Context) -> None:
    """Identity, and Dropout at inference: the output is the input."""
    ctx.set(node, ctx.get(node, 0))


@converter("Softmax", "LogSoftmax")
def convert_softmax(node: OnnxNode, ctx: Context) -> None:
    """At the graph output only: removed, since the readout gives the logits; recorded in the artifact."""
    if node.outputs[0] not in ctx.output_tail:
        raise unsupported(node, "a softmax is only supported as the last operation")
    if node.attr("axis", 1) not in (1, -1):
        raise unsupported(node, f"axis={node.attr('axis')} is not the class axis")
    ctx.removed.append(node.op_type)
    ctx.logits_tensor = node.inputs[0]
    ctx.set(node, ctx.get(node, 0))


@converter("Constant")
def convert_constant(node: OnnxNode, ctx: Context) -> None:
    """A constant tensor from any of the value attributes."""
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            ctx.set(node, Const(np.asarray(node.attrs[key])))
            return
    raise unsupported(node, "only numeric constants are supported")


# ----------------------------------------------------------------------------- driver

@dataclass(frozen=True)
class Imported:
    """The result of an import: the IR graph and facts about the source model."""

    graph: ir.Graph
    opset: int
    sha256: str
    file_name: str


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
        onnx.checker.check_model(model)
        for tensor in model.graph.initializer:  # the checker does not compare dims with the stored data
            numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises several unrelated types for broken files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: not a valid ONNX model ({first})") from None
    return model, digest.hexdigest()


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no default-domain opset")


def input_spec(model: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    """The one real (non-initializer) graph input: its name and its shape without the batch axis."""
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
    if len(shape) not in (1, 3):
        raise ModelError(f"input '{inp.name}' has shape {_dims(dims)}; expected (batch, features) or (batch, C, H, W)")
    return inp.name, tuple(shape)


def _dims(dims) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _output_tail(nodes: list[OnnxNode], output: str) -> set[str]:
    """The graph output and the tensors that reach it through Identity or Dropout nodes only."""
    tail = {output}
    for node in reversed(nodes):
        if node.op_type in ("Identity", "Dropout") and node.outputs[0] in tail:
            tail.add(node.inputs[0])
    return tail


def import_model(path: str | Path) -> Imported:
    """Read an ONNX file into the IR, folding affine maps and removing a final softmax (DESIGN §4)."""
    model, sha = load_model(path)
    opset = model_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{path}: opset {opset} is older than {MIN_OPSET}; re-export with opset {MIN_OPSET} or newer")
    if len(model.graph.output) != 1:
        raise ModelError(f"{path}: the model has {len(model.graph.output)} outputs; relu2snn converts models with exactly one")
    in_name, in_shape = input_spec(model)
    nodes = [wrap_node(p, p.name or f"{p.op_type}_{i}", opset) for i, p in enumerate(model.graph.node)]
    missing = tuple((n.name, n.op_type) for n, p in zip(nodes, model.graph.node)
                    if n.op_type not in CONVERTERS or p.domain not in ("", "ai.onnx"))
    if missing:
        listing = ", ".join(f"{op} '{name}'" for name, op in missing)
        hint = ("; Shape…Concat feeding a Reshape is how x.view(x.size(0), -1) exports: use torch.flatten or "
                "nn.Flatten, or the dynamo exporter" if {"Shape", "Reshape"} <= {n.op_type for n in nodes} else "")
        raise UnsupportedOperatorError(
            f"{path}: {len(missing)} node(s) without an exact spiking mapping: {listing} "
            f"(supported: {SUPPORTED_DOC}){hint}", missing)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ctx = Context(consts, model.graph.output[0].name, _output_tail(nodes, model.graph.output[0].name))
    ctx.nodes.append(ir.Input(in_name, in_shape))
    ctx.values[in_name] = _identity_pop(in_name, in_shape, nonnegative=False)
    for node in nodes:
        CONVERTERS[node.op_type](node, ctx)
    out = ctx.values.get(ctx.graph_output)
    if isinstance(out, Lin):
        ctx.add(None, replace(out.layer, source=ctx.logits_tensor))
    elif isinstance(out, Pop) and len(out.shape) == 1:
        n = out.shape[0]  # ReLU at the output: read the population through its pending affine map
        ident = ir.Dense(ctx.unique("readout"), out.node, np.eye(n), np.zeros(n), relu=False, source=ctx.logits_tensor)
        ctx.add(None, ir.fold_input_affine(ident, out.shape, out.scale, out.shift))
    else:
        raise ModelError(f"{path}: the output '{ctx.graph_output}' is not a linear layer's output")
    graph = ir.Graph(tuple(ctx.nodes), input_name=in_name, output_name=ctx.logits_tensor, removed=tuple(ctx.removed))
    return Imported(graph, opset, sha, Path(path).name)
