"""``verify``: the spiking network against onnxruntime and the float64 ReLU forward pass (docs/cli.md, Reports).

Three independent computations per batch — onnxruntime on the source model, the float64
forward pass of the imported graph, and the spiking simulation — and a report as a plain dict.
"""

from __future__ import annotations

import numpy as np

from . import h5io, ir, ops, snn
from .calibrate import run_model, session
from .convert import import_model
from .data import batches, check_inputs, load_array, load_labels
from .errors import ArtifactError, onnxruntime_errors
from .simulator import Counts, Simulator


def spike_time_error(layer: snn.SpikingLayer, times: np.ndarray, activation: np.ndarray) -> float:
    """max |t − (T + B − c·a)| over a batch: the spike time against window end − scaled ReLU activation."""
    target = sum(layer.window) - ops.per_neuron(layer.scale, layer.shape) * activation
    return float(np.max(np.abs(times - target), initial=0.0))


def verify(snn_path, onnx_path, data_spec: str, labels_spec: str | None = None, min_agreement: float = 1.0,
           batch_size: int = 256, progress=None) -> dict:
    """Run all three on the data; the report's ``passed`` is agreement ≥ min_agreement."""
    net = h5io.read(snn_path)
    imported = import_model(onnx_path, batch_size)
    graph = imported.graph
    for what, ours, theirs in (("inputs", net.nodes[0].shape, graph.input.shape),
                               ("outputs", net.nodes[-1].shape, graph.nodes[-1].shape)):
        if tuple(ours) != tuple(theirs):
            raise ArtifactError(f"{snn_path}: has {what} of shape {tuple(ours)}, but {onnx_path} has {tuple(theirs)}; "
                                "pass the ONNX model it was converted from")
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
            onnx_logits = run_model(sess, x)[0].astype(np.float64)
        ref = ir.forward(graph, x, keep=True)
        result = sim.run(x, keep_times=True)
        counts.add(result.counts)
        logits, ref_logits = result.logits, ref[graph.nodes[-1].name]
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
    agreement = agree / n
    return {
        "n_samples": n,
        "agreement": agreement,
        "min_agreement": min_agreement,
        "passed": agreement >= min_agreement,
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
        "checked_pairs": counts.checked,
        "event_scan_pairs": counts.scanned,
        "latency": net.latency,
        "source_model_matches": net.meta.get("source_model_sha256") == imported.sha256,
    }
