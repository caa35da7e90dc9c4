"""The importer's core: symbolic values, the read-only node wrapper, the converter table, the conversion
context, and the folding helpers that converters share (docs/math.md §7, docs/supported-operators.md)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ir, ops
from ..errors import ModelError, UnsupportedOperatorError

SUPPORTED_DOC = "docs/supported-operators.md"


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
    """An average pooling P·a of a ReLU population a, not yet a spiking layer, seen through a pending affine
    map: tensor = scale·(P·a) + shift, of ``shape`` (it may have been flattened since; ``scale`` and ``shift``
    have that shape). A dense layer reading it absorbs P (docs/math.md §6: fold into the following linear layer);
    a ReLU, an affine map or a residual sum absorb the map; any other reader makes P·a a spiking layer (its
    ReLU is the identity, P·a ≥ 0) with the map pending on it. ``tensor`` is the ONNX tensor of the pooling."""

    layer: ir.Affine
    tensor: str
    shape: tuple[int, ...]
    scale: np.ndarray
    shift: np.ndarray

    @property
    def identity(self) -> bool:
        return bool(np.all(self.scale == 1) and np.all(self.shift == 0))

    @property
    def nonnegative(self) -> bool:
        return bool(np.all(self.scale >= 0) and np.all(self.shift >= 0))


def identity_pop(node: str, shape: tuple[int, ...], relu: bool) -> Pop:
    return Pop(node, tuple(shape), np.ones(()), np.zeros(()), nonnegative=relu, relu=relu)


def full_map(pop: Pop) -> tuple[np.ndarray, np.ndarray]:
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

    def __init__(self, consts: dict[str, np.ndarray], graph_output: str, output_tail: set[str],
                 batch: int | None = None):
        self.values: dict[str, Const | Pop | Lin] = {k: Const(v) for k, v in consts.items()}
        self.nodes: list = []
        self.by_name: dict = {}
        self.graph_output = graph_output
        self.output_tail = output_tail  # tensors that reach the output through Identity/Dropout only
        self.batch = batch  # the batch size the model's input fixes, if it does
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
        """A pending average pooling as a spiking layer (its ReLU the identity), its map pending, reshaped as it
        was seen. Without a map its activations are the ONNX tensor's; with one, calibration computes them."""
        shape = tuple(v.layer.shape)
        name = self.add(replace(v.layer, relu=True, source=v.tensor if v.identity else ""))
        pop = Pop(name, shape, v.scale.reshape(shape), v.shift.reshape(shape), nonnegative=v.identity)
        if v.shape != shape:
            pop = reshaped(self, pop, v.shape, f"{v.layer.name}/reshape")
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
            raise unsupported(node, "it reads a Pad output; only a Conv, an average pooling or a mean can absorb a Pad")
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

def const_for(node: OnnxNode, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
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


def per_channel(node: OnnxNode, c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
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
        k = per_channel(node, const_for(node, k, shape), shape)
        h = const_for(node, h, shape)
        ctx.set(node, Lin(ir.scale_outputs(value.layer, k, h)))
    elif isinstance(value, Pooled):
        k = const_for(node, k, value.shape)
        h = const_for(node, h, value.shape)
        ctx.set(node, replace(value, scale=value.scale * k, shift=value.shift * k + h))
    elif isinstance(value, Pop):
        if value.pads:
            raise unsupported(node, "it reads a Pad output; only a Conv, an average pooling or a mean can absorb a Pad")
        k = const_for(node, k, value.shape)
        h = const_for(node, h, value.shape)
        ctx.set(node, replace(value, scale=value.scale * k, shift=value.shift * k + h, nonnegative=False))
    else:
        raise unsupported(node, "it has no activation operand (constant operands alone are folded before conversion)")


def affine(node: OnnxNode, ctx: Context, parts: list[tuple[Pop, ir.Term]], bias) -> ir.Affine:
    """An affine layer of terms on populations, each population's pending map folded into its term (docs/math.md §7)."""
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


def identity_term(node: OnnxNode, pop: Pop) -> ir.Term:
    """Synapses that copy a population: a diagonal dense block, or a 1×1 depthwise convolution."""
    if len(pop.shape) == 1:
        return ir.Dense(pop.node, np.eye(pop.shape[0]), pop.shape)
    rank = len(pop.shape) - 1
    return ir.Conv(pop.node, np.ones((pop.shape[0], 1) + (1,) * rank), pop.shape, (1,) * rank, (0,) * 2 * rank,
                   (1,) * rank, groups=pop.shape[0])


def as_linear(node: OnnxNode, ctx: Context, value) -> ir.Affine:
    """A value as an affine layer not yet followed by its ReLU: a Lin as is, a pending pooling with its map
    folded in, a population through identity synapses."""
    if isinstance(value, Lin):
        return value.layer
    if isinstance(value, Pooled):
        shape = tuple(value.layer.shape)
        if value.shape == shape:
            k = per_channel(node, value.scale, shape)
            return ir.scale_outputs(value.layer, k, value.shift)
        value = ctx.materialize(node.inputs[0], value)
    if not isinstance(value, Pop) or value.pads:
        raise unsupported(node, "its operands must be activations or linear layers")
    return affine(node, ctx, [(value, identity_term(node, value))], 0.0)


def spiking(node: OnnxNode, ctx: Context, layer: ir.Affine) -> Pop:
    """Make ``layer`` a ReLU layer whose output is this node's output tensor; its population."""
    name = ctx.add(replace(layer, relu=True, source=node.outputs[0]))
    return identity_pop(name, layer.shape, relu=True)


def tensor_nonnegative(pop: Pop) -> bool:
    """scale·a + shift ≥ 0 for every a ≥ 0."""
    scale, shift = full_map(pop)
    return pop.relu and bool(np.all(scale >= 0) and np.all(shift >= 0))


def int_attr(node: OnnxNode, key: str, count: int, least: int, default=None) -> tuple[int, ...]:
    """Attribute ``key`` as ``count`` integers, each at least ``least`` (its range in the ONNX spec), or
    ``default`` when the node does not set it; a ModelError naming the node and the attribute otherwise."""
    value = node.attr(key)
    values = tuple(int(v) for v in np.atleast_1d(value)) if value is not None else ()
    if not values and default is not None:
        return tuple(default)
    if len(values) != count or any(v < least for v in values):
        raise ModelError(f"{node.label}: attribute {key} = {list(values)} is invalid: ONNX requires {count} "
                         f"integers ≥ {least} here")
    return values


def kernel_shape(node: OnnxNode, rank: int, weight_shape=None) -> tuple[int, ...]:
    """The window of a Conv (its weight's spatial shape, which ``kernel_shape`` must equal if given) or of a
    pooling (``kernel_shape``, required): ``rank`` sizes of at least 1."""
    if weight_shape is None:
        return int_attr(node, "kernel_shape", rank, 1)
    kernel = tuple(int(k) for k in weight_shape)
    if any(k < 1 for k in kernel):
        raise ModelError(f"{node.label}: its weight has the empty kernel {kernel}")
    given = int_attr(node, "kernel_shape", rank, 1, default=kernel)
    if given != kernel:
        raise ModelError(f"{node.label}: attribute kernel_shape = {list(given)} does not match its weight's "
                         f"kernel {list(kernel)}")
    return kernel


def geometry(node: OnnxNode, rank: int, size, kernel, extra_pads=()) -> tuple[tuple, tuple, tuple]:
    """strides, pads (begins, then ends, a pending Pad added) and dilations of a sliding-window node, each
    range-checked as the ONNX spec asks (strides and dilations ≥ 1, pads ≥ 0)."""
    strides = int_attr(node, "strides", rank, 1, default=(1,) * rank)
    dilations = int_attr(node, "dilations", rank, 1, default=(1,) * rank)
    extra = tuple(extra_pads) or (0,) * 2 * rank
    padded = tuple(n + extra[i] + extra[i + rank] for i, n in enumerate(size))
    pads = explicit_pads(node, padded, kernel, strides, dilations)
    return strides, tuple(p + e for p, e in zip(pads, extra)), dilations


MAX_VALUES = 1 << 28  # values in one buffer: 2 GiB in float64 (convert.MAX_BATCH_VALUES for a batch)


def window_values(in_shape, out_shape, kernel, strides, pads, dilations, im2col: bool) -> int:
    """Values one sample's sliding windows hold at once (``ops.windows``, ``ops.conv``, ``ops.pool``): the padded
    input C·∏ᵢ max(nᵢ + pᵢ + qᵢ, (oᵢ − 1)·sᵢ + (kᵢ − 1)·dᵢ + 1), the output O·∏ᵢ oᵢ and, for a convolution
    (``im2col``), its im2col matrix C·∏ᵢ kᵢ·∏ᵢ oᵢ; exact integers. Shapes (C, n…) and (O, o…) without batch."""
    channels, size, rank = in_shape[0], in_shape[1:], len(kernel)
    out = [max(0, int(o)) for o in out_shape[1:]]
    padded = [max(size[i] + pads[i] + pads[i + rank], (out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1)
              for i in range(rank)]
    values = channels * _product(padded) + out_shape[0] * _product(out)
    return values + (channels * _product(kernel) * _product(out) if im2col else 0)


def term_window_values(term) -> int:
    """``window_values`` of an ``ir.Conv`` term or an ``ir.MaxPool`` node."""
    if isinstance(term, ir.Conv):
        return window_values(term.in_shape, term.shape, term.weight.shape[2:], term.strides, term.pads,
                             term.dilations, True)
    return window_values(term.in_shape, term.shape, term.kernel, term.strides, term.pads, term.dilations, False)


def _product(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def check_window(node: OnnxNode, values: int) -> None:
    """Refuse a window whose buffers hold more than MAX_VALUES values for one sample, before they exist."""
    if values > MAX_VALUES:
        raise ModelError(f"{node.label}: its sliding windows hold {values} values per sample (padded input, "
                         f"im2col, output); relu2snn handles up to {MAX_VALUES} values per sample")


AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def explicit_pads(node: OnnxNode, size, kernel, strides, dilations) -> tuple[int, ...]:
    """Explicit pads (begins, then ends) from ``pads`` (each ≥ 0) or ``auto_pad`` (SAME_UPPER/SAME_LOWER/VALID)."""
    rank = len(kernel)
    mode = node.attr("auto_pad", "NOTSET")
    if mode not in AUTO_PADS:
        raise ModelError(f"{node.label}: attribute auto_pad = {mode!r} is none of {', '.join(AUTO_PADS)}")
    if mode == "NOTSET":
        return int_attr(node, "pads", 2 * rank, 0, default=(0,) * 2 * rank)
    if mode == "VALID":
        return (0,) * 2 * rank
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        low = total // 2 if mode == "SAME_UPPER" else total - total // 2
        begin.append(low)
        end.append(total - low)
    return tuple(begin) + tuple(end)


def reshaped(ctx: Context, a: Pop, shape: tuple[int, ...], name: str) -> Pop:
    """The population reshaped (C order), its pending map with it; a reshape of a reshape reads the original."""
    shape = tuple(int(d) for d in shape)
    scale, shift = full_map(a)
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
