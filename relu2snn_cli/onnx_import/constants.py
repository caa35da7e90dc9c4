"""Constants and constant folding of shape computations: Constant, Shape, Gather, Cast."""

from __future__ import annotations

import numpy as np
import onnx

from .core import Const, Context, Lin, OnnxNode, converter, unsupported


@converter("Shape")
def convert_shape(node: OnnxNode, ctx: Context) -> None:
    """The shape of an activation as a constant, 0 standing for the batch axis (which Reshape reads as "keep")."""
    v = ctx.get(node, 0, raw=True)
    if isinstance(v, Const):
        full = np.array(v.value.shape, dtype=np.int64)
    else:
        full = np.array([0, *(v.layer.shape if isinstance(v, Lin) else v.shape)], dtype=np.int64)
    ctx.set(node, Const(full[node.attr("start", 0):node.attr("end", len(full))]))


@converter("Gather")
def convert_gather(node: OnnxNode, ctx: Context) -> None:
    """Constant folding only (shape computations): take indices of a constant."""
    data, idx = ctx.const(node, 0, "data"), ctx.const(node, 1, "indices")
    ctx.set(node, Const(np.take(data, idx.astype(np.int64), axis=node.attr("axis", 0))))


@converter("Cast")
def convert_cast(node: OnnxNode, ctx: Context) -> None:
    """Constant folding of a cast; on an activation, a cast to a float type is the identity."""
    v = ctx.get(node, 0)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(node.attr("to"))
    if isinstance(v, Const):
        ctx.set(node, Const(v.value.astype(dtype)))
    elif np.dtype(dtype).kind == "f":
        ctx.set(node, v)
    else:
        raise unsupported(node, f"a cast of an activation to {np.dtype(dtype)}")


@converter("Constant")
def convert_constant(node: OnnxNode, ctx: Context) -> None:
    """A constant tensor from any of the value attributes."""
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            ctx.set(node, Const(np.asarray(node.attrs[key])))
            return
    raise unsupported(node, "only numeric constants are supported")
