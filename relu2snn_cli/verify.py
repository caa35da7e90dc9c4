"""``verify``: the spiking network against onnxruntime and the float64 ReLU forward pass (docs/cli.md, Reports).

Three independent computations per batch — onnxruntime on the source model, the float64
forward pass of the imported graph, and the spiking simulation — and a report as a plain dict.
The conversion is exact (docs/math.md §1, §3), so the report lists under ``failures`` every
exactness check that fails: agreement of the argmax with onnxruntime, the logit error against
the float64 forward pass (beyond --max-logit-error of max |logit| and what float64 rounding explains,
``rounding``),
early spikes.
"""

from __future__ import annotations

import numpy as np

from . import h5io, ir, ops, rounding, snn
from .calibrate import run_model, session
from .convert import import_model
from .data import batches, check_inputs, load_labels
from .errors import ArtifactError, NonFiniteError, naming, onnxruntime_errors
from .shard import load_data
from .simulator import Counts, Simulator, spike_shares

# a batch whose logit error exceeds min(this, --max-logit-error) × its largest |logit| gets the rounding bound
# (``rounding.logit_bounds``): every error the logit check can fail has its bound; the Checker is given the
# threshold, so sharded and single-process runs compute the same bounds
BOUND_ABOVE = 1e-9


def bound_above(max_logit_error: float) -> float:
    """The share of a batch's max |logit| above which its logit error gets the rounding bound: min(BOUND_ABOVE,
    max_logit_error), so that no error above --max-logit-error × max |logit| is judged without its bound."""
    return min(BOUND_ABOVE, max_logit_error)


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
    """The exactness checks a report fails, as sentences: agreement below ``min_agreement``; a logit error above
    ``max_logit_error`` × ``max_abs_logit`` that float64 rounding does not explain (``logit_error_beyond_bound``,
    the largest error above its own rounding bound, docs/math.md §1); more early spikes than
    ``max_early_spikes``, with what to reconvert with. The logit sentence says which error failed: the largest
    one beyond its rounding bound, or, in a report without bounds, the largest error."""
    found = []
    if report["agreement"] < report["min_agreement"]:
        found.append(f"agreement {report['agreement']:.6g} is below --min-agreement {report['min_agreement']:g}")
    limit = report["max_logit_error"] * report["max_abs_logit"]
    bound = report.get("logit_rounding_bound")
    beyond = report.get("logit_error_beyond_bound", report["max_abs_logit_error_ref"])
    if beyond > limit:
        what = (f"--max-logit-error {report['max_logit_error']:g} × max_abs_logit {report['max_abs_logit']:.6g} "
                f"= {limit:.6g}")
        if bound is None:
            found.append(f"max_abs_logit_error_ref {report['max_abs_logit_error_ref']:.6g} exceeds {what}")
        else:
            found.append(f"max_abs_logit_error_ref {report['max_abs_logit_error_ref']:.6g}: an error of {beyond:.6g} "
                         f"exceeds both its own float64 rounding bound (logit_rounding_bound up to {bound:.6g}) and "
                         f"{what}")
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


class Checker:
    """What one process needs to check batches: the network and its simulator, the imported graph and an
    onnxruntime session (``threads`` intra-op threads, 0 for onnxruntime's default). Without ``run`` (the
    client of a sharded run) only the network and the graph, checked against each other. ``above``: the share of a
    batch's max |logit| above which its logit error gets the rounding bound (``bound_above``)."""

    def __init__(self, snn_path, onnx_path, batch_size: int, threads: int = 0, run: bool = True,
                 output: str | None = None, above: float = BOUND_ABOVE):
        self.snn_path, self.onnx_path, self.batch_size, self.above = snn_path, onnx_path, batch_size, above
        self.net = h5io.read(snn_path)
        # the ONNX tensor converted: ``output``, by default the artifact's source_output
        self.imported = import_model(onnx_path, batch_size,
                                     output if output is not None else self.net.meta.get("source_output"))
        check_source(snn_path, onnx_path, self.net, self.imported)
        self.graph = self.imported.graph
        if run:
            self.sess = session(onnx_path, [self.graph.output_name], threads)
            self.sim = Simulator(self.net)
        self.layers = [n for n in self.net.nodes if isinstance(n, snn.SpikingLayer)]

    def batch(self, x: np.ndarray, y: np.ndarray | None, data_spec: str) -> dict:
        """The figures of one batch (sums and maxima, merged by ``merge``); y: its labels or None. Where the logit
        error exceeds ``above`` × the batch's max |logit|, also the largest ``rounding.logit_bounds`` of
        the batch (else None), how far float64 rounding can move the two logits apart, and ``beyond``: the largest
        error above its own (sample, logit) bound (without bounds: the largest error)."""
        graph = self.graph
        with onnxruntime_errors(self.onnx_path, self.batch_size):
            onnx_logits = _finite(run_model(self.sess, x)[0].astype(np.float64), self.onnx_path, "onnxruntime",
                                  data_spec)
        ref = ir.forward(graph, x, keep=True)
        ref_logits = _finite(ref[graph.nodes[-1].name], self.onnx_path, "the float64 forward pass", data_spec)
        with naming(self.snn_path):
            result = self.sim.run(x, keep_times=True)
        logits = result.logits
        err_ref = float(np.max(np.abs(logits - ref_logits)))
        bound, beyond = None, err_ref
        if err_ref > self.above * float(np.max(np.abs(ref_logits))):
            bounds = rounding.logit_bounds(self.net, result.times, graph, ref)
            error = np.abs(logits - ref_logits).reshape(bounds.shape)
            bound, beyond = float(np.max(bounds)), float(np.max(error, where=error > bounds, initial=0.0))
        return {
            "agree": int(np.sum(np.argmax(logits, 1) == np.argmax(onnx_logits, 1))),
            "correct_ann": int(np.sum(np.argmax(onnx_logits, 1) == y)) if y is not None else 0,
            "correct_snn": int(np.sum(np.argmax(logits, 1) == y)) if y is not None else 0,
            "err_onnx": float(np.max(np.abs(logits - onnx_logits))),
            "err_ref": err_ref,
            "bound": bound,
            "beyond": beyond,
            "max_logit": float(np.max(np.abs(ref_logits))),
            "errors": {layer.name: spike_time_error(layer, result.times[layer.name], ref[layer.name])
                       for layer in self.layers},
            "counts": result.counts,
        }


def merge(parts: list[dict]) -> dict:
    """The figures of several batches, in the order given: sums of counts, maxima of errors (the same whatever
    the order, so sharded and single-process runs agree)."""
    total = {"agree": 0, "correct_ann": 0, "correct_snn": 0, "err_onnx": 0.0, "err_ref": 0.0, "max_logit": 0.0,
             "bound": None, "beyond": 0.0, "errors": {}, "counts": Counts()}
    for part in parts:
        for key in ("agree", "correct_ann", "correct_snn"):
            total[key] += part[key]
        for key in ("err_onnx", "err_ref", "max_logit", "beyond"):
            total[key] = max(total[key], part[key])
        if part["bound"] is not None:
            total["bound"] = max(total["bound"] or 0.0, part["bound"])
        for name, value in part["errors"].items():
            total["errors"][name] = max(total["errors"].get(name, 0.0), value)
        total["counts"].add(part["counts"])
    return total


def verify(snn_path, onnx_path, data_spec: str, labels_spec: str | None = None, min_agreement: float = 1.0,
           max_logit_error: float = 1e-9, max_early_spikes: int = 0, batch_size: int = 256, progress=None,
           output: str | None = None, client=None) -> dict:
    """Run all three on the data; the report's ``failures`` lists the failed checks, ``passed`` is true when none
    failed. ``output`` is the ONNX tensor converted, by default the artifact's ``source_output``. With a Dask
    ``client`` the batches (the same ones) are checked on its workers (``shard.verify``), each with its own
    onnxruntime session of one intra-op thread."""
    above = bound_above(max_logit_error)
    checker = Checker(snn_path, onnx_path, batch_size, run=client is None, output=output, above=above)
    net = checker.net
    data = load_data(data_spec)
    check_inputs(data, checker.graph.input.shape, data_spec)
    labels = load_labels(labels_spec, len(data), net.nodes[-1].shape[0]) if labels_spec else None
    if client is not None:
        from .shard import verify as sharded
        parts = sharded(client, snn_path, onnx_path, data_spec, len(data), labels, batch_size, progress, output,
                        above)
    else:
        parts = []
        for start, x in batches(data, batch_size, data_spec):
            parts.append(checker.batch(x, labels[start:start + batch_size] if labels is not None else None,
                                       data_spec))
            if progress is not None:
                progress(len(x), len(data))
    total = merge(parts)
    counts, errors = total["counts"], {n.name: total["errors"].get(n.name, 0.0) for n in checker.layers}
    n = len(data)
    report = {
        "n_samples": n,
        "agreement": total["agree"] / n,
        "min_agreement": min_agreement,
        "max_logit_error": max_logit_error,
        "max_early_spikes": max_early_spikes,
        "passed": None,
        "failures": None,
        "accuracy_ann": total["correct_ann"] / n if labels is not None else None,
        "accuracy_snn": total["correct_snn"] / n if labels is not None else None,
        "max_abs_logit": total["max_logit"],
        "max_abs_logit_error_onnx": total["err_onnx"],
        "max_abs_logit_error_ref": total["err_ref"],
        "logit_rounding_bound": total["bound"],
        "logit_error_beyond_bound": total["beyond"],
        "max_spike_time_error": max(errors.values(), default=0.0),
        "spike_time_error_per_layer": errors,
        "early_spikes": counts.early_spikes,
        "out_of_range_inputs": counts.out_of_range_inputs,
        "coding": net.coding,
        **spike_shares(counts, net),
        "forced_spike_share": counts.forced_share,
        "checked_pairs": counts.checked,
        "event_scan_pairs": counts.scanned,
        "latency": net.latency,
    }
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report
