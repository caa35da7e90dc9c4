"""Cross-check: the converted network run in Brian2 against relu2snn's simulator (docs/exports.md).

Brian2 steps time at dt, so its spike times carry an error of order dt; ``error_bounds`` says how
large it can be in each layer, ``crosscheck`` measures it. The report is a plain dict (docs/cli.md).
"""

from __future__ import annotations

import time

import numpy as np

from . import h5io, ops, snn
from .data import batches, check_inputs, load_array
from .errors import naming
from .simulator import Simulator, collect


def amplification(layer: snn.SpikingLayer | snn.Readout) -> np.ndarray:
    """G_i = Σ_j |J_ij| / (α_i + Σ_j J_ij) per neuron (docs/exports.md, "How close"): moving the input spikes by
    at most e moves a crossing after the input window by at most G_i·e (docs/math.md §1, fast path)."""
    shape = layer.shape
    weight = sum(ops.per_neuron(np.abs(s.J).reshape(s.J.shape[0], -1).sum(axis=1), shape) for s in layer.synapses)
    total = sum(ops.per_neuron(s.J.reshape(s.J.shape[0], -1).sum(axis=1), shape) for s in layer.synapses)
    slope = ops.per_neuron(layer.alpha, shape) + total
    with np.errstate(divide="ignore"):
        return np.where(slope > 0, weight / slope, np.inf)


def error_bounds(net: snn.Network, dt: float) -> tuple[dict, float]:
    """The largest difference between Brian2's spike times at step dt and the exact ones, per population,
    and the bound on the logit difference (docs/exports.md, "How close"):

    - inputs: dt/2 (spike times rounded to the grid); a non-zero delay adds dt/2 (also rounded);
    - a spiking layer: e_out = dt + max_i G_i·e_in (its threshold is tested on the grid, so it fires up
      to one step late; ``amplification`` gives G_i), for neurons that cross after their input window;
    - pooling, reshaping, transposing: e_in; a concatenation: the largest of its inputs';
    - the readout: max_i Σ_j |J_ij|·e_in (its potential is read at T_out, on the grid).
    """
    bounds: dict[str, float] = {}
    logit = 0.0
    for node in net.nodes:
        if isinstance(node, snn.Encoder):
            bounds[node.name] = dt / 2
        elif isinstance(node, (snn.SpikingLayer, snn.Readout)):
            e_in = max(bounds[s.input] + (dt / 2 if s.delay else 0.0) for s in node.synapses)
            if isinstance(node, snn.Readout):
                weight = sum(ops.per_neuron(np.abs(s.J).reshape(s.J.shape[0], -1).sum(axis=1), node.shape)
                             for s in node.synapses)
                logit = float(np.max(weight) * e_in)
            else:
                bounds[node.name] = float(dt + np.max(amplification(node)) * e_in)
        elif isinstance(node, snn.Concat):
            bounds[node.name] = max(bounds[name] + (dt / 2 if d else 0.0) for name, d in zip(node.inputs, node.delays))
        else:
            bounds[node.name] = bounds[node.inputs[0]]
    return bounds, logit


def crosscheck(snn_path, data_spec: str, dt: float, samples: int | None = None, min_agreement: float = 1.0,
               batch_size: int = 64, progress=None) -> dict:
    """Run the first ``samples`` inputs of ``data_spec`` (all by default) in Brian2 at step dt and in relu2snn's
    simulator; report the agreement of the argmax, the spike-time differences per population against their
    bounds (``error_bounds``), the logit difference and both run times (docs/cli.md, crosscheck)."""
    from .export import brian2 as export_brian2, dense_only, require
    net = h5io.read(snn_path)
    with naming(snn_path):
        dense_only(net, "crosscheck --simulator brian2")
    require("brian2", "brian2", "crosscheck --simulator brian2")
    data = load_array(data_spec)
    check_inputs(data, net.nodes[0].shape, data_spec)
    total = len(data) if samples is None else min(samples, len(data))
    sim = Simulator(net)
    nodes, arrays = export_brian2.network_spec(net)
    ours, theirs = [], []
    seconds = {"simulator": 0.0, "brian2": 0.0}
    steps = 0
    with naming(snn_path):
        for _, batch in batches(data[:total], batch_size, data_spec):
            clock = time.perf_counter()
            ours.append(sim.run(batch, keep_times=True))
            seconds["simulator"] += time.perf_counter() - clock
            result = export_brian2.brian2_runtime.run(nodes, arrays, batch, dt)
            seconds["brian2"] += result["seconds"]
            steps = result["steps"]
            theirs.append(result)
            if progress is not None:
                progress(len(batch), total)
    ref = collect(ours)
    logits = np.concatenate([r["logits"] for r in theirs])
    bounds, logit_bound = error_bounds(net, dt)
    per_layer, missing = {}, 0
    for name in theirs[0]["times"]:
        t = np.concatenate([r["times"][name] for r in theirs])
        missing += int(np.count_nonzero(np.isnan(t)))
        per_layer[name] = float(np.nanmax(np.abs(t - ref.times[name]))) if not np.all(np.isnan(t)) else 0.0
    agreement = float(np.mean(logits.reshape(total, -1).argmax(axis=1) == ref.logits.reshape(total, -1).argmax(axis=1)))
    largest = max(per_layer.values())
    report = {
        "simulator": "brian2", "n_samples": total, "dt": dt, "steps": steps,
        "agreement": agreement, "min_agreement": min_agreement, "passed": agreement >= min_agreement,
        "max_spike_time_difference": largest, "max_spike_time_difference_in_dt": largest / dt,
        "spike_time_difference_per_layer": per_layer,
        "spike_time_bound_per_layer": {name: bounds[name] for name in per_layer},
        "within_bounds": all(per_layer[name] <= bounds[name] for name in per_layer) and missing == 0,
        "missing_spikes": missing,
        "max_abs_logit_difference": float(np.max(np.abs(logits - ref.logits))),
        "logit_difference_bound": logit_bound,
        "max_abs_logit": float(np.max(np.abs(ref.logits))),
        "simulator_seconds": seconds["simulator"], "brian2_seconds": seconds["brian2"],
        "brian2_over_simulator": seconds["brian2"] / seconds["simulator"] if seconds["simulator"] > 0 else None,
    }
    return report
