"""``plot``: pictures of one sample's spikes and of a robustness report (docs/hardware.md).

The spike times come from the simulator (``Simulator.run`` with ``keep_times``); the membrane potentials are
the potential formula of docs/math.md §1 evaluated on a time grid from those spike times, so a trace crosses
its threshold exactly at the spike time the simulator gives. matplotlib is the optional extra
``relu2snn[plot]``; nothing else in relu2snn imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import h5io, ops, snn
from .data import check_inputs, load_array
from .errors import DataError, naming
from .simulator import Simulator, fan_in_source

FORMATS = (".png", ".svg", ".pdf")
TRACE_POINTS = 400


def _pyplot(what: str = "plot"):
    """matplotlib's pyplot on the file-only Agg backend, or a one-line refusal that says how to install it."""
    from .export import require
    require("matplotlib", "plot", what)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_format(path) -> None:
    """Refuse an output whose extension is none of FORMATS (matplotlib picks the format from it)."""
    if Path(path).suffix.lower() not in FORMATS:
        raise DataError(f"{path}: the picture's format comes from its extension: use one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- what is drawn

def membrane_potential(times: np.ndarray, weights: np.ndarray, alpha: float, t0: float,
                       grid: np.ndarray) -> np.ndarray:
    """V(t) = α·(t − t0) + Σ_j w_j·max(0, t − t_j) at each t of ``grid`` (docs/math.md §1): one neuron, its
    input arrival times (spike time plus delay) and weights, integrating from the start t0 of its input window."""
    ramps = np.maximum(grid[:, None] - times[None, :], 0.0)
    return alpha * (grid - t0) + ramps @ weights


def parse_neurons(specs, net: snn.Network) -> list[tuple[str, int]]:
    """``LAYER:i,j,...`` → [(layer name, flat index), ...]; LAYER is a spiking layer's name or its row number
    ``#n`` in ``relu2snn inspect``."""
    layers = {n.name: n for n in net.nodes if isinstance(n, snn.SpikingLayer)}
    chosen = []
    for spec in specs:
        name, sep, indices = spec.rpartition(":")
        if name.startswith("#") and name[1:].isdigit() and int(name[1:]) < len(net.nodes):
            name = net.nodes[int(name[1:])].name
        if not sep or name not in layers:
            raise DataError(f"--neurons {spec!r}: give LAYER:i,j with LAYER a spiking layer's name or #row of "
                            f"relu2snn inspect (spiking layers: {', '.join(layers)})")
        size = int(np.prod(layers[name].shape))
        for text in indices.split(","):
            if not text.strip().isdigit() or int(text) >= size:
                raise DataError(f"--neurons {spec!r}: {text!r} is not a neuron index in 0..{size - 1} of {name}")
            chosen.append((name, int(text)))
    return chosen


def trace(net: snn.Network, times: dict, name: str, index: int, points: int = TRACE_POINTS) -> dict:
    """The potential of neuron ``index`` (flat) of spiking layer ``name`` in sample 0 of ``times`` (the
    simulator's spike times per node), from the start of its input window to its spike, with its threshold,
    windows and spike time."""
    layer = next(n for n in net.nodes if n.name == name)
    t_in, b_in = net.input_window(layer)
    arrive = [times[syn.input] + syn.delay for syn in layer.synapses]
    if net.coding == "sparse":   # a late input is lost (docs/math.md §9)
        arrive = [np.minimum(t, t_in + b_in) for t in arrive]
    sources = [fan_in_source(syn, t, t_in + b_in) for syn, t in zip(layer.synapses, arrive)]
    arrivals, weights = ops.gather_fan_ins(sources, [syn.J for syn in layer.synapses], layer.shape,
                                           np.array([0]), np.array([index]))
    alpha = float(ops.per_neuron(layer.alpha, layer.shape).reshape(-1)[index])
    theta = float(ops.per_neuron(layer.theta, layer.shape).reshape(-1)[index])
    spike = float(times[name].reshape(-1)[index])
    grid = np.union1d(np.linspace(t_in, spike, points), arrivals[0][(arrivals[0] > t_in) & (arrivals[0] < spike)])
    v = membrane_potential(arrivals[0], weights[0], alpha, t_in, grid)
    if net.coding == "sparse":   # after T the currents are off and V rises with slope 1 (docs/math.md §9)
        end = t_in + b_in
        v_end = membrane_potential(arrivals[0], weights[0], alpha, t_in, np.array([end]))[0]
        v = np.where(grid <= end, v, v_end + (grid - end))
    return {"layer": name, "index": index, "grid": grid, "v": v, "theta": theta,
            "input_window": (t_in, t_in + b_in), "window": (layer.window[0], sum(layer.window)), "spike": spike}


def populations(net: snn.Network, times: dict) -> list[dict]:
    """The populations that emit spikes (the encoder and the spiking layers), with sample 0's spike times; in the
    sparse coding the neurons at or after their window end are ``silent`` (no spike, docs/math.md §9), in the
    dense one the hidden neurons at their window end are ``forced``."""
    out = []
    sparse = net.coding == "sparse"
    for node in net.nodes:
        if isinstance(node, (snn.Encoder, snn.SpikingLayer)):
            t = times[node.name][0].reshape(-1)
            start, end = node.window[0], sum(node.window)
            spiking = isinstance(node, snn.SpikingLayer)
            none = np.zeros(t.size, bool)
            out.append({"name": node.name, "times": t, "window": (start, end),
                        "early": t < start if spiking else none,
                        "forced": t == end if spiking and not sparse else none,
                        "silent": t >= end if sparse else none})
    return out


# ----------------------------------------------------------------------------- figures

def spikes_figure(net: snn.Network, pops: list[dict], traces: list[dict], title: str):
    plt = _pyplot()
    cols = max(len(pops), len(traces), 1)
    rows = 3 if traces else 2
    fig = plt.figure(figsize=(max(10, 2.6 * cols), 4 + 2.6 * (rows - 1)), layout="constrained")
    grid = fig.add_gridspec(rows, cols, height_ratios=[2.2] + [1] * (rows - 1))
    ax = fig.add_subplot(grid[0, :])
    offset, ticks = 0, []
    for k, pop in enumerate(pops):
        color, n = f"C{k % 10}", pop["times"].size
        start, end = pop["window"]
        ax.add_patch(plt.Rectangle((start, offset - 0.5), end - start, n, color=color, alpha=0.12, lw=0))
        y = offset + np.arange(n)
        plain = ~pop["early"] & ~pop["forced"] & ~pop["silent"]   # silent neurons (sparse coding) are not drawn
        ax.scatter(pop["times"][plain], y[plain], s=2, color=color, lw=0)
        ax.scatter(pop["times"][pop["forced"]], y[pop["forced"]], s=2, color="0.6", lw=0)
        if pop["early"].any():
            ax.scatter(pop["times"][pop["early"]], y[pop["early"]], s=14, marker="x", color="black", lw=0.8)
        ticks.append((offset + n / 2, pop["name"]))
        offset += n
    ax.set_ylim(-0.5, offset - 0.5)
    ax.invert_yaxis()
    ax.set_yticks([t for t, _ in ticks], [_short(name) for _, name in ticks], fontsize=7)
    ax.set_xlabel("time (τ_c)")
    ax.set_title(f"{title}: one band per population, windows shaded; grey = forced at the window end (activation 0), "
                 "black × = fired early", fontsize=9)
    for k, pop in enumerate(pops):
        h = fig.add_subplot(grid[1, k])
        h.hist(pop["times"][~pop["silent"]], bins=40, color=f"C{k % 10}")
        for edge in pop["window"]:
            h.axvline(edge, color="k", lw=0.6, ls="--")
        h.set_title(_short(pop["name"]), fontsize=7)
        h.tick_params(labelsize=6)
        h.set_xlabel("spike time (τ_c)", fontsize=6)
    for k, tr in enumerate(traces):
        v = fig.add_subplot(grid[2, k])
        v.plot(tr["grid"], tr["v"], color="C0", lw=1)
        v.axhline(tr["theta"], color="C3", lw=0.8, label="ϑ")
        for edge in tr["window"]:
            v.axvline(edge, color="k", lw=0.6, ls="--")
        v.axvline(tr["input_window"][0], color="0.5", lw=0.6, ls=":")
        v.plot([tr["spike"]], [np.interp(tr["spike"], tr["grid"], tr["v"])], "r*", ms=8)
        v.set_title(f"{_short(tr['layer'])}[{tr['index']}]", fontsize=7)
        v.tick_params(labelsize=6)
        v.set_xlabel("time (τ_c)", fontsize=6)
        v.set_ylabel("V", fontsize=6)
    return fig


def robustness_figure(report: dict):
    """Agreement (and accuracy, with labels) against each axis's levels: mean with the trials' std as bars."""
    plt = _pyplot()
    axes = list(dict.fromkeys(r["axis"] for r in report["levels"]))
    cols = min(3, len(axes))
    rows = -(-len(axes) // cols)
    fig, subplots = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.2 * rows), layout="constrained", squeeze=False)
    for ax in subplots.flat[len(axes):]:
        ax.set_axis_off()
    for ax, axis in zip(subplots.flat, axes):
        rows = sorted((r for r in report["levels"] if r["axis"] == axis), key=lambda r: r["value"])
        x = np.array([r["value"] for r in rows], dtype=float)
        ax.errorbar(x, [r["agreement_mean"] for r in rows], [r["agreement_std"] for r in rows], marker="o",
                    capsize=3, label="agreement")
        if rows[0]["accuracy_mean"] is not None:
            ax.errorbar(x, [r["accuracy_mean"] for r in rows], [r["accuracy_std"] for r in rows], marker="s",
                        ls="--", capsize=3, label="accuracy")
        positive = x[x > 0]
        if axis.endswith("noise") and positive.size:
            ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(axis.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.set_ylabel("share of samples")
    subplots[0][0].legend(fontsize=7)
    return fig


def save(fig, path) -> None:
    """Write a figure atomically (format from the extension) and close it."""
    plt = _pyplot()
    suffix = Path(path).suffix.lower()
    try:
        with h5io.atomic_output(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150)
    finally:
        plt.close(fig)


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


# ----------------------------------------------------------------------------- the command

def plot_file(snn_path, data_spec: str, sample: int, out_path, neurons=()) -> dict:
    """Draw sample ``sample`` of ``data_spec`` through the network of ``snn_path`` to ``out_path``: raster,
    spike-time histograms per population and, for ``neurons`` (``LAYER:i,j`` texts), membrane potentials."""
    check_format(out_path)
    _pyplot()
    net = h5io.read(snn_path)
    data = load_array(data_spec)
    check_inputs(data, net.nodes[0].shape, data_spec)
    if not 0 <= sample < len(data):
        raise DataError(f"--sample {sample}: {data_spec} holds samples 0..{len(data) - 1}")
    chosen = parse_neurons(neurons, net)
    with naming(snn_path):
        result = Simulator(net).run(np.asarray(data[sample:sample + 1]), keep_times=True)
    pops = populations(net, result.times)
    traces = [trace(net, result.times, name, index) for name, index in chosen]
    save(spikes_figure(net, pops, traces, f"sample {sample}"), out_path)
    return {"output": str(out_path), "sample": sample,
            "populations": [{"name": p["name"], "neurons": int(p["times"].size), "window": list(p["window"]),
                             "early_spikes": int(p["early"].sum()), "forced_spikes": int(p["forced"].sum()),
                             "silent": int(p["silent"].sum())}
                            for p in pops],
            "neurons": [{"layer": t["layer"], "index": t["index"], "theta": t["theta"], "spike_time": t["spike"],
                         "window": list(t["window"])} for t in traces]}


def plot_robustness(report: dict, out_path) -> None:
    """Write ``robustness_figure`` of a robustness report."""
    check_format(out_path)
    save(robustness_figure(report), out_path)
