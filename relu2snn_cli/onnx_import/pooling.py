"""Converters of pooling: MaxPool (earliest or latest spike) and AveragePool / GlobalAveragePool (folded into a
following dense layer, or a spiking layer with fixed weights)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir, ops
from ..errors import ModelError
from .core import (Context, OnnxNode, Pooled, Pop, check_window, converter, explicit_pads, full_map, geometry,
                   int_attr, kernel_shape, per_channel, term_window_values, unsupported, window_values)


@converter("MaxPool")
def convert_maxpool(node: OnnxNode, ctx: Context) -> None:
    """1-D or 2-D max-pooling of a population: the earliest spike; the latest for channels whose pending
    scale is negative (max(k·a + h) = k·min(a) + h)."""
    a = ctx.pop(node, 0, rank=(2, 3))
    scale = per_channel(node, np.broadcast_to(a.scale, a.shape), a.shape)
    shift = per_channel(node, np.broadcast_to(a.shift, a.shape), a.shape)
    rank = len(a.shape) - 1
    kernel = kernel_shape(node, rank)
    if node.attr("storage_order", 0):
        raise unsupported(node, "storage_order=1")
    strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel)
    latest = tuple(int(c) for c in np.flatnonzero(scale < 0))
    pool = ir.MaxPool(ctx.unique(node.name), a.node, a.shape, kernel, strides, pads, dilations,
                      bool(node.attr("ceil_mode", 0)), latest)
    if min(pool.shape) < 1:
        raise ModelError(f"{node.label}: the window does not fit the input {a.shape}: output shape {pool.shape}")
    check_window(node, term_window_values(pool))
    ctx.add(pool)
    ctx.set(node, Pop(pool.name, pool.shape, ops.channel_axis(scale, rank + 1), ops.channel_axis(shift, rank + 1),
                      a.nonnegative, a.relu))


@converter("AveragePool", "GlobalAveragePool")
def convert_avgpool(node: OnnxNode, ctx: Context) -> None:
    """Average pooling: a 1/k-weighted depthwise convolution P of the ReLU population, pending (``Pooled``)."""
    a = _pooled_population(node, ctx)
    rank = len(a.shape) - 1
    if node.op_type == "GlobalAveragePool":
        kernel, pads = mean_window(a, range(rank))
        strides, dilations = (1,) * rank, (1,) * rank
    else:
        kernel = kernel_shape(node, rank)
        strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel, a.pads)
        cut = ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations, bool(node.attr("ceil_mode", 0)))
        if not node.attr("count_include_pad", 0):
            ctx.set(node, _average_of_real_positions(node, ctx, a, kernel, strides, pads, dilations, cut))
            return
        if cut != ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations):
            raise unsupported(node, "ceil_mode=1 adds windows that are cut short")
    ctx.set(node, _average(node, ctx, a, kernel, strides, pads, dilations))


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
    the pending map, which a dense reader absorbs (docs/math.md §6)."""
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
    layer = ir.Affine(ctx.unique(node.name), (term,), np.zeros(c), relu=False)
    return Pooled(layer, node.outputs[0], term.shape, np.broadcast_to(ops.channel_axis(k, len(term.shape)), term.shape),
                  ir.apply_term(term, np.asarray(shift, dtype=np.float64)[None])[0])


@converter("ReduceMean")
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
