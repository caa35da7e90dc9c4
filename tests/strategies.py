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
