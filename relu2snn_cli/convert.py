"""The convert pipeline: ONNX import → calibration → mapping → ``.snn.h5``; returns a plain report."""

from __future__ import annotations

import time

import numpy as np
import onnx

from . import __version__, h5io, ir, mapping, snn
from .calibrate import calibrate, input_stats
from .errors import GraphError, ModelError, naming, onnxruntime_errors
from .shard import load_data
from .onnx_import import import_model as _import_model
from .onnx_import.core import MAX_VALUES, term_window_values

NEURON_MODEL = "TTFS single-spike non-leaky integrate-and-fire with ramp PSPs (Stanojevic et al. 2023)"
MAX_BATCH_VALUES = MAX_VALUES  # values in one tensor or window buffer of one batch: 2 GiB in float64


def check_tensor_sizes(model_path, batch_size: int) -> None:
    """Refuse a model whose largest tensor, over a batch, would exceed MAX_BATCH_VALUES, before anything is allocated.

    ONNX shape inference gives the tensors' shapes without computing them (weights are not
    read); a damaged or hostile attribute such as a padding of thousands would otherwise
    make the import and onnxruntime allocate gigabytes. Models that do not load are left to
    the importer.
    """
    try:
        model = onnx.load(str(model_path), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises many types; import_model reports a model that does not load
        return
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim[1:]
        if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            continue
        shape = [d.dim_value for d in dims]
        size = float(np.prod(shape, dtype=np.float64))
        if size * batch_size > MAX_BATCH_VALUES:
            fix = (f"pass --batch-size {int(MAX_BATCH_VALUES // size)} or less" if size <= MAX_BATCH_VALUES else
                   f"relu2snn handles up to {MAX_BATCH_VALUES} values per sample")
            raise ModelError(f"{model_path}: tensor '{info.name}' of shape {shape} per sample is too large for "
                             f"batches of {batch_size} ({size * batch_size * 8 / 2**30:.3g} GiB); {fix}")


def check_window_sizes(graph: ir.Graph, batch_size: int, model_path) -> None:
    """Refuse a graph whose sliding windows over a batch would exceed MAX_BATCH_VALUES, before calibration
    allocates them.

    A convolution's im2col matrix holds C·∏k·∏out values per sample (``term_window_values``), far more than
    any ONNX tensor: a padding of 99 on a small image passes ``check_tensor_sizes`` and then asks for gigabytes.
    """
    for node in graph.nodes:
        terms = (node,) if isinstance(node, ir.MaxPool) else getattr(node, "terms", ())
        for term in terms:
            if not isinstance(term, (ir.Conv, ir.MaxPool)):
                continue
            size = term_window_values(term)
            if size * batch_size > MAX_BATCH_VALUES:
                raise ModelError(f"{model_path}: node '{node.name}': its sliding windows hold {size} values per "
                                 f"sample, too many for batches of {batch_size} ({size * batch_size * 8 / 2**30:.3g} "
                                 f"GiB); pass --batch-size {max(1, MAX_BATCH_VALUES // size)} or less")


def import_model(model_path, batch_size: int = 256, output: str | None = None):
    """The importer, between the size checks, with errors naming the file; ``output`` chooses among several
    graph outputs (``onnx_import.choose_output``)."""
    check_tensor_sizes(model_path, batch_size)
    with naming(model_path):
        imported = _import_model(model_path, output)
    check_window_sizes(imported.graph, batch_size, model_path)
    return imported


def input_layout(graph) -> str:
    """NC, NCL or NCHW by rank; NHWC when the input's only reader moves its last axis first (a Keras export)."""
    readers = [n for n in graph.nodes[1:] if graph.input.name in n.inputs]
    if (len(graph.input.shape) == 3 and len(readers) == 1 and isinstance(readers[0], ir.Transpose)
            and readers[0].perm == (2, 0, 1)):
        return "NHWC"
    return {1: "NC", 2: "NCL", 3: "NCHW"}[len(graph.input.shape)]


def convert(model_path, calib_spec: str, out_path, options: mapping.MappingOptions = mapping.MappingOptions(),
            input_range: tuple[float, float] | None = None, batch_size: int = 256, progress=None,
            output: str | None = None, client=None) -> dict:
    """Convert a ReLU network and write its spiking version; the report says what was done and measured.
    ``output`` names the ONNX tensor to convert when the model has several outputs; with a Dask ``client``
    calibration runs on its workers (``shard.calibrate``): the same artifact."""
    if options.short_windows:
        raise GraphError(f"zeta {options.zeta}: windows shorter than the activations are for the robustness "
                         "sweep only and are not written (docs/hardware.md)")
    net, report = build(model_path, calib_spec, options, input_range, batch_size, progress, output, client)
    clock = time.perf_counter()
    with naming(model_path):  # what validation finds wrong in the network comes from the model
        h5io.write(out_path, net)
    report["seconds"]["write"] = time.perf_counter() - clock
    return {"output": str(out_path), **report}


def build(model_path, calib_spec: str, options: mapping.MappingOptions = mapping.MappingOptions(),
          input_range: tuple[float, float] | None = None, batch_size: int = 256, progress=None,
          output: str | None = None, client=None) -> tuple[snn.Network, dict]:
    """The spiking network of a ReLU network, in memory, and the report of ``convert`` without its output."""
    seconds = {}
    clock = time.perf_counter()
    imported = import_model(model_path, batch_size, output)
    graph = imported.graph
    seconds["import"] = time.perf_counter() - clock

    clock = time.perf_counter()
    data = load_data(calib_spec)
    stats = input_stats(data, graph.input.shape, calib_spec)
    low, high = input_range if input_range is not None else mapping.encoding_range(stats.low, stats.high, options.zeta)
    scaled = mapping.scale_graph(graph, (low, high), options)
    with onnxruntime_errors(model_path, batch_size):
        cal = calibrate(model_path, graph, scaled, data, (low, high), calib_spec, batch_size, progress, options.zeta,
                        client, options.coding)
    seconds["calibration"] = time.perf_counter() - clock

    clock = time.perf_counter()
    nodes = mapping.spiking_nodes(scaled, cal.x_max, cal.required, (low, high), options)
    layout = input_layout(graph)
    meta = {
        "tool": "relu2snn", "tool_version": __version__, "neuron_model": NEURON_MODEL,
        "source_model_name": imported.file_name, "source_model_sha256": imported.sha256, "source_opset": imported.opset,
        "imported_opset": imported.imported_opset,
        "source_input": graph.input_name, "source_output": imported.output, "source_logits": graph.output_name,
        "calibration_samples": stats.n_samples, "calibration_sha256": stats.sha256,
        "zeta": options.zeta, "s_min": options.s_min, "s_max": options.s_max,
        "input_range": (low, high), "input_shape": tuple(graph.input.shape), "input_layout": layout,
        "removed_output_ops": tuple(graph.removed),
    }
    net = snn.Network(nodes, meta, options.coding)
    net.meta["latency"] = net.latency
    seconds["mapping"] = time.perf_counter() - clock
    return net, {
        "coding": options.coding,
        "layers": len([n for n in nodes if isinstance(n, snn.SpikingLayer)]),
        "latency": net.latency,
        "input_range": [low, high],
        "calibration_samples": stats.n_samples,
        "removed_output_ops": list(graph.removed),
        "forward_max_abs_error_vs_onnxruntime": cal.forward_error,
        "forward_max_abs_logit": cal.max_logit,
        "requirement_pairs": cal.requirement_pairs,
        "statically_certified": float(np.mean(np.concatenate(
            [n.certified.reshape(-1) for n in nodes if isinstance(n, snn.SpikingLayer)] or [np.ones(1, bool)]))),
        "seconds": seconds,
    }
