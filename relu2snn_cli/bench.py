"""``bench``: how fast the spiking simulation runs, against onnxruntime on the same data (docs/performance.md).

Both are timed on the same batches, already in memory: one warm-up batch, then ``repeats``
passes over all the data; the figure is the median pass divided by the number of samples.
Work is counted from the network and from one untimed pass over all the data (``Simulator.run`` with
``count_events``), in either coding (docs/math.md §1, §9):

- spikes: overall, per population and per hidden neuron (in the sparse coding only neurons of
  activation > 0 fire, so this is the share of positive hidden activations);
- synaptic events: spikes that reach a synapse of nonzero weight, over the receiving layers and the
  readout; padded taps of a convolution are not neurons and send nothing;
- the ANN's multiply-adds: dense out·in, convolution O·Ho·Wo·C·kh·kw, over the same layers.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from . import h5io, snn
from .data import batches, check_inputs, load_array
from .errors import DataError, RegressionFailed, naming
from .simulator import Counts, Simulator, spike_shares


def macs(layer) -> int:
    """Multiply-adds of a layer's linear map per sample, over its synapse sets: out·in (dense),
    O·Ho·Wo·(C/groups)·kh·kw (convolution)."""
    return sum(int(np.prod(layer.shape)) * int(np.prod(syn.J.shape[1:])) for syn in layer.synapses)


class LayerClock:
    """Wraps a compiled layer's ``fire`` and adds up the seconds spent in it."""

    def __init__(self, compiled):
        self.compiled, self.seconds = compiled, 0.0

    def fire(self, t_in):
        start = time.perf_counter()
        try:
            return self.compiled.fire(t_in)
        finally:
            self.seconds += time.perf_counter() - start


def median_pass(fn, parts: list, repeats: int) -> float:
    """Median seconds of ``repeats`` passes of fn over every batch in parts, after one warm-up call."""
    fn(parts[0])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for part in parts:
            fn(part)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def read_baseline(path) -> float:
    """``snn_seconds_per_sample`` of an earlier ``bench --json`` report."""
    try:
        value = json.loads(Path(path).read_text())["snn_seconds_per_sample"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a bench --json report with snn_seconds_per_sample ({e})") from None
    if not isinstance(value, (int, float)) or not value > 0:
        raise DataError(f"{path}: snn_seconds_per_sample must be a positive number, got {value!r}")
    return float(value)


def bench(snn_path, data_spec: str, onnx_path=None, batch_size: int = 64, repeats: int = 5,
          baseline=None, max_regression: float = 0.10, progress=None) -> dict:
    """Time the simulation (and onnxruntime with ``onnx_path``) on ``data``; a report as a plain dict.

    With ``baseline`` (an earlier report's path) the report's ``passed`` says whether the SNN
    time per sample is at most (1 + max_regression) times the baseline's; ``regression``
    is the relative change.
    """
    if repeats < 1 or batch_size < 1:
        raise DataError(f"repeats and batch size must be ≥ 1, got {repeats} and {batch_size}")
    base = read_baseline(baseline) if baseline is not None else None
    net = h5io.read(snn_path)
    data = load_array(data_spec)
    check_inputs(data, net.nodes[0].shape, data_spec)
    parts = [x for _, x in batches(data, batch_size, data_spec)]
    n = sum(len(x) for x in parts)
    total = n * (repeats + 1) + len(parts[0])   # the counting pass, the warm-up batch and the timed passes
    counts = Counts()
    with naming(snn_path):   # a NonFiniteError of the simulation names the file
        counter = Simulator(net)
        for x in parts:   # one untimed pass counts the spikes and synaptic events
            counts.add(counter.run(x, count_events=True).counts)
            if progress is not None:
                progress(len(x), total)
    sim = Simulator(net)
    clocks = {name: LayerClock(c) for name, c in sim.compiled.items()}
    sim.compiled = clocks

    def run_snn(x):
        sim.run(x)
        if progress is not None:
            progress(len(x), total)

    with naming(snn_path):
        snn_seconds = median_pass(run_snn, parts, repeats) / n

    ann_seconds = None
    if onnx_path is not None:
        from .calibrate import input_dtype, run_model, session  # onnxruntime only when asked for
        sess = session(onnx_path, [net.meta["source_logits"]])  # up to the logits, as converted
        ann_parts = [x.astype(input_dtype(sess)) for x in parts]
        ann_seconds = median_pass(lambda x: run_model(sess, x), ann_parts, repeats) / n

    layers = [node for node in net.nodes if isinstance(node, (snn.SpikingLayer, snn.Readout))]
    report = {
        "n_samples": n,
        "batch_size": batch_size,
        "repeats": repeats,
        "snn_seconds_per_sample": snn_seconds,
        "ann_seconds_per_sample": ann_seconds,
        "snn_over_ann": snn_seconds / ann_seconds if ann_seconds else None,
        "coding": net.coding,
        "spikes": counts.spikes,
        "spikes_per_sample": counts.spikes / n,
        **spike_shares(counts, net),
        "layer_spikes_per_sample": {name: value / n for name, value in counts.layer_spikes.items()},
        "synaptic_events": counts.synaptic_events,
        "synaptic_events_per_sample": counts.synaptic_events / n,
        "ann_macs_per_sample": sum(macs(node) for node in layers),
        "forced_spike_share": counts.forced_share,
        "checked_pairs_per_sample": counts.checked / counts.samples,
        "event_scan_pairs_per_sample": counts.scanned / counts.samples,
        "latency": net.latency,
        "peak_rss_mb": peak_rss_mb(),
        # time inside each spiking layer, averaged over the warm-up and timed passes
        "layer_seconds_per_sample": {name: clock.seconds / (n * repeats + len(parts[0]))
                                     for name, clock in clocks.items()},
    }
    if base is not None:
        regression = report["snn_seconds_per_sample"] / base - 1.0
        report.update(baseline_snn_seconds_per_sample=base, regression=regression,
                      max_regression=max_regression, passed=regression <= max_regression)
    return report


def check_regression(report: dict) -> None:
    """Raise RegressionFailed when a report with a baseline did not pass."""
    if report.get("passed") is False:
        raise RegressionFailed(f"snn_seconds_per_sample {report['snn_seconds_per_sample']:.6g} is "
                               f"{100 * report['regression']:.1f}% above the baseline's "
                               f"{report['baseline_snn_seconds_per_sample']:.6g} "
                               f"(--max-regression {report['max_regression']})")
