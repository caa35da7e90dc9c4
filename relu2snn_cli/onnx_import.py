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
    """tensor = scale·a + shift, a the population of IR node ``node`` (shape without batch).

    ``relu``: a ≥ 0 (the population comes from ReLU layers, not from the network input);
    ``nonnegative``: moreover the affine map is the identity, so the tensor is a itself;
    ``pads``: a pending zero padding (begins, then ends, per spatial axis) that the next
    convolution or average pooling absorbs.
    """

    node: str
    shape: tuple[int, ...]
    scale: np.ndarray
    shift: np.ndarray
    nonnegative: bool
    relu: bool = True
    pads: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Lin:
    """tensor = layer(a…): an affine layer on populations, its ReLU not yet applied."""

    layer: ir.Affine


@dataclass(frozen=True, eq=False)
class Pooled:
    """An average pooling of a population, its output non-negative, not yet a spiking layer: ``layer`` seen
    with ``shape`` (it may have been flattened since). A dense layer reading it absorbs it (DESIGN §4: fold
    into the following linear layer); any other reader makes it a spiking layer equal to ONNX ``tensor``."""

    layer: ir.Affine
    tensor: str
    shape: tuple[int, ...]


def _identity_pop(node: str, shape: tuple[int, ...], relu: bool) -> Pop:
    return Pop(node, tuple(shape), np.ones(()), np.zeros(()), nonnegative=relu, relu=relu)


def _full(pop: Pop) -> tuple[np.ndarray, np.ndarray]:
    """The pending map's scale and shift at every position of the population."""
    return np.broadcast_to(pop.scale, pop.shape), np.broadcast_to(pop.shift, pop.shape)


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
        self.by_name: dict = {}
        self.graph_output = graph_output
        self.output_tail = output_tail  # tensors that reach the output through Identity/Dropout only
        self.logits_tensor = graph_output
        self.removed: list[str] = []

    def get(self, node: OnnxNode, i: int, raw: bool = False):
        """The value of input i (None if absent); a pending average pooling becomes a spiking layer unless ``raw``."""
        if i >= len(node.inputs) or not node.inputs[i]:
            return None
        name = node.inputs[i]
        if name not in self.values:
            raise unsupported(node, f"its input '{name}' is a secondary output (a mask or indices) "
                                    "that has no spiking counterpart")
        v = self.values[name]
        return self.materialize(name, v) if isinstance(v, Pooled) and not raw else v

    def materialize(self, tensor: str, v: Pooled) -> Pop:
        """A pending average pooling as a spiking layer (its ReLU the identity), reshaped as it was seen."""
        pop = _identity_pop(self.add(replace(v.layer, relu=True, source=v.tensor)), v.layer.shape, relu=True)
        if v.shape != tuple(v.layer.shape):
            pop = _reshaped(self, pop, v.shape, f"{v.layer.name}/reshape")
        self.values[tensor] = pop
        return pop

    def const(self, node: OnnxNode, i: int, what: str) -> np.ndarray:
        v = self.get(node, i)
        if not isinstance(v, Const):
            raise unsupported(node, f"its {what} must be a constant")
        return v.value.astype(np.float64) if v.value.dtype.kind == "f" else v.value

    def pop(self, node: OnnxNode, i: int = 0, rank: tuple[int, ...] | None = None, pads: bool = False) -> Pop:
        """Input i as a population (of one of the ranks ``rank``, if given; with a pending Pad only if ``pads``)."""
        v = self.get(node, i)
        if isinstance(v, Lin):
            raise unsupported(node, "it is applied to a linear layer's output before a ReLU")
        if not isinstance(v, Pop):
            raise unsupported(node, "its input must be an activation, not a constant")
        if rank is not None and len(v.shape) not in rank:
            raise unsupported(node, f"its input has shape {v.shape} (batch axis omitted)")
        if v.pads and not pads:
            raise unsupported(node, "it reads a Pad output; only a Conv or AveragePool can absorb a Pad")
        return v

    def set(self, node: OnnxNode, value) -> None:
        self.values[node.outputs[0]] = value

    def add(self, ir_node) -> str:
        """Append an IR node; its inputs are earlier nodes because ONNX graphs are topologically sorted."""
        self.nodes.append(ir_node)
        self.by_name[ir_node.name] = ir_node
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
        if value.pads:
            raise unsupported(node, "it reads a Pad output; only a Conv or AveragePool can absorb a Pad")
        k = _const_for(node, k, value.shape)
        h = _const_for(node, h, value.shape)
        ctx.set(node, replace(value, scale=value.scale * k, shift=value.shift * k + h, nonnegative=False))
    else:
        raise unsupported(node, "both operands are constants (constant folding is not done)")


def _affine(node: OnnxNode, ctx: Context, parts: list[tuple[Pop, ir.Term]], bias) -> ir.Affine:
    """An affine layer of terms on populations, each population's pending map folded into its term (DESIGN §4)."""
    shape = parts[0][1].shape
    if min(shape) < 1:
        raise ModelError(f"{node.label}: the kernel does not fit the input {parts[0][0].shape}: output shape {shape}")
    bias = np.asarray(bias, dtype=np.float64)
    terms, total = [], ops.per_neuron(bias, shape) if bias.ndim else np.broadcast_to(bias, shape)
    for pop, term in parts:
        try:
            term, extra = ir.fold_term_input(term, pop.scale, pop.shift)
        except ir.GraphError as e:
            raise unsupported(node, str(e)) from None
        terms.append(term)
        total = total + extra
    return ir.Affine(ctx.unique(node.name), tuple(terms), ir.compact_bias(total), relu=False)


def _identity_term(node: OnnxNode, pop: Pop) -> ir.Term:
    """Synapses that copy a population: a diagonal dense block, or a 1×1 depthwise convolution."""
    if len(pop.shape) == 1:
        return ir.Dense(pop.node, np.eye(pop.shape[0]), pop.shape)
    rank = len(pop.shape) - 1
    return ir.Conv(pop.node, np.ones((pop.shape[0], 1) + (1,) * rank), pop.shape, (1,) * rank, (0,) * 2 * rank,
                   (1,) * rank, groups=pop.shape[0])


def _as_linear(node: OnnxNode, ctx: Context, value) -> ir.Affine:
    """A value as an affine layer not yet followed by its ReLU: a Lin as is, a population through identity synapses."""
    if isinstance(value, Lin):
        return value.layer
    if not isinstance(value, Pop) or value.pads:
        raise unsupported(node, "its operands must be activations or linear layers")
    return _affine(node, ctx, [(value, _identity_term(node, value))], 0.0)


def _spiking(node: OnnxNode, ctx: Context, layer: ir.Affine) -> Pop:
    """Make ``layer`` a ReLU layer whose output is this node's output tensor; its population."""
    name = ctx.add(replace(layer, relu=True, source=node.outputs[0]))
    return _identity_pop(name, layer.shape, relu=True)


def _tensor_nonnegative(pop: Pop) -> bool:
    """scale·a + shift ≥ 0 for every a ≥ 0."""
    scale, shift = _full(pop)
    return pop.relu and bool(np.all(scale >= 0) and np.all(shift >= 0))


# ----------------------------------------------------------------------------- converters

@converter("Gemm")
def convert_gemm(node: OnnxNode, ctx: Context) -> None:
    """Y = alpha·A'·B' + beta·C with A the activation (batch, K) and B, C constants."""
    if node.attr("transA", 0):
        raise unsupported(node, "transA=1 on the activation puts the batch axis last")
    b = ctx.const(node, 1, "B operand")
    w = node.attr("alpha", 1.0) * (b.T if not node.attr("transB", 0) else b)
    c = ctx.const(node, 2, "C operand") if ctx.get(node, 2) is not None else np.zeros(())
    bias = node.attr("beta", 1.0) * _const_for(node, c, w.shape[:1])
    _dense(node, ctx, w, bias, b.shape)


def _dense(node: OnnxNode, ctx: Context, w: np.ndarray, bias, given: tuple[int, ...]) -> None:
    """A dense layer W·x + b on input 0; a pending average pooling x = P·a + p folds in: W·P on a, b + W·p."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Pooled) and len(v.shape) == 1 and w.ndim == 2 and w.shape[1] == v.shape[0]:
        folded = ir.dense_after_pooling(w, v.layer)
        if folded is not None:
            pool = v.layer.terms[0]
            term = ir.Dense(pool.input, folded, pool.in_shape)
            a = _identity_pop(pool.input, pool.in_shape, relu=True)
            ctx.set(node, Lin(_affine(node, ctx, [(a, term)], bias + w @ ir.full_bias(v.layer).reshape(-1))))
            return
    a = ctx.pop(node, 0, rank=(1,))
    if w.ndim != 2 or w.shape[1] != a.shape[0]:
        raise ModelError(f"{node.label}: its weight of shape {given} does not fit its input of shape {a.shape}")
    ctx.set(node, Lin(_affine(node, ctx, [(a, ir.Dense(a.node, w, a.shape))], bias)))


@converter("MatMul")
def convert_matmul(node: OnnxNode, ctx: Context) -> None:
    """A·B with one constant operand: activation (batch, K) · B (K, M) is a dense layer; A (P, K) · activation
    (batch, K, L) is a 1×1 convolution over the sequence. An Add after it gives the bias."""
    x, y = ctx.get(node, 0), ctx.get(node, 1)
    if isinstance(y, Const):
        b, shape = ctx.const(node, 1, "second operand"), getattr(x, "shape", None)
        if shape is None or len(shape) != 1 or b.ndim != 2 or b.shape[0] != shape[0]:
            raise unsupported(node, f"activation {shape} times a constant {b.shape}: only (batch, K)·(K, M) "
                                    "is a dense layer")
        _dense(node, ctx, b.T, np.zeros(b.shape[1]), b.shape)
        return
    elif isinstance(x, Const):
        c, a = ctx.const(node, 0, "first operand"), ctx.pop(node, 1)
        if len(a.shape) != 2 or c.ndim != 2 or c.shape[1] != a.shape[0]:
            raise unsupported(node, f"a constant {c.shape} times an activation {a.shape}: only (P, K)·(batch, K, L) "
                                    "is a convolution")
        term = ir.Conv(a.node, c[:, :, None], a.shape, (1,), (0, 0), (1,))
    else:
        raise unsupported(node, "both operands are activations (a product of two activations has no exact "
                                "spiking mapping)")
    ctx.set(node, Lin(_affine(node, ctx, [(a, term)], 0.0)))


def _geometry(node: OnnxNode, rank: int, size, kernel, extra_pads=()) -> tuple[tuple, tuple, tuple]:
    """strides, pads (begins, then ends, a pending Pad added) and dilations of a sliding-window node."""
    strides = tuple(node.attr("strides") or (1,) * rank)
    dilations = tuple(node.attr("dilations") or (1,) * rank)
    if len(strides) != rank or len(dilations) != rank:
        raise unsupported(node, f"strides {strides} or dilations {dilations} are not {rank}-D")
    extra = tuple(extra_pads) or (0,) * 2 * rank
    padded = tuple(n + extra[i] + extra[i + rank] for i, n in enumerate(size))
    pads = _pads(node, padded, kernel, strides, dilations)
    return strides, tuple(p + e for p, e in zip(pads, extra)), dilations


@converter("Conv")
def convert_conv(node: OnnxNode, ctx: Context) -> None:
    """1-D or 2-D convolution with constant weights and bias, any group count (depthwise included)."""
    a = ctx.pop(node, 0, rank=(2, 3), pads=True)
    w = ctx.const(node, 1, "weight")
    rank = len(a.shape) - 1
    groups = int(node.attr("group", 1))
    if w.ndim != rank + 2 or groups < 1 or w.shape[1] * groups != a.shape[0] or w.shape[0] % groups:
        raise ModelError(f"{node.label}: its weight of shape {w.shape} with group={groups} does not fit its "
                         f"input of shape {a.shape}")
    bias = ctx.const(node, 2, "bias") if ctx.get(node, 2) is not None else np.zeros(w.shape[0])
    strides, pads, dilations = _geometry(node, rank, a.shape[1:], w.shape[2:], a.pads)
    term = ir.Conv(a.node, w, a.shape, strides, pads, dilations, groups)
    ctx.set(node, Lin(_affine(node, ctx, [(a, term)], bias)))


def _pads(node: OnnxNode, size, kernel, strides, dilations) -> tuple[int, ...]:
    """Explicit pads (begins, then ends) from ``pads`` or ``auto_pad`` (SAME_UPPER/SAME_LOWER/VALID)."""
    rank = len(kernel)
    mode = node.attr("auto_pad", "NOTSET")
    if mode == "NOTSET":
        pads = tuple(node.attr("pads") or (0,) * 2 * rank)
        if len(pads) != 2 * rank:
            raise unsupported(node, f"pads {pads} are not {rank}-D")
        return pads
    if mode == "VALID":
        return (0,) * 2 * rank
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        low = total // 2 if mode == "SAME_UPPER" else total - total // 2
        begin.append(low)
        end.append(total - low)
    return tuple(begin) + tuple(end)


@converter("Relu")
def convert_relu(node: OnnxNode, ctx: Context) -> None:
    """ReLU of a linear layer (or of a population's affine map): a spiking layer. ReLU of a non-negative
    tensor: the identity."""
    v = ctx.get(node, 0)
    if isinstance(v, Pop) and not v.pads and (v.nonnegative or _tensor_nonnegative(v)):
        ctx.set(node, v)
    elif isinstance(v, (Lin, Pop)):
        ctx.set(node, _spiking(node, ctx, _as_linear(node, ctx, v)))
    else:
        raise unsupported(node, "a ReLU of a constant")


@converter("BatchNormalization")
def convert_batchnorm(node: OnnxNode, ctx: Context) -> None:
    """y = γ·(x − μ)/√(σ² + ε) + β per channel: k = γ/√(σ² + ε), h = β − μ·k."""
    if node.attr("training_mode", 0):
        raise unsupported(node, "training_mode=1")
    gamma, beta, mean, var = (ctx.const(node, i, n) for i, n in enumerate(("scale", "bias", "mean", "var"), 1))
    k = gamma / np.sqrt(var + node.attr("epsilon", 1e-5))
    h = beta - mean * k
    v = ctx.get(node, 0)
    rank = len(v.layer.shape if isinstance(v, Lin) else getattr(v, "shape", ()))
    apply_affine(node, ctx, v, ops.channel_axis(k, rank), ops.channel_axis(h, rank))


@converter("Add", "Sub", "Mul", "Div")
def convert_arithmetic(node: OnnxNode, ctx: Context) -> None:
    """With a constant: x+c, x−c, c−x, x·c, x/c as tensor ↦ k·tensor + h. Two activations: a sum or
    difference is one affine layer with the terms of both (a residual connection)."""
    x, y = ctx.get(node, 0), ctx.get(node, 1)
    if not isinstance(x, Const) and not isinstance(y, Const):
        _sum_of_activations(node, ctx, x, y)
        return
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


def _sum_of_activations(node: OnnxNode, ctx: Context, x, y) -> None:
    if node.op_type not in ("Add", "Sub"):
        raise unsupported(node, f"{node.op_type} of two activations has no exact spiking mapping")
    first, second = _as_linear(node, ctx, x), _as_linear(node, ctx, y)
    if first.shape != second.shape:
        raise unsupported(node, f"its operands have shapes {first.shape} and {second.shape} (no broadcasting "
                                "between activations)")
    if node.op_type == "Sub":
        second = ir.scale_outputs(second, -np.ones(second.shape[0]))
    total = ir.compact_bias(ir.full_bias(first) + ir.full_bias(second))
    layer = ir.Affine(ctx.unique(node.name), first.terms + second.terms, total, relu=False)
    if node.op_type == "Add" and all(isinstance(v, Pop) and _tensor_nonnegative(v) for v in (x, y)):
        ctx.set(node, _spiking(node, ctx, layer))   # a sum of non-negative tensors: its ReLU is the identity
    else:
        ctx.set(node, Lin(layer))


@converter("MaxPool")
def convert_maxpool(node: OnnxNode, ctx: Context) -> None:
    """1-D or 2-D max-pooling of a population: the earliest spike; the latest for channels whose pending
    scale is negative (max(k·a + h) = k·min(a) + h)."""
    a = ctx.pop(node, 0, rank=(2, 3))
    scale = _per_channel(node, np.broadcast_to(a.scale, a.shape), a.shape)
    shift = _per_channel(node, np.broadcast_to(a.shift, a.shape), a.shape)
    rank = len(a.shape) - 1
    kernel = tuple(node.attr("kernel_shape"))
    if len(kernel) != rank:
        raise unsupported(node, f"kernel {kernel} on an input of shape {a.shape}")
    if node.attr("storage_order", 0):
        raise unsupported(node, "storage_order=1")
    strides, pads, dilations = _geometry(node, rank, a.shape[1:], kernel)
    latest = tuple(int(c) for c in np.flatnonzero(scale < 0))
    pool = ir.MaxPool(ctx.unique(node.name), a.node, a.shape, kernel, strides, pads, dilations,
                      bool(node.attr("ceil_mode", 0)), latest)
    if min(pool.shape) < 1:
        raise ModelError(f"{node.label}: the window does not fit the input {a.shape}: output shape {pool.shape}")
    ctx.add(pool)
    ctx.set(node, Pop(pool.name, pool.shape, ops.channel_axis(scale, rank + 1), ops.channel_axis(shift, rank + 1),
                      a.nonnegative, a.relu))


@converter("AveragePool", "GlobalAveragePool")
def convert_avgpool(node: OnnxNode, ctx: Context) -> None:
    """Average pooling: a 1/k-weighted depthwise convolution. It becomes a spiking layer with fixed weights
    (its ReLU is the identity on non-negative inputs), or waits for a ReLU if its input can be negative."""
    a = ctx.pop(node, 0, rank=(2, 3), pads=True)
    if not a.relu:
        raise unsupported(node, "average pooling of the network input (pool the data before conversion)")
    rank = len(a.shape) - 1
    if node.op_type == "GlobalAveragePool":
        kernel, strides, pads, dilations = tuple(a.shape[1:]), (1,) * rank, (0,) * 2 * rank, (1,) * rank
        if a.pads:
            raise unsupported(node, "it reads a Pad output")
    else:
        kernel = tuple(node.attr("kernel_shape"))
        if len(kernel) != rank:
            raise unsupported(node, f"kernel {kernel} on an input of shape {a.shape}")
        own = _pads(node, a.shape[1:], kernel, tuple(node.attr("strides") or (1,) * rank), (1,) * rank)
        if any(own) and not node.attr("count_include_pad", 0):
            raise unsupported(node, "count_include_pad=0 with padding divides by a count that varies with the "
                                    "position")
        strides, pads, dilations = _geometry(node, rank, a.shape[1:], kernel, a.pads)
        if node.attr("ceil_mode", 0) and (ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations, True)
                                          != ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations)):
            raise unsupported(node, "ceil_mode=1 adds windows that are cut short")
    c = a.shape[0]
    weight = np.full((c, 1) + kernel, 1.0 / int(np.prod(kernel)))
    term = ir.Conv(a.node, weight, a.shape, strides, pads, dilations, groups=c)
    layer = _affine(node, ctx, [(a, term)], np.zeros(c))
    ctx.set(node, Pooled(layer, node.outputs[0], layer.shape) if _tensor_nonnegative(a) else Lin(layer))


def _reshape(node: OnnxNode, ctx: Context, a, shape: tuple[int, ...]) -> None:
    """Set the node's output: a population or a pending average pooling reshaped (C order)."""
    shape = tuple(int(d) for d in shape)
    if isinstance(a, Pooled):
        ctx.set(node, replace(a, shape=shape))
    else:
        ctx.set(node, _reshaped(ctx, a, shape, node.name))


def _reshaped(ctx: Context, a: Pop, shape: tuple[int, ...], name: str) -> Pop:
    """The population reshaped (C order), its pending map with it; a reshape of a reshape reads the original."""
    shape = tuple(int(d) for d in shape)
    scale, shift = _full(a)
    a = replace(a, scale=scale.reshape(shape), shift=shift.reshape(shape), shape=shape)
    source = ctx.by_name.get(a.node)
    if isinstance(source, ir.Reshape):
        a = replace(a, node=source.input)
        in_shape = tuple(source.in_shape)
    else:
        in_shape = tuple(scale.shape)
    if shape != in_shape:
        a = replace(a, node=ctx.add(ir.Reshape(ctx.unique(name), a.node, in_shape, shape)))
    return a


@converter("Flatten")
def convert_flatten(node: OnnxNode, ctx: Context) -> None:
    """Flatten with axis 1: (batch, C, H, W) → (batch, C·H·W)."""
    if node.attr("axis", 1) != 1:
        raise unsupported(node, f"axis={node.attr('axis')} (only axis=1 keeps the batch axis)")
    a = _flat_or_pop(node, ctx)
    _reshape(node, ctx, a, (int(np.prod(a.shape)),))


def _flat_or_pop(node: OnnxNode, ctx: Context, shape=None):
    """Input 0 as a pending average pooling if reshaping it gives a vector (``shape`` None: a flatten), else as
    a population."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Pooled) and (shape is None or len(shape) == 1):
        return v
    return ctx.pop(node, 0)


@converter("Reshape")
def convert_reshape(node: OnnxNode, ctx: Context) -> None:
    """Reshape to a constant (or constant-folded) target that keeps the batch axis first (0 or −1 there)."""
    v = ctx.get(node, 0, raw=True)
    shape = _reshape_target(node, ctx, tuple(v.shape) if isinstance(v, (Pop, Pooled)) else ctx.pop(node, 0).shape)
    _reshape(node, ctx, _flat_or_pop(node, ctx, shape), shape)


def _reshape_target(node: OnnxNode, ctx: Context, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape (batch axis omitted) that Reshape's target gives an input of ``shape``."""
    target = [int(t) for t in ctx.const(node, 1, "target shape")]
    if node.attr("allowzero", 0) and 0 in target:
        raise unsupported(node, "allowzero=1 with a zero in the target shape")
    n = int(np.prod(shape))
    if not target or target[0] not in (0, -1) or (target[0] == -1 and -1 in target[1:]):
        raise unsupported(node, f"target shape {target} does not keep the batch axis of an input of shape "
                                f"(batch, {', '.join(map(str, shape))})")
    rest = [shape[i - 1] if t == 0 else t for i, t in enumerate(target) if i > 0]
    if -1 in rest:
        known = int(np.prod([d for d in rest if d != -1]))
        if known == 0 or n % known:
            raise ModelError(f"{node.label}: cannot reshape {shape} to {target}")
        rest[rest.index(-1)] = n // known
    if int(np.prod(rest)) != n or any(d < 1 for d in rest):
        raise ModelError(f"{node.label}: cannot reshape {shape} to {target}")
    return tuple(rest)


def _axes(node: OnnxNode, ctx: Context, rank: int) -> list[int]:
    """Axes from the ``axes`` attribute (opset < 13) or the second input, made non-negative for ``rank``."""
    axes = node.attr("axes")
    if axes is None and ctx.get(node, 1) is not None:
        axes = ctx.const(node, 1, "axes")
    axes = [int(x) for x in np.atleast_1d(axes if axes is not None else [])]
    if any(not -rank <= x < rank for x in axes) or len({x % rank for x in axes}) != len(axes):
        raise unsupported(node, f"axes {axes} for a result of rank {rank}")
    return sorted(x % rank for x in axes)


def _n_axes(node: OnnxNode, ctx: Context) -> int:
    axes = node.attr("axes")
    return len(np.atleast_1d(axes if axes is not None else ctx.const(node, 1, "axes")))


@converter("Squeeze", "Unsqueeze")
def convert_squeeze(node: OnnxNode, ctx: Context) -> None:
    """Remove or insert axes of size 1 (never the batch axis): a reshape; on a constant, numpy's."""
    v = ctx.get(node, 0, raw=True)
    shape = list(v.value.shape) if isinstance(v, Const) else [-1, *ctx.pop(node, 0).shape]  # batch axis first
    if node.op_type == "Unsqueeze":
        axes = _axes(node, ctx, len(shape) + _n_axes(node, ctx))
        for x in axes:
            shape.insert(x, 1)
    else:
        axes = _axes(node, ctx, len(shape)) or [i for i, d in enumerate(shape) if d == 1]
        if any(shape[x] != 1 for x in axes):
            raise unsupported(node, f"axes {axes} of an input of shape {tuple(shape)} are not all of size 1")
        shape = [d for i, d in enumerate(shape) if i not in axes]
    if isinstance(v, Const):
        ctx.set(node, Const(v.value.reshape(shape)))
    elif 0 in axes or shape[0] != -1:
        raise unsupported(node, "it moves the batch axis")
    else:
        _reshape(node, ctx, ctx.pop(node, 0), tuple(shape[1:]))


@converter("Transpose")
def convert_transpose(node: OnnxNode, ctx: Context) -> None:
    """A permutation of the non-batch axes (e.g. NHWC ↔ NCHW): neurons change places, spikes do not."""
    v = ctx.get(node, 0)
    if isinstance(v, Const):
        ctx.set(node, Const(np.transpose(v.value, node.attr("perm"))))
        return
    a = ctx.pop(node, 0)
    perm = [int(p) for p in (node.attr("perm") or range(len(a.shape), -1, -1))]
    if perm[0] != 0 or sorted(perm) != list(range(len(a.shape) + 1)):
        raise unsupported(node, f"perm {perm} moves the batch axis")
    perm = tuple(p - 1 for p in perm[1:])
    if perm == tuple(range(len(a.shape))):
        ctx.set(node, a)
        return
    out = ir.Transpose(ctx.unique(node.name), a.node, a.shape, perm)
    ctx.add(out)
    scale, shift = _full(a)
    ctx.set(node, replace(a, node=out.name, shape=out.shape, scale=scale.transpose(perm), shift=shift.transpose(perm)))


@converter("Concat")
def convert_concat(node: OnnxNode, ctx: Context) -> None:
    """Populations side by side along a non-batch axis (from different windows: delays align them, DESIGN §4);
    constants (shape computations) are concatenated as they are."""
    values = [ctx.get(node, i) for i in range(len(node.inputs))]
    if all(isinstance(v, Const) for v in values):
        ctx.set(node, Const(np.concatenate([np.atleast_1d(v.value) for v in values], axis=node.attr("axis"))))
        return
    pops = [ctx.pop(node, i) for i in range(len(node.inputs))]
    rank = len(pops[0].shape)
    axis = int(node.attr("axis")) % (rank + 1)
    if axis == 0:
        raise unsupported(node, "it concatenates along the batch axis")
    out = ir.Concat(ctx.unique(node.name), tuple(p.node for p in pops), tuple(tuple(p.shape) for p in pops), axis - 1)
    ctx.add(out)
    maps = [_full(p) for p in pops]
    ctx.set(node, Pop(out.name, out.shape, np.concatenate([m[0] for m in maps], axis=axis - 1),
                      np.concatenate([m[1] for m in maps], axis=axis - 1),
                      all(p.nonnegative for p in pops), all(p.relu for p in pops)))


@converter("Pad")
def convert_pad(node: OnnxNode, ctx: Context) -> None:
    """Constant zero padding of the spatial axes: kept pending and absorbed by the next Conv or AveragePool
    as extra zero padding (DESIGN §4: padded positions are virtual inputs at the window end)."""
    a = ctx.pop(node, 0, rank=(2, 3), pads=True)
    if node.attr("mode", "constant") != "constant":
        raise unsupported(node, f"mode={node.attr('mode')} (only constant zero padding)")
    pads = node.attr("pads")
    if pads is None:
        pads = ctx.const(node, 1, "pads")
    value = ctx.const(node, 2, "constant value") if ctx.get(node, 2) is not None else node.attr("value", 0.0)
    if np.any(np.asarray(value) != 0):
        raise unsupported(node, f"padding with {np.asarray(value).tolist()} (only zero padding)")
    if ctx.get(node, 3) is not None:
        raise unsupported(node, "the axes input")
    full = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(a.shape) + 1
    if len(full) != 2 * rank or any(full[i] or full[i + rank] for i in (0, 1)) or min(full) < 0:
        raise unsupported(node, f"pads {full}: only non-negative padding of the spatial axes")
    spatial = tuple(full[2:rank]) + tuple(full[rank + 2:])
    before = a.pads or (0,) * len(spatial)
    ctx.set(node, replace(a, pads=tuple(p + q for p, q in zip(before, spatial))))


@converter("Shape")
def convert_shape(node: OnnxNode, ctx: Context) -> None:
    """The shape of an activation as a constant, 0 standing for the batch axis (which Reshape reads as "keep")."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Const):
        full = np.array(v.value.shape, dtype=np.int64)
    else:
        full = np.array([0, *(v.layer.shape if isinstance(v, Lin) else v.shape)], dtype=np.int64)
    ctx.set(node, Const(full[node.attr("start", 0):node.attr("end", len(full))]))


@converter("Gather")
def convert_gather(node: OnnxNode, ctx: Context) -> None:
    """Constant folding only (shape computations): take indices of a constant."""
    data, idx = ctx.const(node, 0, "data"), ctx.const(node, 1, "indices")
    ctx.set(node, Const(np.take(data, idx.astype(np.int64), axis=node.attr("axis", 0))))


@converter("Cast")
def convert_cast(node: OnnxNode, ctx: Context) -> None:
    """Constant folding of a cast; on an activation, a cast to a float type is the identity."""
    v = ctx.get(node, 0)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(node.attr("to"))
    if isinstance(v, Const):
        ctx.set(node, Const(v.value.astype(dtype)))
    elif np.dtype(dtype).kind == "f":
        ctx.set(node, v)
    else:
        raise unsupported(node, f"a cast of an activation to {np.dtype(dtype)}")


@converter("Identity", "Dropout")
def convert_identity(node: OnnxNode, ctx: Context) -> None:
    """Identity, and Dropout at inference: the output is the input."""
    ctx.set(node, ctx.get(node, 0, raw=True))


@converter("Softmax", "LogSoftmax")
def convert_softmax(node: OnnxNode, ctx: Context) -> None:
    """At the graph output only: removed, since the readout gives the logits; recorded in the artifact."""
    if node.outputs[0] not in ctx.output_tail:
        raise unsupported(node, "a softmax is only supported as the last operation")
    if node.attr("axis", 1) not in (1, -1):
        raise unsupported(node, f"axis={node.attr('axis')} is not the class axis")
    ctx.removed.append(node.op_type)
    ctx.logits_tensor = node.inputs[0]
    ctx.set(node, ctx.get(node, 0, raw=True))


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
    if len(shape) not in (1, 2, 3):
        raise ModelError(f"input '{inp.name}' has shape {_dims(dims)}; expected (batch, features), (batch, C, L) "
                         "or (batch, C, H, W)")
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


def _used(nodes: list) -> tuple:
    """The nodes the readout (the last node) depends on, in order: unused branches and reshapes dropped."""
    needed = {nodes[0].name, nodes[-1].name}
    for node in reversed(nodes):
        if node.name in needed:
            needed.update(node.inputs)
    return tuple(n for n in nodes if n.name in needed)


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
        raise UnsupportedOperatorError(
            f"{path}: {len(missing)} node(s) without an exact spiking mapping: {listing} "
            f"(supported: {SUPPORTED_DOC})", missing)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ctx = Context(consts, model.graph.output[0].name, _output_tail(nodes, model.graph.output[0].name))
    ctx.add(ir.Input(in_name, in_shape))
    ctx.values[in_name] = _identity_pop(in_name, in_shape, relu=False)
    for node in nodes:
        CONVERTERS[node.op_type](node, ctx)
    out = ctx.values.get(ctx.graph_output)
    if isinstance(out, Pooled):
        out = ctx.materialize(ctx.graph_output, out)
    readout = OnnxNode("readout", "Identity", (ctx.graph_output,), (ctx.logits_tensor,), MappingProxyType({}))
    if isinstance(out, Lin):
        ctx.add(replace(out.layer, source=ctx.logits_tensor))
    elif isinstance(out, Pop) and out.node != in_name:
        # a ReLU (or pooling) at the output: read the population through its pending affine map
        ctx.add(replace(_as_linear(readout, ctx, out), source=ctx.logits_tensor))
    else:
        raise ModelError(f"{path}: the output '{ctx.graph_output}' is not computed from a linear layer")
    graph = ir.Graph(_used(ctx.nodes), input_name=in_name, output_name=ctx.logits_tensor, removed=tuple(ctx.removed))
    return Imported(graph, opset, sha, Path(path).name)
