"""The spiking network: frozen dataclasses of the TTFS model of DESIGN §2 (numpy only).

Conventions, in one place:
- time is in units of τ_c; a population's ``window = (T, B)`` is the interval [T, T + B]
  in which it fires; the encoder fires in [0, 1];
- **activation = window end − spike time**: a neuron of activation a fires at T + B − a;
- shapes omit the batch axis; a layer's synapses ``J`` are (out, in) for dense
  connectivity or (O, C, kh, kw) for a convolution (``strides``, ``pads`` (top, left,
  bottom, right), ``dilations``; padded positions are virtual inputs that fire at the
  end of the input window);
- per-neuron parameters (ϑ, α, certificate) are one value per output channel (O,) or
  a map of the whole output shape; ``scale`` (c of DESIGN §3) and ``x_max`` (calibrated
  maximum activation, before scaling) are per output channel; ``x_n`` is the calibrated
  X_n of the window rule B = (1 + ζ)·X_n: the largest scaled activation or no-early-spike
  requirement (``mapping.required_window``), in code units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ops
from .errors import GraphError


def _array(owner: str, name: str, value, dtype=np.float64, finite: bool = True) -> np.ndarray:
    arr = np.array(value, dtype=dtype)
    if finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise GraphError(f"{owner}: {name} holds NaN or infinite values")
    arr.flags.writeable = False
    return arr


def _check_geometry(owner: str, **fields) -> None:
    """Strides, dilations and kernels: positive pairs; pads: four non-negative numbers."""
    for name, value in fields.items():
        n, low = (4, 0) if name == "pads" else (2, 1)
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


@dataclass(frozen=True, eq=False)
class _Synapses:
    """Fields and shapes shared by the two kinds of layer that integrate input spikes."""

    name: str
    input: str
    in_shape: tuple[int, ...]
    J: np.ndarray
    alpha: np.ndarray
    window: tuple[float, float]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    def __post_init__(self):
        object.__setattr__(self, "J", _array(self.name, "J", self.J))
        object.__setattr__(self, "alpha", _array(self.name, "alpha", self.alpha))
        object.__setattr__(self, "window", _check_window(self.name, self.window))
        _check_geometry(self.name, strides=self.strides, pads=self.pads, dilations=self.dilations)
        if self.J.ndim == 2:
            if self.in_shape != (self.J.shape[1],):
                raise GraphError(f"{self.name}: J of shape {self.J.shape} does not fit input shape {self.in_shape}")
        elif self.J.ndim == 4:
            if len(self.in_shape) != 3 or self.in_shape[0] != self.J.shape[1]:
                raise GraphError(f"{self.name}: J of shape {self.J.shape} does not fit input shape {self.in_shape}")
        else:
            raise GraphError(f"{self.name}: J must be (out, in) or (O, C, kh, kw), got {self.J.shape}")
        if min(self.shape) < 1:
            raise GraphError(f"{self.name}: output shape {self.shape} is empty")
        self._check_per_neuron("alpha", self.alpha)

    def _check_per_neuron(self, name: str, arr: np.ndarray) -> None:
        if arr.shape not in (self.shape[:1], self.shape):
            raise GraphError(f"{self.name}: {name} of shape {arr.shape} fits neither {self.shape[:1]} nor {self.shape}")

    @property
    def is_conv(self) -> bool:
        return self.J.ndim == 4

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.is_conv:
            return (self.J.shape[0],)
        return (self.J.shape[0],
                *ops.out_shape2d(self.in_shape[1:], self.J.shape[2:], self.strides, self.pads, self.dilations))


@dataclass(frozen=True, eq=False)
class SpikingLayer(_Synapses):
    """Single-spike integrate-and-fire neurons (DESIGN §2), dense or convolutional synapses.

    V_i(t) = α_i·(t − T_in) + Σ_j J_ij·max(0, t − t_j) from the start T_in of the input
    window; the neuron fires when V_i first reaches ϑ_i, at the latest at its window end.
    ``certified`` marks neurons that provably cannot fire before all inputs are in (§3).
    """

    theta: np.ndarray = None
    certified: np.ndarray = None
    scale: np.ndarray = None
    x_max: np.ndarray = None
    x_n: float = 0.0
    source: str = ""

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


@dataclass(frozen=True, eq=False)
class Readout(_Synapses):
    """Non-spiking output neurons: the potential V_i(T_out) = α_i·B_in + Σ_j J_ij·(T_out − t_j) at the
    end T_out of the input window is the logit. Its ``window`` is that input window."""

    source: str = ""


@dataclass(frozen=True)
class SpikePool:
    """Max-pooling of activations = the earliest spike in each window (no new neurons, same window)."""

    name: str
    input: str
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    window: tuple[float, float]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def __post_init__(self):
        _check_geometry(self.name, kernel=self.kernel, strides=self.strides, pads=self.pads, dilations=self.dilations)
        object.__setattr__(self, "window", _check_window(self.name, self.window))
        if len(self.in_shape) != 3 or min(self.shape) < 1:
            raise GraphError(f"{self.name}: pooling {self.in_shape} gives the empty shape {self.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.in_shape[0],
                *ops.out_shape2d(self.in_shape[1:], self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode))


@dataclass(frozen=True)
class Flatten:
    """Spike times reshaped to (C·H·W,) in C order (no new neurons, same window)."""

    name: str
    input: str
    in_shape: tuple[int, ...]
    window: tuple[float, float]

    @property
    def shape(self) -> tuple[int]:
        return (int(np.prod(self.in_shape)),)


KINDS = {cls.__name__: cls for cls in (Encoder, SpikingLayer, Readout, SpikePool, Flatten)}


@dataclass(frozen=True)
class Network:
    """A converted network: nodes in topological order, ``nodes[0]`` the Encoder, ``nodes[-1]`` the Readout.

    ``meta`` holds the artifact's descriptive root attributes (DESIGN §6).
    """

    nodes: tuple
    meta: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if not self.nodes or not isinstance(self.nodes[0], Encoder) or not isinstance(self.nodes[-1], Readout):
            raise GraphError("a network runs from an Encoder to a Readout")
        seen: dict[str, object] = {}
        for node in self.nodes:
            if node.name in seen:
                raise GraphError(f"node name {node.name!r} is used twice")
            if not isinstance(node, Encoder):
                src = seen.get(node.input)
                if src is None:
                    raise GraphError(f"{node.name}: input {node.input!r} is not an earlier node")
                if tuple(src.shape) != tuple(node.in_shape):
                    raise GraphError(f"{node.name}: input shape {node.in_shape} but {src.name} has {src.shape}")
                expected = (sum(src.window), node.window[1]) if isinstance(node, SpikingLayer) else src.window
                if not np.allclose(node.window, expected, rtol=1e-12, atol=0):
                    raise GraphError(f"{node.name}: window {node.window} does not follow its input's {src.window}")
            seen[node.name] = node

    @property
    def latency(self) -> float:
        """T_out: the end of the readout's input window."""
        return float(sum(self.nodes[-1].window))


def layer_table(net: Network) -> list[dict]:
    """One row per node: kind, shape, window [T, T + B], scaled X_n and the share of statically certified neurons."""
    rows = []
    for node in net.nodes:
        row = {"name": node.name, "kind": type(node).__name__, "shape": list(node.shape),
               "window": [node.window[0], node.window[0] + node.window[1]], "x_max": None, "certified": None}
        if isinstance(node, SpikingLayer):
            row["x_max"] = node.x_n
            row["certified"] = float(np.mean(node.certified))
        rows.append(row)
    return rows
