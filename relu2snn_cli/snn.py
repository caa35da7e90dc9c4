"""The spiking network: frozen dataclasses of the TTFS model of docs/math.md §1 (numpy only).

Conventions, in one place:
- time is in units of τ_c; a population's ``window = (T, B)`` is the interval [T, T + B]
  in which it fires; the encoder fires in [0, 1];
- **activation = window end − spike time**: a neuron of activation a fires at T + B − a;
- a node reading several populations (a residual sum, a concatenation) has one input
  window: it ends at the latest end among its inputs and is as long as the longest
  (``merge_windows``); spikes from a population that ends earlier are delayed;
- shapes omit the batch axis; a layer's synapses from each input population ``J`` are
  (out, in) for dense connectivity or (O, C/groups, kh, kw) for a convolution (1-D:
  (O, C/groups, k)) with ``strides``, ``pads`` (begins, then ends), ``dilations``;
  padded positions are virtual inputs that fire at the end of the input window;
- per-neuron parameters (ϑ, α, certificate) are one value per output channel (O,) or
  a map of the whole output shape; ``scale`` (c of docs/math.md §3) and ``x_max`` (calibrated
  maximum activation, before scaling) are per output channel; ``x_n`` is the calibrated
  X_n of the window rule B = (1 + ζ)·X_n: the largest scaled activation or no-early-spike
  requirement (``mapping.required_window``), in code units;
- the network's ``coding`` (docs/math.md §9): ``dense``, every neuron fires once, a zero activation at its
  window end (a forced spike); ``sparse``, a zero activation sends no spike. Inside the simulator a silent
  neuron is represented by the time of its window end (activation 0) in both codings, so that everything
  downstream computes the same; only the spike counts and the dynamics of a spiking layer differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ir, ops
from .errors import GraphError


def _array(owner: str, name: str, value, dtype=np.float64, finite: bool = True) -> np.ndarray:
    arr = np.array(value, dtype=dtype)
    if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise GraphError(f"{owner}: {name} holds NaN or infinite values")
    arr.flags.writeable = False
    return arr


def _check_geometry(owner: str, rank: int = 2, **fields) -> None:
    """Strides, dilations and kernels: ``rank`` positive integers; pads: 2·rank non-negative ones."""
    for name, value in fields.items():
        n, low = (2 * rank, 0) if name == "pads" else (rank, 1)
        if len(value) != n or any(int(v) != v or v < low for v in value):
            raise GraphError(f"{owner}: {name} {tuple(value)} must be {n} integers ≥ {low}")


def _check_window(owner: str, window) -> tuple[float, float]:
    t, b = (float(v) for v in window)
    if not (np.isfinite(t) and np.isfinite(b) and b > 0):
        raise GraphError(f"{owner}: window {window} must be finite with a positive length")
    return (t, b)


@dataclass(frozen=True)
class Encoder:
    """Input neurons: x ∈ [low, high] fires at t = 1 − (x − low)/(high − low) in the window [0, 1]."""

    name: str
    shape: tuple[int, ...]
    low: float
    high: float
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise GraphError(f"{self.name}: input range [{self.low}, {self.high}] must be finite and non-empty")
        object.__setattr__(self, "window", _check_window(self.name, self.window))

    @property
    def inputs(self) -> tuple[str, ...]:
        return ()


def merge_windows(windows: list[tuple[float, float]]) -> tuple[tuple[float, float], tuple[float, ...]]:
    """The input window of a node reading populations with windows (T_k, B_k), and the delay per input (docs/math.md §2).

    The window ends at T = max_k (T_k + B_k), the latest end, and has length B_in = max_k B_k;
    spikes of input k are delayed by T − (T_k + B_k), so that a_j = T − (t_j + delay) is
    input k's own code. Returns ((T − B_in, B_in), delays).
    """
    end = max(t + b for t, b in windows)
    length = max(b for _, b in windows)
    return (end - length, length), tuple(end - (t + b) for t, b in windows)


@dataclass(frozen=True, eq=False)
class Synapses:
    """The synapses from one input population, with their ``delay``.

    ``J`` (out, in) for dense connectivity (the input flattened in C order), or
    (O, C/groups, kh, kw) / (O, C/groups, k) for a convolution with ``strides``, ``pads``
    (begins, then ends) and ``dilations``; a dense block leaves those empty.
    """

    input: str
    in_shape: tuple[int, ...]
    J: np.ndarray
    delay: float = 0.0
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    groups: int = 1

    def __post_init__(self):
        object.__setattr__(self, "J", _array(self.input, "J", self.J))
        if not (np.isfinite(self.delay) and self.delay >= 0):
            raise GraphError(f"synapses from {self.input}: delay {self.delay} must be finite and ≥ 0")
        if not isinstance(self.groups, (int, np.integer)) or isinstance(self.groups, bool):
            raise GraphError(f"synapses from {self.input}: groups {self.groups!r} must be an integer")
        if self.J.ndim == 2:
            if self.groups != 1:
                raise GraphError(f"synapses from {self.input}: dense synapses have groups = 1, not {self.groups}")
            if self.J.shape[1] != int(np.prod(self.in_shape)) or self.strides or self.pads or self.dilations:
                raise GraphError(f"synapses from {self.input}: J of shape {self.J.shape} does not fit "
                                 f"input shape {self.in_shape}")
        elif self.J.ndim in (3, 4):
            rank = self.J.ndim - 2
            _check_geometry(self.input, strides=self.strides, pads=self.pads, dilations=self.dilations, rank=rank)
            if (self.groups < 1 or len(self.in_shape) != rank + 1 or self.in_shape[0] != self.J.shape[1] * self.groups
                    or self.J.shape[0] % self.groups):
                raise GraphError(f"synapses from {self.input}: J of shape {self.J.shape} with groups={self.groups} "
                                 f"does not fit input shape {self.in_shape}")
        else:
            raise GraphError(f"synapses from {self.input}: J must be (out, in) or (O, C, *kernel), got {self.J.shape}")
        if min(self.shape) < 1:
            raise GraphError(f"synapses from {self.input}: output shape {self.shape} is empty")

    @property
    def is_conv(self) -> bool:
        return self.J.ndim > 2

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.is_conv:
            return (self.J.shape[0],)
        return (self.J.shape[0],
                *ops.out_spatial(self.in_shape[1:], self.J.shape[2:], self.strides, self.pads, self.dilations))


@dataclass(frozen=True, eq=False)
class _Integrator:
    """Fields and shapes shared by the two kinds of neuron that integrate input spikes."""

    name: str
    synapses: tuple[Synapses, ...]
    alpha: np.ndarray
    window: tuple[float, float]

    def __post_init__(self):
        object.__setattr__(self, "synapses", tuple(self.synapses))
        if not self.synapses or not all(isinstance(s, Synapses) for s in self.synapses):
            raise GraphError(f"{self.name}: needs at least one set of synapses")
        if len({s.shape for s in self.synapses}) != 1:
            raise GraphError(f"{self.name}: its synapses give different shapes {[s.shape for s in self.synapses]}")
        object.__setattr__(self, "alpha", _array(self.name, "alpha", self.alpha))
        object.__setattr__(self, "window", _check_window(self.name, self.window))
        self._check_per_neuron("alpha", self.alpha)

    def _check_per_neuron(self, name: str, arr: np.ndarray) -> None:
        if arr.shape not in (self.shape[:1], self.shape):
            raise GraphError(f"{self.name}: {name} of shape {arr.shape} fits neither {self.shape[:1]} nor {self.shape}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(s.input for s in self.synapses)

    @property
    def in_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(s.in_shape) for s in self.synapses)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.synapses[0].shape


@dataclass(frozen=True, eq=False)
class SpikingLayer(_Integrator):
    """Single-spike integrate-and-fire neurons (docs/math.md §1) fed by one or more synapse sets.

    V_i(t) = α_i·(t − T_in) + Σ_j J_ij·max(0, t − t_j − delay_j) from the start T_in of the
    input window; the neuron fires when V_i first reaches ϑ_i, at the latest at its window
    end. ``certified`` marks neurons that provably cannot fire before all inputs are in (§5);
    that certificate needs α ≥ 0, so a negative α is refused (the mapping writes α = 1).
    """

    theta: np.ndarray = None
    certified: np.ndarray = None
    scale: np.ndarray = None
    x_max: np.ndarray = None
    x_n: float = 0.0
    source: str = ""
    origin: str = ""

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "theta", _array(self.name, "theta", self.theta))
        object.__setattr__(self, "certified", _array(self.name, "certified", self.certified, dtype=bool))
        object.__setattr__(self, "scale", _array(self.name, "scale", self.scale))
        object.__setattr__(self, "x_max", _array(self.name, "x_max", self.x_max))
        self._check_per_neuron("theta", self.theta)
        if self.certified.shape != self.theta.shape:
            raise GraphError(f"{self.name}: certified has shape {self.certified.shape}, theta {self.theta.shape}")
        if not (np.isfinite(self.x_n) and self.x_n >= 0):
            raise GraphError(f"{self.name}: x_n = {self.x_n} must be finite and ≥ 0")
        for name in ("scale", "x_max"):
            if getattr(self, name).shape != self.shape[:1]:
                raise GraphError(f"{self.name}: {name} must have shape {self.shape[:1]}")
        if np.any(self.scale <= 0):
            raise GraphError(f"{self.name}: activation scales must be positive")
        if np.any(self.alpha < 0):
            # α·(B_in − σ) ≤ α·B_in, on which the certificate and the early-spike bound rest, needs α ≥ 0
            raise GraphError(f"{self.name}: alpha holds negative values; a spiking layer needs α ≥ 0 "
                             "(docs/math.md §5)")


@dataclass(frozen=True, eq=False)
class Readout(_Integrator):
    """Non-spiking output neurons: the potential V_i(T_out) = α_i·B_in + Σ_j J_ij·(T_out − t_j − delay_j) at
    the end T_out of the input window is the logit. Its ``window`` is that input window."""

    source: str = ""
    origin: str = ""


@dataclass(frozen=True)
class SpikePool(ir.MaxPool):
    """Max-pooling of activations = the earliest spike in each window (no new neurons, same ``window``).

    The channels listed in ``latest`` take the latest spike (the minimum activation).
    """

    window: tuple[float, float] = field(kw_only=True)

    def __post_init__(self):
        rank = len(self.kernel)
        _check_geometry(self.name, kernel=self.kernel, strides=self.strides, pads=self.pads, dilations=self.dilations,
                        rank=rank)
        object.__setattr__(self, "window", _check_window(self.name, self.window))
        if rank not in (1, 2) or len(self.in_shape) != rank + 1:
            raise GraphError(f"{self.name}: a {rank}-D kernel {self.kernel} cannot pool an input of shape {self.in_shape}")
        if min(self.shape) < 1:
            raise GraphError(f"{self.name}: pooling {self.in_shape} with kernel {self.kernel} gives shape {self.shape}")
        if any(not 0 <= c < self.in_shape[0] for c in self.latest):
            raise GraphError(f"{self.name}: latest-spike channels {self.latest} outside 0..{self.in_shape[0] - 1}")

    def move(self, ts: list[np.ndarray]) -> np.ndarray:
        """Spike times: the earliest of each window (the latest for the ``latest`` channels)."""
        geometry = (self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode)
        return ops.pool_channels(ts[0], self.latest, ops.min_pool, ops.max_pool, *geometry)


@dataclass(frozen=True)
class Reshape(ir.Reshape):
    """Spike times reshaped to ``shape`` in C order (no new neurons, same ``window``)."""

    window: tuple[float, float] = field(kw_only=True)


@dataclass(frozen=True)
class Transpose(ir.Transpose):
    """Spike times with their (non-batch) axes permuted, y.shape[i] = x.shape[perm[i]] (same ``window``)."""

    window: tuple[float, float] = field(kw_only=True)


@dataclass(frozen=True)
class Concat(ir.Concat):
    """Populations side by side along (non-batch) ``axis``; input k's spikes delayed by ``delays[k]``
    so that all share the ``window`` that ``merge_windows`` gives (no new neurons)."""

    window: tuple[float, float] = field(kw_only=True)
    delays: tuple[float, ...] = field(kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if len(self.delays) != len(self.inputs):
            raise GraphError(f"{self.name}: {len(self.delays)} delays for {len(self.inputs)} inputs")

    def move(self, ts: list[np.ndarray]) -> np.ndarray:
        """Spike times side by side, each input's delayed by its delay."""
        return super().move([t + d for t, d in zip(ts, self.delays)])


@dataclass(frozen=True)
class Take(ir.Take):
    """The spike times at ``indices`` along (non-batch) ``axis`` (no new neurons, same ``window``)."""

    window: tuple[float, float] = field(kw_only=True)


# the spiking node of each IR node that moves neurons: its fields plus a window (and a Concat's delays)
SPIKING_MOVEMENT = {ir.MaxPool: SpikePool, ir.Reshape: Reshape, ir.Transpose: Transpose, ir.Concat: Concat,
                    ir.Take: Take}
KINDS = {cls.__name__: cls for cls in (Encoder, SpikingLayer, Readout, *SPIKING_MOVEMENT.values())}


def _in_shapes(node) -> tuple:
    if isinstance(node, (_Integrator, Concat)):
        return tuple(tuple(s) for s in node.in_shapes)
    return (tuple(node.in_shape),)


def _delays(node) -> tuple[float, ...]:
    return tuple(s.delay for s in node.synapses) if isinstance(node, _Integrator) else tuple(node.delays)


def _expected_window(node, sources: list) -> tuple[tuple[float, float], tuple[float, ...]]:
    """The window a node must have given its sources' windows, and the delays it must apply."""
    (t_in, b_in), delays = merge_windows([s.window for s in sources])
    if isinstance(node, SpikingLayer):
        return (t_in + b_in, node.window[1]), delays
    return (t_in, b_in), delays


CODINGS = ("dense", "sparse")   # docs/math.md §1 and §9


@dataclass(frozen=True)
class Network:
    """A converted network: nodes in topological order, ``nodes[0]`` the Encoder, ``nodes[-1]`` the Readout.

    ``meta`` holds the artifact's descriptive root attributes (docs/artifact.md); ``coding`` is ``dense``
    (docs/math.md §1) or ``sparse`` (§9).
    """

    nodes: tuple
    meta: dict = field(default_factory=dict, hash=False)
    coding: str = "dense"

    def __post_init__(self):
        if self.coding not in CODINGS:
            raise GraphError(f"coding {self.coding!r} is not one of {', '.join(CODINGS)}")
        if not self.nodes or not isinstance(self.nodes[0], Encoder) or not isinstance(self.nodes[-1], Readout):
            raise GraphError("a network runs from an Encoder to a Readout")
        seen: dict[str, object] = {}
        for node in self.nodes:
            if node.name in seen:
                raise GraphError(f"node name {node.name!r} is used twice")
            if not isinstance(node, Encoder):
                sources = []
                for name, in_shape in zip(node.inputs, _in_shapes(node)):
                    src = seen.get(name)
                    if src is None or isinstance(src, Readout):
                        raise GraphError(f"{node.name}: input {name!r} is not an earlier population")
                    if tuple(src.shape) != tuple(in_shape):
                        raise GraphError(f"{node.name}: input shape {in_shape} but {src.name} has {src.shape}")
                    sources.append(src)
                window, delays = _expected_window(node, sources)
                if isinstance(node, (SpikingLayer, Readout, Concat)):
                    if not np.allclose(_delays(node), delays, rtol=1e-12, atol=1e-12):
                        raise GraphError(f"{node.name}: delays {_delays(node)} do not align its inputs (expected {delays})")
                if not np.allclose(node.window, window, rtol=1e-12, atol=0):
                    raise GraphError(f"{node.name}: window {node.window} does not follow its inputs' windows")
            seen[node.name] = node

    @property
    def latency(self) -> float:
        """T_out: the end of the readout's input window."""
        return float(sum(self.nodes[-1].window))

    @property
    def window_ends(self) -> dict[str, float]:
        """Each population's window end T + B, by node name: activation = window end − spike time."""
        return {n.name: n.window[0] + n.window[1] for n in self.nodes}

    def input_window(self, node) -> tuple[float, float]:
        """The input window (T_in, B_in) of a node: ``merge_windows`` of its inputs' windows."""
        windows = {n.name: n.window for n in self.nodes}
        return merge_windows([windows[name] for name in node.inputs])[0]


def layer_table(net: Network) -> list[dict]:
    """One row per node: kind, shape, window [T, T + B], scaled X_n and the share of statically certified neurons."""
    rows = []
    for node in net.nodes:
        row = {"name": node.name, "kind": type(node).__name__, "shape": list(node.shape),
               "inputs": list(getattr(node, "inputs", ())),
               "window": [node.window[0], node.window[0] + node.window[1]], "x_max": None, "certified": None}
        row["origin"] = getattr(node, "origin", "")
        if isinstance(node, SpikingLayer):
            row["x_max"] = node.x_n
            row["certified"] = float(np.mean(node.certified))
        rows.append(row)
    return rows
