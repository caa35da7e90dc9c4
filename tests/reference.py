"""A slow, obviously correct event-by-event simulator of a ``snn.Network`` (docs/math.md §1), the oracle of the tests.

One neuron and one sample at a time, in plain Python: list the neuron's inputs as
(spike time, weight) pairs — for a convolution including the virtual padded inputs that
fire at the end of the input window — then step from event to event, evaluating the
potential V(t) = α·(t − T_in) + Σ_j w_j·max(0, t − t_j) directly at each event.
A neuron whose first crossing comes before its window end fires there (a threshold spike),
else at the window end (a forced spike, activation 0); ``run`` can count both per layer.

Sparse coding (docs/math.md §9): inputs arriving after the end T of the input window are dropped; the
input-phase potential is walked the same way up to T, and a neuron that has not crossed by then crosses at
T + ϑ − V(T) (slope 1, currents off); one that does not cross before its window end is silent, written as
its window end (activation 0) and counted as silent, not as a spike.
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


def neuron_inputs(syn: snn.Synapses, t_in: np.ndarray, index: tuple[int, ...], t_pad: float) -> list[tuple[float, float]]:
    """(arrival time, weight) of every input of one neuron from one synapse set, for one sample (t_in without the
    batch axis): spike time plus the synapses' delay; a convolution's padded taps arrive at ``t_pad``."""
    if not syn.is_conv:
        flat = t_in.reshape(-1)
        return [(float(flat[j]) + syn.delay, float(syn.J[index[0], j])) for j in range(flat.size)]
    o, pos = index[0], index[1:]
    per_group = syn.J.shape[1]
    group = o // (syn.J.shape[0] // syn.groups)
    inputs = []
    for c in range(per_group):
        for tap in np.ndindex(*syn.J.shape[2:]):
            src = [pos[d] * syn.strides[d] - syn.pads[d] + tap[d] * syn.dilations[d] for d in range(len(pos))]
            inside = all(0 <= src[d] < t_in.shape[1 + d] for d in range(len(pos)))
            time = float(t_in[(group * per_group + c, *src)]) + syn.delay if inside else t_pad
            inputs.append((time, float(syn.J[(o, c, *tap)])))
    return inputs


def all_inputs(layer, t_ins: list[np.ndarray], sample: int, index, t_pad: float) -> list[tuple[float, float]]:
    return [pair for syn, t in zip(layer.synapses, t_ins) for pair in neuron_inputs(syn, t[sample], index, t_pad)]


def _param(values: np.ndarray, index: tuple[int, ...]) -> float:
    return float(values[index] if values.ndim == len(index) else values[index[0]])


def sparse_first_spike(inputs: list[tuple[float, float]], alpha: float, theta: float, t0: float,
                       t_stop: float) -> float:
    """Sparse coding: the first crossing of the input phase if it comes by t_stop = T (late inputs already
    dropped), else T + ϑ − V(T) of the output phase, whose potential is V(T) + (t − T)."""
    crossing = first_spike(inputs, alpha, theta, t0)
    if crossing <= t_stop:
        return crossing
    return t_stop + (theta - potential(t_stop, inputs, alpha, t0))


def fire_layer(layer: snn.SpikingLayer, in_window: tuple[float, float], t_ins: list[np.ndarray],
               counts: dict | None = None, coding: str = "dense") -> np.ndarray:
    """Spike times of a spiking layer for a batch of input spike times, one array per synapse set; with
    ``counts``, counts[layer name] = (threshold spikes, forced spikes): first crossings before the window end,
    and neurons that do not cross before it (in the sparse coding: silent neurons)."""
    t0 = in_window[0]
    t_pad = in_window[0] + in_window[1]
    t_end = sum(layer.window)
    out = np.empty((len(t_ins[0]),) + layer.shape)
    forced = 0
    for s in range(len(t_ins[0])):
        for index in np.ndindex(*layer.shape):
            inputs = all_inputs(layer, t_ins, s, index, t_pad)
            alpha, theta = _param(layer.alpha, index), _param(layer.theta, index)
            if coding == "sparse":
                inputs = [(tj, w) for tj, w in inputs if tj <= t_pad]   # a late spike is lost
                crossing = sparse_first_spike(inputs, alpha, theta, t0, t_pad)
            else:
                crossing = first_spike(inputs, alpha, theta, t0)
            forced += not crossing < t_end
            out[(s,) + index] = min(crossing, t_end)
    if counts is not None:
        counts[layer.name] = (out.size - forced, forced)
    return out


def read_out(layer: snn.Readout, t_ins: list[np.ndarray]) -> np.ndarray:
    t0, b_in = layer.window
    t_out = t0 + b_in
    out = np.empty((len(t_ins[0]),) + layer.shape)
    for s in range(len(t_ins[0])):
        for index in np.ndindex(*layer.shape):
            inputs = all_inputs(layer, t_ins, s, index, t_out)
            out[(s,) + index] = potential(t_out, inputs, _param(layer.alpha, index), t0)
    return out


def pool(node: snn.SpikePool, t_in: np.ndarray) -> np.ndarray:
    """Earliest spike in each pooling window (latest for the ``latest`` channels), positions outside ignored."""
    out = np.empty((len(t_in),) + node.shape)
    for s in range(len(t_in)):
        for c, *pos in np.ndindex(*node.shape):
            times = []
            for tap in np.ndindex(*node.kernel):
                src = [pos[d] * node.strides[d] - node.pads[d] + tap[d] * node.dilations[d] for d in range(len(pos))]
                if all(0 <= src[d] < t_in.shape[2 + d] for d in range(len(pos))):
                    times.append(t_in[(s, c, *src)])
            out[(s, c, *pos)] = max(times) if c in node.latest else min(times)
    return out


def take(node: snn.Take, t_in: np.ndarray) -> np.ndarray:
    """Each output position reads the input position whose coordinate along ``axis`` is ``indices`` of its own."""
    out = np.empty((len(t_in),) + tuple(node.shape))
    for s in range(len(t_in)):
        for pos in np.ndindex(*node.shape):
            src = list(pos)
            src[node.axis] = node.indices[pos[node.axis]]
            out[(s, *pos)] = t_in[(s, *src)]
    return out


def run(net: snn.Network, x: np.ndarray, counts: dict | None = None,
        emit=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and every population's spike times for inputs x; with ``counts``, each spiking layer's
    (threshold spikes, forced or silent neurons) as ``fire_layer`` counts them, and the encoder's (spikes,
    silent neurons) in the sparse coding; ``emit(node, t) -> t`` transforms the times each population emits
    (the encoder and the spiking layers), as ``Simulator.run`` does: in the sparse coding only those of
    the neurons that fire, one at a time."""
    sparse = net.coding == "sparse"

    def send(node, t):
        if emit is None:
            return t
        if not sparse:
            return emit(node, t)
        out = t.copy()
        sent = emit(node, t)
        for index in np.ndindex(*t.shape):
            if t[index] < sum(node.window):   # a spike; a silent neuron keeps its window end
                out[index] = sent[index]
        return out

    enc = net.nodes[0]
    a = (np.asarray(x, dtype=np.float64) - enc.low) / (enc.high - enc.low)
    t_enc = 1.0 - a
    if counts is not None and sparse:
        fired = sum(1 for v in t_enc.reshape(-1) if v < 1.0)
        counts[enc.name] = (fired, t_enc.size - fired)
    times = {enc.name: send(enc, t_enc)}
    logits = None
    for node in net.nodes[1:]:
        t_ins = [times[name] for name in node.inputs]
        if isinstance(node, snn.SpikingLayer):
            times[node.name] = send(node, fire_layer(node, net.input_window(node), t_ins, counts, net.coding))
        elif isinstance(node, snn.SpikePool):
            times[node.name] = pool(node, t_ins[0])
        elif isinstance(node, snn.Reshape):
            times[node.name] = t_ins[0].reshape((len(x),) + tuple(node.shape))
        elif isinstance(node, snn.Transpose):
            times[node.name] = np.stack([t.transpose(node.perm) for t in t_ins[0]])
        elif isinstance(node, snn.Concat):
            times[node.name] = np.concatenate([t + d for t, d in zip(t_ins, node.delays)], axis=node.axis + 1)
        elif isinstance(node, snn.Take):
            times[node.name] = take(node, t_ins[0])
        else:
            logits = read_out(node, t_ins)
    return logits, times
