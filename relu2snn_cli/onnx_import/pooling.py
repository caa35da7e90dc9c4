"""Converters of pooling: MaxPool (earliest or latest spike) and AveragePool / GlobalAveragePool (folded into a
following dense layer, or a spiking layer with fixed weights)."""

from __future__ import annotations

import numpy as np

from .. import ir, ops
from ..errors import ModelError
from .core import (Context, Lin, OnnxNode, Pooled, Pop, affine, converter, explicit_pads, geometry,
                   per_channel, tensor_nonnegative, unsupported)


@converter("MaxPool")
def convert_maxpool(node: OnnxNode, ctx: Context) -> None:
    """1-D or 2-D max-pooling of a population: the earliest spike; the latest for channels whose pending
    scale is negative (max(k·a + h) = k·min(a) + h)."""
    a = ctx.pop(node, 0, rank=(2, 3))
    scale = per_channel(node, np.broadcast_to(a.scale, a.shape), a.shape)
    shift = per_channel(node, np.broadcast_to(a.shift, a.shape), a.shape)
    rank = len(a.shape) - 1
    kernel = tuple(node.attr("kernel_shape"))
    if len(kernel) != rank:
        raise unsupported(node, f"kernel {kernel} on an input of shape {a.shape}")
    if node.attr("storage_order", 0):
        raise unsupported(node, "storage_order=1")
    strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel)
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
        own = explicit_pads(node, a.shape[1:], kernel, tuple(node.attr("strides") or (1,) * rank), (1,) * rank)
        if any(own) and not node.attr("count_include_pad", 0):
            raise unsupported(node, "count_include_pad=0 with padding divides by a count that varies with the "
                                    "position")
        strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel, a.pads)
        if node.attr("ceil_mode", 0) and (ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations, True)
                                          != ops.out_spatial(a.shape[1:], kernel, strides, pads, dilations)):
            raise unsupported(node, "ceil_mode=1 adds windows that are cut short")
    c = a.shape[0]
    weight = np.full((c, 1) + kernel, 1.0 / int(np.prod(kernel)))
    term = ir.Conv(a.node, weight, a.shape, strides, pads, dilations, groups=c)
    layer = affine(node, ctx, [(a, term)], np.zeros(c))
    ctx.set(node, Pooled(layer, node.outputs[0], layer.shape) if tensor_nonnegative(a) else Lin(layer))
