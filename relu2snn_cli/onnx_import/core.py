"""The importer's core: symbolic values, the read-only node wrapper, the converter table, the conversion
context, and the folding helpers that converters share (docs/math.md §7, docs/supported-operators.md)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from functools import cached_property
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
    """tensor = layer(a…): an affine layer on populations, its ReLU not yet applied.

    A Concat of linear layers (DenseNet's dense blocks) is given as its ``blocks``, the layers whose output
    channels it puts side by side, and ``layer`` stacks them (``ir.stack_channels``, each block's weights
    padded with zeros to every channel) only when a reader needs the layer whole: a per-channel affine map,
    a ReLU and a further Concat act block by block (``apply_affine``, ``spiking_blocks``), so a dense block's
    k-th concatenation holds k small layers, not k terms as wide as all its channels."""

    whole: ir.Affine | None = None
    blocks: tuple = ()
    name: str = ""

    @cached_property
    def layer(self) -> ir.Affine:
        return self.whole if self.whole is not None else ir.stack_channels(self.name, list(self.blocks))

    @property
    def shape(self) -> tuple[int, ...]:
        if self.whole is not None:
            return tuple(self.whole.shape)
        return (sum(b.shape[0] for b in self.blocks), *self.blocks[0].shape[1:])


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


@dataclass(frozen=True, eq=False)
class Sum:
    """tensor = Σ_k part_k: several populations (each a ``Pop`` under its pending map, or a pending average
    pooling ``Pooled``) of one shape, added (docs/math.md §8). A linear reader takes one synapse term per part;
    data movement applies to each part (``convert``).

    ``kinks``: when the parts are the terms of one continuous piecewise-linear f of one pre-activation u,
    part k's population is a_k = relu(g_k·u + t_k), and kinks[k] = (g_k, t_k) at every position; the slopes
    of f follow from them and the parts' scales, which max pooling needs (``pool_directions``). None when
    the parts have no such common u (a sum of branches, a moved sum)."""

    parts: tuple
    kinks: tuple | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.parts[0].shape)


def parts_of(value) -> tuple:
    """The parts of a population value: a Sum's parts, or the value itself."""
    return value.parts if isinstance(value, Sum) else (value,)


def make_sum(parts, kinks=None):
    """Parts as a value: one part is the value itself (a population's own map rules its pooling)."""
    parts = tuple(parts)
    return parts[0] if len(parts) == 1 else Sum(parts, kinks)


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
PART_WISE: set[str] = set()   # op types that act on each part of a Sum alike (``convert``)
LINEAR_POOLS = {"AveragePool", "GlobalAveragePool", "ReduceMean"}   # part-wise, but no ReLU commutes with them


def commutes_with_relu(op_type: str) -> bool:
    """relu(op(z)) = op(relu(z)): ops that move neurons, zero padding, and max pooling (ReLU is monotone)."""
    return op_type == "MaxPool" or op_type in PART_WISE and op_type not in LINEAR_POOLS


def converter(*op_types: str, part_wise: bool = False):
    """Register a converter for ONNX op types; registering an op type twice is an error.

    ``part_wise``: the op moves neurons (or pools them linearly) and reads input 0 as a population:
    ``convert`` runs it once per part of a Sum, and gives a linear layer its ReLU first or splits it."""
    def register(fn: Converter) -> Converter:
        for op in op_types:
            if op in CONVERTERS:
                raise RuntimeError(f"a converter for {op} is already registered")
            CONVERTERS[op] = fn
            if part_wise:
                PART_WISE.add(op)
        return fn
    return register


def convert(node: OnnxNode, ctx: "Context") -> None:
    """Run the node's converter; the one place where a part-wise op meets a Sum or a linear layer.

    A linear layer z read by a part-wise op whose converter has an ``on_linear`` hook is offered to it first
    (average pooling composes with 1×1 convolutions). Otherwise it becomes populations (``ctx.populations``):
    relu(z) when every path from the output reaches a ReLU through part-wise ops and max poolings only
    (ReLU commutes with moving neurons and with max, docs/math.md §8), else z = relu(z) − relu(−z). A Sum
    is moved part by part: the converter runs on each part in turn as if it were the input, and each
    output is the Sum of its results (for every output: Split-like ops work too)."""
    fn = CONVERTERS[node.op_type]
    original = ctx.values.get(node.inputs[0]) if node.op_type in PART_WISE and node.inputs else None
    if not isinstance(original, (Lin, Sum)):
        fn(node, ctx)
        return
    compose = getattr(fn, "on_linear", None)
    if isinstance(original, Lin) and compose is not None and compose(node, ctx, original):
        return
    parts = parts_of(ctx.populations(node, 0))
    results = []
    try:
        for part in parts:
            ctx.values[node.inputs[0]] = part
            fn(node, ctx)
            results.append([ctx.values[out] for out in node.outputs])
    finally:
        ctx.values[node.inputs[0]] = original
    for i, out in enumerate(node.outputs):
        ctx.values[out] = make_sum(r[i] if len(parts) == 1 else _unsourced(r[i]) for r in results)


def _unsourced(part):
    """A part of a Sum is not the ONNX tensor itself: a pending pooling of it names no tensor."""
    return replace(part, tensor="") if isinstance(part, Pooled) else part


class Context:
    """The conversion state: ONNX tensor → value, and the IR nodes made so far."""

    def __init__(self, consts: dict[str, np.ndarray], graph_output: str, output_tail: set[str],
                 batch: int | None = None, readers: Mapping[str, tuple] | None = None):
        self.values: dict[str, Const | Pop | Lin | Pooled | Sum] = {k: Const(v) for k, v in consts.items()}
        self.readers = readers or {}   # ONNX tensor → the nodes that read it
        self.splits: dict[str, Sum] = {}   # ONNX tensor of a linear layer → its split relu(z) − relu(−z)
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
        pop = self.pooled_layer(v)
        self.values[tensor] = pop
        return pop

    def pooled_layer(self, v: Pooled) -> Pop:
        """``materialize`` without recording the result as the value of a tensor (a part of a Sum). A pending
        scale that varies over the positions of a channel (count_include_pad = 0) goes into the weights of
        spatial blocks (``divided_pooling``)."""
        shape = tuple(v.layer.shape)
        scale = v.scale.reshape(shape)
        if varies_in_channel(scale):
            pop = divided_pooling(self, v.layer, scale, v.shift.reshape(shape))
        else:
            name = self.add(replace(v.layer, name=self.unique(v.layer.name), relu=True,
                                    source=v.tensor if v.identity and v.tensor else ""))
            pop = Pop(name, shape, scale, v.shift.reshape(shape), nonnegative=v.identity)
        if v.shape != shape:
            pop = reshaped(self, pop, v.shape, f"{v.layer.name}/reshape")
        return pop

    def relu_follows(self, tensor: str) -> bool:
        """Every path from ``tensor`` reaches a Relu through part-wise ops (movement) and max poolings only,
        and none reaches the graph output first: applying the ReLU before them changes nothing."""
        readers = self.readers.get(tensor, ())
        if not readers or tensor in self.output_tail:
            return False
        return all(r.op_type == "Relu" or commutes_with_relu(r.op_type) and all(self.relu_follows(o) for o in r.outputs)
                   for r in readers)

    def populations(self, node: OnnxNode, i: int):
        """Input i as populations: a linear layer z as relu(z) when the node commutes with ReLU and a ReLU
        follows it on every path (``relu_follows``), else split as z = relu(z) − relu(−z) (docs/math.md §8,
        once per tensor); a population or a Sum as it is."""
        name = node.inputs[i]
        v = self.values[name]
        if not isinstance(v, Lin):
            return v   # a population or a Sum as it is
        if commutes_with_relu(node.op_type) and self.relu_follows(node.outputs[0]):
            origin = f"{of(node, v.layer)}, before a Relu: relu(z)"
            layer = self.add(replace(v.layer, name=self.unique(v.layer.name), relu=True, source="", origin=origin))
            return identity_pop(layer, v.layer.shape, relu=True)
        if name not in self.splits:
            self.splits[name] = piecewise(node, self, v, 0.0, [(1.0, 1.0, 0.0), (-1.0, -1.0, 0.0)],
                                          what=f"the linear value '{name}'")
        return self.splits[name]

    def const(self, node: OnnxNode, i: int, what: str) -> np.ndarray:
        v = self.get(node, i)
        if not isinstance(v, Const):
            raise unsupported(node, f"its {what} must be a constant")
        return v.value.astype(np.float64) if v.value.dtype.kind == "f" else v.value

    def pop(self, node: OnnxNode, i: int = 0, rank: tuple[int, ...] | None = None, pads: bool = False) -> Pop:
        """Input i as a population (of one of the ranks ``rank``, if given; with a pending Pad only if ``pads``)."""
        v = self.get(node, i)
        if isinstance(v, (Lin, Sum)):
            raise unsupported(node, "it reads a sum of several populations (a linear layer's output before its "
                                    "ReLU, or a piecewise-linear activation), which it cannot take part by part")
        if not isinstance(v, Pop):
            raise unsupported(node, "its input must be an activation, not a constant")
        if rank is not None and len(v.shape) not in rank:
            raise unsupported(node, f"its input has shape {v.shape} (batch axis omitted)")
        if v.pads and not pads:
            raise unsupported(node, "it reads a Pad output; only a Conv, an average pooling or a mean can absorb a Pad")
        return v

    def parts(self, node: OnnxNode, i: int = 0, rank: tuple[int, ...] | None = None,
              pads: bool = False) -> tuple[Pop, ...]:
        """Input i as the populations whose sum it is (one for a population): a linear layer through
        ``populations``, pending poolings as spiking layers; each checked as ``pop`` checks."""
        v = self.get(node, i, raw=True)
        if v is None or isinstance(v, Const):
            raise unsupported(node, "its input must be an activation, not a constant")
        if isinstance(v, Lin):
            v = self.populations(node, i)
        if not isinstance(v, (Sum, Pop)):
            return (self.pop(node, i, rank, pads),)
        out = []
        for part in parts_of(v):
            part = self.pooled_layer(part) if isinstance(part, Pooled) else part
            if rank is not None and len(part.shape) not in rank:
                raise unsupported(node, f"its input has shape {part.shape} (batch axis omitted)")
            if part.pads and not pads:
                raise unsupported(node, "it reads a Pad output; only a Conv, an average pooling or a mean can "
                                        "absorb a Pad")
            out.append(part)
        return tuple(out)

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


def varies_in_channel(values: np.ndarray) -> bool:
    """A map of a (C, …) shape whose values differ between positions of one channel."""
    flat = np.asarray(values).reshape(values.shape[0], -1)
    return bool(np.any(flat != flat[:, :1]))


def position_runs(scale: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per spatial axis of a (C, …) map, the runs [start, stop) of consecutive positions whose slices (every
    channel, every other position) are equal: the map is constant per channel on each product of runs."""
    runs = []
    for axis in range(1, scale.ndim):
        moved = np.moveaxis(scale, axis, 0)
        cuts = [i for i in range(1, len(moved)) if not np.array_equal(moved[i], moved[i - 1])]
        bounds = [0, *cuts, len(moved)]
        runs.append(list(zip(bounds[:-1], bounds[1:])))
    return runs


MAX_BLOCKS = 64   # spiking blocks of one divided pooling (a padded count_include_pad = 0 pooling needs at most 9)


def divided_pooling(ctx: "Context", layer: ir.Affine, scale: np.ndarray, shift: np.ndarray) -> Pop:
    """An average pooling P·a under a pending map whose scale varies over the positions of a channel (the
    divisor K/n(p) of count_include_pad = 0) as spiking layers, exactly (docs/math.md §6): scale = ρ(p)·k per
    channel with ρ ≥ 0, and ρ is constant on each block of position runs (``position_runs``, at most three
    per axis for a padded pooling). Each block is its own depthwise convolution of the positions of a that its
    windows read (a Take per axis, the pooling's padding where the block's windows reach past the border),
    taps ρ_block/K, and ReLU the identity on it (a ≥ 0); the blocks are concatenated back along the spatial
    axes, k and the shift pending on the result. Neurons: one per pooled position, as without the divisor."""
    term = layer.terms[0]
    c, rank = scale.shape[0], scale.ndim - 1
    kernel = term.weight.shape[2:]
    scale = np.array(scale)
    for axis in range(rank):   # a window wholly in a Pad's zeros gives 0 at any scale: take its neighbour's
        n, s, d, p = term.in_shape[axis + 1], term.strides[axis], term.dilations[axis], term.pads[axis]
        taps = np.arange(scale.shape[axis + 1])[:, None] * s - p + d * np.arange(kernel[axis])[None]
        live = np.flatnonzero(np.any((taps >= 0) & (taps < n), axis=1))
        if not len(live):
            raise _pooling_error(layer, f"all its windows along axis {axis + 2} lie in a Pad's zeros")
        nearest = live[np.abs(np.arange(scale.shape[axis + 1])[:, None] - live[None]).argmin(axis=1)]
        scale = np.take(scale, nearest, axis=axis + 1)
    centre = scale[(slice(None),) + tuple(n // 2 for n in scale.shape[1:])]
    flat = scale.reshape(c, -1)
    widest = flat[np.arange(c), np.argmax(np.abs(flat), axis=1)]
    k = np.where(centre != 0, centre, np.where(widest != 0, widest, 1.0))
    rho = scale / ops.channel_axis(k, scale.ndim)
    if np.any(rho < 0):
        raise _pooling_error(layer, "its output is scaled with different signs at different positions of a channel")
    runs = position_runs(scale)
    if int(np.prod([len(r) for r in runs])) > MAX_BLOCKS:
        raise _pooling_error(layer, f"its output is scaled by a map that changes over positions in more than "
                                    f"{MAX_BLOCKS} blocks (a product with a constant that varies over positions)")
    blocks = []
    for block in itertools.product(*runs):
        src, in_shape, pads = term.input, tuple(term.in_shape), [0] * (2 * rank)
        for axis, (start, stop) in enumerate(block):
            n, s, d, p = in_shape[axis + 1], term.strides[axis], term.dilations[axis], term.pads[axis]
            lo, hi = start * s - p, (stop - 1) * s + (kernel[axis] - 1) * d - p
            first, last = max(lo, 0), min(hi, n - 1)
            pads[axis], pads[axis + rank] = first - lo, hi - last
            if (first, last) != (0, n - 1):
                take = ir.Take(ctx.unique(f"{layer.name}/take"), src, in_shape, axis + 1, tuple(range(first, last + 1)))
                src, in_shape = ctx.add(take), take.shape
        at = (slice(None),) + tuple(b[0] for b in block)
        taps = term.weight * ops.channel_axis(rho[at], term.weight.ndim)
        conv = ir.Conv(src, taps, in_shape, term.strides, tuple(pads), term.dilations, groups=term.groups)
        where = ", ".join(f"{b[0]}–{b[1] - 1}" for b in block)
        blocks.append((block, ctx.add(ir.Affine(ctx.unique(layer.name), (conv,), np.zeros(c), relu=True,
                                                origin=f"{layer.origin}, positions {where}"))))
    name = _concat_blocks(ctx, layer.name, blocks, 0)
    return Pop(name, tuple(scale.shape), ops.channel_axis(k, scale.ndim) * np.ones(scale.shape), shift,
               nonnegative=bool(np.all(k == 1) and not np.any(shift)))


def _pooling_error(layer: ir.Affine, why: str) -> UnsupportedOperatorError:
    what = layer.origin.split(":")[0] or layer.name
    return UnsupportedOperatorError(f"{what} is not supported: {why} (see {SUPPORTED_DOC})")


def _concat_blocks(ctx: "Context", base: str, blocks: list, axis: int) -> str:
    """The blocks (runs, IR node) of one product of runs, concatenated along spatial ``axis`` and the later ones."""
    if axis == len(blocks[0][0]):
        return blocks[0][1]
    groups: dict = {}
    for runs, name in blocks:
        groups.setdefault(runs[axis], []).append((runs, name))
    parts = [_concat_blocks(ctx, base, group, axis + 1) for group in groups.values()]
    if len(parts) == 1:
        return parts[0]
    shapes = tuple(tuple(ctx.by_name[p].shape) for p in parts)
    return ctx.add(ir.Concat(ctx.unique(f"{base}/concat"), tuple(parts), shapes, axis + 1))


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
        shape = value.shape
        k = per_channel(node, const_for(node, k, shape), shape)
        h = const_for(node, h, shape)
        if value.blocks:
            h, starts = np.broadcast_to(h, shape), np.cumsum([0] + [b.shape[0] for b in value.blocks])
            ctx.set(node, Lin(blocks=tuple(ir.scale_outputs(b, k[i:j], h[i:j])
                                           for b, i, j in zip(value.blocks, starts, starts[1:])), name=value.name))
        else:
            ctx.set(node, Lin(ir.scale_outputs(value.layer, k, h)))
    elif isinstance(value, (Pop, Pooled)):
        ctx.set(node, _mapped(node, value, k, h))
    elif isinstance(value, Sum):
        # k·Σ parts + h: every part scaled, h added to the first; the kinks stay (docs/math.md §8)
        parts = [_mapped(node, p, k, h if i == 0 else np.zeros(())) for i, p in enumerate(value.parts)]
        ctx.set(node, Sum(tuple(parts), value.kinks))
    else:
        raise unsupported(node, "it has no activation operand (constant operands alone are folded before conversion)")


def _mapped(node: OnnxNode, value, k, h):
    """A population or a pending pooling under the further map tensor ↦ k·tensor + h."""
    if isinstance(value, Pop) and value.pads:
        raise unsupported(node, "it reads a Pad output; only a Conv, an average pooling or a mean can absorb a Pad")
    k = const_for(node, k, value.shape)
    h = const_for(node, h, value.shape)
    if isinstance(value, Pooled):
        return replace(value, scale=value.scale * k, shift=value.shift * k + h)
    return replace(value, scale=value.scale * k, shift=value.shift * k + h, nonnegative=False)


def spread(parts, term: ir.Term) -> list[tuple[Pop, ir.Term]]:
    """The same synapses from each part of a sum: one term per population (docs/math.md §8)."""
    return [(p, replace(term, input=p.node)) for p in parts]


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
    return ir.Affine(ctx.unique(node.name), tuple(terms), ir.compact_bias(total), relu=False, origin=origin_of(node))


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
    if isinstance(value, Sum):
        layers = [as_linear(node, ctx, p) for p in value.parts]
        bias = ir.compact_bias(sum(ir.full_bias(layer) for layer in layers))
        return ir.Affine(ctx.unique(node.name), tuple(t for layer in layers for t in layer.terms), bias, relu=False,
                         origin=origin_of(node))
    if isinstance(value, Pooled):
        shape = tuple(value.layer.shape)
        if value.shape == shape and not varies_in_channel(value.scale):
            k = per_channel(node, value.scale, shape)
            return ir.scale_outputs(value.layer, k, value.shift)
        value = ctx.materialize(node.inputs[0], value) if value.tensor else ctx.pooled_layer(value)
    if not isinstance(value, Pop) or value.pads:
        raise unsupported(node, "its operands must be activations or linear layers")
    return affine(node, ctx, [(value, identity_term(node, value))], 0.0)


def spiking(node: OnnxNode, ctx: Context, layer: ir.Affine) -> Pop:
    """Make ``layer`` a ReLU layer whose output is this node's output tensor; its population."""
    name = ctx.add(replace(layer, relu=True, source=node.outputs[0], origin=f"{of(node, layer)}: relu(z)"))
    return identity_pop(name, layer.shape, relu=True)


def spiking_blocks(node: OnnxNode, ctx: Context, value: Lin) -> Pop:
    """relu of a channel concatenation of linear layers (``Lin.blocks``), block by block: one ReLU layer per
    block, concatenated along the channels. As many neurons as one ReLU layer of all the channels, each
    block's synapses only to its own channels."""
    names = [ctx.add(replace(b, name=ctx.unique(b.name), relu=True, origin=f"{of(node, b)}: relu(z)"))
             for b in value.blocks]
    shapes = tuple(tuple(ctx.by_name[name].shape) for name in names)
    out = ctx.add(ir.Concat(ctx.unique(node.name), tuple(names), shapes, 0))
    return identity_pop(out, value.shape, relu=True)


def origin_of(node: OnnxNode) -> str:
    """How ``inspect`` names the ONNX node a population comes from (docs/artifact.md, ``origin``)."""
    return f"{node.op_type} '{node.name}'"


def of(node: OnnxNode, layer: ir.Affine, joint: str = "of") -> str:
    """The node applied to the linear layer z it reads: "Relu 'r1' of Conv 'c1'" (a composition: "∘")."""
    if not layer.origin or layer.origin == origin_of(node):
        return origin_of(node)
    return f"{origin_of(node)} {joint} {layer.origin}"


def _number(x: float) -> str:
    return f"{float(x):.6g}"


def term_label(g, t) -> str:
    """relu(g·z + t) as text, e.g. "relu(z − 6)", "relu(−z)", "relu(0.2·z + 0.5)"; "…" for a map."""
    g, t = np.asarray(g), np.asarray(t)
    if np.ptp(g) or np.ptp(t):
        return "relu(g·z + t) (per channel)"
    g, t = float(g.reshape(-1)[0]), float(t.reshape(-1)[0])
    z = "z" if g == 1 else "−z" if g == -1 else f"{_number(g)}·z"
    if t == 0:
        return f"relu({z})"
    if g == -1:
        return f"relu({_number(t)} − z)" if t > 0 else f"relu(−z − {_number(-t)})"
    return f"relu({z} {'+' if t > 0 else '−'} {_number(abs(t))})"


def piecewise(node: OnnxNode, ctx: Context, value, gamma, terms, what: str | None = None):
    """f(z) = γ + Σ_k d_k·relu(g_k·z + t_k) of a value z (docs/math.md §8): one spiking population per term,
    relu(g_k·z + t_k) — z's synapses and bias scaled by g_k, bias + t_k — and the value γ + Σ_k d_k·a_k with
    d_k pending on each population. ``terms`` are (d, g, t): d a constant broadcast to z's shape, g one
    non-zero number per channel (or one number), t a constant broadcast to the shape. Terms whose d is 0
    everywhere are left out; a lone term with d = 1 and γ = 0 is the node's output itself."""
    z = as_linear(node, ctx, value)
    shape = tuple(z.shape)
    kept = [(const_for(node, d, shape), np.asarray(g, dtype=np.float64), const_for(node, t, shape))
            for d, g, t in terms]
    kept = [(d, g, t) for d, g, t in kept if np.any(d != 0)]
    gamma = np.broadcast_to(const_for(node, gamma, shape), shape)
    if not kept:
        raise unsupported(node, "it gives a constant")
    whole = len(kept) == 1 and np.all(kept[0][0] == 1) and not np.any(gamma)
    parts, kinks = [], []
    for k, (d, g, t) in enumerate(kept):
        gc = np.broadcast_to(g.reshape(-1), (shape[0],)) if g.ndim else np.full(shape[0], float(g))
        label = f"{of(node, z)}{' (' + what + ')' if what else ''}: {term_label(gc, t)}"
        layer = ir.scale_outputs(z, gc, t)
        name = ctx.add(replace(layer, name=ctx.unique(z.name), relu=True, origin=label,
                               source=node.outputs[0] if whole else ""))
        shift = gamma if k == 0 else np.zeros(shape)
        parts.append(Pop(name, shape, np.broadcast_to(d, shape), shift, nonnegative=whole))
        kinks.append((np.broadcast_to(ops.channel_axis(gc, len(shape)), shape), np.broadcast_to(t, shape)))
    return make_sum(parts, tuple(kinks))


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
