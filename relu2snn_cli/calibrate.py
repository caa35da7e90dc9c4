"""Activation bounds with onnxruntime (DESIGN §1, §3.3).

Two streaming passes over the calibration data, batch by batch (a ``.npy`` stays memory-mapped):

1. ``input_stats``: the inputs' min and max (for the input range), sha256, NaN/Inf check;
2. ``calibrate``: onnxruntime with every ReLU output exposed as an extra graph output. Per
   ReLU layer it keeps the per-channel maximum activation and the largest exact
   no-early-spike requirement ``mapping.required_window``, evaluated only for the
   (sample, neuron) pairs whose certificate bound b + Σ_j max(W_ij, 0)·a_j exceeds the
   layer's bound found so far — so that the window chosen from these bounds makes no
   calibration sample fire early.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import ir, ops
from .data import batches, check_inputs
from .errors import ModelError
from .mapping import Scaled, required_window

CHECK_SAMPLES = 64  # samples on which the float64 forward pass is compared with onnxruntime
FORWARD_TOLERANCE = 1e-3  # relative to max |logit|: float32 rounding is far below, an import error far above


@dataclass(frozen=True)
class InputStats:
    low: float
    high: float
    n_samples: int
    sha256: str


@dataclass(frozen=True)
class Calibration:
    """What the calibration data says about the network.

    ``x_max[layer]``: per-channel maximum ANN activation; ``required[layer]``: X_n of the
    layer in code units, max(largest scaled activation, largest no-early-spike requirement);
    ``forward_error``: max |float64 IR logits − onnxruntime logits| on the first samples,
    whose largest |logit| is ``max_logit``.
    """

    x_max: dict
    required: dict
    forward_error: float
    max_logit: float


def session(model_path: str | Path, outputs: list[str]) -> ort.InferenceSession:
    """An onnxruntime session of the model whose outputs are the named tensors."""
    model = onnx.load(str(model_path))
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{model_path}: onnxruntime cannot load the model ({str(e).splitlines()[0]})") from None


def input_dtype(sess: ort.InferenceSession) -> type:
    return np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32


def channel_max(y: np.ndarray) -> np.ndarray:
    """Per-channel maximum over the batch and positions: axis 1 is the channel axis."""
    return y.max(axis=(0,) + tuple(range(2, y.ndim)))


def input_stats(data, shape: tuple[int, ...], spec: str, batch_size: int = 1024) -> InputStats:
    """Pass 1: min, max and sha256 of the inputs (float32 bytes, C order)."""
    check_inputs(data, shape, spec)
    lo, hi = np.inf, -np.inf
    digest = hashlib.sha256()
    for _, batch in batches(data, batch_size, spec):
        digest.update(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
        lo, hi = min(lo, float(batch.min())), max(hi, float(batch.max()))
    return InputStats(lo, hi, len(data), digest.hexdigest())


def update_requirement(layer: ir.Linear, a: np.ndarray, running: float) -> float:
    """max(running, the no-early-spike requirement of every (sample, neuron) pair of a batch).

    a: the layer's input codes (N, *in_shape). A pair whose bound b + Σ_j max(W_ij,0)·a_j is
    at most ``running`` cannot raise the maximum (its requirement is below its bound); the
    others get the exact ``required_window``. The result does not depend on the batch order.
    """
    positive = ir.apply_linear(replace(layer, weight=np.clip(layer.weight, 0, None)), a)
    bound = positive.reshape(len(a), -1)
    rows, cols = np.nonzero(bound > running)
    if not len(rows):
        return running
    order = np.argsort(-bound[rows, cols], kind="stable")  # largest bounds first: they raise the maximum soonest
    rows, cols = rows[order], cols[order]
    bound = bound[rows, cols]
    s = ir.incoming_sum(layer)
    bias = ir.full_bias(layer).reshape(-1)
    per_channel = int(np.prod(layer.shape[1:]))
    found = running
    source = (ops.windows(a, layer.weight.shape[2:], layer.strides, layer.pads, layer.dilations, 0.0)
              if isinstance(layer, ir.Conv) else a)
    step = max(1, (1 << 20) // int(np.prod(layer.weight.shape[1:])))
    for lo in range(0, len(rows), step):
        if bound[lo] <= found:  # the requirement is at most the bound, so no later pair can raise the maximum
            break
        r, c = rows[lo:lo + step], cols[lo:lo + step]
        inputs, weights = ops.gather_fan_in(source, layer.weight, layer.shape, r, c)
        need = required_window(inputs, weights, bias[c], s[c // per_channel])
        found = max(found, float(need.max()))
    return found


def calibrate(model_path, graph: ir.Graph, scaled: Scaled, data, input_range: tuple[float, float],
              spec: str = "calibration data", batch_size: int = 256, progress=None) -> Calibration:
    """Pass 2: run the model over ``data`` in batches and collect the bounds of every ReLU layer."""
    layers = [n for n in scaled.graph.nodes if isinstance(n, (ir.Dense, ir.Conv)) and n.relu]
    names = list(dict.fromkeys([graph.output_name] + [n.source for n in layers]))
    sess = session(model_path, names)
    dtype = input_dtype(sess)
    x_max = {n.name: np.zeros(n.shape[0]) for n in layers}
    required = {n.name: 0.0 for n in layers}
    low, high = input_range
    forward_error = max_logit = 0.0
    for start, batch in batches(data, batch_size, spec):
        out = dict(zip(names, sess.run(None, {graph.input_name: batch.astype(dtype)})))
        codes = {graph.input.name: (batch.astype(np.float64) - low) / (high - low)}
        for node in scaled.graph.nodes[1:]:
            if isinstance(node, (ir.Dense, ir.Conv)) and node.relu:
                act = out[node.source].astype(np.float64)
                x_max[node.name] = np.maximum(x_max[node.name], channel_max(act))
                c = ops.channel_axis(scaled.scales[node.name], act.ndim - 1)
                bound = max(required[node.name], float(np.max(c * x_max[node.name].reshape(c.shape))))
                required[node.name] = update_requirement(node, codes[node.input], bound)
                codes[node.name] = c * act
            elif isinstance(node, (ir.MaxPool, ir.Flatten)):
                codes[node.name] = ir.apply(node, codes[node.input])
        if start == 0:
            ref = ir.forward(graph, batch[:CHECK_SAMPLES])
            onnx_logits = out[graph.output_name][:CHECK_SAMPLES].astype(np.float64)
            if onnx_logits.shape != ref.shape:
                raise ModelError(f"{model_path}: logits of shape {onnx_logits.shape[1:]} from onnxruntime, "
                                 f"{ref.shape[1:]} from the imported graph")
            forward_error = float(np.max(np.abs(ref - onnx_logits)))
            max_logit = float(np.max(np.abs(onnx_logits)))
            if forward_error > FORWARD_TOLERANCE * max(1.0, max_logit):
                raise ModelError(f"{model_path}: the imported graph does not reproduce onnxruntime: max |logit "
                                 f"difference| {forward_error:.3g} for logits up to {max_logit:.3g}")
        if progress is not None:
            progress(len(batch), len(data))
    return Calibration(x_max, required, forward_error, max_logit)
