"""Converters of linear layers and what folds into them: Gemm, MatMul, Conv, Relu, BatchNormalization, and
elementwise arithmetic with constants or between activations (residual sums)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir, ops
from ..errors import ModelError
from .core import (Const, Context, Lin, OnnxNode, Pooled, Pop, Sum, affine, apply_affine, as_linear, check_window,
                   const_for, converter, geometry, identity_pop, kernel_shape, of, origin_of, parts_of, spiking,
                   spiking_blocks, spread, tensor_nonnegative, term_window_values, unsupported)


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
    """A dense layer W·x + b on input 0, one term per part of a sum (docs/math.md §8); a pending average
    pooling x = P·a + p folds in: W·P on a, b + W·p. On a linear layer z = Σ W_k·a_k + c whose terms are
    dense, the composition W·W_k on a_k, bias W·c + b (linear∘linear, exact)."""
    v = ctx.get(node, 0, raw=True)
    shape = tuple(getattr(v, "shape", ()))
    if w.ndim != 2 or len(shape) != 1 or w.shape[1] != shape[0]:
        raise ModelError(f"{node.label}: its weight of shape {given} does not fit its input of shape {shape}")
    if isinstance(v, Lin) and all(isinstance(t, ir.Dense) for t in v.layer.terms):
        terms = tuple(replace(t, weight=w @ t.weight) for t in v.layer.terms)
        layer = ir.Affine(ctx.unique(node.name), terms, bias + w @ ir.full_bias(v.layer), relu=False,
                          origin=of(node, v.layer, "∘"))
        ctx.set(node, Lin(layer))
        return
    pairs, total = [], np.asarray(bias, dtype=np.float64)
    for part in parts_of(v) if isinstance(v, (Sum, Pooled)) else ctx.parts(node, 0, rank=(1,)):
        folded = None
        if isinstance(part, Pooled) and len(part.shape) == 1:
            folded = ir.dense_after_pooling(w * part.scale.reshape(1, -1), part.layer)   # W·(k·(P·a) + h)
        if folded is not None:
            pool = part.layer.terms[0]
            pairs.append((identity_pop(pool.input, pool.in_shape, relu=True), ir.Dense(pool.input, folded, pool.in_shape)))
            total = total + w @ part.shift.reshape(-1)
            continue
        if isinstance(part, Pooled):
            part = ctx.materialize(node.inputs[0], part) if part.tensor else ctx.pooled_layer(part)
        if part.pads:
            raise unsupported(node, "it reads a Pad output; only a Conv, an average pooling or a mean can absorb a Pad")
        pairs.append((part, ir.Dense(part.node, w, part.shape)))
    ctx.set(node, Lin(affine(node, ctx, pairs, total)))


@converter("MatMul")
def convert_matmul(node: OnnxNode, ctx: Context) -> None:
    """A·B with one constant operand: activation (batch, K) · B (K, M) is a dense layer; A (P, K) · activation
    (batch, K, L) is a 1×1 convolution over the sequence. An Add after it gives the bias."""
    x, y = ctx.get(node, 0, raw=True), ctx.get(node, 1, raw=True)
    if isinstance(y, Const):
        b, shape = ctx.const(node, 1, "second operand"), value_shape(x)
        if shape is None or len(shape) != 1 or b.ndim != 2 or b.shape[0] != shape[0]:
            raise unsupported(node, f"activation {shape} times a constant {b.shape}: only (batch, K)·(K, M) "
                                    "is a dense layer")
        _dense(node, ctx, b.T, np.zeros(b.shape[1]), b.shape)
        return
    elif isinstance(x, Const):
        c, shape = ctx.const(node, 0, "first operand"), value_shape(y)
        if shape is None or len(shape) != 2 or c.ndim != 2 or c.shape[1] != shape[0]:
            raise unsupported(node, f"a constant {c.shape} times an activation {shape}: only (P, K)·(batch, K, L) "
                                    "is a convolution")
        _conv(node, ctx, 1, c[:, :, None], np.zeros(c.shape[0]), (1,), (0, 0), (1,), 1)
    else:
        raise unsupported(node, "both operands are activations (a product of two activations has no exact "
                                "spiking mapping)")


@converter("Conv")
def convert_conv(node: OnnxNode, ctx: Context) -> None:
    """1-D or 2-D convolution with constant weights and bias, any group count (depthwise included)."""
    v = ctx.get(node, 0, raw=True)
    shape = value_shape(v)
    if shape is None or len(shape) not in (2, 3):
        raise unsupported(node, f"its input has shape {shape} (batch axis omitted)")
    w = ctx.const(node, 1, "weight")
    rank = len(shape) - 1
    groups = int(node.attr("group", 1))
    if w.ndim != rank + 2 or groups < 1 or w.shape[1] * groups != shape[0] or w.shape[0] % groups:
        raise ModelError(f"{node.label}: its weight of shape {w.shape} with group={groups} does not fit its "
                         f"input of shape {shape}")
    bias = ctx.const(node, 2, "bias") if ctx.get(node, 2) is not None else np.zeros(w.shape[0])
    if bias.ndim > 1 or bias.size not in (1, w.shape[0]):
        raise ModelError(f"{node.label}: its bias of shape {bias.shape} is not one value per output channel "
                         f"({w.shape[0]})")
    pending = getattr(v, "pads", ()) or getattr(parts_of(v)[0], "pads", ()) if not isinstance(v, Lin) else ()
    strides, pads, dilations = geometry(node, rank, shape[1:], kernel_shape(node, rank, w.shape[2:]), pending)
    _conv(node, ctx, 0, w, bias, strides, pads, dilations, groups)


def value_shape(v) -> tuple[int, ...] | None:
    """The shape (batch axis omitted) of an activation value; None for a constant."""
    return None if v is None or isinstance(v, Const) else tuple(v.shape)


def _conv(node: OnnxNode, ctx: Context, i: int, w, bias, strides, pads, dilations, groups) -> None:
    """The convolution W ⋆ x + b of input i: on a linear layer whose terms are convolutions, composed when W
    is 1×1 without padding and ungrouped (W ⋆ (W_k ⋆ a_k) = (W·W_k) ⋆ a_k, strides multiplied; exact), else
    one term per part of the input (docs/math.md §8)."""
    v = ctx.get(node, i, raw=True)
    if (isinstance(v, Lin) and groups == 1 and all(k == 1 for k in w.shape[2:]) and not any(pads)
            and all(isinstance(t, ir.Conv) for t in v.layer.terms)):
        m = w.reshape(w.shape[0], -1)
        terms = []
        for t in v.layer.terms:
            t = ir.ungroup(t)
            weight = np.einsum("om,mc...->oc...", m, t.weight)
            terms.append(replace(t, weight=weight, strides=tuple(a * b for a, b in zip(t.strides, strides))))
        bias_map = ir.full_bias(v.layer)[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
        total = np.einsum("om,m...->o...", m, bias_map) + ops.channel_axis(np.asarray(bias, dtype=np.float64),
                                                                           bias_map.ndim)
        ctx.set(node, Lin(ir.Affine(ctx.unique(node.name), tuple(terms), ir.compact_bias(total), relu=False,
                                    origin=of(node, v.layer, "∘"))))
        return
    parts = ctx.parts(node, i, rank=(2, 3), pads=True)
    if len({p.pads for p in parts}) != 1:
        raise unsupported(node, "its input's parts have different pending padding")
    first = parts[0]
    term = ir.Conv(first.node, w, first.shape, strides, pads, dilations, groups)
    check_window(node, term_window_values(term))
    ctx.set(node, Lin(affine(node, ctx, spread(parts, term), bias)))


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
    elif isinstance(v, Lin) and v.blocks:
        ctx.set(node, spiking_blocks(node, ctx, v))
    elif isinstance(v, (Lin, Pop, Pooled, Sum)):
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
    rank = len(getattr(v, "shape", ()))
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
    layer = ir.Affine(ctx.unique(node.name), first.terms + second.terms, total, relu=False, origin=origin_of(node))
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
                      relu=False, origin=origin_of(node))
    if node.op_type == "Mean":
        layer = ir.scale_outputs(layer, np.full(shape[0], 1.0 / len(values)))
    if all(isinstance(v, Pop) and tensor_nonnegative(v) for v in values if not isinstance(v, Const)) and all(
            np.all(c >= 0) for c in consts):
        ctx.set(node, spiking(node, ctx, layer))
    else:
        ctx.set(node, Lin(layer))
