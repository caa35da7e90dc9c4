"""The layer graph of a ReLU network: small frozen dataclasses and a float64 forward pass.

Shapes omit the batch axis: a population is (C, H, W) for images, (C, L) for sequences or
(D,) for vectors. A ``Graph`` lists its nodes in topological order, the first being the
``Input``; every node names its inputs (``inputs``). Every array is float64.

A ReLU layer is an ``Affine`` node: a sum of synapse *terms* (``Dense`` or ``Conv``), each
reading one population, plus a bias — a residual ``Add`` of two branches is one node with
two terms. Pooling, reshaping, transposing and concatenation move populations around.
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

    @property
    def inputs(self) -> tuple[str, ...]:
        return ()


# ----------------------------------------------------------------------------- synapse terms

@dataclass(frozen=True, eq=False)
class Dense:
    """Synapses y = W·flat(x): weight (out, in), x of ``in_shape`` flattened in C order."""

    input: str
    weight: np.ndarray
    in_shape: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "weight", _f64(f"{self.input}: dense weight", self.weight, (2,)))
        if self.weight.shape[1] != int(np.prod(self.in_shape)):
            raise GraphError(f"dense weight {self.weight.shape} does not fit the input {self.input} of shape {self.in_shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.weight.shape[:1]


@dataclass(frozen=True, eq=False)
class Conv:
    """Synapses y[o,i,j] = Σ_{c ∈ group(o),u,v} W[o,c,u,v]·x_pad[c, i·s_h + u·d_h, j·s_w + v·d_w] (or 1-D).

    weight (O, C/groups, kh, kw) or (O, C/groups, k); pads (begins, then ends: top, left,
    bottom, right in 2-D) are zeros.
    """

    input: str
    weight: np.ndarray
    in_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int = 1

    def __post_init__(self):
        object.__setattr__(self, "weight", _f64(f"{self.input}: conv weight", self.weight, (3, 4)))
        rank = self.weight.ndim - 2
        if len(self.in_shape) != rank + 1 or self.in_shape[0] != self.weight.shape[1] * self.groups:
            raise GraphError(f"conv weight {self.weight.shape} with groups={self.groups} does not fit "
                             f"the input {self.input} of shape {self.in_shape}")
        if self.weight.shape[0] % self.groups:
            raise GraphError(f"conv weight {self.weight.shape}: {self.weight.shape[0]} output channels "
                             f"do not split into {self.groups} groups")
        if (len(self.strides), len(self.pads), len(self.dilations)) != (rank, 2 * rank, rank):
            raise GraphError(f"conv geometry {self.strides}, {self.pads}, {self.dilations} is not {rank}-D")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.weight.shape[0],
                *ops.out_spatial(self.in_shape[1:], self.weight.shape[2:], self.strides, self.pads, self.dilations))


Term = Dense | Conv


def apply_term(term: Term, x: np.ndarray) -> np.ndarray:
    """One term's synaptic sum over a batch: (N, *in_shape) → (N, *shape) (``ops.weighted_sum``)."""
    return ops.weighted_sum(x, term.weight, term)


def term_sum(term: Term) -> np.ndarray:
    """Σ_j W_ij per output neuron (dense) or per output channel over the kernel (conv)."""
    return term.weight.reshape(term.weight.shape[0], -1).sum(axis=1)


# ----------------------------------------------------------------------------- nodes

@dataclass(frozen=True, eq=False)
class Affine:
    """z = Σ_k term_k(x_k) + b, followed by ReLU when ``relu``.

    Every term gives the same output shape. bias (O,) per channel, or a map of the whole
    output shape (docs/math.md §7: an affine map folded forward through zero padding).
    """

    name: str
    terms: tuple[Term, ...]
    bias: np.ndarray
    relu: bool
    source: str = ""  # ONNX tensor this node's output equals (the Relu output, or the logits)
    origin: str = ""  # the ONNX node(s) it comes from and which term, for ``inspect`` (docs/artifact.md)

    def __post_init__(self):
        object.__setattr__(self, "terms", tuple(self.terms))
        if not self.terms:
            raise GraphError(f"{self.name}: an affine layer needs at least one term")
        object.__setattr__(self, "bias", _f64(f"{self.name}: bias", self.bias, (1, 2, 3)))
        shapes = {t.shape for t in self.terms}
        if len(shapes) != 1:
            raise GraphError(f"{self.name}: its terms give different shapes {sorted(shapes)}")
        if self.bias.shape not in (self.shape[:1], self.shape):
            raise GraphError(f"{self.name}: bias shape {self.bias.shape} fits neither {self.shape[:1]} nor {self.shape}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(t.input for t in self.terms)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.terms[0].shape


@dataclass(frozen=True)
class MaxPool:
    """y[c] = max over each window of x[c] (padded positions ignored); the channels listed in
    ``latest`` take the minimum instead (a negative scale sat between the ReLU and the pooling)."""

    name: str
    input: str
    in_shape: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    ceil_mode: bool = False
    latest: tuple[int, ...] = ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.in_shape[0], *ops.out_spatial(self.in_shape[1:], self.kernel, self.strides, self.pads,
                                                   self.dilations, self.ceil_mode))

    def move(self, xs: list[np.ndarray]) -> np.ndarray:
        """The maximum of each window (the minimum for the ``latest`` channels), over a batch."""
        geometry = (self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode)
        return ops.pool_channels(xs[0], self.latest, ops.max_pool, ops.min_pool, *geometry)

    def move_back(self, g: np.ndarray, xs: list[np.ndarray], y: np.ndarray) -> list[np.ndarray]:
        """The transpose of ``move`` at the point xs → y: each window's gradient g goes to the (first) input
        whose value the window took (inputs and output may be values or codes)."""
        geometry = (self.kernel, self.strides, self.pads, self.dilations)
        one_d = len(self.kernel) == 1
        view = ops.windows(xs[0], *geometry, np.nan, self.ceil_mode)
        y, g = (a[:, :, None, :] if one_d else a for a in (y, g))
        hit = view == y[..., None, None]
        flat = hit.reshape(hit.shape[:4] + (-1,))
        first = np.zeros_like(flat)
        np.put_along_axis(first, flat.argmax(axis=-1)[..., None], flat.any(axis=-1, keepdims=True), axis=-1)
        taps = g[..., None, None] * first.reshape(hit.shape)
        return [ops.unwindows(taps, tuple(self.in_shape[1:]), *geometry)]


@dataclass(frozen=True)
class Reshape:
    """y = x reshaped to ``shape`` in C order (Flatten, Reshape, Squeeze, Unsqueeze)."""

    name: str
    input: str
    in_shape: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self):
        if int(np.prod(self.in_shape)) != int(np.prod(self.shape)):
            raise GraphError(f"{self.name}: cannot reshape {self.in_shape} to {self.shape}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    def move(self, xs: list[np.ndarray]) -> np.ndarray:
        return ops.reshape(xs[0], self.shape)

    def move_back(self, g: np.ndarray, xs=None, y=None) -> list[np.ndarray]:
        """The transpose of ``move``: g reshaped back to the input's shape."""
        return [ops.reshape(g, self.in_shape)]


@dataclass(frozen=True)
class Transpose:
    """y = x with its (non-batch) axes permuted: y.shape[i] = x.shape[perm[i]]."""

    name: str
    input: str
    in_shape: tuple[int, ...]
    perm: tuple[int, ...]

    def __post_init__(self):
        if sorted(self.perm) != list(range(len(self.in_shape))):
            raise GraphError(f"{self.name}: {self.perm} is not a permutation of the axes of {self.in_shape}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.in_shape[p] for p in self.perm)

    def move(self, xs: list[np.ndarray]) -> np.ndarray:
        return ops.transpose(xs[0], self.perm)

    def move_back(self, g: np.ndarray, xs=None, y=None) -> list[np.ndarray]:
        """The transpose of ``move``: the inverse permutation."""
        return [ops.transpose(g, tuple(int(p) for p in np.argsort(self.perm)))]


@dataclass(frozen=True)
class Concat:
    """y = the inputs concatenated along (non-batch) ``axis``."""

    name: str
    inputs: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    axis: int

    def __post_init__(self):
        rest = {tuple(s[:self.axis]) + tuple(s[self.axis + 1:]) for s in self.in_shapes}
        if len(rest) != 1 or len(self.inputs) != len(self.in_shapes):
            raise GraphError(f"{self.name}: shapes {list(self.in_shapes)} do not concatenate along axis {self.axis}")

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.in_shapes[0]
        return first[:self.axis] + (sum(s[self.axis] for s in self.in_shapes),) + first[self.axis + 1:]

    def move(self, xs: list[np.ndarray]) -> np.ndarray:
        return ops.concat(xs, self.axis)

    def move_back(self, g: np.ndarray, xs=None, y=None) -> list[np.ndarray]:
        """The transpose of ``move``: g split back into the inputs' parts."""
        return np.split(g, np.cumsum([s[self.axis] for s in self.in_shapes])[:-1], axis=self.axis + 1)


@dataclass(frozen=True)
class Take:
    """y = the neurons of x at ``indices`` along (non-batch) ``axis``, in that order: Slice, Split and Gather
    with constant indices (docs/supported-operators.md)."""

    name: str
    input: str
    in_shape: tuple[int, ...]
    axis: int
    indices: tuple[int, ...]

    def __post_init__(self):
        if not 0 <= self.axis < len(self.in_shape):
            raise GraphError(f"{self.name}: axis {self.axis} is not an axis of {self.in_shape}")
        if not self.indices or any(not 0 <= i < self.in_shape[self.axis] for i in self.indices):
            raise GraphError(f"{self.name}: indices {self.indices} are not positions 0..{self.in_shape[self.axis] - 1}"
                             f" of axis {self.axis} of {self.in_shape}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.in_shape[:self.axis] + (len(self.indices),) + self.in_shape[self.axis + 1:]

    def move(self, xs: list[np.ndarray]) -> np.ndarray:
        return ops.take(xs[0], self.indices, self.axis)

    def move_back(self, g: np.ndarray, xs=None, y=None) -> list[np.ndarray]:
        """The transpose of ``move``: each taken position's gradient added back where it was taken from."""
        out = np.zeros((len(g),) + tuple(self.in_shape))
        np.add.at(np.moveaxis(out, self.axis + 1, 0), list(self.indices), np.moveaxis(g, self.axis + 1, 0))
        return [out]


Node = Input | Affine | MaxPool | Reshape | Transpose | Concat | Take
MOVEMENT = (MaxPool, Reshape, Transpose, Concat, Take)  # nodes whose ``move`` places neurons without computing


@dataclass(frozen=True)
class Graph:
    """A ReLU network as a DAG: ``nodes[0]`` is the Input, ``nodes[-1]`` the readout (an Affine without ReLU).

    Nodes are in topological order and every other Affine has a ReLU. ``removed`` records
    the output operators dropped on import (e.g. Softmax). ``input_name`` / ``output_name``
    are the ONNX tensors of the network input and logits.
    """

    nodes: tuple[Node, ...]
    input_name: str = "input"
    output_name: str = "output"
    removed: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.nodes or not isinstance(self.nodes[0], Input):
            raise GraphError("a graph starts with its Input node")
        shapes: dict[str, tuple] = {}
        for node in self.nodes:
            if node.name in shapes:
                raise GraphError(f"node name {node.name!r} is used twice")
            for name, expected in zip(node.inputs, _in_shapes(node)):
                if name not in shapes:
                    raise GraphError(f"{node.name}: input {name!r} is not an earlier node")
                if tuple(shapes[name]) != tuple(expected):
                    raise GraphError(f"{node.name}: expects {expected} from {name}, which has shape {shapes[name]}")
            if isinstance(node, Affine) and not node.relu and node is not self.nodes[-1]:
                raise GraphError(f"{node.name}: only the readout is an affine layer without ReLU")
            shapes[node.name] = tuple(node.shape)
        last = self.nodes[-1]
        if not isinstance(last, Affine) or last.relu:
            raise GraphError("a graph ends with a linear readout (an Affine without ReLU)")

    @property
    def input(self) -> Input:
        return self.nodes[0]


def _in_shapes(node) -> tuple:
    if isinstance(node, Affine):
        return tuple(t.in_shape for t in node.terms)
    if isinstance(node, Concat):
        return node.in_shapes
    return () if isinstance(node, Input) else (node.in_shape,)


# ----------------------------------------------------------------------------- rewriting

def incoming_sum(layer: Affine) -> np.ndarray:
    """s_i = Σ_j W_ij over every term, per output neuron (per output channel for convolutions) — docs/math.md §3."""
    return sum(term_sum(t) for t in layer.terms)


def compact_bias(bias_map: np.ndarray) -> np.ndarray:
    """A bias map (O, …) that is the same at every position, as a vector (O,); else the map."""
    if bias_map.ndim == 1:
        return bias_map
    flat = bias_map.reshape(bias_map.shape[0], -1)
    return flat[:, 0].copy() if np.all(flat == flat[:, :1]) else bias_map


def full_bias(layer: Affine) -> np.ndarray:
    """The bias at every output neuron, shape ``layer.shape``."""
    return ops.per_neuron(layer.bias, layer.shape)


def scale_outputs(layer: Affine, k, h=0.0) -> Affine:
    """The layer followed by y ↦ k·y + h: W ← k·W in every term, b ← k·b + h (docs/supported-operators.md, fold backward; docs/math.md §3, scaling).

    k is one factor per output channel; h broadcasts to the output shape (a shift that
    varies over positions gives a bias map).
    """
    k = np.asarray(k, dtype=np.float64).reshape(-1)
    terms = tuple(replace(t, weight=t.weight * ops.channel_axis(k, t.weight.ndim)) for t in layer.terms)
    shift = np.broadcast_to(np.asarray(h, dtype=np.float64), layer.shape)
    bias = full_bias(layer) * ops.channel_axis(k, len(layer.shape)) + shift
    return replace(layer, terms=terms, bias=compact_bias(bias))


def fold_term_input(term: Term, scale, shift) -> tuple[Term, np.ndarray]:
    """The term applied to x = scale·a + shift, as a term on a plus a bias (docs/math.md §7).

    Dense: W' = W·diag(scale), bias W·shift. Conv: scale must be one number per input
    channel; bias = (W ⋆ shift_map_zero_padded) — padded positions did not pass through the
    affine map, so near borders the folded bias differs: a bias map, exact for any kernel,
    stride, dilation, group count and padding. Returns the bias at every output neuron.
    """
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), term.in_shape)
    shift = np.broadcast_to(np.asarray(shift, dtype=np.float64), term.in_shape)
    if isinstance(term, Dense):
        return replace(term, weight=term.weight * scale.reshape(1, -1)), term.weight @ shift.reshape(-1)
    per_channel = scale.reshape(scale.shape[0], -1)[:, :1]
    if not np.all(scale.reshape(scale.shape[0], -1) == per_channel):
        raise GraphError(f"the neurons of {term.input} have different scales at different positions of a channel "
                         "(populations with their own affine maps concatenated along a spatial axis, or a product "
                         "with a constant that varies over positions), which one convolution kernel cannot carry")
    c = term.weight.shape[1]
    k = per_channel[:, 0].reshape(term.groups, 1, c)   # the scale of each group's input channels
    weight = (term.weight.reshape(term.groups, -1, c, *term.weight.shape[2:])
              * k.reshape(term.groups, 1, c, *(1,) * (term.weight.ndim - 2))).reshape(term.weight.shape)
    bias = apply_term(term, shift[None])[0] if np.any(shift) else np.zeros(term.shape)
    return replace(term, weight=weight), bias


def ungroup(term: Conv) -> Conv:
    """The same convolution with groups = 1: each output channel's kernel zero outside its group's channels."""
    if term.groups == 1:
        return term
    o, per = term.weight.shape[:2]
    per_out = o // term.groups
    weight = np.zeros((o, per * term.groups) + term.weight.shape[2:])
    for g in range(term.groups):
        weight[g * per_out:(g + 1) * per_out, g * per:(g + 1) * per] = term.weight[g * per_out:(g + 1) * per_out]
    return replace(term, weight=weight, groups=1)


def stack_channels(name: str, layers: list[Affine]) -> Affine:
    """Affine layers of the same spatial shape as one layer whose output channels are theirs, in order: each
    layer's terms feed its block of channels (zero weights elsewhere), biases side by side."""
    total = sum(layer.shape[0] for layer in layers)
    terms, biases, start = [], [], 0
    for layer in layers:
        for term in layer.terms:
            term = ungroup(term) if isinstance(term, Conv) else term
            weight = np.zeros((total,) + term.weight.shape[1:])
            weight[start:start + layer.shape[0]] = term.weight
            terms.append(replace(term, weight=weight))
        biases.append(full_bias(layer))
        start += layer.shape[0]
    return Affine(name, tuple(terms), compact_bias(np.concatenate(biases)), relu=False)


def fold_input_affine(layer: Affine, codes: dict) -> Affine:
    """Fold every term's input map x = scale·a + shift (``codes[input] = (scale, shift)``) into the layer."""
    terms, bias = [], full_bias(layer)
    for term in layer.terms:
        term, extra = fold_term_input(term, *codes[term.input])
        terms.append(term)
        bias = bias + extra
    return replace(layer, terms=tuple(terms), bias=compact_bias(bias))


def dense_after_pooling(weight: np.ndarray, pool: Affine, max_size: int = 1 << 24) -> np.ndarray | None:
    """W·P: a dense weight on the output of an average pooling, as a dense weight on the pooled population
    (docs/math.md §6, AveragePool folds into the following linear layer).

    ``pool`` is one depthwise term whose taps carry one weight k_c per channel (1/K times the scale of a
    folded affine map), so P = blockdiag_c(k_c·S) with S the pooling of one channel with unit taps, found by
    pooling the unit vectors. weight (out, C·m) → (out, C·n), m and n the pooled and the input positions.
    None when the pooling is not of that form or S would exceed ``max_size`` entries.
    """
    term = pool.terms[0] if len(pool.terms) == 1 else None
    if not isinstance(term, Conv) or term.groups != term.in_shape[0] or term.weight.shape[0] != term.groups:
        return None
    c, n = term.in_shape[0], int(np.prod(term.in_shape[1:]))
    taps = term.weight.reshape(c, -1)
    m = int(np.prod(term.shape[1:]))
    if not np.all(taps == taps[:, :1]) or n * m > max_size:
        return None
    unit = replace(term, weight=np.ones((1, 1) + term.weight.shape[2:]), in_shape=(1,) + term.in_shape[1:], groups=1)
    s = apply_term(unit, np.eye(n).reshape((n, 1) + term.in_shape[1:])).reshape(n, m)   # S transposed
    w = np.einsum("ocm,nm->ocn", weight.reshape(len(weight), c, m), s) * taps[None, :, :1]
    return w.reshape(len(weight), c * n)


# ----------------------------------------------------------------------------- forward pass

def apply_linear(layer: Affine, xs: list[np.ndarray]) -> np.ndarray:
    """Σ_k term_k(x_k) + b over a batch (no ReLU): the inputs in the order of ``layer.terms``."""
    return sum(apply_term(t, x) for t, x in zip(layer.terms, xs)) + full_bias(layer)


def apply(node, xs: list[np.ndarray]) -> np.ndarray:
    """One node of the ReLU network on a batch, float64; ``xs`` are its inputs' outputs in order. A node that
    moves neurons (pooling, reshaping, …) does so with its own ``move``."""
    if isinstance(node, Affine):
        y = apply_linear(node, xs)
        return np.maximum(y, 0.0) if node.relu else y
    if isinstance(node, MOVEMENT):
        return node.move(xs)
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
        out[node.name] = apply(node, [out[name] for name in node.inputs])
    return out if keep else out[graph.nodes[-1].name]
