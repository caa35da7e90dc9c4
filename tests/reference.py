"""A slow, obviously correct event-by-event simulator of a ``snn.Network`` (DESIGN §2), the oracle of the tests.

One neuron and one sample at a time, in plain Python: list the neuron's inputs as
(spike time, weight) pairs — for a convolution including the virtual padded inputs that
fire at the end of the input window — then step from event to event, evaluating the
potential V(t) = α·(t − T_in) + Σ_j w_j·max(0, t − t_j) directly at each event.
"""

from __future__ import annotations

import math

import numpy as np

from relu2snn_cli import snn


def potential(t: float, inputs: list[tuple[float, float]], alpha: float, t0: float) -> float:
    return alpha * (t - t0) + sum(w * max(0.0, t - tj) for tj, w in inputs)


def first_spike(inputs: list[tuple[float, float]], alpha: float, theta: float, t0: float,
                t_end: float = math.inf) -> float:
    """The first t ≥ t0 with V(t) ≥ ϑ, at the latest t_end."""
    events = sorted({t0} | {tj for tj, _ in inputs if tj > t0})
    for k, start in enumerate(events):
        end = events[k + 1] if k + 1 < len(events) else math.inf
        v = potential(start, inputs, alpha, t0)
        if v >= theta:
            return min(start, t_end)
        slope = alpha + sum(w for tj, w in inputs if tj <= start)
        if slope > 0:
            with np.errstate(over="ignore"):
                crossing = start + np.float64(theta - v) / slope
            if crossing <= end:
                return min(crossing, t_end)
    return t_end


def neuron_inputs(layer, t_in: np.ndarray, index: tuple[int, ...], t_pad: float) -> list[tuple[float, float]]:
    """(spike time, weight) of every input of one neuron of one sample (t_in without the batch axis)."""
    if not layer.is_conv:
        return [(float(t_in[j]), float(layer.J[index[0], j])) for j in range(layer.J.shape[1])]
    o, y, x = index
    _, c_in, kh, kw = layer.J.shape
    inputs = []
    for c in range(c_in):
        for u in range(kh):
            for v in range(kw):
                row = y * layer.strides[0] - layer.pads[0] + u * layer.dilations[0]
                col = x * layer.strides[1] - layer.pads[1] + v * layer.dilations[1]
                inside = 0 <= row < t_in.shape[1] and 0 <= col < t_in.shape[2]
                inputs.append((float(t_in[c, row, col]) if inside else t_pad, float(layer.J[o, c, u, v])))
    return inputs


def _param(values: np.ndarray, index: tuple[int, ...]) -> float:
    return float(values[index] if values.ndim == len(index) else values[index[0]])


def fire_layer(layer: snn.SpikingLayer, in_window: tuple[float, float], t_in: np.ndarray) -> np.ndarray:
    """Spike times of a spiking layer for a batch of input spike times."""
    t0 = in_window[0]
    t_pad = in_window[0] + in_window[1]
    t_end = sum(layer.window)
    out = np.empty((len(t_in),) + layer.shape)
    for s in range(len(t_in)):
        for index in np.ndindex(*layer.shape):
            inputs = neuron_inputs(layer, t_in[s], index, t_pad)
            out[(s,) + index] = first_spike(inputs, _param(layer.alpha, index), _param(layer.theta, index), t0, t_end)
    return out


def read_out(layer: snn.Readout, t_in: np.ndarray) -> np.ndarray:
    t0, b_in = layer.window
    t_out = t0 + b_in
    out = np.empty((len(t_in),) + layer.shape)
    for s in range(len(t_in)):
        for index in np.ndindex(*layer.shape):
            inputs = neuron_inputs(layer, t_in[s], index, t_out)
            out[(s,) + index] = potential(t_out, inputs, _param(layer.alpha, index), t0)
    return out


def pool(node: snn.SpikePool, t_in: np.ndarray) -> np.ndarray:
    """Earliest spike in each pooling window, positions outside the input ignored."""
    out = np.full((len(t_in),) + node.shape, math.inf)
    for s in range(len(t_in)):
        for c, y, x in np.ndindex(*node.shape):
            for u in range(node.kernel[0]):
                for v in range(node.kernel[1]):
                    row = y * node.strides[0] - node.pads[0] + u * node.dilations[0]
                    col = x * node.strides[1] - node.pads[1] + v * node.dilations[1]
                    if 0 <= row < t_in.shape[2] and 0 <= col < t_in.shape[3]:
                        out[s, c, y, x] = min(out[s, c, y, x], t_in[s, c, row, col])
    return out


def run(net: snn.Network, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and every population's spike times for inputs x."""
    enc = net.nodes[0]
    a = (np.asarray(x, dtype=np.float64) - enc.low) / (enc.high - enc.low)
    times = {enc.name: 1.0 - a}
    windows = {n.name: n.window for n in net.nodes}
    logits = None
    for node in net.nodes[1:]:
        t_in = times[node.input]
        if isinstance(node, snn.SpikingLayer):
            times[node.name] = fire_layer(node, windows[node.input], t_in)
        elif isinstance(node, snn.SpikePool):
            times[node.name] = pool(node, t_in)
        elif isinstance(node, snn.Flatten):
            times[node.name] = t_in.reshape(len(t_in), -1)
        else:
            logits = read_out(node, t_in)
    return logits, times
