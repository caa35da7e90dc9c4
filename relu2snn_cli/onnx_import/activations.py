"""Converters of piecewise-linear activations other than Relu: Clip (ReLU6, HardTanh), LeakyRelu, PRelu, Abs,
HardSigmoid, elementwise Max and Min (with a constant, or of several activations: maxout), Neg and Mean.

Each writes f(z) = γ + Σ_k d_k·relu(g_k·z + t_k) with ``piecewise`` (docs/math.md §8): one spiking
population per term, the coefficients pending on them."""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import ModelError
from .core import (Const, Context, Lin, OnnxNode, Sum, apply_affine, as_linear, const_for, converter, origin_of,
                   parts_of, piecewise, unsupported)

FLOAT_MAX = 3.4028234663852886e38   # Clip's defaults before opset 11: no bound


def _shape(node: OnnxNode, value) -> tuple[int, ...]:
    if isinstance(value, Lin):
        return tuple(value.shape)
    if value is None or isinstance(value, Const):
        raise unsupported(node, "it has no activation operand")
    return tuple(value.shape)


def _bound(node: OnnxNode, ctx: Context, i: int, key: str):
    """Clip's bound: input i from opset 11, the attribute ``key`` before; None for no bound."""
    if key in node.attrs and ctx.get(node, i) is None:
        value = float(node.attr(key))
        return None if abs(value) >= FLOAT_MAX else value
    if ctx.get(node, i) is None:
        return None
    value = ctx.const(node, i, key)
    if value.size != 1:
        raise ModelError(f"{node.label}: its {key} bound must be a scalar, got shape {value.shape}")
    return float(value.reshape(-1)[0])


@converter("Clip")
def convert_clip(node: OnnxNode, ctx: Context) -> None:
    """clip(z, lo, hi) = lo + relu(z − lo) − relu(z − hi); one bound: lo + relu(z − lo) or hi − relu(hi − z).
    Bounds are attributes before opset 11 and inputs from 11; ReLU6 and HardTanh are Clips."""
    value = ctx.get(node, 0, raw=True)
    _shape(node, value)
    lo, hi = _bound(node, ctx, 1, "min"), _bound(node, ctx, 2, "max")
    if lo is not None and hi is not None and lo > hi:
        raise unsupported(node, f"min {lo} > max {hi} gives a constant")
    if lo is None and hi is None:
        ctx.set(node, value)
        return
    terms = []
    if lo is not None:
        terms.append((1.0, 1.0, -lo))
    if hi is not None:
        terms.append((-1.0, 1.0, -hi) if lo is not None else (-1.0, -1.0, hi))
    ctx.set(node, piecewise(node, ctx, value, lo if lo is not None else hi, terms))


@converter("LeakyRelu")
def convert_leaky_relu(node: OnnxNode, ctx: Context) -> None:
    """relu(z) − α·relu(−z)."""
    alpha = float(node.attr("alpha", 0.01))
    ctx.set(node, piecewise(node, ctx, ctx.get(node, 0, raw=True), 0.0, [(1.0, 1.0, 0.0), (-alpha, -1.0, 0.0)]))


@converter("PRelu")
def convert_prelu(node: OnnxNode, ctx: Context) -> None:
    """relu(z) − s·relu(−z) with the slope s a constant broadcast to z (one per channel, or one number)."""
    value = ctx.get(node, 0, raw=True)
    slope = const_for(node, ctx.const(node, 1, "slope"), _shape(node, value))
    ctx.set(node, piecewise(node, ctx, value, 0.0, [(1.0, 1.0, 0.0), (-slope, -1.0, 0.0)]))


@converter("Abs")
def convert_abs(node: OnnxNode, ctx: Context) -> None:
    """|z| = relu(z) + relu(−z) (not monotone: a max pooling of it is refused)."""
    ctx.set(node, piecewise(node, ctx, ctx.get(node, 0, raw=True), 0.0, [(1.0, 1.0, 0.0), (1.0, -1.0, 0.0)]))


@converter("HardSigmoid")
def convert_hard_sigmoid(node: OnnxNode, ctx: Context) -> None:
    """max(0, min(1, α·z + β)) = relu(α·z + β) − relu(α·z + β − 1)."""
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    if alpha == 0:
        raise unsupported(node, "alpha = 0 gives a constant")
    ctx.set(node, piecewise(node, ctx, ctx.get(node, 0, raw=True), 0.0,
                            [(1.0, alpha, beta), (-1.0, alpha, beta - 1.0)]))


@converter("Max", "Min")
def convert_max_min(node: OnnxNode, ctx: Context) -> None:
    """Elementwise max or min of activations and constants, taken pairwise from the left:
    max(x, c) = c + relu(x − c), min(x, c) = c − relu(c − x) (ReLU6 written as Min(Max(x, 0), 6));
    max(x, y) = y + relu(x − y), min(x, y) = y − relu(y − x) for two activations (maxout)."""
    values = [ctx.get(node, i, raw=True) for i in range(len(node.inputs))]
    consts = [v.value for v in values if isinstance(v, Const)]
    acts = [v for v in values if not isinstance(v, Const)]
    if not acts:
        raise unsupported(node, "it has no activation operand")
    sign = 1.0 if node.op_type == "Max" else -1.0
    result = acts[0]
    for other in acts[1:]:
        result = _of_two(node, ctx, result, other, sign)
    if consts:
        shape = _shape(node, result)
        c = const_for(node, np.asarray(consts[0], dtype=np.float64), shape)
        for more in consts[1:]:
            c = np.maximum(c, const_for(node, more, shape)) if sign > 0 else np.minimum(c, const_for(node, more, shape))
        result = piecewise(node, ctx, result, c, [(sign, sign, -sign * c)])
    ctx.set(node, result)


def _of_two(node: OnnxNode, ctx: Context, x, y, sign: float):
    """max (sign 1) or min (sign −1) of two activations: y + sign·relu(sign·(x − y)); y is the operand that is
    already populations (a linear layer is split first)."""
    if isinstance(y, Lin) and not isinstance(x, Lin):
        x, y = y, x
    if _shape(node, x) != _shape(node, y):
        raise unsupported(node, f"its operands have shapes {_shape(node, x)} and {_shape(node, y)} (no "
                                "broadcasting between activations)")
    first, second = as_linear(node, ctx, x), as_linear(node, ctx, y)
    diff = ir.Affine(ctx.unique(node.name), first.terms + ir.scale_outputs(second, -np.ones(second.shape[0])).terms,
                     ir.compact_bias(ir.full_bias(first) - ir.full_bias(second)), relu=False, origin=origin_of(node))
    if isinstance(y, Lin):
        y = piecewise(node, ctx, y, 0.0, [(1.0, 1.0, 0.0), (-1.0, -1.0, 0.0)], what="its second operand")
    r = piecewise(node, ctx, Lin(diff), 0.0, [(sign, sign, 0.0)])
    return Sum(tuple(parts_of(y)) + tuple(parts_of(r)))


@converter("Neg")
def convert_neg(node: OnnxNode, ctx: Context) -> None:
    """−x: the affine map k = −1."""
    apply_affine(node, ctx, ctx.get(node, 0, raw=True), -np.ones(()), np.zeros(()))

