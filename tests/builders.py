"""Small ONNX graphs built with onnx.helper for the tests, and onnxruntime as the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Appends nodes to a batch-first float graph; ``build`` returns a checked ModelProto."""

    def __init__(self, in_shape, opset=17, input_name="x"):
        self.in_shape = tuple(in_shape)
        self.opset = opset
        self.input_name = input_name
        self.nodes, self.inits = [], []
        self.count = 0

    def const(self, value, name=None) -> str:
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def int_const(self, value) -> str:
        self.count += 1
        name = f"i{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def op(self, op_type, inputs, n_out=1, **attrs) -> str:
        self.count += 1
        outs = [f"{op_type.lower()}{self.count}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self.count}", **attrs))
        return outs[0]

    def build(self, output: str, out_name="y") -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], [out_name], name="out_identity"))
        graph = helper.make_graph(
            self.nodes, "g",
            [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, ["N", *self.in_shape])],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        if out_name in known and known[out_name].type.tensor_type.HasField("shape"):
            model.graph.output[0].CopyFrom(known[out_name])
        else:
            model.graph.output[0].CopyFrom(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", "M"]))
        onnx.checker.check_model(model)
        return model


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def converted_sample(tmp, name: str, n: int) -> tuple:
    """The sample model ``name`` converted into the folder ``tmp`` with its calibration data, and files of its
    first n test samples and labels: (artifact, inputs, labels) as paths."""
    from pathlib import Path

    from relu2snn_cli import convert
    samples = Path(__file__).resolve().parent.parent / "sample_models" / name
    out = Path(tmp) / f"{name}.snn.h5"
    convert.convert(samples / "model.onnx", str(samples / "calib.npy"), out)
    np.save(Path(tmp) / "x.npy", np.load(samples / "test.npy")[:n])
    np.save(Path(tmp) / "y.npy", np.load(samples / "labels.npy")[:n])
    return out, Path(tmp) / "x.npy", Path(tmp) / "y.npy"
