"""Converters of linear layers and what folds into them: Gemm, MatMul, Conv, Relu, BatchNormalization, and
elementwise arithmetic with constants or between activations (residual sums)."""

from __future__ import annotations

import numpy as np

from .. import ir, ops
from ..errors import ModelError
from .core import (Const, Context, Lin, OnnxNode, Pooled, Pop, affine, apply_affine, as_linear, check_window,
                   const_for, converter, geometry, identity_pop, kernel_shape, spiking, tensor_nonnegative,
                   term_window_values, unsupported)


@converter("Gemm")
def convert_gemm(node: OnnxNode, ctx: Context) -> None:
    """Y = alpha·A'·B' + beta·C with A the activation (batch, K) and B, C constants."""
    if node.attr("transA", 0):
        raise unsupported(node, "transA=1 on the activation puts the batch axis last")
    b = ctx.const(node, 1, "B operand")
    w = node.attr("alpha", 1.0) * (b.T if not node.attr("transB", 0) else b)
    c = ctx.const(node, 2, "C operand") if ctx.get(node, 2) is not None else np.zeros(())
    bias = node.attr("beta", 1.0) * const_for(node, c, w.shape[:1])
    _dense(node, ctx, w, bias, b.shape)


def _dense(node: OnnxNode, ctx: Context, w: np.ndarray, bias, given: tuple[int, ...]) -> None:
    """A dense layer W·x + b on input 0; a pending average pooling x = P·a + p folds in: W·P on a, b + W·p."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Pooled) and len(v.shape) == 1 and w.ndim == 2 and w.shape[1] == v.shape[0]:
        folded = ir.dense_after_pooling(w * v.scale.reshape(1, -1), v.layer)   # W·(k·(P·a) + h)
        if folded is not None:
            pool = v.layer.terms[0]
            term = ir.Dense(pool.input, folded, pool.in_shape)
            a = identity_pop(pool.input, pool.in_shape, relu=True)
            ctx.set(node, Lin(affine(node, ctx, [(a, term)], bias + w @ v.shift.reshape(-1))))
            return
    a = ctx.pop(node, 0, rank=(1,))
    if w.ndim != 2 or w.shape[1] != a.shape[0]:
        raise ModelError(f"{node.label}: its weight of shape {given} does not fit its input of shape {a.shape}")
    ctx.set(node, Lin(affine(node, ctx, [(a, ir.Dense(a.node, w, a.shape))], bias)))


@converter("MatMul")
def convert_matmul(node: OnnxNode, ctx: Context) -> None:
    """A·B with one constant operand: activation (batch, K) · B (K, M) is a dense layer; A (P, K) · activation
    (batch, K, L) is a 1×1 convolution over the sequence. An Add after it gives the bias."""
    x, y = ctx.get(node, 0, raw=True), ctx.get(node, 1, raw=True)
    if isinstance(y, Const):
        if isinstance(x, Lin):
            raise unsupported(node, "it is applied to a linear layer's output before a ReLU")
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
    ctx.set(node, Lin(affine(node, ctx, [(a, term)], 0.0)))


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
    if bias.ndim > 1 or bias.size not in (1, w.shape[0]):
        raise ModelError(f"{node.label}: its bias of shape {bias.shape} is not one value per output channel "
                         f"({w.shape[0]})")
    strides, pads, dilations = geometry(node, rank, a.shape[1:], kernel_shape(node, rank, w.shape[2:]), a.pads)
    term = ir.Conv(a.node, w, a.shape, strides, pads, dilations, groups)
    check_window(node, term_window_values(term))
    ctx.set(node, Lin(affine(node, ctx, [(a, term)], bias)))


@converter("Relu")
def convert_relu(node: OnnxNode, ctx: Context) -> None:
    """ReLU of a linear layer (or of a population's affine map): a spiking layer. ReLU of a non-negative
    tensor: the identity."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Pooled) and v.shape != tuple(v.layer.shape) and not v.nonnegative:
        v = ctx.get(node, 0)   # a flattened pooling under a map: its spiking layer, the map pending
    if isinstance(v, Pooled) and v.nonnegative or (isinstance(v, Pop) and not v.pads
                                                     and (v.nonnegative or tensor_nonnegative(v))):
        ctx.set(node, v)
    elif isinstance(v, (Lin, Pop, Pooled)):
        ctx.set(node, spiking(node, ctx, as_linear(node, ctx, v)))
    else:
        raise unsupported(node, "a ReLU of a constant")


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
    v = ctx.get(node, 0, raw=True)
    rank = len(v.layer.shape if isinstance(v, Lin) else getattr(v, "shape", ()))
    apply_affine(node, ctx, v, ops.channel_axis(k, rank), ops.channel_axis(h, rank))


@converter("Add", "Sub", "Mul", "Div")
def convert_arithmetic(node: OnnxNode, ctx: Context) -> None:
    """With a constant: x+c, x−c, c−x, x·c, x/c as tensor ↦ k·tensor + h. Two activations: a sum or
    difference is one affine layer with the terms of both (a residual connection)."""
    x, y = ctx.get(node, 0, raw=True), ctx.get(node, 1, raw=True)
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
    first, second = as_linear(node, ctx, x), as_linear(node, ctx, y)
    if first.shape != second.shape:
        raise unsupported(node, f"its operands have shapes {first.shape} and {second.shape} (no broadcasting "
                                "between activations)")
    if node.op_type == "Sub":
        second = ir.scale_outputs(second, -np.ones(second.shape[0]))
    total = ir.compact_bias(ir.full_bias(first) + ir.full_bias(second))
    layer = ir.Affine(ctx.unique(node.name), first.terms + second.terms, total, relu=False)
    if node.op_type == "Add" and all(isinstance(v, Pop) and tensor_nonnegative(v) for v in (x, y)):
        ctx.set(node, spiking(node, ctx, layer))   # a sum of non-negative tensors: its ReLU is the identity
    else:
        ctx.set(node, Lin(layer))


@converter("Sum", "Mean")
def convert_sum(node: OnnxNode, ctx: Context) -> None:
    """Sum and Mean of n tensors (Caffe2-era residual blocks): one affine layer with the terms of every
    activation operand, constant operands in its bias; a Mean scales it by 1/n. Like a residual Add, a sum
    of non-negative tensors is a spiking layer whose ReLU is the identity."""
    values = [ctx.get(node, i, raw=True) for i in range(len(node.inputs))]
    layers = [as_linear(node, ctx, v) for v in values if not isinstance(v, Const)]
    if len({layer.shape for layer in layers}) != 1:
        raise unsupported(node, f"its operands have shapes {[layer.shape for layer in layers]} (no broadcasting "
                                "between activations)")
    shape = layers[0].shape
    consts = [const_for(node, v.value, shape) for v in values if isinstance(v, Const)]
    bias = sum(ir.full_bias(layer) for layer in layers) + sum(consts, np.zeros(shape))
    layer = ir.Affine(ctx.unique(node.name), sum((layer.terms for layer in layers), ()), ir.compact_bias(bias),
                      relu=False)
    if node.op_type == "Mean":
        layer = ir.scale_outputs(layer, np.full(shape[0], 1.0 / len(values)))
    if all(isinstance(v, Pop) and tensor_nonnegative(v) for v in values if not isinstance(v, Const)) and all(
            np.all(c >= 0) for c in consts):
        ctx.set(node, spiking(node, ctx, layer))
    else:
        ctx.set(node, Lin(layer))
