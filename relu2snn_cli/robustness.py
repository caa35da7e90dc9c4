"""``robustness``: how far a converted network's decisions move under the non-idealities of hardware
(docs/hardware.md), measured with the exact simulator.

Each level of each axis perturbs the network in memory (``dataclasses.replace`` on its nodes; no artifact
is written) or the spike times its populations emit (``Simulator.run``'s ``emit`` hook), runs the data
through the exact event-driven dynamics (docs/math.md §1: neurons pushed over their threshold early fire
early, exactly) and compares the argmax with the unperturbed network's. The random axes draw from
``np.random.default_rng([seed, axis, trial, node])``: one stream per population, read batch after batch, so
the numbers depend on the seed and the trial, not on the batch size, and every level of an axis scales the
same standard normal draws.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import h5io, ops, snn
from .data import check_inputs, load_array, load_labels
from .errors import ArtifactError, DataError, naming
from .mapping import MappingOptions, static_certificate
from .simulator import Simulator

AXES = ("time_noise", "alpha_noise", "threshold_noise", "time_bits", "weight_bits", "zeta")
RANDOM_AXES = ("time_noise", "alpha_noise", "threshold_noise")


# ----------------------------------------------------------------------------- pure perturbations

def jitter(t: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Spike-time jitter t + σ·ε, ε ~ N(0, 1) per spike (σ in τ_c) — docs/hardware.md."""
    return t + sigma * rng.standard_normal(t.shape)


def quantise_times(t: np.ndarray, window: tuple[float, float], bits: int) -> np.ndarray:
    """Spike times on a grid of 2^bits levels across the window [T, T + B]: T + Δ·round((t − T)/Δ) with
    Δ = B/(2^bits − 1), so both window ends are levels; times outside the window (early spikes, inputs out of
    range) round on the same grid continued — docs/hardware.md."""
    start, length = window
    step = length / (2 ** bits - 1)
    return start + step * np.round((t - start) / step)


def weight_step(weights: list[np.ndarray], bits: int, per_channel: bool = False):
    """Δ = max|J| / (2^(bits−1) − 1): the step of 2^bits − 1 levels symmetric about 0 (−max|J|, …, 0, …,
    max|J|) — docs/hardware.md. The maximum is over all the synapses of one layer, or with ``per_channel``
    over those of each output channel (an array (O,)); 0 where there are no weights."""
    if per_channel:
        largest = np.max([np.abs(w).reshape(w.shape[0], -1).max(axis=1, initial=0.0) for w in weights], axis=0)
    else:
        largest = max(float(np.max(np.abs(w), initial=0.0)) for w in weights)
    return largest / (2 ** (bits - 1) - 1)


def quantise_weights(J: np.ndarray, step) -> np.ndarray:
    """J rounded to the nearest multiple of ``step`` (a number, or one per output channel, axis 0 of J);
    unchanged where the step is 0."""
    step = ops.channel_axis(np.asarray(step, dtype=np.float64), J.ndim) if np.ndim(step) else np.float64(step)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(step > 0, step * np.round(J / step), J)


def mismatched_drive(alpha: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """α_i + ε_i clipped at 0: max(α_i + ε_i, 0). The spiking layer's certificates and the simulator's
    early-spike bounds assume α ≥ 0 (docs/math.md §5), and a drive cannot turn into a leak; the clip keeps a
    perturbed layer inside those rules — docs/hardware.md."""
    return np.maximum(alpha + eps, 0.0)


# ----------------------------------------------------------------------------- perturbed networks

def with_parameters(net: snn.Network, layer: snn.SpikingLayer, alpha=None, theta=None, synapses=None):
    """``layer`` with new α, ϑ (maps of its whole shape) or synapses, and its static certificate recomputed
    for them (docs/math.md §5), so that the perturbed layer is a valid SpikingLayer."""
    shape = layer.shape
    alpha = ops.per_neuron(layer.alpha, shape) if alpha is None else alpha
    theta = ops.per_neuron(layer.theta, shape) if theta is None else theta
    synapses = layer.synapses if synapses is None else synapses
    windows = {n.name: n.window for n in net.nodes}
    b_in = net.input_window(layer)[1]
    certified = static_certificate([(s.J, windows[s.input][1]) for s in synapses], theta, alpha, b_in)
    return replace(layer, alpha=alpha, theta=theta, synapses=tuple(synapses), certified=certified)


def _node_rng(seed: int, axis: str, trial: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, AXES.index(axis), trial, index])


def mismatched(net: snn.Network, axis: str, sigma: float, seed: int, trial: int) -> snn.Network:
    """The network with each spiking neuron's α (``alpha_noise``) or ϑ (``threshold_noise``) plus σ·ε_i,
    ε_i ~ N(0, 1) fixed per neuron for the trial; α clipped at 0 (``mismatched_drive``)."""
    nodes = list(net.nodes)
    for i, node in enumerate(nodes):
        if not isinstance(node, snn.SpikingLayer):
            continue
        eps = sigma * _node_rng(seed, axis, trial, i).standard_normal(node.shape)
        if axis == "alpha_noise":
            nodes[i] = with_parameters(net, node, alpha=mismatched_drive(ops.per_neuron(node.alpha, node.shape), eps))
        else:
            nodes[i] = with_parameters(net, node, theta=ops.per_neuron(node.theta, node.shape) + eps)
    return replace(net, nodes=tuple(nodes))


def weight_quantised(net: snn.Network, bits: int, per_channel: bool = False) -> snn.Network:
    """Every spiking layer's and the readout's J rounded to 2^bits − 1 symmetric levels, one step per layer or
    per output channel (``weight_step``); the readout's drive (the biases) stays exact."""
    nodes = list(net.nodes)
    for i, node in enumerate(nodes):
        if not isinstance(node, (snn.SpikingLayer, snn.Readout)):
            continue
        step = weight_step([s.J for s in node.synapses], bits, per_channel)
        synapses = tuple(replace(s, J=quantise_weights(s.J, step)) for s in node.synapses)
        nodes[i] = (with_parameters(net, node, synapses=synapses) if isinstance(node, snn.SpikingLayer)
                    else replace(node, synapses=synapses))
    return replace(net, nodes=tuple(nodes))


class Jitter:
    """The ``emit`` hook of one trial: each emitting population's times jittered by σ from its own stream."""

    def __init__(self, net: snn.Network, sigma: float, seed: int, trial: int):
        self.sigma = sigma
        self.rngs = {n.name: _node_rng(seed, "time_noise", trial, i) for i, n in enumerate(net.nodes)}

    def __call__(self, node, t: np.ndarray) -> np.ndarray:
        return jitter(t, self.sigma, self.rngs[node.name])


def time_quantiser(bits: int):
    """The ``emit`` hook that puts each population's spike times on its window's grid (``quantise_times``)."""
    return lambda node, t: quantise_times(t, node.window, bits)


# ----------------------------------------------------------------------------- the sweep

def _check_levels(axes: dict) -> dict:
    """The levels asked for, refused in one line when out of their range."""
    levels = {axis: [float(v) for v in axes.get(axis) or ()] for axis in AXES}
    if not any(levels.values()):
        raise DataError("robustness: give at least one axis (--time-noise, --alpha-noise, --threshold-noise, "
                        "--time-bits, --weight-bits or --zeta)")
    for axis in RANDOM_AXES:
        if any(not (np.isfinite(v) and v >= 0) for v in levels[axis]):
            raise DataError(f"robustness: {axis} levels must be finite and ≥ 0, got {levels[axis]}")
    for axis, low in (("time_bits", 1), ("weight_bits", 2)):
        if any(v != int(v) or not low <= v <= 52 for v in levels[axis]):
            raise DataError(f"robustness: {axis} levels must be integers in {low}..52, got {levels[axis]}")
    if any(not (np.isfinite(v) and v > -1) for v in levels["zeta"]):
        raise DataError(f"robustness: zeta levels must be > -1, got {levels['zeta']}")
    return levels


def _predict(sim: Simulator, data, batch_size: int, emit, step) -> tuple[np.ndarray, int]:
    """The argmax of every sample and the early spikes of one pass over the data."""
    preds, early = [], 0
    for result in sim.stream(data, batch_size, progress=step, emit=emit):
        preds.append(np.argmax(result.logits.reshape(len(result.logits), -1), axis=1))
        early += result.counts.early_spikes
    return np.concatenate(preds), early


def _rebuild(snn_path, net: snn.Network, onnx_path, calib_spec: str, zeta: float, batch_size: int) -> snn.Network:
    """The source model reconverted at ζ with the artifact's s_min, s_max and output, in memory."""
    from .convert import build
    options = MappingOptions(zeta, net.meta.get("s_min", -10.0), net.meta.get("s_max", 0.99), short_windows=zeta < 0,
                             coding=net.coding)
    rebuilt, _ = build(onnx_path, calib_spec, options, batch_size=batch_size, output=net.meta.get("source_output"))
    if rebuilt.meta["source_model_sha256"] != net.meta.get("source_model_sha256"):
        raise ArtifactError(f"{snn_path} was not converted from {onnx_path} (its sha256 differs from the recorded "
                            "source_model_sha256); pass the ONNX model it was converted from")
    return rebuilt


def robustness(snn_path, data_spec: str, labels_spec: str | None = None, axes: dict | None = None, trials: int = 3,
               seed: int = 0, onnx_path=None, calib_spec: str | None = None, batch_size: int = 256,
               weight_scope: str = "layer", progress=None) -> dict:
    """Agreement with the unperturbed network (and accuracy with labels) per level of each axis, mean and
    standard deviation over ``trials`` for the random axes (one run for the deterministic ones); a plain dict
    (docs/cli.md, robustness). ``axes`` maps each name of AXES to its list of levels; ``weight_scope`` is
    "layer" (one quantisation step per layer) or "channel" (one per output channel)."""
    levels = _check_levels(axes or {})
    if weight_scope not in ("layer", "channel"):
        raise DataError(f"robustness: weight_scope must be 'layer' or 'channel', got {weight_scope!r}")
    if trials < 1:
        raise DataError(f"robustness: trials must be ≥ 1, got {trials}")
    if levels["zeta"] and (onnx_path is None or calib_spec is None):
        raise DataError("robustness: --zeta reconverts the source model: pass --onnx and --calib")
    net = h5io.read(snn_path)
    data = load_array(data_spec)
    check_inputs(data, net.nodes[0].shape, data_spec)
    labels = load_labels(labels_spec, len(data), int(np.prod(net.nodes[-1].shape))) if labels_spec else None
    runs = 1 + sum(len(v) * (trials if axis in RANDOM_AXES else 1) for axis, v in levels.items())
    step = None if progress is None else (lambda n, _total: progress(n, runs * len(data)))
    base_sim = Simulator(net)
    with naming(snn_path):
        base, _ = _predict(base_sim, data, batch_size, None, step)
    rows = []
    for axis in AXES:
        for value in levels[axis]:
            outcomes, latency = [], net.latency
            for trial in range(trials if axis in RANDOM_AXES else 1):
                sim, emit = base_sim, None
                if axis == "time_noise" and value > 0:
                    emit = Jitter(net, value, seed, trial)
                elif axis in ("alpha_noise", "threshold_noise") and value > 0:
                    sim = Simulator(mismatched(net, axis, value, seed, trial))
                elif axis == "time_bits":
                    emit = time_quantiser(int(value))
                elif axis == "weight_bits":
                    sim = Simulator(weight_quantised(net, int(value), weight_scope == "channel"))
                elif axis == "zeta":
                    sim = Simulator(_rebuild(snn_path, net, onnx_path, calib_spec, value, batch_size))
                    latency = sim.net.latency
                with naming(snn_path):
                    pred, early = _predict(sim, data, batch_size, emit, step)
                outcomes.append((np.mean(pred == base), np.mean(pred == labels) if labels is not None else np.nan,
                                 early))
            agree, acc, early = (np.array(v, dtype=np.float64) for v in zip(*outcomes))
            rows.append({"axis": axis, "value": int(value) if axis.endswith("bits") else value,
                         "trials": len(outcomes),
                         "agreement_mean": float(agree.mean()), "agreement_std": float(agree.std()),
                         "accuracy_mean": float(acc.mean()) if labels is not None else None,
                         "accuracy_std": float(acc.std()) if labels is not None else None,
                         "early_spikes_mean": float(early.mean()), "latency": latency})
    return {"n_samples": len(data), "trials": trials, "seed": seed, "weight_scope": weight_scope,
            "accuracy": float(np.mean(base == labels)) if labels is not None else None,
            "latency": net.latency, "levels": rows}
