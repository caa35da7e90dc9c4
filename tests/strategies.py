"""Hypothesis strategies: random small ReLU stacks (Dense / Conv / BatchNorm / MaxPool) as ONNX models."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from builders import GraphBuilder
from relu2snn_cli import ops


def _bn(b: GraphBuilder, h: str, channels: int, rng, positive: bool) -> str:
    gamma = rng.uniform(0.5, 1.5, channels) * (1 if positive else rng.choice([-1, 1], channels))
    return b.op("BatchNormalization", [h, b.const(gamma), b.const(rng.normal(0, 0.3, channels)),
                                       b.const(rng.normal(0, 0.3, channels)), b.const(rng.uniform(0.5, 2, channels))])


def _weights(rng, shape, fan_in: int, bias: float) -> np.ndarray:
    """Random weights; a positive bias of the mean makes some incoming sums exceed 1 (exercises scaling)."""
    return rng.normal(bias / fan_in, 1.2 / np.sqrt(fan_in), shape)


@st.composite
def relu_stacks(draw, image: bool | None = None):
    """(model, input shape, seed): a random sequential ReLU network with a linear readout."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    image = draw(st.booleans()) if image is None else image
    if image:
        shape = (draw(st.integers(1, 3)), draw(st.integers(4, 8)), draw(st.integers(4, 8)))
    else:
        shape = (draw(st.integers(2, 12)),)
    b = GraphBuilder(shape)
    h, cur = "x", shape
    if image:
        for _ in range(draw(st.integers(1, 3))):
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 2))
            d = draw(st.integers(1, 2)) if k > 1 else 1
            pads = tuple(draw(st.integers(0, k - 1)) for _ in range(4)) if k > 1 else (0, 0, 0, 0)
            ho = ops.out_size(cur[1], k, s, pads[0], pads[2], d)
            wo = ops.out_size(cur[2], k, s, pads[1], pads[3], d)
            if ho < 1 or wo < 1:
                break
            out = draw(st.integers(1, 4))
            fan = cur[0] * k * k
            h = b.op("Conv", [h, b.const(_weights(rng, (out, cur[0], k, k), fan, draw(st.floats(0, 3)))),
                              b.const(rng.normal(0, 0.3, out))],
                     kernel_shape=[k, k], strides=[s, s], pads=list(pads), dilations=[d, d])
            cur = (out, ho, wo)
            if draw(st.booleans()):
                h = _bn(b, h, out, rng, positive=False)
            h = b.op("Relu", [h])
            pool = draw(st.booleans()) and cur[1] >= 2 and cur[2] >= 2
            if draw(st.booleans()):
                h = _bn(b, h, out, rng, positive=pool)
            if pool:
                ceil = draw(st.booleans())
                h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=int(ceil))
                cur = (out, ops.out_size(cur[1], 2, 2, 0, 0, 1, ceil), ops.out_size(cur[2], 2, 2, 0, 0, 1, ceil))
        h = b.op("Flatten", [h])
        cur = (int(np.prod(cur)),)
    for _ in range(draw(st.integers(0 if image else 1, 2))):
        out = draw(st.integers(1, 10))
        h = b.op("Gemm", [h, b.const(_weights(rng, (out, cur[0]), cur[0], draw(st.floats(0, 3)))),
                          b.const(rng.normal(0, 0.3, out))], transB=1)
        if draw(st.booleans()):
            h = _bn(b, h, out, rng, positive=False)
        h = b.op("Relu", [h])
        cur = (out,)
    n_out = draw(st.integers(1, 5))
    h = b.op("Gemm", [h, b.const(rng.normal(0, 1, (n_out, cur[0]))), b.const(rng.normal(0, 0.3, n_out))], transB=1)
    return b.build(h), shape, seed


@st.composite
def relu_dags(draw, image: bool | None = None):
    """(model, input shape, seed): a random ReLU DAG — residual sums (identity or through synapses, of
    populations from different depths), concatenations, average pooling, grouped and 1×1 convolutions
    over dense or conv branches — with a linear readout."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    image = draw(st.booleans()) if image is None else image
    shape = (draw(st.integers(1, 2)), draw(st.integers(3, 6)), draw(st.integers(3, 6))) if image \
        else (draw(st.integers(2, 8)),)
    b = GraphBuilder(shape)

    def linear(h, cur, out, groups=1, k=None):
        """A conv (same padding, stride 1) or a Gemm on population h of shape cur: the pre-activation."""
        if image:
            k = k or draw(st.sampled_from([1, 3]))
            w = _weights(rng, (out, cur[0] // groups, k, k), cur[0] // groups * k * k, draw(st.floats(0, 2)))
            return b.op("Conv", [h, b.const(w), b.const(rng.normal(0, 0.3, out))], kernel_shape=[k, k],
                        pads=[k // 2] * 4, group=groups)
        w = _weights(rng, (out, cur[0]), cur[0], draw(st.floats(0, 2)))
        return b.op("Gemm", [h, b.const(w), b.const(rng.normal(0, 0.3, out))], transB=1)

    def resize(cur, out):
        return (out,) + tuple(cur[1:])

    pops = [(b.op("Relu", [linear("x", shape, 3)]), resize(shape, 3))]
    for _ in range(draw(st.integers(2, 5))):
        op = draw(st.sampled_from(["concat", "residual", "identity", "layer", "avgpool", "grouped"]))
        i, j = draw(st.integers(0, len(pops) - 1)), len(pops) - 1   # j the newest: windows that end apart
        (hi, ci), (hj, cj) = pops[i], pops[j]
        if op == "layer" or (op in ("residual", "identity", "concat") and ci[1:] != cj[1:]):
            out = draw(st.integers(1, 4))
            h = linear(hi, ci, out)
            if draw(st.booleans()):
                h = _bn(b, h, out, rng, positive=False)
            pops.append((b.op("Relu", [h]), resize(ci, out)))
        elif op == "residual":   # two branches through synapses, summed before one ReLU
            out = draw(st.integers(1, 4))
            pops.append((b.op("Relu", [b.op("Add", [linear(hi, ci, out), linear(hj, cj, out)])]), resize(ci, out)))
        elif op == "identity":   # a branch plus a population as it is
            h = b.op("Add", [linear(hi, ci, cj[0]), hj])
            pops.append((b.op("Relu", [h]), cj))
        elif op == "concat":
            pops.append((b.op("Concat", [hi, hj], axis=1), (ci[0] + cj[0],) + tuple(ci[1:])))
        elif op == "avgpool" and image and min(ci[1:]) >= 2:
            h = b.op("AveragePool", [hi], kernel_shape=[2, 2], strides=[1, 2], pads=[0, 1, 1, 0], count_include_pad=1)
            pops.append((h, (ci[0], ci[1], (ci[2] + 1 - 2) // 2 + 1)))
        elif op == "grouped" and image and ci[0] % 2 == 0:
            pops.append((b.op("Relu", [linear(hi, ci, ci[0], groups=2, k=3)]), ci))
    h, cur = pops[-1]
    if image:
        if draw(st.booleans()):
            h, cur = b.op("GlobalAveragePool", [h]), (cur[0], 1, 1)
        h, cur = b.op("Flatten", [h]), (int(np.prod(cur)),)
    n_out = draw(st.integers(1, 4))
    h = b.op("Gemm", [h, b.const(rng.normal(0, 1, (n_out, cur[0]))), b.const(rng.normal(0, 0.3, n_out))], transB=1)
    return b.build(h), shape, seed
