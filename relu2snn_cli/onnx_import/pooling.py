"""Converters of pooling: MaxPool (earliest or latest spike) and AveragePool / GlobalAveragePool (folded into a
following dense layer, or a spiking layer with fixed weights)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir, ops
from ..errors import ModelError
from .core import (Context, Lin, OnnxNode, Pooled, Pop, Sum, check_window, converter, full_map, geometry, kernel_shape,
                   of, origin_of, per_channel, term_window_values, unsupported, window_values)


@converter("MaxPool")
def convert_maxpool(node: OnnxNode, ctx: Context) -> None:
    """1-D or 2-D max-pooling of a population: the earliest spike; the latest for channels whose pending
    scale is negative (max(k·a + h) = k·min(a) + h)."""
    value = ctx.populations(node, 0) if isinstance(ctx.get(node, 0, raw=True), Lin) else ctx.get(node, 0)
    if isinstance(value, Sum):
        parts = ctx.parts(node, 0, rank=(2, 3))
        earliest = pool_directions(node, value, parts)
        pooled = tuple(_maxpool(node, ctx, p, ~e) for p, e in zip(parts, earliest))
        shape, rank = pooled[0].shape, len(pooled[0].shape)
        kinks = tuple(tuple(np.broadcast_to(ops.channel_axis(per_channel(node, k, value.shape), rank), shape)
                            for k in kink) for kink in value.kinks)   # per channel: the same after pooling
        ctx.set(node, Sum(pooled, kinks))
        return
    a = ctx.pop(node, 0, rank=(2, 3)) if value is ctx.values[node.inputs[0]] else value
    if len(a.shape) not in (2, 3):
        raise unsupported(node, f"its input has shape {a.shape} (batch axis omitted)")
    scale = per_channel(node, np.broadcast_to(a.scale, a.shape), a.shape)
    ctx.set(node, _maxpool(node, ctx, a, scale < 0))


def _maxpool(node: OnnxNode, ctx: Context, a: Pop, latest: np.ndarray) -> Pop:
    """The population max-pooled, the channels where ``latest`` is true taking the latest spike; its pending
    map (one number per channel) carried over."""
    scale = per_channel(node, np.broadcast_to(a.scale, a.shape), a.shape)
    shift = per_channel(node, np.broadcast_to(a.shift, a.shape), a.shape)
    rank = len(a.shape) - 1
    kernel = kernel_shape(node, rank)
    if node.attr("storage_order", 0):
        raise unsupported(node, "storage_order=1")
    strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel)
    pool = ir.MaxPool(ctx.unique(node.name), a.node, a.shape, kernel, strides, pads, dilations,
                      bool(node.attr("ceil_mode", 0)), tuple(int(c) for c in np.flatnonzero(latest)))
    if min(pool.shape) < 1:
        raise ModelError(f"{node.label}: the window does not fit the input {a.shape}: output shape {pool.shape}")
    check_window(node, term_window_values(pool))
    ctx.add(pool)
    return Pop(pool.name, pool.shape, ops.channel_axis(scale, rank + 1), ops.channel_axis(shift, rank + 1),
               a.nonnegative, a.relu)


def pool_directions(node: OnnxNode, value: Sum, parts) -> list[np.ndarray]:
    """Per part, the channels that pool the earliest spike (docs/math.md §8, pooling).

    The parts are f(u) = γ + Σ_k d_k·relu(g_k·u + t_k) of one pre-activation u (``value.kinks``). Where f is
    non-decreasing, max_i f(u_i) = f(max_i u_i) and relu(g·max u + t) is the maximum of the part's
    activations when g > 0, their minimum when g < 0; where f is non-increasing, f(min_i u_i) and the roles
    swap. So part k pools its earliest spike where g_k·(direction of f) > 0. f is monotone in a channel when
    its slope Σ_k d_k·g_k·[g_k·u + t_k > 0] has one sign on every piece between the breakpoints −t_k/g_k."""
    if value.kinks is None:
        raise unsupported(node, "it max-pools a sum of populations that are not one piecewise-linear function "
                                "of one pre-activation (max(a + b) is not max(a) + max(b))")
    c = value.shape[0]
    g = np.stack([per_channel(node, gk, value.shape) for gk, _ in value.kinks])          # (K, C)
    t = np.stack([per_channel(node, tk, value.shape) for _, tk in value.kinks])
    d = np.stack([per_channel(node, np.broadcast_to(p.scale, p.shape), p.shape) for p in parts])
    breaks = np.sort(-t / g, axis=0)                                                       # (K, C)
    probes = np.concatenate([breaks[:1] - 1.0, (breaks[1:] + breaks[:-1]) / 2, breaks[-1:] + 1.0])
    active = (g[None] * probes[:, None] + t[None]) > 0                                      # (P, K, C)
    slope = np.sum(d[None] * g[None] * active, axis=1)                                      # (P, C)
    rising, falling = np.all(slope >= 0, axis=0), np.all(slope <= 0, axis=0)
    if not np.all(rising | falling):
        bad = int(np.flatnonzero(~(rising | falling))[0])
        raise unsupported(node, f"it max-pools a piecewise-linear function that is not monotone (channel {bad} "
                                "of its input rises and falls, as Abs does)")
    direction = np.where(rising, 1.0, -1.0)
    return [g[k] * direction > 0 for k in range(len(parts))] if c else []


@converter("AveragePool", "GlobalAveragePool", part_wise=True)
def convert_avgpool(node: OnnxNode, ctx: Context) -> None:
    """Average pooling: a 1/k-weighted depthwise convolution P of the ReLU population, pending (``Pooled``)."""
    a = _pooled_population(node, ctx)
    kernel, strides, pads, dilations = _window(node, a)
    if _divisor_varies(node, a.shape, kernel, strides, pads, dilations, getattr(a, "pads", ())):
        out = pooled_size(a.shape, kernel, strides, pads, dilations, bool(node.attr("ceil_mode", 0)), a.pads)
        ctx.set(node, _average_of_real_positions(node, ctx, a, kernel, strides, pads, dilations, out))
        return
    ctx.set(node, _average(node, ctx, a, kernel, strides, pads, dilations))


def _window(node: OnnxNode, a) -> tuple[tuple, tuple, tuple, tuple]:
    """kernel, strides, pads and dilations of an AveragePool or GlobalAveragePool of ``a`` (its pending Pad
    included)."""
    rank = len(a.shape) - 1
    if node.op_type == "GlobalAveragePool":
        kernel, pads = mean_window(a, range(rank))
        return kernel, (1,) * rank, pads, (1,) * rank
    kernel = kernel_shape(node, rank)
    strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel, getattr(a, "pads", ()))
    before = getattr(a, "pads", ())
    if node.attr("count_include_pad", 0) and node.attr("ceil_mode", 0) and (
            pooled_size(a.shape, kernel, strides, pads, dilations, True, before)
            != pooled_size(a.shape, kernel, strides, pads, dilations, False, before)):
        raise unsupported(node, "ceil_mode=1 adds windows that are cut short")
    return kernel, strides, pads, dilations


def pooled_size(shape, kernel, strides, pads, dilations, ceil_mode: bool, before=()) -> tuple[int, ...]:
    """The output size of a pooling of a population of ``shape`` (C, n…) whose pads include a pending Pad
    ``before``: ONNX pools the Pad's output, of size n + the Pad, with its own pads only, so ceil_mode drops a
    last window that starts in its own padding, not one that starts in the Pad's zeros."""
    rank = len(kernel)
    before = tuple(before) or (0,) * 2 * rank
    size = tuple(n + before[i] + before[i + rank] for i, n in enumerate(shape[1:]))
    own = tuple(p - q for p, q in zip(pads, before))
    return ops.out_spatial(size, kernel, strides, own, dilations, ceil_mode)


def _divisor_varies(node: OnnxNode, shape, kernel, strides, pads, dilations, before) -> bool:
    """An AveragePool with count_include_pad = 0 whose windows reach into its own padding or are cut short by
    ceil_mode: it divides by a count that varies with the position (``_average_of_real_positions``)."""
    if node.op_type != "AveragePool" or node.attr("count_include_pad", 0):
        return False
    rank = len(kernel)
    before = before or (0,) * 2 * rank
    cut = pooled_size(shape, kernel, strides, pads, dilations, bool(node.attr("ceil_mode", 0)), before)
    return any(p != q for p, q in zip(pads, before)) or cut != pooled_size(shape, kernel, strides, pads, dilations,
                                                                           False, before)


def _compose_pooling(node: OnnxNode, ctx: Context, v: Lin) -> bool:
    """Average pooling P of a linear layer z whose terms are 1×1 convolutions with stride 1 and no padding
    (DenseNet's transition, Conv1x1 → AveragePool): P·(W ⋆ a + b) = (W/K over P's window) ⋆ a + P·b, one
    linear layer with P's strides and padding, its bias the pooled bias map (docs/math.md §8). False (the
    caller splits z) for any other linear layer."""
    terms = v.layer.terms
    if node.op_type == "ReduceMean" or not all(
            isinstance(t, ir.Conv) and all(k == 1 for k in t.weight.shape[2:]) and not any(t.pads)
            and all(s == 1 for s in t.strides) for t in terms):
        return False
    shape = tuple(v.layer.shape)
    if len(shape) not in (2, 3):
        raise unsupported(node, f"its input has shape {shape} (batch axis omitted)")
    kernel, strides, pads, dilations = _window(node, _Shaped(shape))
    if _divisor_varies(node, shape, kernel, strides, pads, dilations, ()):
        return False
    size = int(np.prod(kernel))
    composed = []
    for t in terms:
        t = ir.ungroup(t)
        weight = np.broadcast_to(t.weight, t.weight.shape[:2] + tuple(kernel)) / size
        composed.append(replace(t, weight=weight, strides=strides, pads=pads, dilations=dilations))
    pool = ir.Conv(terms[0].input, np.full((shape[0], 1) + tuple(kernel), 1.0 / size), shape, strides, pads,
                   dilations, groups=shape[0])
    check_window(node, term_window_values(composed[0]))
    bias = ir.apply_term(pool, ir.full_bias(v.layer)[None])[0]
    ctx.set(node, Lin(ir.Affine(ctx.unique(node.name), tuple(composed), ir.compact_bias(bias), relu=False,
                                origin=of(node, v.layer, "∘"))))
    return True


class _Shaped:
    """A stand-in with only a shape, for ``_window`` on a linear layer (no pending Pad)."""

    def __init__(self, shape):
        self.shape, self.pads = shape, ()


convert_avgpool.on_linear = _compose_pooling


def real_counts(size, kernel, strides, own_pads, dilations, out) -> np.ndarray:
    """How many positions of each window lie in the tensor of spatial ``size`` (a pending Pad's zeros are in
    it) rather than in the pooling's own padding ``own_pads``: the pooling of ones with unit taps, over
    ``out`` windows (ceil_mode's last windows included). The divisor of count_include_pad = 0."""
    rank = len(kernel)
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (n + p + q)) for o, s, k, d, n, p, q in
             zip(out, strides, kernel, dilations, size, own_pads[:rank], own_pads[rank:])]
    ones = np.ones((1, 1, *size))
    pads = tuple(own_pads[:rank]) + tuple(q + e for q, e in zip(own_pads[rank:], extra))
    return ops.conv(ones, np.ones((1, 1, *kernel)), strides, pads, dilations)[0, 0]


def _average_of_real_positions(node: OnnxNode, ctx: Context, a: Pop, kernel, strides, pads, dilations,
                               out) -> Pooled:
    """AveragePool with count_include_pad = 0 (and ceil_mode's cut windows): Σ over the window's real positions
    divided by their count n(p), = (K/n(p))·(P·a) with P the pooling by 1/K per tap over the same windows
    (extra zero padding at the end for cut windows). The factor K/n(p) > 0 varies with the position: it joins
    the pending map, which a dense reader absorbs; for any other reader the pooling becomes spiking blocks of
    one divisor each (``core.divided_pooling``, docs/math.md §6)."""
    rank = len(kernel)
    before = a.pads or (0,) * 2 * rank
    own = tuple(p - q for p, q in zip(pads, before))
    size = tuple(n + before[i] + before[i + rank] for i, n in enumerate(a.shape[1:]))
    counts = real_counts(size, kernel, strides, own, dilations, out)
    if np.any(counts < 1):
        raise ModelError(f"{node.label}: a window lies wholly in the padding (count_include_pad = 0 divides by 0)")
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (n + p + q)) for o, s, k, d, n, p, q in
             zip(out, strides, kernel, dilations, a.shape[1:], pads[:rank], pads[rank:])]
    pooled = _average(node, ctx, a, kernel, strides, tuple(pads[:rank]) + tuple(q + e for q, e in
                                                                                  zip(pads[rank:], extra)), dilations)
    ratio = int(np.prod(kernel)) / counts
    return replace(pooled, scale=pooled.scale * ratio, shift=pooled.shift * ratio)


def mean_window(a: Pop, axes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kernel and pads of the mean over the spatial ``axes`` (0 = the first spatial axis) of the population
    zero-padded by its pending Pad: the padded extent along those axes (1 along the others), and the Pad as
    padding. Σ over the real positions / the padded count = the mean of the padded tensor (docs/math.md §6,
    P with 1/K per tap, K the padded extent)."""
    rank = len(a.shape) - 1
    pads = a.pads or (0,) * 2 * rank
    kernel = tuple(a.shape[i + 1] + pads[i] + pads[i + rank] if i in axes else 1 for i in range(rank))
    return kernel, tuple(pads)


def _pooled_population(node: OnnxNode, ctx: Context) -> Pop:
    a = ctx.pop(node, 0, rank=(2, 3), pads=True)
    if not a.relu:
        raise unsupported(node, "average pooling of the network input (pool the data before conversion)")
    return a


def _average(node: OnnxNode, ctx: Context, a: Pop, kernel, strides, pads, dilations) -> Pooled:
    """P·a for the population a (≥ 0) under its pending map k·a + h: the pooled tensor is k·(P·a) + P·h, k one
    number per channel and P·h through the same zero padding."""
    c = a.shape[0]
    scale, shift = full_map(a)
    k = per_channel(node, scale, a.shape)
    shape = (c, *ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations))
    if min(shape) < 1:
        raise ModelError(f"{node.label}: the window does not fit the input {a.shape}: output shape {shape}")
    check_window(node, window_values(a.shape, shape, kernel, strides, pads, dilations, True))  # before the weight
    term = ir.Conv(a.node, np.full((c, 1) + kernel, 1.0 / int(np.prod(kernel))), a.shape, strides, pads, dilations,
                   groups=c)
    layer = ir.Affine(ctx.unique(node.name), (term,), np.zeros(c), relu=False, origin=f"{origin_of(node)}: average pooling")
    return Pooled(layer, node.outputs[0], term.shape, np.broadcast_to(ops.channel_axis(k, len(term.shape)), term.shape),
                  ir.apply_term(term, np.asarray(shift, dtype=np.float64)[None])[0])


@converter("ReduceMean", part_wise=True)
def convert_reduce_mean(node: OnnxNode, ctx: Context) -> None:
    """A mean over spatial axes (how the dynamo exporter writes AdaptiveAvgPool(1) and x.mean(dim=(2, 3))):
    average pooling with the whole extent of those axes as kernel; without keepdims, a reshape after it."""
    a = _pooled_population(node, ctx)
    rank = len(a.shape) - 1
    axes = node.attr("axes")
    if axes is None and ctx.get(node, 1) is not None:
        axes = ctx.const(node, 1, "axes")
    axes = sorted({int(x) % (rank + 2) for x in np.atleast_1d(axes if axes is not None else [])})
    if not axes or axes[0] < 2:
        raise unsupported(node, f"axes {axes or 'all'}: only a mean over spatial axes is an average pooling")
    kernel, pads = mean_window(a, [i for i in range(rank) if i + 2 in axes])
    pooled = _average(node, ctx, a, kernel, (1,) * rank, pads, (1,) * rank)
    if node.attr("keepdims", 1):
        ctx.set(node, pooled)
    else:
        shape = tuple(d for i, d in enumerate(pooled.shape) if i + 1 not in axes)
        ctx.set(node, replace(pooled, shape=shape, scale=pooled.scale.reshape(shape), shift=pooled.shift.reshape(shape)))
