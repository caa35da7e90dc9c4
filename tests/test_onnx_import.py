"""ONNX → IR import: every supported op and form against onnxruntime, and the import errors.

Each test builds a small ReLU network with ``GraphBuilder`` (ending in a linear
readout unless stated), saves it, imports it with ``import_model`` and checks that
the float64 IR forward pass ``ir.forward`` equals onnxruntime's float32 output on
random inputs with negative values, for batches of 1 and 7 (the batch axis is
dynamic, "N"). Tolerance: rtol 1e-4 and atol 1e-4 · max|ORT output|.
"""

from __future__ import annotations

import copy
import hashlib
from functools import lru_cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import GraphBuilder, run_ort, save
from relu2snn_cli import convert, h5io, ir, ops, simulator, verify
from relu2snn_cli.errors import ModelError, UnsupportedOperatorError
from relu2snn_cli.onnx_import import import_model

DOC = "docs/supported-operators.md"
BATCHES = (1, 7)


# ----------------------------------------------------------------------------- helpers

def assert_close(got, want, rel=1e-4):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"IR shape {got.shape} != ORT shape {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1e-6)
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * scale)


def check(model, tmp_path, reference=None, batches=BATCHES, seed=0, name="model.onnx"):
    """Import ``model`` and compare ir.forward with ORT (on ``reference`` if given) for each batch size."""
    path = save(model, tmp_path / name)
    imp = import_model(path)
    in_shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    assert imp.graph.input.shape == in_shape
    rng = np.random.default_rng(seed)
    for n in batches:
        x = (2.0 * rng.standard_normal((n, *in_shape))).astype(np.float32)
        want = run_ort(reference if reference is not None else model, x)
        got = ir.forward(imp.graph, x)
        assert got.dtype == np.float64
        assert_close(got, want)
    return imp


def rnd(rng, *shape):
    """Random weights scaled by 1/√fan-in so activations stay O(1)."""
    fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return rng.standard_normal(shape) / np.sqrt(fan)


def shape_of(b: GraphBuilder, tensor: str) -> tuple[int, ...]:
    """The shape (batch omitted) of a tensor of the graph built so far, from onnxruntime."""
    nb = copy.copy(b)
    nb.nodes = [n for n in b.nodes if n.name != "out_identity"]  # works after b.build too
    nb.inits = list(b.inits)
    return run_ort(nb.build(tensor, out_name="probe_out"), np.zeros((1, *b.in_shape), np.float32)).shape[1:]


def gemm(b, rng, x, n_out, k=None, **attrs):
    """Gemm with transB=1: W (n_out, k), bias (n_out,)."""
    k = k or int(np.prod(shape_of(b, x)))
    return b.op("Gemm", [x, b.const(rnd(rng, n_out, k)), b.const(0.5 * rng.standard_normal(n_out))],
                transB=1, **attrs)


def conv(b, rng, x, c_out, kernel=(3, 3), bias=True, **attrs):
    c_in = shape_of(b, x)[0]
    inputs = [x, b.const(rnd(rng, c_out, c_in, *kernel))]
    if bias:
        inputs.append(b.const(0.5 * rng.standard_normal(c_out)))
    return b.op("Conv", inputs, kernel_shape=list(kernel), **attrs)


def bn(b, rng, x, positive=False, negative_channel=False):
    c = shape_of(b, x)[0]
    gamma = rng.uniform(0.5, 1.5, c) * (1.0 if positive else rng.choice([-1.0, 1.0], c))
    if negative_channel:
        gamma[0] = -abs(gamma[0])
    return b.op("BatchNormalization",
                [x, b.const(gamma), b.const(rng.standard_normal(c)), b.const(0.5 * rng.standard_normal(c)),
                 b.const(rng.uniform(0.5, 2.0, c))], epsilon=1e-3)


def readout(b, rng, x, n_out=3):
    """Flatten (if the tensor is an image) and a Gemm: the linear readout; returns the built model."""
    if len(shape_of(b, x)) > 1:
        x = b.op("Flatten", [x])
    return b.build(gemm(b, rng, x, n_out))


def ir_kinds(graph) -> list[str]:
    """Node kinds: an affine layer by its terms ("Conv", "Conv+Conv") and "+relu"; a reshape to a vector is "Flatten"."""
    def kind(n):
        if isinstance(n, ir.Affine):
            return "+".join(type(t).__name__ for t in n.terms) + ("+relu" if n.relu else "")
        if isinstance(n, ir.Reshape) and len(n.shape) == 1:
            return "Flatten"
        return type(n).__name__
    return [kind(n) for n in graph.nodes]


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg, f"message is not a single line: {msg!r}"
    return msg


def import_error(model, tmp_path, kind=ModelError, name="m.onnx") -> tuple[BaseException, str]:
    """Import a model that must be refused with ``kind``: the exception and its one-line message."""
    with pytest.raises(kind) as info:
        import_model(save(model, tmp_path / name))
    return info.value, one_line(info.value)


# ----------------------------------------------------------------------------- Gemm

C_FORMS = ["vector", "row", "scalar", "absent"]


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0)])
@pytest.mark.parametrize("c_form", C_FORMS)
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_forms(tmp_path, trans_b, c_form, alpha, beta):
    rng = np.random.default_rng(1)
    b = GraphBuilder((6,))

    def layer(x, k, n):
        w = rnd(rng, n, k)  # (out, in)
        inputs = [x, b.const(w.T if trans_b == 0 else w)]
        c = {"vector": rng.standard_normal(n), "row": rng.standard_normal((1, n)),
             "scalar": np.asarray(rng.standard_normal()), "absent": None}[c_form]
        if c is not None:
            inputs.append(b.const(c))
        return b.op("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta)

    h = b.op("Relu", [layer("x", 6, 5)])
    imp = check(b.build(layer(h, 5, 3)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]
    assert imp.graph.nodes[-1].shape == (3,)


# ----------------------------------------------------------------------------- MatMul + Add

@pytest.mark.parametrize("bias_shape", ["vector", "row"])
@pytest.mark.parametrize("const_first", [False, True])
def test_matmul_add_bias(tmp_path, const_first, bias_shape):
    rng = np.random.default_rng(2)
    b = GraphBuilder((6,))

    def layer(x, k, n):
        y = b.op("MatMul", [x, b.const(rnd(rng, n, k).T)])
        c = b.const(rng.standard_normal(n if bias_shape == "vector" else (1, n)))
        return b.op("Add", [c, y] if const_first else [y, c])

    h = b.op("Relu", [layer("x", 6, 8)])
    imp = check(b.build(layer(h, 8, 4)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]
    assert np.any(imp.graph.nodes[1].bias != 0)


def test_matmul_without_bias(tmp_path):
    rng = np.random.default_rng(3)
    b = GraphBuilder((5,))
    h = b.op("Relu", [b.op("MatMul", ["x", b.const(rnd(rng, 5, 7))])])
    check(b.build(b.op("MatMul", [h, b.const(rnd(rng, 7, 2))])), tmp_path)


# ----------------------------------------------------------------------------- Conv

CONV_CASES = {
    "k1": dict(kernel=(1, 1)),
    "k3-pad1": dict(kernel=(3, 3), pads=[1, 1, 1, 1]),
    "k5-s2-asym": dict(kernel=(5, 5), strides=[2, 2], pads=[2, 1, 0, 2]),
    "k3-s1x2-d2-asym": dict(kernel=(3, 3), strides=[1, 2], dilations=[2, 2], pads=[0, 1, 2, 0]),
    "k2x3-s3": dict(kernel=(2, 3), strides=[3, 3]),
    "k3-d2x1": dict(kernel=(3, 3), dilations=[2, 1], pads=[2, 1, 2, 1]),
    "same_upper-k3-s2": dict(kernel=(3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_upper-k2-s1": dict(kernel=(2, 2), auto_pad="SAME_UPPER"),
    "same_lower-k4-s2": dict(kernel=(4, 4), strides=[2, 2], auto_pad="SAME_LOWER"),
    "same_lower-k2x3-s1": dict(kernel=(2, 3), auto_pad="SAME_LOWER"),
    "valid-k3-s2": dict(kernel=(3, 3), strides=[2, 2], auto_pad="VALID"),
    "no-bias-k3-pad1": dict(kernel=(3, 3), pads=[1, 1, 1, 1], bias=False),
    "no-bias-k5": dict(kernel=(5, 5), bias=False),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forms(tmp_path, case):
    """The geometry under test is used by both convolutions: on the raw input and after a ReLU."""
    cfg = dict(CONV_CASES[case])
    rng = np.random.default_rng(4)
    b = GraphBuilder((2, 12, 11))
    h = b.op("Relu", [conv(b, rng, "x", 4, **cfg)])
    h = b.op("Relu", [conv(b, rng, h, 3, **cfg)])
    imp = check(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv+relu", "Flatten", "Dense"]
    for node in imp.graph.nodes[1:3]:
        assert node.shape == shape_of(b, node.source)


def test_conv_readout_without_flatten(tmp_path):
    """A Conv as the readout (no ReLU): logits of shape (O, H, W)."""
    rng = np.random.default_rng(5)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    imp = check(b.build(conv(b, rng, h, 2, kernel=(2, 2), strides=[2, 2])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv"]


# ----------------------------------------------------------------------------- BatchNormalization

@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_batchnorm_before_relu_folds_backward(tmp_path, net):
    rng = np.random.default_rng(6)
    if net == "cnn":
        b = GraphBuilder((2, 8, 7))
        h = b.op("Relu", [bn(b, rng, conv(b, rng, "x", 4, pads=[1, 0, 0, 1]))])
        h = b.op("Relu", [bn(b, rng, conv(b, rng, h, 3, bias=False))])
        kinds = ["Input", "Conv+relu", "Conv+relu", "Flatten", "Dense"]
    else:
        b = GraphBuilder((6,))
        h = b.op("Relu", [bn(b, rng, gemm(b, rng, "x", 8))])
        kinds = ["Input", "Dense+relu", "Dense"]
    imp = check(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == kinds


FORWARD_FOLD_CONVS = {
    "pad1": dict(pads=[1, 1, 1, 1]),
    "asym-s2": dict(pads=[0, 2, 1, 0], strides=[2, 2]),
    "pad2-d2": dict(pads=[2, 2, 2, 2], dilations=[2, 2]),
    "same_upper-k2": dict(kernel=(2, 2), auto_pad="SAME_UPPER"),
    "same_lower-k4-s2": dict(kernel=(4, 4), strides=[2, 2], auto_pad="SAME_LOWER"),
}


@pytest.mark.parametrize("case", FORWARD_FOLD_CONVS)
def test_batchnorm_after_relu_folds_forward_into_padded_conv(tmp_path, case):
    """Conv → ReLU → BN → padded Conv: the BN shift folds into the next conv as a bias MAP (O, Ho, Wo)."""
    rng = np.random.default_rng(7)
    b = GraphBuilder((2, 9, 8))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3)]))
    y = conv(b, rng, h, 4, **FORWARD_FOLD_CONVS[case])
    imp = check(readout(b, rng, b.op("Relu", [y])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv+relu", "Flatten", "Dense"]
    folded = imp.graph.nodes[2]  # the padded conv right after the BN
    assert folded.shape == shape_of(b, y)
    assert folded.bias.shape == folded.shape  # (O, Ho, Wo): the border positions differ
    assert folded.bias.ndim == 3 and folded.bias.shape[0] == 4
    assert imp.graph.nodes[1].bias.shape == (3,)  # the conv before the ReLU keeps a vector bias


def test_batchnorm_on_input_folds_into_first_padded_conv(tmp_path):
    """Input → BN → padded Conv: the first conv's IR node gets the bias map."""
    rng = np.random.default_rng(8)
    b = GraphBuilder((2, 7, 6))
    y = conv(b, rng, bn(b, rng, "x"), 3, pads=[1, 1, 1, 1])
    imp = check(readout(b, rng, b.op("Relu", [y])), tmp_path)
    first = imp.graph.nodes[1]
    assert isinstance(first.terms[0], ir.Conv) and first.bias.shape == (3, 7, 6)


def test_batchnorm_before_unpadded_conv_gives_vector_bias(tmp_path):
    rng = np.random.default_rng(9)
    b = GraphBuilder((2, 7, 6))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3)]))
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 4)])), tmp_path)
    assert imp.graph.nodes[2].bias.shape == (4,)


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_batchnorm_after_relu_before_flatten_gemm(tmp_path, flatten):
    rng = np.random.default_rng(10)
    b = GraphBuilder((2, 6, 5))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])]))
    h = b.op("Flatten", [h]) if flatten == "Flatten" else b.op("Reshape", [h, b.int_const([0, -1])])
    imp = check(b.build(gemm(b, rng, h, 4)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Flatten", "Dense"]


def test_batchnorm1d_after_relu_before_gemm(tmp_path):
    rng = np.random.default_rng(11)
    b = GraphBuilder((6,))
    h = bn(b, rng, b.op("Relu", [gemm(b, rng, "x", 7)]))
    check(b.build(gemm(b, rng, h, 3)), tmp_path)


# ----------------------------------------------------------------------------- Mul / Add / Sub / Div

ARITH = [(op, first) for op in ("Mul", "Add", "Sub", "Div") for first in (False, True)
         if not (op == "Div" and first)]


def _arith_const(rng, op, shape):
    if op in ("Mul", "Div"):
        return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    return rng.standard_normal(shape)


def _arith(b, rng, x, op, const_first, shape):
    c = b.const(_arith_const(rng, op, shape))
    return b.op(op, [c, x] if const_first else [x, c])


@pytest.mark.parametrize("where", ["before_relu", "after_relu"])
@pytest.mark.parametrize("op,const_first", ARITH, ids=[f"{o}-{'cx' if f else 'xc'}" for o, f in ARITH])
def test_arithmetic_cnn(tmp_path, op, const_first, where):
    """Conv → [op c] → ReLU → [op c] → padded Conv → ReLU → Flatten → Gemm."""
    rng = np.random.default_rng(12)
    b = GraphBuilder((2, 7, 6))
    h = conv(b, rng, "x", 3, pads=[1, 1, 1, 1])
    if where == "before_relu":
        # Mul/Div must be per channel to fold into weights; Add/Sub may vary per position (bias map)
        h = _arith(b, rng, h, op, const_first, (3, 1, 1) if op in ("Mul", "Div") else (3, 7, 6))
    h = b.op("Relu", [h])
    if where == "after_relu":
        h = _arith(b, rng, h, op, const_first, (1, 3, 1, 1) if op in ("Mul", "Div") else (3, 1, 1))
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, pads=[0, 1, 1, 0])])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv+relu", "Flatten", "Dense"]


@pytest.mark.parametrize("where", ["before_relu", "after_relu"])
@pytest.mark.parametrize("op,const_first", ARITH, ids=[f"{o}-{'cx' if f else 'xc'}" for o, f in ARITH])
def test_arithmetic_mlp(tmp_path, op, const_first, where):
    """Gemm → [op c] → ReLU → [op c] → Gemm, with a per-feature constant before and a scalar after."""
    rng = np.random.default_rng(13)
    b = GraphBuilder((5,))
    h = gemm(b, rng, "x", 6)
    if where == "before_relu":
        h = _arith(b, rng, h, op, const_first, (6,))
    h = b.op("Relu", [h])
    if where == "after_relu":
        h = _arith(b, rng, h, op, const_first, ())
    imp = check(b.build(gemm(b, rng, h, 3)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]


def test_chained_affine_maps_before_and_after_relu(tmp_path):
    rng = np.random.default_rng(14)
    b = GraphBuilder((2, 6, 6))
    h = conv(b, rng, "x", 3, pads=[1, 1, 1, 1])
    h = b.op("Sub", [b.op("Mul", [h, b.const(np.array([2.0, -0.5, 1.5]).reshape(3, 1, 1))]), b.const(0.3)])
    h = bn(b, rng, b.op("Relu", [bn(b, rng, h)]))
    h = b.op("Div", [b.op("Sub", [b.const(1.0), h]), b.const(np.array([4.0, -2.0, 0.5]).reshape(3, 1, 1))])
    h = b.op("Relu", [conv(b, rng, h, 2, pads=[1, 2, 0, 1], strides=[2, 1])])
    check(readout(b, rng, h), tmp_path)


def test_affine_map_on_the_raw_input(tmp_path):
    """x·c − d before the first Gemm (input normalisation) folds into the first layer."""
    rng = np.random.default_rng(15)
    b = GraphBuilder((5,))
    h = b.op("Sub", [b.op("Mul", ["x", b.const(rng.uniform(0.5, 2, 5))]), b.const(rng.standard_normal(5))])
    check(b.build(gemm(b, rng, b.op("Relu", [gemm(b, rng, h, 4)]), 2)), tmp_path)


# ----------------------------------------------------------------------------- MaxPool

POOL_CASES = {
    "k2-s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "k3-s2-pad1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "k2x3-s1x2-asym-ceil": dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0], ceil_mode=1),
    "k3-s3-ceil": dict(kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1),
    "k2-s2-ceil-pad": dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1),
    "k3-s1-d2": dict(kernel_shape=[3, 3], dilations=[2, 2]),
    "k2-default-stride": dict(kernel_shape=[2, 2]),
    "same_upper-k3-s2": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_forms(tmp_path, case):
    rng = np.random.default_rng(16)
    b = GraphBuilder((2, 11, 10))
    p = b.op("MaxPool", [b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])], **POOL_CASES[case])
    h = b.op("Relu", [conv(b, rng, p, 4, kernel=(2, 2))])
    # A 1×1 Conv readout rather than Flatten+Gemm: with ceil_mode, onnx's shape inference can disagree
    # with onnxruntime's MaxPool output size (ORT drops a window starting in the end padding), and
    # ORT then refuses a Gemm sized from the real output.
    imp = check(b.build(conv(b, rng, h, 2, kernel=(1, 1))), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "MaxPool", "Conv+relu", "Conv"]
    assert imp.graph.nodes[2].shape == shape_of(b, p)


def test_maxpool_ceil_mode_dropping_last_window(tmp_path):
    """ceil_mode where ORT drops a last window that would start in the end padding (5 → 2, not 3)."""
    rng = np.random.default_rng(17)
    b = GraphBuilder((1, 5, 5))
    h = b.op("Relu", [conv(b, rng, "x", 2, kernel=(1, 1))])
    p = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[3, 3], pads=[0, 0, 1, 1], ceil_mode=1)
    assert shape_of(b, p) == (2, 2, 2)
    imp = check(b.build(conv(b, rng, p, 2, kernel=(2, 2))), tmp_path)
    assert imp.graph.nodes[2].shape == (2, 2, 2)


def test_maxpool_after_positive_batchnorm(tmp_path):
    rng = np.random.default_rng(18)
    b = GraphBuilder((2, 8, 8))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])]), positive=True)
    h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, pads=[1, 1, 1, 1])])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "MaxPool", "Conv+relu", "Flatten", "Dense"]


def test_maxpool_on_the_raw_input(tmp_path):
    rng = np.random.default_rng(19)
    b = GraphBuilder((1, 6, 6))
    h = b.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0])
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2)])), tmp_path)
    assert ir_kinds(imp.graph)[:2] == ["Input", "MaxPool"]


def test_maxpool_then_relu_and_flatten_into_gemm(tmp_path):
    rng = np.random.default_rng(20)
    b = GraphBuilder((2, 7, 7))
    h = b.op("MaxPool", [b.op("Relu", [conv(b, rng, "x", 3)])], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    h = b.op("Relu", [h])  # ReLU of a ReLU output: the identity
    imp = check(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "MaxPool", "Flatten", "Dense"]


# ----------------------------------------------------------------------------- Flatten / Reshape / Dropout / Identity / Constant

@pytest.mark.parametrize("kind", ["Flatten", "Reshape[0,-1]", "Reshape[-1,n]", "Reshape[0,n]", "Reshape[-1,C,H,W]"])
def test_flatten_and_reshape(tmp_path, kind):
    rng = np.random.default_rng(21)
    b = GraphBuilder((2, 5, 4))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    n = int(np.prod(shape_of(b, h)))
    if kind == "Flatten":
        f = b.op("Flatten", [h])
    else:
        target = {"Reshape[0,-1]": [0, -1], "Reshape[-1,n]": [-1, n], "Reshape[0,n]": [0, n],
                  "Reshape[-1,C,H,W]": [-1, 3, 5, 4]}[kind]
        f = b.op("Reshape", [h, b.int_const(target)])
    imp = check(readout(b, rng, f), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Flatten", "Dense"]


def test_flatten_of_a_vector_is_the_identity(tmp_path):
    rng = np.random.default_rng(22)
    b = GraphBuilder((5,))
    h = b.op("Flatten", [b.op("Relu", [gemm(b, rng, "x", 4)])])
    h = b.op("Reshape", [h, b.int_const([-1, 4])])
    imp = check(b.build(gemm(b, rng, h, 2)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]


def test_dropout_and_identity(tmp_path):
    rng = np.random.default_rng(23)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Dropout", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("Identity", [b.op("Relu", [b.op("Identity", [h])])])
    h = b.op("Dropout", [b.op("Flatten", [b.op("Dropout", [h])])])
    h = b.op("Identity", [b.op("Relu", [gemm(b, rng, h, 5)])])
    out = b.op("Dropout", [b.op("Identity", [gemm(b, rng, h, 3)])])
    imp = check(b.build(out), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Flatten", "Dense+relu", "Dense"]


def test_constant_node_feeding_gemm_weight(tmp_path):
    rng = np.random.default_rng(24)
    b = GraphBuilder((4,))
    w1 = rnd(rng, 6, 4).astype(np.float32)
    b.nodes.append(helper.make_node("Constant", [], ["w_const"], name="W1",
                                    value=numpy_helper.from_array(w1, "w1")))
    b.nodes.append(helper.make_node("Constant", [], ["s_const"], name="S", value_float=-1.5))
    h = b.op("Relu", [b.op("Gemm", ["x", "w_const"], transB=1)])
    h = b.op("Mul", [h, "s_const"])
    imp = check(b.build(gemm(b, rng, h, 3)), tmp_path)
    np.testing.assert_array_equal(imp.graph.nodes[1].terms[0].weight, w1.astype(np.float64))


# ----------------------------------------------------------------------------- Softmax / LogSoftmax

def _softmax_model(op, net, with_softmax):
    rng = np.random.default_rng(25)
    if net == "mlp":
        b = GraphBuilder((6,))
        h = b.op("Relu", [gemm(b, rng, "x", 5)])
    else:
        b = GraphBuilder((2, 5, 5))
        h = b.op("Flatten", [b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])])
    logits = gemm(b, rng, h, 4)
    if not with_softmax:
        return b.build(logits), logits
    return b.build(b.op(op, [logits], axis=1)), logits


def _np_softmax(z, log=False):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True)) if log else np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_at_output_is_removed(tmp_path, op, net):
    model, logits = _softmax_model(op, net, with_softmax=True)
    reference, logits2 = _softmax_model(op, net, with_softmax=False)
    assert logits == logits2
    imp = check(model, tmp_path, reference=reference)  # IR logits == ORT tensor before the softmax
    assert imp.graph.removed == (op,)
    assert imp.graph.output_name == logits
    softmax_node = next(n for n in model.graph.node if n.op_type == op)
    assert imp.graph.output_name == softmax_node.input[0]
    # and the softmax of the IR logits is the model's output
    x = np.random.default_rng(26).standard_normal((7, *imp.graph.input.shape)).astype(np.float32)
    np.testing.assert_allclose(_np_softmax(ir.forward(imp.graph, x), log=op == "LogSoftmax"),
                               run_ort(model, x), rtol=1e-4, atol=1e-5)


def test_no_softmax_means_nothing_removed(tmp_path):
    model, logits = _softmax_model("Softmax", "mlp", with_softmax=False)
    imp = check(model, tmp_path)
    assert imp.graph.removed == ()
    assert logits != "y"
    assert imp.graph.output_name == "y"  # the graph output (the Identity after the logits Gemm)
    assert imp.graph.nodes[-1].source == "y"


# ----------------------------------------------------------------------------- ReLU at the output

def test_relu_as_last_op_gets_identity_readout(tmp_path):
    rng = np.random.default_rng(27)
    b = GraphBuilder((5,))
    h = b.op("Relu", [gemm(b, rng, "x", 6)])
    imp = check(b.build(b.op("Relu", [gemm(b, rng, h, 4)])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense+relu", "Dense"]
    readout_node = imp.graph.nodes[-1]
    np.testing.assert_array_equal(readout_node.terms[0].weight, np.eye(4))
    np.testing.assert_array_equal(readout_node.bias, np.zeros(4))


def test_cnn_ending_in_gemm_relu(tmp_path):
    rng = np.random.default_rng(28)
    b = GraphBuilder((1, 6, 6))
    h = b.op("Flatten", [b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])])
    imp = check(b.build(b.op("Relu", [gemm(b, rng, h, 3)])), tmp_path)
    assert ir_kinds(imp.graph)[-2:] == ["Dense+relu", "Dense"]


def test_relu_then_affine_map_at_output(tmp_path):
    """ReLU → Mul → Add as the last ops: the identity readout takes the pending affine map."""
    rng = np.random.default_rng(29)
    b = GraphBuilder((5,))
    h = b.op("Relu", [gemm(b, rng, "x", 4)])
    h = b.op("Add", [b.op("Mul", [h, b.const([2.0, -1.0, 0.5, 3.0])]), b.const(0.25)])
    imp = check(b.build(h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]


# ----------------------------------------------------------------------------- opsets, dynamic batch, metadata

@lru_cache(maxsize=None)
def newest_opset() -> int:
    """The newest default-domain opset onnx knows that onnxruntime also loads."""
    for opset in range(onnx.defs.onnx_opset_version(), 16, -1):
        try:
            b = GraphBuilder((3,), opset=opset)
            run_ort(b.build(b.op("Gemm", ["x", b.const(np.ones((3, 2)))])), np.ones((1, 3), np.float32))
            return opset
        except Exception:
            continue
    return 17


def _full_cnn(opset, softmax=True):
    rng = np.random.default_rng(30)
    b = GraphBuilder((2, 10, 9), opset=opset)
    h = b.op("Relu", [bn(b, rng, conv(b, rng, "x", 4, pads=[1, 1, 1, 1]))])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    h = bn(b, rng, b.op("Relu", [conv(b, rng, h, 3, pads=[0, 1, 1, 0], strides=[1, 2])]))
    h = b.op("Reshape", [h, b.int_const([0, -1])])
    h = b.op("Dropout", [b.op("Relu", [gemm(b, rng, h, 6)])])
    logits = gemm(b, rng, h, 3)
    return b.build(b.op("Softmax", [logits], axis=1) if softmax else logits)


@pytest.mark.parametrize("opset", [11, 13, 17, newest_opset()])
def test_opsets_and_dynamic_batch(tmp_path, opset):
    model = _full_cnn(opset)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    imp = check(model, tmp_path, reference=_full_cnn(opset, softmax=False), batches=(1, 7, 3))
    assert imp.opset == opset
    assert imp.file_name == "model.onnx"
    assert imp.sha256 == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert imp.graph.removed == ("Softmax",)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "MaxPool", "Conv+relu", "Flatten", "Dense+relu", "Dense"]


def test_newest_opset_is_recent():
    assert newest_opset() >= 17


# ----------------------------------------------------------------------------- errors

def _mlp_with(op_types, rng=None):
    """x(6) → Gemm → op₁ → Gemm → op₂ → … → Gemm."""
    rng = rng or np.random.default_rng(31)
    b = GraphBuilder((6,))
    h = "x"
    names = []
    for op in op_types:
        h = b.op(op, [gemm(b, rng, h, 5)])
        names.append(b.nodes[-1].name)
    return b.build(gemm(b, rng, h, 3)), names


def test_unsupported_ops_are_all_listed(tmp_path):
    model, (sig, tanh) = _mlp_with(["Sigmoid", "Tanh"])
    error, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    msg = msg
    for part in ("Sigmoid", sig, "Tanh", tanh, DOC):
        assert part in msg
    assert set(error.nodes) == {(sig, "Sigmoid"), (tanh, "Tanh")}
    assert len(error.nodes) == 2
    assert isinstance(error, ModelError)


def test_sum_of_two_relu_outputs_is_one_layer_with_two_identity_terms(tmp_path):
    """ReLU(a) + ReLU(b) is non-negative: one spiking layer reading both populations, no ReLU needed."""
    rng = np.random.default_rng(32)
    b = GraphBuilder((2, 5, 5))
    r1 = b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    r2 = b.op("Relu", [conv(b, rng, r1, 2, pads=[1, 1, 1, 1])])
    imp = check(readout(b, rng, b.op("Add", [r1, r2])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv+relu", "Conv+Conv+relu", "Flatten", "Dense"]
    assert imp.graph.nodes[3].inputs == (imp.graph.nodes[1].name, imp.graph.nodes[2].name)


@pytest.mark.parametrize("groups, out", [(2, 4), (4, 4), (4, 8)], ids=["g2", "depthwise", "depthwise-x2"])
def test_grouped_conv(tmp_path, groups, out):
    rng = np.random.default_rng(33)
    b = GraphBuilder((4, 5, 5))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])]))   # a pending map per channel
    h = b.op("Conv", [h, b.const(rnd(rng, out, 4 // groups, 3, 3)), b.const(rnd(rng, out))], kernel_shape=[3, 3],
             group=groups, pads=[1, 0, 1, 2], strides=[1, 2])
    imp = check(readout(b, rng, b.op("Relu", [h])), tmp_path)
    assert imp.graph.nodes[2].terms[0].groups == groups


def test_maxpool_after_batchnorm_with_negative_scale_takes_the_latest_spike(tmp_path):
    """max(k·a + h) = k·min(a) + h for k < 0: those channels pool the latest spike (docs/math.md §6)."""
    rng = np.random.default_rng(34)
    b = GraphBuilder((2, 6, 6))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])]), positive=True, negative_channel=True)
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    imp = check(readout(b, rng, h), tmp_path)
    pool = imp.graph.nodes[2]
    assert isinstance(pool, ir.MaxPool) and pool.latest == (0,)


def test_gemm_with_trans_a(tmp_path):
    rng = np.random.default_rng(35)
    b = GraphBuilder((6,))
    h = b.op("Gemm", ["x", b.const(rnd(rng, 6, 6))], transA=1)
    name = b.nodes[-1].name
    with pytest.raises(UnsupportedOperatorError) as info:
        import_model(save(b.build(h), tmp_path / "m.onnx"))
    msg = one_line(info.value)
    assert name in msg and "transA" in msg


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(36).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError) as info:
        import_model(path)
    msg = one_line(info.value)
    assert "noise.onnx" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ModelError) as info:
        import_model(tmp_path / "absent.onnx")
    assert "absent.onnx" in one_line(info.value)


def test_two_inputs(tmp_path):
    model, _ = _mlp_with(["Relu"])
    model.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 6]))
    onnx.checker.check_model(model)
    _, msg = import_error(model, tmp_path)
    assert "2 inputs" in msg


def test_dynamic_non_batch_dimension(tmp_path):
    rng = np.random.default_rng(37)
    b = GraphBuilder((2, 5, 5))
    model = readout(b, rng, b.op("Relu", [conv(b, rng, "x", 2)]))
    dim = model.graph.input[0].type.tensor_type.shape.dim[2]
    dim.Clear()
    dim.dim_param = "H"
    onnx.checker.check_model(model)
    _, msg = import_error(model, tmp_path)
    msg = msg
    assert "dynamic" in msg and "'H'" in msg


def test_division_by_an_activation(tmp_path):
    rng = np.random.default_rng(39)
    b = GraphBuilder((6,))
    h = b.op("Div", [b.const(1.0), b.op("Relu", [gemm(b, rng, "x", 5)])])
    name = b.nodes[-1].name
    with pytest.raises(UnsupportedOperatorError) as info:
        import_model(save(b.build(gemm(b, rng, h, 3)), tmp_path / "m.onnx"))
    assert name in one_line(info.value)


def test_softmax_not_at_the_output(tmp_path):
    model, (name,) = _mlp_with(["Softmax"])
    _, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    assert name in msg


def test_relu_of_a_conv_at_the_output(tmp_path):
    """A ReLU on an image at the output: the readout copies the spiking layer (1×1 depthwise synapses)."""
    rng = np.random.default_rng(40)
    b = GraphBuilder((1, 4, 4))
    imp = check(b.build(b.op("Relu", [conv(b, rng, "x", 2)])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv"]


# ----------------------------------------------------------------------------- malformed models
#
# Both models pass onnx.checker.check_model (the importer's check, without full_check) but are
# invalid: onnxruntime refuses them. The importer says so with a one-line ModelError.

def test_gemm_weight_not_matching_input_is_a_model_error(tmp_path):
    rng = np.random.default_rng(41)
    b = GraphBuilder((5,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rnd(rng, 4, 6))], transB=1)])  # W (4, 6) on x (N, 5)
    model = b.build(gemm(b, rng, h, 3, k=4))
    _, msg = import_error(model, tmp_path)
    assert "Gemm node 'Gemm_" in msg and "(4, 6)" in msg and "(5,)" in msg


def test_conv_kernel_larger_than_input_is_a_model_error(tmp_path):
    rng = np.random.default_rng(42)
    b = GraphBuilder((2, 3, 3))
    model = b.build(b.op("Conv", ["x", b.const(rnd(rng, 3, 2, 5, 5))], kernel_shape=[5, 5]))
    _, msg = import_error(model, tmp_path)
    assert "Conv node 'Conv_" in msg and "does not fit the input (2, 3, 3)" in msg


def test_division_by_zero_constant_is_named(tmp_path):
    rng = np.random.default_rng(43)
    b = GraphBuilder((4,))
    h = b.op("Div", [b.op("Gemm", ["x", b.const(rnd(rng, 3, 4))], transB=1), b.const(np.array([1.0, 0.0, 2.0]))])
    model = b.build(gemm(b, rng, b.op("Relu", [h]), 2, k=3))
    _, msg = import_error(model, tmp_path)
    assert "Div node" in msg and "non-finite" in msg


def test_softmax_over_the_batch_axis_is_not_removed(tmp_path):
    rng = np.random.default_rng(44)
    b = GraphBuilder((4,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rnd(rng, 3, 4))], transB=1)])
    model = b.build(b.op("Softmax", [gemm(b, rng, h, 2, k=3)], axis=0))
    _, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    assert "axis=0" in msg


def test_a_population_read_by_two_branches(tmp_path):
    rng = np.random.default_rng(45)
    b = GraphBuilder((4,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rnd(rng, 3, 4))], transB=1)])
    first = b.op("Relu", [gemm(b, rng, h, 3, k=3)])  # one branch reads h ...
    second = b.op("Relu", [gemm(b, rng, h, 3, k=3)])  # ... and another reads it again
    diff = b.op("Relu", [b.op("Sub", [first, second])])   # may be negative: needs its ReLU
    imp = check(b.build(gemm(b, rng, diff, 2, k=3)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense+relu", "Dense+relu", "Dense+Dense+relu", "Dense"]


def test_unused_secondary_outputs_are_fine_used_ones_are_named(tmp_path):
    rng = np.random.default_rng(46)
    b = GraphBuilder((4,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rnd(rng, 3, 4))], transB=1)])
    h = b.op("Dropout", [h], n_out=2)  # a named mask nobody reads
    model = b.build(gemm(b, rng, h, 2, k=3))
    x = rng.normal(size=(5, 4))
    graph = import_model(save(model, tmp_path / "ok.onnx")).graph
    assert_close(ir.forward(graph, x), run_ort(model, x))

    b = GraphBuilder((1, 4, 4))
    h = b.op("Relu", [b.op("Conv", ["x", b.const(rnd(rng, 2, 1, 3, 3))], pads=[1, 1, 1, 1])])
    b.op("MaxPool", [h], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    indices = b.nodes[-1].output[1]
    model = b.build(indices)  # the builder's final Identity reads the Indices output
    _, msg = import_error(model, tmp_path, UnsupportedOperatorError, name="bad.onnx")
    assert "secondary output" in msg


def test_weights_in_an_external_data_file(tmp_path, monkeypatch):
    """The dynamo exporter stores weights beside the model; they are read relative to the model, not the cwd."""
    rng = np.random.default_rng(47)
    b = GraphBuilder((6,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rnd(rng, 5, 6)), b.const(rnd(rng, 5))], transB=1)])
    model = b.build(gemm(b, rng, h, 3, k=5))
    (tmp_path / "model").mkdir()
    onnx.save(copy.deepcopy(model), str(tmp_path / "model" / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    imported = import_model(tmp_path / "model" / "m.onnx")
    x = rng.normal(size=(4, 6))
    assert_close(ir.forward(imported.graph, x), run_ort(model, x))
    # the hash covers the weights: other weights, same .onnx file, another hash
    data = tmp_path / "model" / "m.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert import_model(tmp_path / "model" / "m.onnx").sha256 != imported.sha256


def test_missing_external_data_file_is_a_model_error(tmp_path):
    rng = np.random.default_rng(48)
    b = GraphBuilder((6,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rnd(rng, 5, 6))], transB=1)])
    onnx.save(b.build(gemm(b, rng, h, 3, k=5)), str(tmp_path / "m.onnx"), save_as_external_data=True,
              location="m.onnx.data", size_threshold=0)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ModelError) as info:
        import_model(tmp_path / "m.onnx")
    assert "m.onnx" in one_line(info.value)


def test_dynamic_flatten_pattern_is_folded(tmp_path):
    """x.view(x.size(0), -1) as TorchScript exports it: Shape, Gather, Unsqueeze, Concat, Reshape."""
    rng = np.random.default_rng(49)
    b = GraphBuilder((1, 4, 4))
    h = b.op("Relu", [b.op("Conv", ["x", b.const(rnd(rng, 2, 1, 3, 3))], pads=[1, 1, 1, 1])])
    shape = b.op("Shape", [h])
    batch = b.op("Gather", [shape, b.int_const(0)], axis=0)
    target = b.op("Concat", [b.op("Unsqueeze", [batch, b.int_const([0])]), b.int_const([-1])], axis=0)
    imp = check(b.build(gemm(b, rng, b.op("Reshape", [h, target]), 3, k=32)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Flatten", "Dense"]


# ----------------------------------------------------------------------------- graph operators (DAGs, layouts)

@pytest.mark.parametrize("opset", [11, 17])
def test_conv1d_grouped_pools_and_batchnorm(tmp_path, opset):
    """1-D: Conv (strided, dilated, grouped), BatchNorm after the ReLU, MaxPool1d, AveragePool1d with padding."""
    rng = np.random.default_rng(60)
    b = GraphBuilder((2, 11), opset=opset)
    h = b.op("Relu", [conv(b, rng, "x", 4, kernel=(3,), pads=[1, 2], strides=[2], dilations=[1])])
    h = bn(b, rng, h)
    h = b.op("Relu", [b.op("Conv", [h, b.const(rnd(rng, 4, 2, 3)), b.const(rnd(rng, 4))], kernel_shape=[3],
                           pads=[1, 1], group=2, dilations=[2])])
    h = b.op("MaxPool", [h], kernel_shape=[2], strides=[1])
    h = b.op("AveragePool", [h], kernel_shape=[2], strides=[1], pads=[1, 0], count_include_pad=1)
    imp = check(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv+relu", "MaxPool", "Dense"]   # the pooling folded


@pytest.mark.parametrize("case", ["valid", "padded", "global", "after-bn", "before-conv", "read-twice"])
def test_average_pooling(tmp_path, case):
    """AveragePool / GlobalAveragePool: folded into a dense layer that reads it, else a spiking layer with fixed
    weights 1/k (after a BatchNorm whose output may be negative it needs the ReLU that follows)."""
    rng = np.random.default_rng(61)
    b = GraphBuilder((2, 6, 5))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    if case == "valid":
        h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    elif case == "padded":
        h = b.op("AveragePool", [h], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], count_include_pad=1)
    elif case == "global":
        h = b.op("GlobalAveragePool", [h])
    elif case == "after-bn":
        h = b.op("Relu", [b.op("AveragePool", [bn(b, rng, h)], kernel_shape=[2, 2], strides=[1, 1])])
    elif case == "before-conv":
        h = b.op("Relu", [conv(b, rng, b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2]), 2, kernel=(2, 2))])
    else:
        p = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
        h = b.op("Concat", [b.op("Relu", [gemm(b, rng, p, 2, k=3)]), p], axis=1)
    imp = check(readout(b, rng, h), tmp_path)
    kinds = ir_kinds(imp.graph)
    if case in ("valid", "padded", "global"):
        assert kinds == ["Input", "Conv+relu", "Dense"]
    else:   # a spiking layer with fixed depthwise weights (for "read-twice", besides the fold into the Gemm)
        pool = [n for n in imp.graph.nodes[2:] if isinstance(n, ir.Affine) and isinstance(n.terms[0], ir.Conv)][0]
        assert pool.relu and pool.terms[0].groups == 3


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_pad_is_absorbed_by_the_next_conv(tmp_path, opset):
    """Zero Pad (asymmetric) of a population with a pending BatchNorm, then a padded conv: one conv whose pads are
    the sum; the bias map sees the zeros where the BatchNorm was not applied."""
    rng = np.random.default_rng(63)
    b = GraphBuilder((2, 5, 6), opset=opset)
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])]))
    pads = [0, 0, 1, 2, 0, 0, 2, 0]
    if opset >= 11:
        h = b.op("Pad", [h, b.int_const(pads), b.const(0.0)], mode="constant")
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 4, pads=[0, 1, 1, 0])])), tmp_path)
    term = imp.graph.nodes[2].terms[0]
    assert term.pads == (1, 3, 3, 0) and imp.graph.nodes[2].bias.ndim == 3


@pytest.mark.parametrize("mode, value", [("reflect", 0.0), ("constant", 1.0)])
def test_pad_other_than_zero_is_refused(tmp_path, mode, value):
    rng = np.random.default_rng(64)
    b = GraphBuilder((2, 5, 6))
    h = b.op("Relu", [conv(b, rng, "x", 3)])
    h = b.op("Pad", [h, b.int_const([0, 0, 1, 1, 0, 0, 1, 1]), b.const(value)], mode=mode)
    name = b.nodes[-1].name
    error, msg = import_error(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2)])), tmp_path, UnsupportedOperatorError)
    assert name in msg and error.nodes == ((name, "Pad"),)


def test_nhwc_graph_as_tf2onnx_writes_it(tmp_path):
    """Input NHWC → Transpose → Conv → Relu → MaxPool → Transpose back → Reshape(-1, K) → MatMul + Add → Relu → ..."""
    rng = np.random.default_rng(65)
    b = GraphBuilder((6, 6, 2), opset=13)
    h = b.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    h = b.op("MaxPool", [b.op("Relu", [conv(b, rng, h, 4, pads=[1, 1, 1, 1])])], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Reshape", [b.op("Transpose", [h], perm=[0, 2, 3, 1]), b.int_const([-1, 36])])
    h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.const(rnd(rng, 36, 8))]), b.const(rnd(rng, 8))])])
    model = b.build(b.op("Add", [b.op("MatMul", [h, b.const(rnd(rng, 8, 3))]), b.const(rnd(rng, 3))]))
    imp = check(model, tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Transpose", "Conv+relu", "MaxPool", "Transpose", "Flatten",
                                   "Dense+relu", "Dense"]


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_and_unsqueeze(tmp_path, opset):
    rng = np.random.default_rng(66)
    b = GraphBuilder((5,), opset=opset)
    h = b.op("Relu", [gemm(b, rng, "x", 4)])
    if opset < 13:
        h = b.op("Squeeze", [b.op("Unsqueeze", [h], axes=[2, -1])], axes=[-2])
        h = b.op("Squeeze", [h], axes=[2])
    else:
        h = b.op("Squeeze", [b.op("Unsqueeze", [h, b.int_const([2, -1])]), b.int_const([-2])])
        h = b.op("Squeeze", [h])
    imp = check(b.build(gemm(b, rng, h, 3, k=4)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]


def test_unsqueeze_to_an_image_for_a_conv(tmp_path):
    rng = np.random.default_rng(67)
    b = GraphBuilder((12,))
    h = b.op("Reshape", [b.op("Relu", [gemm(b, rng, "x", 12)]), b.int_const([0, 3, 4])])
    h = b.op("Unsqueeze", [h, b.int_const([1])])   # (batch, 1, 3, 4)
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, kernel=(2, 2))])), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Reshape", "Conv+relu", "Flatten", "Dense"]  # one reshape


@pytest.mark.parametrize("axis", [1, -3])
def test_concat_of_branches_of_different_depths(tmp_path, axis):
    """Channels of a shallow branch (with a pending BatchNorm) and a deep one side by side."""
    rng = np.random.default_rng(68)
    b = GraphBuilder((1, 5, 5))
    stem = b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    shallow = bn(b, rng, b.op("Relu", [conv(b, rng, stem, 2, pads=[1, 1, 1, 1])]))
    deep = b.op("Relu", [conv(b, rng, b.op("Relu", [conv(b, rng, stem, 3, kernel=(1, 1))]), 3, pads=[1, 1, 1, 1])])
    h = b.op("Concat", [shallow, deep], axis=axis)
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, pads=[1, 1, 1, 1])])), tmp_path)
    cat = next(n for n in imp.graph.nodes if isinstance(n, ir.Concat))
    assert cat.axis == 0 and cat.shape == (5, 5, 5)


def test_concat_of_vectors_and_the_input(tmp_path):
    rng = np.random.default_rng(69)
    b = GraphBuilder((4,))
    h = b.op("Concat", [b.op("Relu", [gemm(b, rng, "x", 3)]), "x"], axis=-1)
    check(b.build(gemm(b, rng, h, 2, k=7)), tmp_path)


def test_matmul_with_a_constant_first_operand_is_a_1x1_convolution(tmp_path):
    rng = np.random.default_rng(70)
    b = GraphBuilder((3, 5))
    h = b.op("Add", [b.op("MatMul", [b.const(rnd(rng, 4, 3)), "x"]), b.const(rnd(rng, 4, 1))])
    imp = check(readout(b, rng, b.op("Relu", [h])), tmp_path)
    assert ir_kinds(imp.graph)[:2] == ["Input", "Conv+relu"]


def test_projection_shortcut(tmp_path):
    """ResNet's stride-2 block: conv3x3/s2 → BN → ReLU → conv3x3 → BN, plus 1×1/s2 conv → BN, then ReLU."""
    rng = np.random.default_rng(71)
    b = GraphBuilder((2, 7, 7))
    x = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("Relu", [bn(b, rng, conv(b, rng, x, 4, pads=[1, 1, 1, 1], strides=[2, 2]))])
    h = bn(b, rng, conv(b, rng, h, 4, pads=[1, 1, 1, 1]))
    short = bn(b, rng, conv(b, rng, x, 4, kernel=(1, 1), strides=[2, 2]))
    imp = check(readout(b, rng, b.op("Relu", [b.op("Add", [h, short])])), tmp_path)
    assert ir_kinds(imp.graph)[:5] == ["Input", "Conv+relu", "Conv+relu", "Conv+Conv+relu", "Flatten"]


def test_identity_shortcut_with_pending_batchnorm(tmp_path):
    """conv → BN + (BN of an earlier ReLU output): the population joins through 1×1 depthwise synapses."""
    rng = np.random.default_rng(72)
    b = GraphBuilder((2, 5, 5))
    x = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = bn(b, rng, conv(b, rng, x, 3, pads=[1, 1, 1, 1]))
    imp = check(readout(b, rng, b.op("Relu", [b.op("Add", [bn(b, rng, x), h])])), tmp_path)
    join = imp.graph.nodes[2]
    assert join.terms[0].groups == 3 and join.terms[0].weight.shape == (3, 1, 1, 1)


@pytest.mark.parametrize("build, op", [
    (lambda b, h: b.op("Mul", [h, h]), "Mul"),
    (lambda b, h: b.op("Concat", [h, h], axis=0), "Concat"),
    (lambda b, h: b.op("Transpose", [h], perm=[1, 0, 2, 3]), "Transpose"),
    (lambda b, h: b.op("Reshape", [h, b.int_const([2, -1])]), "Reshape"),
], ids=["product", "concat-batch", "transpose-batch", "reshape-batch"])
def test_refused_graph_operations_name_the_node(tmp_path, build, op):
    rng = np.random.default_rng(73)
    b = GraphBuilder((2, 4, 4))
    h = build(b, b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])]))
    name = b.nodes[-1].name
    model = b.build(h) if op == "Reshape" else readout(b, rng, b.op("Relu", [conv(b, rng, h, 2)]))
    error, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    assert name in msg and op in msg and DOC in msg
    assert error.nodes == ((name, op),)


def test_unused_branches_are_dropped(tmp_path):
    rng = np.random.default_rng(74)
    b = GraphBuilder((4,))
    h = b.op("Relu", [gemm(b, rng, "x", 3)])
    b.op("Relu", [gemm(b, rng, h, 5)])          # computed, never read
    imp = check(b.build(gemm(b, rng, h, 2)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]


@pytest.mark.parametrize("opset", [11, 13, 14, 18, 21, 25])
def test_many_graph_operators_at_every_opset(tmp_path, opset):
    """NHWC input, Transpose, Pad, residual Add with BatchNorm, MaxPool, Concat, AveragePool, Squeeze/Unsqueeze,
    GlobalAveragePool, Flatten, MatMul + Add — one model, from opset 11 to the newest onnxruntime runs."""
    rng = np.random.default_rng(80 + opset)
    b = GraphBuilder((6, 6, 2), opset=opset)
    x = b.op("Relu", [conv(b, rng, b.op("Transpose", ["x"], perm=[0, 3, 1, 2]), 3, pads=[1, 1, 1, 1])])
    h = b.op("Pad", [x, b.int_const([0, 0, 1, 1, 0, 0, 1, 1]), b.const(0.0)])
    h = b.op("Relu", [b.op("Add", [bn(b, rng, conv(b, rng, h, 3)), x])])
    h = b.op("Concat", [b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2]),
                        b.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])], axis=1)
    axes = {"axes": [4]} if opset < 13 else {}
    h = b.op("Unsqueeze", [h] + ([b.int_const([4])] if opset >= 13 else []), **axes)
    h = b.op("Squeeze", [h] + ([b.int_const([4])] if opset >= 13 else []), **axes)
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    h = b.op("Add", [b.op("MatMul", [h, b.const(rnd(rng, 6, 4))]), b.const(rnd(rng, 4))])
    model = b.build(h)
    imp = check(model, tmp_path)
    # and through the whole pipeline: the spiking network equals the float64 forward pass
    x = rng.normal(size=(40, 6, 6, 2)).astype(np.float32)
    np.save(tmp_path / "c.npy", x)
    convert.convert(tmp_path / "model.onnx", str(tmp_path / "c.npy"), tmp_path / "m.snn.h5")
    result = simulator.simulate(h5io.read(tmp_path / "m.snn.h5"), x)
    want = ir.forward(imp.graph, x)
    assert result.counts.early_spikes == 0
    assert np.max(np.abs(result.logits - want)) <= 1e-9 * np.max(np.abs(want))


# ----------------------------------------------------------------------------- patterns from exporters

def convert_and_simulate(model_path, graph, tmp_path, x):
    """The whole pipeline on x as calibration data; the largest |spiking logits − float64 forward pass|, relative."""
    np.save(tmp_path / "c.npy", x)
    convert.convert(model_path, str(tmp_path / "c.npy"), tmp_path / "m.snn.h5")
    result = simulator.simulate(h5io.read(tmp_path / "m.snn.h5"), x)
    want = ir.forward(graph, x)
    assert result.counts.early_spikes == 0
    return np.max(np.abs(result.logits - want)) / np.max(np.abs(want))


def test_constant_subgraph_is_folded(tmp_path):
    """TorchScript's F.pad computes its pads with ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast:
    nodes whose inputs are all constants are evaluated on import (onnx's reference evaluator)."""
    rng = np.random.default_rng(90)
    b = GraphBuilder((2, 5, 5), opset=17)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    zeros = b.op("ConstantOfShape", [b.int_const([4])], value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    pads = b.op("Concat", [b.int_const([1, 2, 0, 1]), zeros], axis=0)            # (W, H) pairs, torch order
    pads = b.op("Reshape", [pads, b.int_const([-1, 2])])
    pads = b.op("Slice", [pads, b.int_const([-1]), b.int_const([-(2**62)]), b.int_const([0]), b.int_const([-1])])
    pads = b.op("Cast", [b.op("Reshape", [b.op("Transpose", [pads], perm=[1, 0]), b.int_const([-1])])], to=7)
    h = b.op("Pad", [h, pads, b.const(0.0)])
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2)])), tmp_path)
    assert imp.graph.nodes[2].terms[0].pads != (0, 0, 0, 0)


def test_nondeterministic_ops_are_not_folded(tmp_path):
    rng = np.random.default_rng(91)
    b = GraphBuilder((4,))
    noise = b.op("RandomNormal", [], shape=[1, 3], dtype=1)
    h = b.op("Add", [b.op("Relu", [gemm(b, rng, "x", 3)]), noise])
    error, msg = import_error(b.build(gemm(b, rng, h, 2, k=3)), tmp_path, UnsupportedOperatorError)
    assert "RandomNormal" in msg and error.nodes == ((b.nodes[0].name, "RandomNormal"),)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes, keepdims", [((2, 3), 1), ((2, 3), 0), ((-1,), 1)], ids=["gap", "gap-flat", "width"])
def test_reduce_mean_over_spatial_axes(tmp_path, opset, axes, keepdims):
    """ReduceMean as the dynamo exporter writes AdaptiveAvgPool2d(1): an average pooling; before a Gemm it folds."""
    rng = np.random.default_rng(92)
    b = GraphBuilder((2, 5, 4), opset=opset)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    extra = {"axes": list(axes)} if opset < 18 else {}
    h = b.op("ReduceMean", [h] + ([b.int_const(list(axes))] if opset >= 18 else []), keepdims=keepdims, **extra)
    imp = check(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Dense"]


def test_reduce_mean_over_channels_is_refused(tmp_path):
    rng = np.random.default_rng(93)
    b = GraphBuilder((2, 5, 4), opset=13)
    h = b.op("ReduceMean", [b.op("Relu", [conv(b, rng, "x", 3)])], axes=[1])
    error, msg = import_error(readout(b, rng, h), tmp_path, UnsupportedOperatorError)
    assert "spatial" in msg and error.nodes[0][1] == "ReduceMean"


@pytest.mark.parametrize("head", ["gap-gemm", "avgpool-conv", "avgpool-relu"])
def test_average_pooling_after_batchnorm_with_negative_scale(tmp_path, head):
    """ReLU → BN (some γ < 0) → pooling: P acts on the ReLU population and the map stays pending, folded into the
    next layer; a pooling that becomes a spiking layer gets no ONNX tensor and is calibrated from the codes."""
    rng = np.random.default_rng(94)
    b = GraphBuilder((2, 6, 6))
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])]), negative_channel=True)
    if head == "gap-gemm":
        h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    elif head == "avgpool-conv":
        h = b.op("Relu", [conv(b, rng, b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2]), 2)])
    else:
        h = b.op("Relu", [b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0],
                                count_include_pad=1)])
    model = readout(b, rng, h)
    imp = check(model, tmp_path)
    pools = [n for n in imp.graph.nodes if isinstance(n, ir.Affine) and n.relu and n.terms[0].groups == 3]
    assert len(pools) == (head != "gap-gemm")   # "avgpool-relu": the pooling and its map under the ReLU
    assert not pools or (pools[0].source == "") == (head == "avgpool-conv")
    x = rng.normal(size=(40, 2, 6, 6)).astype(np.float32)
    assert convert_and_simulate(tmp_path / "model.onnx", imp.graph, tmp_path, x) <= 1e-9


def test_concat_of_layers_before_their_relu(tmp_path):
    """DenseNet-BC: concat(x, conv(x), grouped conv(x)) then BN → ReLU: one ReLU layer per operand, each on its
    own channels (no weight padded to all 9), concatenated along the channels: the neurons of one layer."""
    rng = np.random.default_rng(95)
    b = GraphBuilder((2, 5, 5))
    x = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])
    grouped = b.op("Conv", [x, b.const(rnd(rng, 4, 2, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
    h = b.op("Concat", [x, conv(b, rng, x, 3, pads=[1, 1, 1, 1]), grouped], axis=1)
    h = b.op("Relu", [bn(b, rng, h)])
    imp = check(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "Conv+relu", "Conv+relu", "Conv+relu", "Concat", "Flatten",
                                   "Dense"]
    assert [n.shape[0] for n in imp.graph.nodes[2:5]] == [4, 3, 4]
    assert [n.terms[0].weight.shape[0] for n in imp.graph.nodes[2:5]] == [4, 3, 4]
    x = rng.normal(size=(40, 2, 5, 5)).astype(np.float32)
    assert convert_and_simulate(tmp_path / "model.onnx", imp.graph, tmp_path, x) <= 1e-9


def test_dense_blocks_never_stack_their_concatenations(tmp_path, monkeypatch):
    """DenseNet-BC (onnx-caffe2's light_densenet121): two dense blocks of BN → ReLU → Conv1x1 → BN → ReLU →
    Conv3x3 layers whose linear outputs are concatenated (BN as BatchNormalization, and as Mul and Add of
    constants), a transition Conv1x1 → AveragePool between them, GlobalAveragePool → Conv1x1 classifier. No
    weight is padded to all the channels of a concatenation (``ir.stack_channels`` is never called): each
    layer's ReLU is one spiking layer per concatenated block."""
    def refuse(*args):
        raise AssertionError("a concatenation was stacked into one layer")
    monkeypatch.setattr(ir, "stack_channels", refuse)
    rng = np.random.default_rng(96)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])

    def bn_mul_add(h):
        c = shape_of(b, h)[0]
        h = b.op("Mul", [h, b.const(rng.uniform(0.5, 1.5, (c, 1, 1)))])
        return b.op("Add", [h, b.const(0.3 * rng.standard_normal((c, 1, 1)))])

    for block in range(2):
        for layer in range(3):
            norm = bn(b, rng, h) if layer % 2 else bn_mul_add(h)
            y = b.op("Relu", [bn(b, rng, conv(b, rng, b.op("Relu", [norm]), 4, kernel=(1, 1)))])
            h = b.op("Concat", [h, conv(b, rng, y, 2, pads=[1, 1, 1, 1])], axis=1)
        if block == 0:
            h = conv(b, rng, b.op("Relu", [bn(b, rng, h)]), 3, kernel=(1, 1))
            h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("GlobalAveragePool", [b.op("Relu", [bn_mul_add(h)])])
    model = b.build(conv(b, rng, h, 3, kernel=(1, 1)))
    imp = check(model, tmp_path)
    x = rng.normal(size=(40, 2, 6, 6)).astype(np.float32)
    assert convert_and_simulate(tmp_path / "model.onnx", imp.graph, tmp_path, x) <= 1e-9


@pytest.mark.parametrize("opset", [11, 13])
def test_constant_folding_uses_the_model_opset(tmp_path, opset):
    """Unsqueeze has an axes attribute before opset 13 and an axes input from 13 on."""
    rng = np.random.default_rng(96)
    b = GraphBuilder((2, 4, 4), opset=opset)
    h = b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    batch = b.op("Gather", [b.op("Shape", [h]), b.int_const(0)], axis=0)
    unsq = b.op("Unsqueeze", [batch], axes=[0]) if opset < 13 else b.op("Unsqueeze", [batch, b.int_const([0])])
    target = b.op("Concat", [unsq, b.int_const([-1])], axis=0)
    check(b.build(gemm(b, rng, b.op("Reshape", [h, target]), 3, k=32)), tmp_path)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_fixed_batch_size(tmp_path, batch):
    """An export with a fixed batch dimension and a Reshape to [batch, -1]: the reshape keeps the batch axis,
    and onnxruntime gets chunks of exactly that size during calibration and verification."""
    rng = np.random.default_rng(97)
    b = GraphBuilder((2, 4, 4))
    h = b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    model = b.build(gemm(b, rng, b.op("Reshape", [h, b.int_const([batch, -1])]), 3, k=32))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    path = save(model, tmp_path / "m.onnx")
    x = rng.normal(size=(10, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    convert.convert(path, str(tmp_path / "x.npy"), tmp_path / "m.snn.h5")
    report = verify.verify(tmp_path / "m.snn.h5", path, str(tmp_path / "x.npy"))
    assert report["agreement"] == 1.0 and report["max_abs_logit_error_ref"] <= 1e-9 * report["max_abs_logit"]


def test_a_pad_larger_than_the_kernel(tmp_path):
    """Pad 3 then a 3×3 conv with pad 1: pads of 4 on a 3-wide kernel, valid ONNX, converted exactly."""
    rng = np.random.default_rng(98)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("Pad", [h, b.int_const([0, 0, 3, 3, 0, 0, 3, 3]), b.const(0.0)])
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, pads=[1, 1, 1, 1])])), tmp_path)
    assert imp.graph.nodes[2].terms[0].pads == (4, 4, 4, 4)
    x = rng.normal(size=(32, 2, 6, 6)).astype(np.float32)
    assert convert_and_simulate(tmp_path / "model.onnx", imp.graph, tmp_path, x) <= 1e-9


# ----------------------------------------------------------------------------- malformed windows, Pad before a mean

def _window_model(op: str, **attrs):
    """Conv → ReLU → ``op`` (Conv with a 3×3 weight, or a pooling) with ``attrs`` → readout, built unchecked."""
    rng = np.random.default_rng(120)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    if op == "Conv":
        h = b.op("Conv", [h, b.const(rnd(rng, 2, 3, 3, 3)), b.const(rnd(rng, 2))], **attrs)
        name = b.nodes[-1].name
        h = b.op("Relu", [h])
    else:
        h = b.op(op, [h], **attrs)
        name = b.nodes[-1].name
    h = b.op("Flatten", [h])
    b.nodes.append(helper.make_node("Gemm", [h, b.const(rnd(rng, 3, 8)), b.const(rnd(rng, 3))], ["y"], transB=1))
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, name


BAD_WINDOWS = [
    ("Conv", dict(kernel_shape=[3, 3], strides=[0, 1]), "strides = [0, 1]"),
    ("Conv", dict(strides=[1, -2]), "strides = [1, -2]"),
    ("Conv", dict(dilations=[0, 1]), "dilations = [0, 1]"),
    ("Conv", dict(dilations=[-1, 1]), "dilations = [-1, 1]"),
    ("Conv", dict(pads=[-1, 0, 0, 0]), "pads = [-1, 0, 0, 0]"),
    ("Conv", dict(pads=[1, 1]), "pads = [1, 1]"),
    ("Conv", dict(strides=[1, 1, 1]), "strides = [1, 1, 1]"),
    ("Conv", dict(kernel_shape=[0, 3]), "kernel_shape = [0, 3]"),
    ("Conv", dict(kernel_shape=[99, 99]), "does not match its weight's kernel [3, 3]"),
    ("Conv", dict(auto_pad="SAME"), "auto_pad = 'SAME'"),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[0, 2]), "strides = [0, 2]"),
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[0, 1]), "dilations = [0, 1]"),
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[-1, 1]), "dilations = [-1, 1]"),
    ("MaxPool", dict(kernel_shape=[2, 2], pads=[0, 0, -1, 0]), "pads = [0, 0, -1, 0]"),
    ("MaxPool", dict(kernel_shape=[0, 2]), "kernel_shape = [0, 2]"),
    ("MaxPool", dict(kernel_shape=[-2, 2]), "kernel_shape = [-2, 2]"),
    ("MaxPool", dict(kernel_shape=[2]), "kernel_shape = [2]"),
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 0]), "strides = [2, 0]"),
    ("AveragePool", dict(kernel_shape=[2, 2], pads=[0, -1, 0, 0]), "pads = [0, -1, 0, 0]"),
    ("AveragePool", dict(kernel_shape=[0, 0]), "kernel_shape = [0, 0]"),
]


@pytest.mark.parametrize("op, attrs, expect", BAD_WINDOWS,
                         ids=[f"{op}-{'-'.join(f'{k}{v}' for k, v in a.items())}" for op, a, _ in BAD_WINDOWS])
def test_window_attributes_out_of_the_onnx_range_are_refused(tmp_path, op, attrs, expect):
    """Found by fuzzing: a stride or dilation of 0 ended in ZeroDivisionError or "slice step cannot be zero",
    negative pads or dilations in a misleading error further on. Each is refused where it is read, naming the
    node and the attribute."""
    model, name = _window_model(op, **attrs)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError) as info:
        import_model(path)
    msg = one_line(info.value)
    assert f"{op} node '{name}'" in msg and expect in msg, msg


def test_pad_with_negative_pads_is_refused_as_cropping(tmp_path):
    """Negative pads (legal ONNX: they crop) have no spiking counterpart here: refused, naming the node."""
    rng = np.random.default_rng(121)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("Pad", [h, b.int_const([0, 0, -1, 0, 0, 0, 1, 0]), b.const(0.0)])
    name = b.nodes[-1].name
    error, msg = import_error(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2)])), tmp_path, UnsupportedOperatorError)
    assert name in msg and "cropping is not supported" in msg and error.nodes == ((name, "Pad"),)


@pytest.mark.parametrize("head", ["reduce-mean-hw", "reduce-mean-h", "reduce-mean-flat", "global"])
def test_pad_before_a_mean_counts_the_padded_positions(tmp_path, head):
    """Found by fuzzing: Pad → ReduceMean dropped the padding (convert then failed with a forward error of 2.98).
    The mean of the padded tensor is the sum over the real positions divided by the padded count: an average
    pooling whose kernel is the padded extent, with the Pad's zeros as its padding."""
    rng = np.random.default_rng(122)
    b = GraphBuilder((2, 5, 4), opset=13)
    h = bn(b, rng, b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])]))
    h = b.op("Pad", [h, b.int_const([0, 0, 2, 1, 0, 0, 0, 3]), b.const(0.0)])
    if head == "global":
        h = b.op("GlobalAveragePool", [h])
    else:
        axes = {"reduce-mean-hw": [2, 3], "reduce-mean-h": [2], "reduce-mean-flat": [-1, -2]}[head]
        h = b.op("ReduceMean", [h], axes=axes, keepdims=int(head != "reduce-mean-flat"))
    model = readout(b, rng, h)
    imp = check(model, tmp_path)
    x = rng.normal(size=(40, 2, 5, 4)).astype(np.float32)
    assert convert_and_simulate(tmp_path / "model.onnx", imp.graph, tmp_path, x) <= 1e-9


def test_window_values_counts_the_buffers_of_one_sample():
    """Padded input, output and (for a convolution) im2col matrix, as ops.windows and ops.conv allocate them."""
    from relu2snn_cli.onnx_import.core import term_window_values as window_values
    term = ir.Conv("a", np.ones((4, 3, 3, 2)), (3, 7, 6), (2, 1), (1, 0, 2, 1), (1, 2))
    assert term.shape == (4, 4, 5)
    im2col = ops.windows(np.zeros((1, 3, 7, 6)), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 0.0).size
    assert im2col == 3 * 3 * 2 * 4 * 5
    assert window_values(term) == 3 * 10 * 7 + 4 * 4 * 5 + im2col
    pool = ir.MaxPool("p", "a", (3, 7, 7), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), ceil_mode=True)
    assert pool.shape == (3, 4, 4)
    assert window_values(pool) == 3 * 8 * 8 + 3 * 4 * 4   # ceil_mode reads up to (4 − 1)·2 + 2 = 8 per axis


def test_window_too_large_for_one_sample_is_refused_on_import(tmp_path):
    """An average pooling with a huge kernel and padding keeps every ONNX tensor small (3×3 here), but its
    im2col matrix would hold 3·4000²·9 values (3.2 GiB) for one sample, which the importer computes: refused
    first."""
    rng = np.random.default_rng(123)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("AveragePool", [h], kernel_shape=[4000, 4000], pads=[1998, 1998, 1998, 1998], count_include_pad=1)
    name = b.nodes[-1].name
    _, msg = import_error(readout(b, rng, h), tmp_path)
    assert f"AveragePool node '{name}'" in msg and "values per sample" in msg and str(1 << 28) in msg, msg


@pytest.mark.parametrize("pads, expect", [([0, 0], "does not fit"), ([2**30, 2**30], "values per sample")])
def test_average_pooling_kernel_of_2_31_is_refused_before_its_weight_exists(tmp_path, pads, expect):
    """Found by fuzzing: AveragePool kernel_shape = [2**31 − 1] on a 1-D population allocated its 1/k weight
    (16 GiB a channel) before finding that the window does not fit; padded so that it fits, the window is too
    large for one sample."""
    rng = np.random.default_rng(124)
    b = GraphBuilder((2, 8))
    h = b.op("Relu", [b.op("Conv", [b.op("Identity", ["x"]), b.const(rnd(rng, 3, 2, 3)), b.const(rnd(rng, 3))],
                           kernel_shape=[3], pads=[1, 1])])
    h = b.op("AveragePool", [h], kernel_shape=[2**31 - 1], pads=pads, count_include_pad=1)
    name = b.nodes[-1].name
    _, msg = import_error(b.build(gemm(b, rng, b.op("Flatten", [h]), 3, k=27)), tmp_path)
    assert f"AveragePool node '{name}'" in msg and expect in msg, msg


def test_shape_of_a_pad_output_is_the_padded_shape(tmp_path):
    """Shape read a pending Pad's population without its padding: a Reshape to that shape then failed."""
    rng = np.random.default_rng(125)
    b = GraphBuilder((2, 5, 4))
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    p = b.op("Pad", [h, b.int_const([0, 0, 1, 0, 0, 0, 2, 1]), b.const(0.0)])
    h = b.op("Relu", [conv(b, rng, p, 3, kernel=(1, 1))])
    h = b.op("Reshape", [h, b.op("Shape", [p])])
    check(readout(b, rng, h), tmp_path)
