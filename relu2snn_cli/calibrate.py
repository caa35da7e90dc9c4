"""Activation bounds with onnxruntime: every ReLU output exposed as an extra graph output,
the calibration data streamed through in batches, per-channel maxima kept (DESIGN §1, §3.3)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import ir
from .data import check_finite, check_inputs
from .errors import ModelError

CHECK_SAMPLES = 64  # samples on which the float64 forward pass is compared with onnxruntime


@dataclass(frozen=True)
class Calibration:
    """What the calibration data says about the network.

    ``maxima[node]``: per-channel maximum of each ReLU layer's activation; ``input_min`` /
    ``input_max``: extremes of the inputs; ``forward_error``: max |float64 IR logits −
    onnxruntime logits| on the first samples, with ``max_logit`` their largest |logit|.
    """

    maxima: dict
    input_min: float
    input_max: float
    n_samples: int
    sha256: str
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


def calibrate(model_path, graph: ir.Graph, data, spec: str = "calibration data", batch_size: int = 256,
              progress=None) -> Calibration:
    """Run the model over ``data`` (N, *input shape) in batches and collect the activation bounds."""
    check_inputs(data, graph.input.shape, spec)
    layers = [n for n in graph.nodes if isinstance(n, (ir.Dense, ir.Conv)) and n.relu]
    names = [graph.output_name] + [n.source for n in layers]
    sess = session(model_path, list(dict.fromkeys(names)))
    dtype = input_dtype(sess)
    maxima = {n.name: np.full(n.shape[0], -np.inf) for n in layers}
    lo, hi = np.inf, -np.inf
    digest = hashlib.sha256()
    forward_error = max_logit = 0.0
    for start in range(0, len(data), batch_size):
        batch = np.ascontiguousarray(data[start:start + batch_size], dtype=dtype)
        check_finite(batch, start, spec)
        digest.update(batch.tobytes())
        lo, hi = min(lo, float(batch.min())), max(hi, float(batch.max()))
        out = dict(zip(dict.fromkeys(names), sess.run(None, {graph.input_name: batch})))
        for n in layers:
            maxima[n.name] = np.maximum(maxima[n.name], channel_max(out[n.source]))
        if start == 0:
            check = batch[:CHECK_SAMPLES]
            ref = ir.forward(graph, check)
            onnx_logits = out[graph.output_name][:CHECK_SAMPLES].astype(np.float64)
            if onnx_logits.shape != ref.shape:
                raise ModelError(f"{model_path}: logits of shape {onnx_logits.shape[1:]} from onnxruntime, "
                                 f"{ref.shape[1:]} from the imported graph")
            forward_error = float(np.max(np.abs(ref - onnx_logits)))
            max_logit = float(np.max(np.abs(onnx_logits)))
        if progress is not None:
            progress(len(batch))
    return Calibration({k: np.maximum(v, 0.0) for k, v in maxima.items()}, lo, hi, len(data),
                       digest.hexdigest(), forward_error, max_logit)
