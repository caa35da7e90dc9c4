"""Converters that move neurons without computing: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Pad,
and the pass-through ops Identity, Dropout and a final Softmax."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir
from ..errors import ModelError
from .core import (Context, Lin, OnnxNode, Pooled, Pop, Sum, as_linear, converter, full_map, make_sum, reshaped,
                   unsupported)


def _reshape(node: OnnxNode, ctx: Context, a, shape: tuple[int, ...]) -> None:
    """Set the node's output: a population or a pending average pooling reshaped (C order)."""
    shape = tuple(int(d) for d in shape)
    if isinstance(a, Pooled):
        ctx.set(node, replace(a, shape=shape, scale=a.scale.reshape(shape), shift=a.shift.reshape(shape)))
    else:
        ctx.set(node, reshaped(ctx, a, shape, node.name))


@converter("Flatten", part_wise=True)
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


@converter("Reshape", part_wise=True)
def convert_reshape(node: OnnxNode, ctx: Context) -> None:
    """Reshape to a constant (or constant-folded) target that keeps the batch axis first (0 or −1 there)."""
    v = ctx.get(node, 0, raw=True)
    shape = _reshape_target(node, ctx, tuple(v.shape) if isinstance(v, (Pop, Pooled)) else ctx.pop(node, 0).shape)
    _reshape(node, ctx, _flat_or_pop(node, ctx, shape), shape)


def _reshape_target(node: OnnxNode, ctx: Context, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape (batch axis omitted) that Reshape's target gives an input of ``shape``."""
    target = [int(t) for t in ctx.const(node, 1, "target shape")]
    if node.attr("allowzero", 0) and 0 in target[1:]:
        raise unsupported(node, "allowzero=1 with a zero in the target shape after the batch axis (an empty tensor)")
    # with allowzero=1 a 0 first is the batch size: Shape gives 0 for the batch axis (constants.convert_shape),
    # and a literal 0 there would ask for an empty batch, which no non-empty input reshapes to
    if target and ctx.batch is not None and target[0] == ctx.batch:
        target[0] = 0   # the model's fixed batch size: the batch axis
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


@converter("Squeeze", "Unsqueeze", part_wise=True)
def convert_squeeze(node: OnnxNode, ctx: Context) -> None:
    """Remove or insert axes of size 1 (never the batch axis): a reshape."""
    shape = [-1, *ctx.pop(node, 0).shape]  # the batch axis first
    if node.op_type == "Unsqueeze":
        axes = _axes(node, ctx, len(shape) + _n_axes(node, ctx))
        for x in axes:
            shape.insert(x, 1)
    else:
        axes = _axes(node, ctx, len(shape)) or [i for i, d in enumerate(shape) if d == 1]
        if any(shape[x] != 1 for x in axes):
            raise unsupported(node, f"axes {axes} of an input of shape {tuple(shape)} are not all of size 1")
        shape = [d for i, d in enumerate(shape) if i not in axes]
    if 0 in axes or shape[0] != -1:
        raise unsupported(node, "it moves the batch axis")
    else:
        _reshape(node, ctx, ctx.pop(node, 0), tuple(shape[1:]))


@converter("Transpose", part_wise=True)
def convert_transpose(node: OnnxNode, ctx: Context) -> None:
    """A permutation of the non-batch axes (e.g. NHWC ↔ NCHW): neurons change places, spikes do not."""
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
    scale, shift = full_map(a)
    ctx.set(node, replace(a, node=out.name, shape=out.shape, scale=scale.transpose(perm), shift=shift.transpose(perm)))


@converter("Concat")
def convert_concat(node: OnnxNode, ctx: Context) -> None:
    """Populations side by side along a non-batch axis (from different windows: delays align them, docs/math.md §2).
    If an operand is a linear layer still waiting for its ReLU (DenseNet-BC) and none is a sum, the result is
    a linear layer of channel blocks instead (``Lin.blocks``): each operand's synapses feed its own block of
    output channels.
    Sums of populations (and linear layers along a spatial axis, split) are concatenated part by part: the
    k-th parts side by side, an operand with fewer parts adding its first population with the pending
    scale 0 (docs/math.md §8)."""
    values = [ctx.get(node, i, raw=True) for i in range(len(node.inputs))]
    rank = len(values[0].shape)
    axis = int(node.attr("axis")) % (rank + 1)
    if axis == 0:
        raise unsupported(node, "it concatenates along the batch axis")
    if any(isinstance(v, Sum) for v in values) or (axis != 1 and any(isinstance(v, Lin) for v in values)):
        groups = [ctx.parts(node, i) for i in range(len(node.inputs))]
        n = max(len(g) for g in groups)
        groups = [g + (replace(g[0], scale=np.zeros(()), shift=np.zeros(()), nonnegative=False),) * (n - len(g))
                  for g in groups]
        ctx.set(node, make_sum(_concat(node, ctx, [g[k] for g in groups], axis) for k in range(n)))
        return
    if any(isinstance(v, Lin) for v in values):
        layers = [layer for v in values
                  for layer in (v.blocks if isinstance(v, Lin) and v.blocks else (as_linear(node, ctx, v),))]
        if len({tuple(layer.shape[1:]) for layer in layers}) != 1:
            raise unsupported(node, f"its operands have shapes {[layer.shape for layer in layers]}")
        ctx.set(node, Lin(blocks=tuple(layers), name=ctx.unique(node.name)))   # stacked when read whole
        return
    ctx.set(node, _concat(node, ctx, [ctx.pop(node, i) for i in range(len(node.inputs))], axis))


def _concat(node: OnnxNode, ctx: Context, pops: list[Pop], axis: int) -> Pop:
    """A Concat node of populations along ``axis`` (batch axis counted), their pending maps concatenated."""
    out = ir.Concat(ctx.unique(node.name), tuple(p.node for p in pops), tuple(tuple(p.shape) for p in pops), axis - 1)
    ctx.add(out)
    maps = [full_map(p) for p in pops]
    return Pop(out.name, out.shape, np.concatenate([m[0] for m in maps], axis=axis - 1),
               np.concatenate([m[1] for m in maps], axis=axis - 1),
               all(p.nonnegative for p in pops), all(p.relu for p in pops))


@converter("Pad", part_wise=True)
def convert_pad(node: OnnxNode, ctx: Context) -> None:
    """Constant zero padding of the spatial axes: kept pending and absorbed by the next Conv, AveragePool,
    GlobalAveragePool or ReduceMean as extra zero padding (docs/math.md §7: padded positions are virtual
    inputs at the window end)."""
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
    if len(full) != 2 * rank:
        raise ModelError(f"{node.label}: pads {full} are not 2 × {rank} values for its input of rank {rank}")
    if min(full) < 0:
        raise unsupported(node, f"pads {full}: negative pads crop the tensor, and cropping is not supported "
                                "(only zero padding of the spatial axes)")
    if any(full[i] or full[i + rank] for i in (0, 1)):
        raise unsupported(node, f"pads {full}: only the spatial axes may be padded")
    spatial = tuple(full[2:rank]) + tuple(full[rank + 2:])
    before = a.pads or (0,) * len(spatial)
    ctx.set(node, replace(a, pads=tuple(p + q for p, q in zip(before, spatial))))


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


def _take(node: OnnxNode, ctx: Context, a: Pop, axis: int, indices, name: str) -> Pop:
    """The population's neurons at ``indices`` along non-batch ``axis`` (a Take node; none if they are all of
    them in order), its pending map taken with them."""
    indices = tuple(int(i) for i in indices)
    if indices == tuple(range(a.shape[axis])):
        return a
    if not indices:
        raise unsupported(node, f"it takes no position of axis {axis + 1} (an empty tensor)")
    out = ir.Take(ctx.unique(name), a.node, a.shape, axis, indices)
    ctx.add(out)
    scale, shift = full_map(a)
    return replace(a, node=out.name, shape=out.shape, scale=np.take(scale, indices, axis=axis),
                   shift=np.take(shift, indices, axis=axis))


def _data_axis(node: OnnxNode, axis: int, rank: int) -> int:
    """A non-batch axis of a tensor of ``rank`` non-batch axes (ONNX ``axis``, negative from the end), 0-based
    without the batch axis."""
    if not -(rank + 1) <= axis <= rank:
        raise ModelError(f"{node.label}: axis {axis} is not an axis of a tensor of rank {rank + 1}")
    axis %= rank + 1
    if axis == 0:
        raise unsupported(node, "it selects along the batch axis")
    return axis - 1


@converter("Slice", part_wise=True)
def convert_slice(node: OnnxNode, ctx: Context) -> None:
    """Slice (starts, ends, axes, steps as constant inputs; attributes before opset 10): along each non-batch
    axis the positions range(n)[start:end:step], which are ONNX's clamping rules; the neurons are taken, their
    spikes unchanged. The batch axis may only be sliced whole."""
    a = ctx.pop(node, 0)
    if node.attr("starts") is not None:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = ctx.const(node, 1, "starts"), ctx.const(node, 2, "ends")
        axes = ctx.const(node, 3, "axes") if ctx.get(node, 3) is not None else None
        steps = ctx.const(node, 4, "steps") if ctx.get(node, 4) is not None else None
    starts, ends = [int(v) for v in np.atleast_1d(starts)], [int(v) for v in np.atleast_1d(ends)]
    axes = [int(v) for v in np.atleast_1d(axes)] if axes is not None else list(range(len(starts)))
    steps = [int(v) for v in np.atleast_1d(steps)] if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise ModelError(f"{node.label}: starts {starts}, ends {ends}, axes {axes} and steps {steps} must be of "
                         "one length, with no step 0")
    rank = len(a.shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if axis % (rank + 1) == 0 and -(rank + 1) <= axis <= rank:
            if step == 1 and start in (0, -(2**63)) and end >= 2**31 - 1:
                continue   # the whole batch
            raise unsupported(node, f"it slices the batch axis ({start}:{end}:{step})")
        axis = _data_axis(node, axis, rank)
        a = _take(node, ctx, a, axis, range(a.shape[axis])[slice(start, end, step)], node.name)
    ctx.set(node, a)


@converter("Split", part_wise=True)
def convert_split(node: OnnxNode, ctx: Context) -> None:
    """Split along a non-batch axis into parts of the sizes ``split`` gives (an attribute before opset 13, an
    input from 13), or ``num_outputs`` parts (opset 18: the last one smaller), or equal parts: each output
    takes its range of positions."""
    a = ctx.pop(node, 0)
    axis = _data_axis(node, int(node.attr("axis", 0)), len(a.shape))
    n, parts = a.shape[axis], len(node.outputs)
    sizes = node.attr("split")
    if sizes is None and ctx.get(node, 1) is not None:
        sizes = ctx.const(node, 1, "split")
    if sizes is not None:
        sizes = [int(s) for s in np.atleast_1d(sizes)]
    elif node.attr("num_outputs") is not None:
        each = -(-n // parts)
        sizes = [min(each, n - k * each) for k in range(parts)]
    elif n % parts == 0:
        sizes = [n // parts] * parts
    else:
        raise ModelError(f"{node.label}: axis {axis + 1} of size {n} does not split into {parts} equal parts")
    if len(sizes) != parts or sum(sizes) != n or min(sizes) < 0:
        raise ModelError(f"{node.label}: sizes {sizes} do not split axis {axis + 1} of size {n} into {parts} parts")
    start = 0
    for k, (size, output) in enumerate(zip(sizes, node.outputs)):
        if output:
            ctx.values[output] = _take(node, ctx, a, axis, range(start, start + size), f"{node.name}_{k}")
        start += size


@converter("Gather", part_wise=True)
def convert_gather(node: OnnxNode, ctx: Context) -> None:
    """Gather with constant indices along a non-batch axis: the neurons at those positions (negative ones
    from the end), then reshaped to the indices' shape in place of the axis (a scalar index drops it)."""
    a = ctx.pop(node, 0)
    axis = _data_axis(node, int(node.attr("axis", 0)), len(a.shape))
    indices = np.asarray(ctx.const(node, 1, "indices"))
    n = a.shape[axis]
    if indices.dtype.kind not in "iu" or np.any(indices < -n) or np.any(indices >= n):
        raise ModelError(f"{node.label}: indices {indices.tolist()} are not positions of axis {axis + 1} of size {n}")
    taken = _take(node, ctx, a, axis, (indices.reshape(-1) % n).tolist(), node.name)
    shape = a.shape[:axis] + indices.shape + a.shape[axis + 1:]
    if not shape:
        raise unsupported(node, "it leaves one number per sample (a population needs an axis)")
    ctx.set(node, taken if shape == taken.shape else reshaped(ctx, taken, shape, f"{node.name}/reshape"))
