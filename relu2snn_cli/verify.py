"""``verify``: the spiking network against onnxruntime and the float64 ReLU forward pass (docs/cli.md, Reports).

Three independent computations per batch — onnxruntime on the source model, the float64
forward pass of the imported graph, and the spiking simulation — and a report as a plain dict.
The conversion is exact (docs/math.md §1, §3), so the report lists under ``failures`` every
exactness check that fails: agreement of the argmax with onnxruntime, the logit error against
the float64 forward pass, early spikes.
"""

from __future__ import annotations

import numpy as np

from . import h5io, ir, ops, snn
from .calibrate import run_model, session
from .convert import import_model
from .data import batches, check_inputs, load_array, load_labels
from .errors import ArtifactError, NonFiniteError, naming, onnxruntime_errors
from .simulator import Counts, Simulator


def spike_time_error(layer: snn.SpikingLayer, times: np.ndarray, activation: np.ndarray) -> float:
    """max |t − (T + B − c·a)| over a batch: the spike time against window end − scaled ReLU activation."""
    target = sum(layer.window) - ops.per_neuron(layer.scale, layer.shape) * activation
    return float(np.max(np.abs(times - target), initial=0.0))


def check_source(snn_path, onnx_path, net: snn.Network, imported) -> None:
    """Refuse an ONNX model the artifact was not converted from: its sha256 differs from the recorded
    ``source_model_sha256`` (docs/artifact.md), or its input or output shape differs from the network's."""
    differences = []
    recorded = net.meta.get("source_model_sha256")
    if recorded != imported.sha256:
        differences.append(f"source sha256 {recorded[:12] + '…' if recorded else 'not'} recorded, "
                           f"{imported.sha256[:12]}… found")
    graph = imported.graph
    for what, ours, theirs in (("input", net.nodes[0].shape, graph.input.shape),
                               ("output", net.nodes[-1].shape, graph.nodes[-1].shape)):
        if tuple(ours) != tuple(theirs):
            differences.append(f"{what} shape {tuple(ours)} in the network, {tuple(theirs)} in the model")
    if differences:
        raise ArtifactError(f"{snn_path} was not converted from {onnx_path}: {'; '.join(differences)}; "
                            "pass the ONNX model it was converted from")


def failures(report: dict) -> list[str]:
    """The exactness checks a report fails, as sentences: agreement below ``min_agreement``;
    ``max_abs_logit_error_ref`` above ``max_logit_error`` × ``max_abs_logit``; more early spikes than
    ``max_early_spikes``, with what to reconvert with."""
    found = []
    if report["agreement"] < report["min_agreement"]:
        found.append(f"agreement {report['agreement']:.6g} is below --min-agreement {report['min_agreement']:g}")
    limit = report["max_logit_error"] * report["max_abs_logit"]
    if report["max_abs_logit_error_ref"] > limit:
        found.append(f"max_abs_logit_error_ref {report['max_abs_logit_error_ref']:.6g} exceeds --max-logit-error "
                     f"{report['max_logit_error']:g} × max_abs_logit {report['max_abs_logit']:.6g} = {limit:.6g}")
    if report["early_spikes"] > report["max_early_spikes"]:
        if report["out_of_range_inputs"]:
            cause = (f"{report['out_of_range_inputs']} input values lie outside the calibrated input range; "
                     "reconvert with an --input-range that covers the data or a larger --zeta")
        else:
            cause = ("the test inputs drive hidden layers beyond their calibrated bounds; reconvert with more "
                     "calibration data or a larger --zeta")
        found.append(f"early_spikes {report['early_spikes']} exceeds --max-early-spikes "
                     f"{report['max_early_spikes']}: {cause}")
    return found


def _finite(values: np.ndarray, path, what: str, data_spec: str) -> np.ndarray:
    """The logits of the source model, refused when infinite or NaN (an overflow of float32 or float64)."""
    if not np.isfinite(values).all():
        raise NonFiniteError(f"{path}: {what} gives infinite or NaN logits on {data_spec}: the inputs or the "
                             "model's parameters are too large")
    return values


def verify(snn_path, onnx_path, data_spec: str, labels_spec: str | None = None, min_agreement: float = 1.0,
           max_logit_error: float = 1e-9, max_early_spikes: int = 0, batch_size: int = 256, progress=None,
           output: str | None = None) -> dict:
    """Run all three on the data; the report's ``failures`` lists the failed checks, ``passed`` is true when none
    failed. ``output`` is the ONNX tensor converted, by default the artifact's ``source_output``."""
    net = h5io.read(snn_path)
    imported = import_model(onnx_path, batch_size, output if output is not None else net.meta.get("source_output"))
    check_source(snn_path, onnx_path, net, imported)
    graph = imported.graph
    data = load_array(data_spec)
    check_inputs(data, graph.input.shape, data_spec)
    sess = session(onnx_path, [graph.output_name])
    sim = Simulator(net)
    labels = load_labels(labels_spec, len(data), net.nodes[-1].shape[0]) if labels_spec else None
    layers = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    errors = {n.name: 0.0 for n in layers}
    agree = correct_ann = correct_snn = 0
    err_onnx = err_ref = max_logit = 0.0
    counts = Counts()
    for start, x in batches(data, batch_size, data_spec):
        with onnxruntime_errors(onnx_path, batch_size):
            onnx_logits = _finite(run_model(sess, x)[0].astype(np.float64), onnx_path, "onnxruntime", data_spec)
        ref = ir.forward(graph, x, keep=True)
        ref_logits = _finite(ref[graph.nodes[-1].name], onnx_path, "the float64 forward pass", data_spec)
        with naming(snn_path):
            result = sim.run(x, keep_times=True)
        counts.add(result.counts)
        logits = result.logits
        agree += int(np.sum(np.argmax(logits, 1) == np.argmax(onnx_logits, 1)))
        if labels is not None:
            y = labels[start:start + batch_size]
            correct_ann += int(np.sum(np.argmax(onnx_logits, 1) == y))
            correct_snn += int(np.sum(np.argmax(logits, 1) == y))
        err_onnx = max(err_onnx, float(np.max(np.abs(logits - onnx_logits))))
        err_ref = max(err_ref, float(np.max(np.abs(logits - ref_logits))))
        max_logit = max(max_logit, float(np.max(np.abs(ref_logits))))
        for layer in layers:
            errors[layer.name] = max(errors[layer.name],
                                     spike_time_error(layer, result.times[layer.name], ref[layer.name]))
        if progress is not None:
            progress(len(x), len(data))
    n = len(data)
    report = {
        "n_samples": n,
        "agreement": agree / n,
        "min_agreement": min_agreement,
        "max_logit_error": max_logit_error,
        "max_early_spikes": max_early_spikes,
        "passed": None,
        "failures": None,
        "accuracy_ann": correct_ann / n if labels is not None else None,
        "accuracy_snn": correct_snn / n if labels is not None else None,
        "max_abs_logit": max_logit,
        "max_abs_logit_error_onnx": err_onnx,
        "max_abs_logit_error_ref": err_ref,
        "max_spike_time_error": max(errors.values(), default=0.0),
        "spike_time_error_per_layer": errors,
        "early_spikes": counts.early_spikes,
        "out_of_range_inputs": counts.out_of_range_inputs,
        "spikes_per_neuron": counts.spikes / (n * sim.neurons),
        "forced_spike_share": counts.forced_share,
        "checked_pairs": counts.checked,
        "event_scan_pairs": counts.scanned,
        "latency": net.latency,
    }
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report
