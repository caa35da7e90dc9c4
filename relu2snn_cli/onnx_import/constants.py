"""Constants: Constant and Shape nodes, casts, and the constant folding of every other node whose inputs are
all constants (shape and padding computations), evaluated with onnx's reference evaluator."""

from __future__ import annotations

import numpy as np
import onnx

from .core import Const, Context, OnnxNode, Pop, converter, unsupported


@converter("Shape")
def convert_shape(node: OnnxNode, ctx: Context) -> None:
    """The shape of an activation as a constant, 0 standing for the batch axis (which Reshape reads as "keep");
    a population with a pending Pad has the padded shape."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Const):
        full = np.array(v.value.shape, dtype=np.int64)
    else:
        shape = v.shape
        if isinstance(v, Pop) and v.pads:
            rank = len(shape) - 1
            shape = (shape[0], *(n + v.pads[i] + v.pads[i + rank] for i, n in enumerate(shape[1:])))
        full = np.array([0, *shape], dtype=np.int64)
    ctx.set(node, Const(full[node.attr("start", 0):node.attr("end", len(full))]))


@converter("Cast")
def convert_cast(node: OnnxNode, ctx: Context) -> None:
    """A cast of an activation to a float type is the identity (a cast of a constant is folded)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(node.attr("to"))
    if np.dtype(dtype).kind != "f":
        raise unsupported(node, f"a cast of an activation to {np.dtype(dtype)}")
    ctx.set(node, ctx.get(node, 0, raw=True))


@converter("Constant")
def convert_constant(node: OnnxNode, ctx: Context) -> None:
    """A constant tensor from any of the value attributes."""
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            ctx.set(node, Const(np.asarray(node.attrs[key])))
            return
    raise unsupported(node, "only numeric constants are supported")


NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


def foldable(proto: onnx.NodeProto, constant: set[str]) -> bool:
    """A node evaluated on import: it has inputs, all of them constants, and a deterministic op."""
    inputs = [name for name in proto.input if name]
    return bool(inputs) and all(name in constant for name in inputs) and proto.op_type not in NONDETERMINISTIC


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """The tensors known before any data: initializers, Constant and Shape outputs, and the outputs of
    ``foldable`` nodes, in topological order."""
    constant = {t.name for t in graph.initializer}
    for proto in graph.node:
        if proto.op_type in ("Constant", "Shape") or foldable(proto, constant):
            constant.update(proto.output)
    return constant


def fold(proto: onnx.NodeProto, node: OnnxNode, ctx: Context, opset: int) -> None:
    """Evaluate a node whose inputs are all constants with ``onnx.reference.ReferenceEvaluator``."""
    from onnx.reference import ReferenceEvaluator
    feeds = {name: ctx.values[name].value for name in proto.input if name}
    untyped = onnx.TypeProto()
    graph = onnx.helper.make_graph([proto], "fold", [onnx.helper.make_value_info(n, untyped) for n in feeds],
                                   [onnx.helper.make_value_info(n, untyped) for n in proto.output if n])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])  # the node's opset
    try:
        outputs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # the reference evaluator raises whatever its op implementation raises
        raise unsupported(node, f"its constant inputs cannot be evaluated ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for name, value in zip(proto.output, outputs):
        ctx.values[name] = Const(np.asarray(value))
