"""The layer graph of a ReLU network: small frozen dataclasses and a float64 forward pass.

Shapes omit the batch axis: a population is (C, H, W) for images or (D,) for vectors.
Every node names its input node; a ``Graph`` lists its nodes in topological order,
the first being the ``Input``. Every array is float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import ops
from .errors import GraphError


def _f64(name: str, value, ndim: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim not in ndim:
        raise GraphError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise GraphError(f"{name} holds NaN or infinite values")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class Input:
    """The network input x; ``shape`` without the batch axis."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Dense:
    """y = W·x + b, followed by ReLU when ``relu``. weight (out, in), bias (out,); x flat (in,)."""

    name: str
    input: str
    weight: np.ndarray
    bias: np.ndarray
    relu: bool
    source: str = ""  # ONNX tensor this node's output equals (the Relu output, or the logits)

    def __post_init__(self):
        object.__setattr__(self, "weight", _f64(f"{self.name}: weight", self.weight, (2,)))
        object.__setattr__(self, "bias", _f64(f"{self.name}: bias", self.bias, (1,)))
        if self.bias.shape != self.weight.shape[:1]:
            raise GraphError(f"{self.name}: bias shape {self.bias.shape} does not match weight {self.weight.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.weight.shape[:1]


@dataclass(frozen=True, eq=False)
class Conv:
    """y[o,i,j] = Σ_{c,u,v} W[o,c,u,v]·x_pad[c, i·s_h + u·d_h, j·s_w + v·d_w] + b[o(,i,j)], then ReLU when ``relu``.

    weight (O, C, kh, kw); bias (O,) or a bias map (O, Ho, Wo) (DESIGN §4: an affine map
    folded forward through zero padding); pads (top, left, bottom, right) are zeros.
    """

    name: str
    input: str
    weight: np.ndarray
    bias: np.ndarray
    relu: bool
    in_shape: tuple[int, int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    source: str = ""

    def __post_init__(self):
        object.__setattr__(self, "weight", _f64(f"{self.name}: weight", self.weight, (4,)))
        object.__setattr__(self, "bias", _f64(f"{self.name}: bias", self.bias, (1, 3)))
        if self.weight.shape[1] != self.in_shape[0]:
            raise GraphError(f"{self.name}: weight has {self.weight.shape[1]} input channels, input has {self.in_shape[0]}")
        if self.bias.shape not in (self.shape[:1], self.shape):
            raise GraphError(f"{self.name}: bias shape {self.bias.shape} fits neither {self.shape[:1]} nor {self.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.weight.shape[0],
                *ops.out_shape2d(self.in_shape[1:], self.weight.shape[2:], self.strides, self.pads, self.dilations))


@dataclass(frozen=True)
class MaxPool:
    """y[c,i,j] = max over the window of x[c] (padded positions ignored)."""

    name: str
    input: str
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.in_shape[0],
                *ops.out_shape2d(self.in_shape[1:], self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode))


@dataclass(frozen=True)
class Flatten:
    """y = x reshaped to (C·H·W,) in C order."""

    name: str
    input: str
    in_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int]:
        return (int(np.prod(self.in_shape)),)


Node = Input | Dense | Conv | MaxPool | Flatten
Linear = Dense | Conv


@dataclass(frozen=True)
class Graph:
    """A sequential ReLU network: ``nodes[0]`` is the Input, ``nodes[-1]`` the readout (no ReLU).

    ``removed`` records the output operators dropped on import (e.g. Softmax).
    ``input_name`` / ``output_name`` are the ONNX tensors of the network input and logits.
    """

    nodes: tuple[Node, ...]
    input_name: str = "input"
    output_name: str = "output"
    removed: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.nodes or not isinstance(self.nodes[0], Input):
            raise GraphError("a graph starts with its Input node")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise GraphError("node names must be unique")
        for prev, node in zip(self.nodes, self.nodes[1:]):
            if node.input != prev.name:
                raise GraphError(f"{node.name}: input {node.input!r} is not the preceding node {prev.name!r}")
        last = self.nodes[-1]
        if not isinstance(last, (Dense, Conv)) or last.relu:
            raise GraphError("a graph ends with a linear readout (Dense or Conv without ReLU)")

    @property
    def input(self) -> Input:
        return self.nodes[0]


def incoming_sum(layer: Linear) -> np.ndarray:
    """s_i = Σ_j W_ij per output neuron (for a convolution, per output channel over the whole kernel) — DESIGN §3."""
    return layer.weight.reshape(layer.weight.shape[0], -1).sum(axis=1)


def compact_bias(bias_map: np.ndarray) -> np.ndarray:
    """A bias map (O, H, W) that is the same at every position, as a vector (O,); else the map."""
    if bias_map.ndim == 1:
        return bias_map
    flat = bias_map.reshape(bias_map.shape[0], -1)
    return flat[:, 0].copy() if np.all(flat == flat[:, :1]) else bias_map


def full_bias(layer: Linear) -> np.ndarray:
    """The bias at every output neuron, shape ``layer.shape``."""
    return ops.per_neuron(layer.bias, layer.shape)


def scale_outputs(layer: Linear, k, h=0.0) -> Linear:
    """The layer followed by y ↦ k·y + h: W ← k·W, b ← k·b + h (DESIGN §4, fold backward; §3, scaling).

    k is one factor per output channel; h broadcasts to the output shape (a shift that
    varies over positions gives a bias map).
    """
    k = np.asarray(k, dtype=np.float64).reshape(-1)
    weight = layer.weight * ops.channel_axis(k, layer.weight.ndim)
    shift = np.broadcast_to(np.asarray(h, dtype=np.float64), layer.shape)
    bias = full_bias(layer) * ops.channel_axis(k, len(layer.shape)) + shift
    return replace(layer, weight=weight, bias=compact_bias(bias))


def fold_input_affine(layer: Linear, in_shape: tuple[int, ...], scale, shift) -> Linear:
    """The layer applied to x = scale·a + shift, as a layer on a (DESIGN §4, "fold into the next linear layer").

    Dense: W' = W·diag(scale), b' = b + W·shift. Conv: scale must be one number per input
    channel; b'[o,i,j] = b[o] + (W ⋆ shift_map_zero_padded)[o,i,j] — padded positions did not
    pass through the affine map, so near borders the folded bias differs: a bias map,
    exact for any kernel, stride, dilation and padding. A map that is the same everywhere
    is stored as a vector.
    """
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), in_shape)
    shift = np.broadcast_to(np.asarray(shift, dtype=np.float64), in_shape)
    if isinstance(layer, Dense):
        return replace(layer, weight=layer.weight * scale.reshape(1, -1), bias=layer.bias + layer.weight @ shift.reshape(-1))
    per_channel = scale[:, :1, :1]
    if not np.all(scale == per_channel):
        raise GraphError(f"{layer.name}: an input scale that varies over positions cannot fold into a convolution")
    weight = layer.weight * per_channel.reshape(1, -1, 1, 1)
    if not np.any(shift):
        return replace(layer, weight=weight)
    bias_map = ops.conv2d(shift[None], layer.weight, layer.strides, layer.pads, layer.dilations)[0]
    return replace(layer, weight=weight, bias=compact_bias(bias_map + full_bias(layer)))


def apply_linear(layer: Linear, x: np.ndarray) -> np.ndarray:
    """W·x + b over a batch (no ReLU): (N, *in_shape) → (N, *shape)."""
    if isinstance(layer, Dense):
        return x @ layer.weight.T + layer.bias
    return ops.conv2d(x, layer.weight, layer.strides, layer.pads, layer.dilations) + full_bias(layer)


def apply(node, x: np.ndarray) -> np.ndarray:
    """One node of the ReLU network on a batch, float64."""
    if isinstance(node, (Dense, Conv)):
        y = apply_linear(node, x)
        return np.maximum(y, 0.0) if node.relu else y
    if isinstance(node, MaxPool):
        return ops.max_pool2d(x, node.kernel, node.strides, node.pads, node.dilations, node.ceil_mode)
    if isinstance(node, Flatten):
        return x.reshape(x.shape[0], -1)
    raise GraphError(f"no forward rule for {type(node).__name__}")


def forward(graph: Graph, x: np.ndarray, keep: bool = False) -> dict[str, np.ndarray] | np.ndarray:
    """The float64 forward pass of the ReLU network on a batch x (N, *input shape).

    Returns the logits, or with ``keep`` a dict of every node's output by node name.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1:] != tuple(graph.input.shape):
        raise GraphError(f"input of shape {x.shape[1:]} given to a graph expecting {graph.input.shape}")
    out = {graph.input.name: x}
    for node in graph.nodes[1:]:
        x = apply(node, x)
        if keep:
            out[node.name] = x
    return out if keep else x
