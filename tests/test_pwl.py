"""Piecewise-linear activations and linear values anywhere (docs/math.md §8): every op and pattern against
onnxruntime, and through the whole pipeline against the float64 forward pass.

Each test builds a small network with ``GraphBuilder``, imports it and compares ``ir.forward`` with
onnxruntime (rtol 1e-4, atol 1e-4 · max |ORT output|, float32 there), then converts it with its test inputs
as calibration data and verifies: agreement 1.0, no early spike, and a logit error of at most 1e-9 of the
largest |logit| against the float64 forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from builders import GraphBuilder, run_ort, save
from relu2snn_cli import convert, h5io, ir, onnx_import, simulator, snn, verify
from relu2snn_cli.errors import UnsupportedOperatorError
from test_onnx_import import assert_close, bn, check, conv, gemm, import_error, ir_kinds, readout, rnd
from test_simulator import assert_matches_reference


def pipeline(model, tmp_path, seed=0, n=48):
    """Import (checked against onnxruntime), convert with n random inputs as calibration data, verify on them."""
    imp = check(model, tmp_path, seed=seed)
    path = tmp_path / "model.onnx"
    x = (2.0 * np.random.default_rng(seed + 1).standard_normal((n, *imp.graph.input.shape))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    convert.convert(path, str(tmp_path / "x.npy"), tmp_path / "m.snn.h5")
    report = verify.verify(tmp_path / "m.snn.h5", path, str(tmp_path / "x.npy"))
    # the agreement with onnxruntime's float32 argmax could flip on a near-tie of these random logits on another
    # CPU; the bound against the float64 forward pass is the exactness claim (its argmax is checked in ``exact``)
    assert report["early_spikes"] == 0
    assert report["max_abs_logit_error_ref"] <= 1e-9 * report["max_abs_logit"]
    return imp, report


def neurons(graph) -> int:
    return sum(int(np.prod(n.shape)) for n in graph.nodes if isinstance(n, ir.Affine) and n.relu)


def relus(graph) -> int:
    return sum(1 for n in graph.nodes if isinstance(n, ir.Affine) and n.relu)


def cnn_with(act, opset=17, pool=True, channels=3, seed=0):
    """x (2, 6, 6) → Conv → act → [MaxPool 2] → Conv → act → Flatten → Gemm; ``act(b, tensor)`` adds the
    activation's nodes and returns its output."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((2, 6, 6), opset=opset)
    h = act(b, conv(b, rng, "x", channels, pads=[1, 1, 1, 1]))
    if pool:
        h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = act(b, conv(b, rng, h, channels, pads=[1, 1, 1, 1]))
    return readout(b, rng, h)


# ----------------------------------------------------------------------------- activations

def clip11(lo, hi):
    def act(b, h):
        return b.op("Clip", [h, b.const(lo) if lo is not None else "", b.const(hi) if hi is not None else ""])
    return act


CLIPS = {"relu6": (0.0, 6.0), "hardtanh": (-1.0, 1.0), "narrow": (-0.3, 0.4), "min-only": (-0.5, None),
         "max-only": (None, 0.7), "none": (None, None)}


@pytest.mark.parametrize("bounds", CLIPS.values(), ids=CLIPS.keys())
def test_clip_with_inputs(tmp_path, bounds):
    pipeline(cnn_with(clip11(*bounds)), tmp_path)


@pytest.mark.parametrize("bounds", CLIPS.values(), ids=CLIPS.keys())
def test_clip_with_attributes_before_opset_11(tmp_path, monkeypatch, bounds):
    """Clip-6 carries min and max as attributes (absent: no bound)."""
    monkeypatch.setattr(onnx_import, "MIN_OPSET", 6, raising=False)
    lo, hi = bounds
    attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    pipeline(cnn_with(lambda b, h: b.op("Clip", [h], **attrs), opset=10), tmp_path)


def test_relu6_is_two_populations_and_inspect_names_the_terms(tmp_path):
    imp, _ = pipeline(cnn_with(clip11(0.0, 6.0)), tmp_path)
    assert relus(imp.graph) == 4
    net = h5io.read(tmp_path / "m.snn.h5")
    origins = [n.origin for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    assert any(o.endswith(": relu(z)") and o.startswith("Clip") for o in origins), origins
    assert any(o.endswith(": relu(z − 6)") and o.startswith("Clip") for o in origins), origins
    assert all("Conv" in o for o in origins)


def test_inspect_shows_the_onnx_node_and_term_of_each_population(tmp_path):
    from click.testing import CliRunner
    from relu2snn_cli.cli import cli
    pipeline(cnn_with(clip11(0.0, 6.0)), tmp_path)
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.snn.h5")])
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if "SpikingLayer" in line]
    assert len(rows) == 4
    assert sum(line.endswith(": relu(z − 6)") for line in rows) == 2
    assert all("Clip 'Clip_" in line and "of Conv 'Conv_" in line for line in rows)


def test_two_max_poolings_of_a_leaky_relu(tmp_path):
    """The terms keep their form after a pooling (of max z), so a second pooling pools them the same way:
    relu(z) its earliest spike, relu(−z) its latest."""
    rng = np.random.default_rng(26)
    b = GraphBuilder((1, 8, 8))
    h = b.op("LeakyRelu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])], alpha=0.2)
    h = b.op("MaxPool", [b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])], kernel_shape=[2, 2],
             strides=[2, 2])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert [p.latest for p in imp.graph.nodes if isinstance(p, ir.MaxPool)] == [(), (0, 1, 2)] * 2


def test_max_pooling_a_falling_piecewise_linear_function_swaps_the_roles(tmp_path):
    """LeakyRelu then a per-channel scale −1 on channel 0: f falls there, max f(z) = f(min z), so relu(z)
    pools its latest spike and relu(−z) its earliest in that channel."""
    rng = np.random.default_rng(27)
    b = GraphBuilder((1, 6, 6))
    h = b.op("LeakyRelu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])], alpha=0.3)
    h = b.op("Mul", [h, b.const(np.array([-1.0, 0.5, 2.0]).reshape(3, 1, 1))])
    imp, _ = pipeline(readout(b, rng, b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])), tmp_path)
    assert [p.latest for p in imp.graph.nodes if isinstance(p, ir.MaxPool)] == [(0,), (1, 2)]


def test_relu6_spelled_min_of_max(tmp_path):
    """Min(Max(x, 0), 6), as some exporters write ReLU6."""
    def act(b, h):
        return b.op("Min", [b.op("Max", [h, b.const(0.0)]), b.const(6.0)])
    pipeline(cnn_with(act), tmp_path)


@pytest.mark.parametrize("alpha", [0.1, 0.01, 0.0, 1.5])
def test_leaky_relu(tmp_path, alpha):
    imp, _ = pipeline(cnn_with(lambda b, h: b.op("LeakyRelu", [h], alpha=alpha)), tmp_path)
    if alpha == 0.0:   # relu(z) alone: a plain ReLU network
        assert relus(imp.graph) == 2


def test_leaky_relu_with_negative_slope_before_maxpool_is_refused(tmp_path):
    """alpha < 0: f falls then rises, and a max pooling of it is not f of a pooling."""
    _, msg = import_error(cnn_with(lambda b, h: b.op("LeakyRelu", [h], alpha=-0.5)), tmp_path,
                          UnsupportedOperatorError)
    assert "MaxPool" in msg and "monotone" in msg


PRELU_SLOPES = {"scalar": (1,), "per-channel": (3, 1, 1), "with-batch-axis": (1, 3, 1, 1)}


def test_prelu_per_feature_in_an_mlp(tmp_path):
    rng = np.random.default_rng(4)
    b = GraphBuilder((6,))
    h = b.op("PRelu", [gemm(b, rng, "x", 5), b.const(rng.uniform(-0.5, 0.5, 5))])
    h = b.op("PRelu", [gemm(b, rng, h, 4), b.const(rng.uniform(-0.5, 0.5, (1, 4)))])
    pipeline(b.build(gemm(b, rng, h, 3)), tmp_path)


def test_prelu_slope_map_read_by_a_conv_is_refused(tmp_path):
    """A slope that varies within a channel scales relu(−z) per position, which no convolution kernel carries."""
    slopes = np.random.default_rng(5).uniform(0.1, 0.3, (3, 6, 6))
    _, msg = import_error(cnn_with(lambda b, h: b.op("PRelu", [h, b.const(slopes)]), pool=False), tmp_path,
                          UnsupportedOperatorError)
    assert "Conv node" in msg and "different scales" in msg


@pytest.mark.parametrize("shape", PRELU_SLOPES.values(), ids=PRELU_SLOPES.keys())
def test_prelu(tmp_path, shape):
    """Slopes of either sign; a slope map that varies within a channel without pooling (pooling needs f
    monotone, which a negative slope breaks, and one f per channel)."""
    rng = np.random.default_rng(5)
    slopes = rng.uniform(0.0, 0.6, shape)
    pipeline(cnn_with(lambda b, h: b.op("PRelu", [h, b.const(slopes)])), tmp_path)
    pipeline(cnn_with(lambda b, h: b.op("PRelu", [h, b.const(slopes - 0.7)]), pool=False), tmp_path)


def test_abs_without_pooling(tmp_path):
    pipeline(cnn_with(lambda b, h: b.op("Abs", [h]), pool=False), tmp_path)


def test_abs_before_maxpool_is_refused_naming_op_and_node(tmp_path):
    _, msg = import_error(cnn_with(lambda b, h: b.op("Abs", [h])), tmp_path, UnsupportedOperatorError)
    assert msg.startswith("MaxPool node 'MaxPool_") and "monotone" in msg


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (-0.3, 0.1), (1.0 / 6.0, 0.5)])
def test_hard_sigmoid(tmp_path, alpha, beta):
    pipeline(cnn_with(lambda b, h: b.op("HardSigmoid", [h], alpha=alpha, beta=beta)), tmp_path)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_with_a_constant_map(tmp_path, op):
    rng = np.random.default_rng(6)
    state = {"n": 0}

    def act(b, h):
        state["n"] += 1
        c = rng.uniform(-0.5, 0.5, (3, 1, 1))   # one per channel: pooling stays per channel
        return b.op(op, [h, b.const(c)])
    pipeline(cnn_with(act), tmp_path)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_maxout_of_two_and_three_branches(tmp_path, op):
    """Elementwise Max/Min of linear branches (maxout), of a ReLU branch and a linear one, and of three."""
    rng = np.random.default_rng(7)
    b = GraphBuilder((2, 5, 5))
    x1, x2 = conv(b, rng, "x", 3, pads=[1, 1, 1, 1]), conv(b, rng, "x", 3, pads=[1, 1, 1, 1])
    m = b.op(op, [x1, x2])
    r = b.op("Relu", [conv(b, rng, m, 3, pads=[1, 1, 1, 1])])
    m2 = b.op(op, [r, conv(b, rng, m, 3, pads=[1, 1, 1, 1]), conv(b, rng, r, 3, pads=[1, 1, 1, 1])])
    pipeline(readout(b, rng, m2), tmp_path)


def test_maxout_then_maxpool_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    b = GraphBuilder((2, 4, 4))
    m = b.op("Max", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1]), conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    model = readout(b, rng, b.op("MaxPool", [m], kernel_shape=[2, 2]))
    _, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    assert "MaxPool" in msg and "max(a + b)" in msg


def test_neg_and_mean(tmp_path):
    rng = np.random.default_rng(9)
    b = GraphBuilder((2, 5, 5))
    r1 = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    r2 = b.op("LeakyRelu", [conv(b, rng, r1, 3, pads=[1, 1, 1, 1])], alpha=0.2)
    m = b.op("Mean", [r1, b.op("Neg", [r2]), conv(b, rng, r1, 3, pads=[1, 1, 1, 1])])
    pipeline(readout(b, rng, b.op("Relu", [m])), tmp_path)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "HardSwish"])
def test_non_piecewise_linear_ops_are_refused_in_one_line(tmp_path, op):
    rng = np.random.default_rng(10)
    b = GraphBuilder((6,))
    model = b.build(gemm(b, rng, b.op(op, [gemm(b, rng, "x", 5)]), 3))
    _, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    assert op in msg and f"{op}_" in msg


def test_product_of_two_activations_is_refused(tmp_path):
    rng = np.random.default_rng(11)
    b = GraphBuilder((6,))
    h = gemm(b, rng, "x", 5)
    model = b.build(gemm(b, rng, b.op("Mul", [h, b.op("HardSigmoid", [h])]), 3))
    _, msg = import_error(model, tmp_path, UnsupportedOperatorError)
    assert "Mul node" in msg and "two activations" in msg


# ----------------------------------------------------------------------------- linear values

def test_conv_maxpool_relu_commutes_and_keeps_one_population(tmp_path):
    """LeNet's Conv → MaxPool → Relu: ReLU then MaxPool, one population, as many neurons as the ReLU-first net."""
    rng = np.random.default_rng(12)
    b = GraphBuilder((1, 8, 8))
    h = b.op("Relu", [b.op("MaxPool", [conv(b, rng, "x", 4)], kernel_shape=[2, 2], strides=[2, 2])])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Conv+relu", "MaxPool", "Flatten", "Dense"]


def test_transpose_between_conv_and_relu(tmp_path):
    """tf2onnx's NHWC: Conv → Transpose → Relu: the ReLU is applied first, no extra population."""
    rng = np.random.default_rng(13)
    b = GraphBuilder((2, 5, 5))
    h = b.op("Relu", [b.op("Transpose", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])], perm=[0, 2, 3, 1])])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert relus(imp.graph) == 1


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_pooling_a_linear_layer_read_by_a_conv(tmp_path, pool):
    """Conv → pool → Conv with no ReLU between: z = relu(z) − relu(−z), each pooled (max: the latest spike
    for relu(−z); average: each pooling a layer of its own, as an average pooling read by a Conv is)."""
    rng = np.random.default_rng(14)
    b = GraphBuilder((2, 6, 6))
    h = b.op(pool, [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Relu", [conv(b, rng, h, 3, pads=[1, 1, 1, 1])])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert relus(imp.graph) == (3 if pool == "MaxPool" else 5)
    pools = [n for n in imp.graph.nodes if isinstance(n, ir.MaxPool)]
    assert pool == "AveragePool" or sorted(p.latest for p in pools) == [(), (0, 1, 2)]


def test_dense_after_dense_is_composed(tmp_path):
    """Gemm → Gemm without activation: W2·W1, no population between."""
    rng = np.random.default_rng(15)
    b = GraphBuilder((6,))
    h = b.op("Relu", [gemm(b, rng, gemm(b, rng, gemm(b, rng, "x", 7), 5), 4)])
    imp, _ = pipeline(b.build(gemm(b, rng, gemm(b, rng, h, 5), 3)), tmp_path)
    assert ir_kinds(imp.graph) == ["Input", "Dense+relu", "Dense"]


def test_matmul_reading_a_linear_layer(tmp_path):
    """Formerly refused as "activation None times a constant": now linear∘linear."""
    rng = np.random.default_rng(16)
    b = GraphBuilder((6,))
    h = b.op("MatMul", [b.op("MatMul", [b.op("Relu", [gemm(b, rng, "x", 5)]), b.const(rnd(rng, 5, 4))]),
                        b.const(rnd(rng, 4, 10))])
    imp, _ = pipeline(b.build(gemm(b, rng, b.op("Relu", [h]), 3)), tmp_path)
    assert relus(imp.graph) == 2


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_after_conv_is_composed(tmp_path, stride):
    """A 1×1 conv without padding after a conv (a separable conv's depthwise then pointwise): one layer."""
    rng = np.random.default_rng(17)
    b = GraphBuilder((4, 7, 7))
    h = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])
    dw = b.op("Conv", [h, b.const(rnd(rng, 4, 1, 3, 3)), b.const(rnd(rng, 4))], kernel_shape=[3, 3], group=4,
              pads=[1, 0, 1, 2])
    h = b.op("Relu", [conv(b, rng, dw, 5, kernel=(1, 1), strides=[stride, stride])])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert relus(imp.graph) == 2


def test_pre_activation_residual_stream(tmp_path):
    """x₁ = x₀ + conv(relu(x₀)), x₂ = x₁ + conv(relu(x₁)): sums of linear layers read by ReLUs and by the next
    sum, never a ReLU of their own; a 3×3 conv reads the stream through ± populations."""
    rng = np.random.default_rng(18)
    b = GraphBuilder((2, 5, 5))
    s = conv(b, rng, "x", 3, pads=[1, 1, 1, 1])
    for _ in range(2):
        s = b.op("Add", [s, conv(b, rng, b.op("Relu", [s]), 3, pads=[1, 1, 1, 1])])
    h = b.op("Relu", [conv(b, rng, s, 3, pads=[1, 1, 1, 1])])
    pipeline(readout(b, rng, h), tmp_path)


def test_linear_value_through_reshape_transpose_and_flatten(tmp_path):
    rng = np.random.default_rng(19)
    b = GraphBuilder((2, 4, 4))
    h = b.op("Transpose", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])], perm=[0, 1, 3, 2])
    h = b.op("Reshape", [h, b.int_const([0, 3, 16])])
    h = b.op("Relu", [b.op("Conv", [h, b.const(rnd(rng, 2, 3, 3)), b.const(rnd(rng, 2))], kernel_shape=[3])])
    pipeline(readout(b, rng, h), tmp_path)


def test_concat_of_a_clip_and_a_relu_read_by_a_conv(tmp_path):
    rng = np.random.default_rng(20)
    b = GraphBuilder((2, 5, 5))
    r = b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    c = clip11(0.0, 1.0)(b, conv(b, rng, "x", 2, pads=[1, 1, 1, 1]))
    h = b.op("Relu", [conv(b, rng, b.op("Concat", [r, c], axis=1), 3, pads=[1, 1, 1, 1])])
    pipeline(readout(b, rng, h), tmp_path)


def test_concat_of_a_relu6_and_a_relu_read_by_a_3x3_conv_adds_no_population(tmp_path):
    """Concatenated part by part (the ReLU branch padded with a zero-scaled part): the Conv reads the
    populations as they are, 2 + 1 + 1 layers before it."""
    rng = np.random.default_rng(22)
    b = GraphBuilder((2, 5, 5))
    r = b.op("Relu", [conv(b, rng, "x", 2, pads=[1, 1, 1, 1])])
    c = clip11(0.0, 1.0)(b, conv(b, rng, "x", 2, pads=[1, 1, 1, 1]))
    h = b.op("Relu", [conv(b, rng, b.op("Concat", [c, r], axis=1), 3, pads=[1, 1, 1, 1])])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert relus(imp.graph) == 4


@pytest.mark.parametrize("axis", [2, 3])
def test_spatial_concat_of_linear_layers_before_a_conv(tmp_path, axis):
    """Two convolutions without activation side by side along a spatial axis, then a Conv: each split in two,
    the relu(z) parts and the relu(−z) parts concatenated, one scale per channel in each."""
    rng = np.random.default_rng(23)
    b = GraphBuilder((2, 4, 4))
    h = b.op("Concat", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1]), conv(b, rng, "x", 3, pads=[1, 1, 1, 1])], axis=axis)
    h = b.op("Relu", [conv(b, rng, h, 2, pads=[1, 1, 1, 1])])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert relus(imp.graph) == 5


def test_relu_populations_concatenated_spatially_then_convolved(tmp_path):
    """Two ReLU layers with their own code scales c side by side along the height, then a Conv: the layers of
    a spatial concatenation share the smaller c per channel (mapping.spatial_groups)."""
    rng = np.random.default_rng(24)
    b = GraphBuilder((2, 4, 4))
    big = b.op("Conv", ["x", b.const(3.0 * rnd(rng, 3, 2, 3, 3) + 0.5), b.const(rnd(rng, 3))], kernel_shape=[3, 3],
               pads=[1, 1, 1, 1])   # incoming sums above s_max: scaled down
    h = b.op("Concat", [b.op("Relu", [big]), b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])], axis=2)
    imp, _ = pipeline(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, pads=[1, 1, 1, 1])])), tmp_path)
    net = h5io.read(tmp_path / "m.snn.h5")
    first, second = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)][:2]
    assert np.any(first.scale < 1) and np.array_equal(first.scale, second.scale)


def test_linear_value_at_the_output_through_a_clip(tmp_path):
    rng = np.random.default_rng(21)
    b = GraphBuilder((6,))
    pipeline(b.build(clip11(-1.0, 1.0)(b, gemm(b, rng, b.op("Relu", [gemm(b, rng, "x", 5)]), 3))), tmp_path)


# ----------------------------------------------------------------------------- only where needed

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
PLAIN_RELU = {"cnn": (4, 1824), "cnn1d": (4, 1536), "concat": (5, 2304), "concat_dense": (4, 80),
              "dwsep": (5, 5120), "mlp": (2, 96), "nhwc": (3, 800), "resnet": (7, 3072)}


@pytest.mark.parametrize("name", PLAIN_RELU)
def test_plain_relu_samples_keep_their_neurons(name):
    """A plain ReLU network gets no split and no extra term: the layer and neuron counts of the importer
    before piecewise-linear support (their artifacts differ only in the ``origin`` text and the format version)."""
    graph = onnx_import.import_model(SAMPLES / name / "model.onnx").graph
    layers = [n for n in graph.nodes if isinstance(n, ir.Affine) and n.relu]
    assert (len(layers), neurons(graph)) == PLAIN_RELU[name]
    assert all(n.origin.startswith(("Relu '", "AveragePool '")) for n in layers)


# ----------------------------------------------------------------------------- trained samples

@pytest.mark.parametrize("name", ["mobilenet", "leaky"])
def test_piecewise_linear_samples_verify_exactly(tmp_path, name):
    """The trained MobileNetV2-style ReLU6 network (linear bottlenecks, residual sums of linear layers) and the
    LeakyReLU CNN with max pooling, on their held-out test set."""
    d = SAMPLES / name
    convert.convert(d / "model.onnx", str(d / "calib.npy"), tmp_path / "m.snn.h5")
    report = verify.verify(tmp_path / "m.snn.h5", d / "model.onnx", str(d / "test.npy"), str(d / "labels.npy"))
    assert report["passed"] and report["agreement"] == 1.0 and report["early_spikes"] == 0
    assert report["accuracy_snn"] == report["accuracy_ann"] >= 0.93
    assert report["max_abs_logit_error_ref"] <= 1e-9 * report["max_abs_logit"]


# ----------------------------------------------------------------------------- random piecewise-linear DAGs

MONOTONE = ("relu", "clip", "leaky", "hardsigmoid", "min", "none")   # may be max-pooled
KINDS = MONOTONE + ("prelu", "abs", "max")


def pwl_dag(seed: int, shape: tuple[int, ...], layers: list[tuple], n_out: int):
    """(model, input shape, seed): a network of convolutions (images) or dense layers, each followed by a
    piecewise-linear activation, and a linear readout. ``layers`` are (out, kernel, act, params, pool): out
    channels, the kernel size (1 or 3; images only), the activation — relu, clip (params lo, hi), leaky
    (alpha), prelu (random slopes), hardsigmoid (alpha, beta), abs, min with a constant, max of two branches
    (params: whether the second is a Relu population) or none (a linear chain) — and a 2×2 max pooling
    after it."""
    rng = np.random.default_rng(seed)
    image = len(shape) == 3
    b = GraphBuilder(shape)
    h, cur = "x", shape

    def linear(h, cur, out, k):
        if image:
            w = rng.normal(0, 1.2 / np.sqrt(cur[0] * k * k), (out, cur[0], k, k))
            return b.op("Conv", [h, b.const(w), b.const(rng.normal(0, 0.3, out))], kernel_shape=[k, k],
                        pads=[k // 2] * 4)
        w = rng.normal(0, 1.2 / np.sqrt(cur[0]), (out, cur[0]))
        return b.op("Gemm", [h, b.const(w), b.const(rng.normal(0, 0.3, out))], transB=1)

    for out, k, act, params, pool in layers:
        prev, z = cur, linear(h, cur, out, k)
        cur = (out,) + tuple(cur[1:])
        per_channel = (out, 1, 1) if image else (out,)
        if act == "relu":
            h = b.op("Relu", [z])
        elif act == "clip":
            h = b.op("Clip", [z, b.const(params[0]), b.const(params[1])])
        elif act == "leaky":
            h = b.op("LeakyRelu", [z], alpha=params)
        elif act == "prelu":
            h = b.op("PRelu", [z, b.const(rng.uniform(-1.0, 1.0, per_channel))])
        elif act == "hardsigmoid":
            h = b.op("HardSigmoid", [z], alpha=params[0], beta=params[1])
        elif act == "abs":
            h = b.op("Abs", [z])
        elif act == "min":
            h = b.op("Min", [z, b.const(rng.uniform(-0.5, 1.0, per_channel))])
        elif act == "max":   # maxout of two branches, or of a branch and a ReLU population
            other = linear(h, prev, out, k)
            h = b.op("Max", [z, b.op("Relu", [other]) if params else other])
        else:
            h = z
        if pool:
            h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
            cur = (cur[0], cur[1] // 2, cur[2] // 2)
    if image:
        h, cur = b.op("Flatten", [h]), (int(np.prod(cur)),)
    h = b.op("Gemm", [h, b.const(rng.normal(0, 1, (n_out, cur[0]))), b.const(rng.normal(0, 0.3, n_out))], transB=1)
    return b.build(h), shape, seed


@st.composite
def pwl_dags(draw):
    """``pwl_dag`` of 1–3 random layers: random breakpoints (Clip), slopes (LeakyRelu, PRelu: negative ones too
    where nothing pools them), HardSigmoid of either sign, max pooling only after a monotone activation."""
    seed = draw(st.integers(0, 2**31 - 1))
    image = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), draw(st.integers(4, 6)), draw(st.integers(4, 6))) if image \
        else (draw(st.integers(2, 6)),)
    layers, size = [], min(shape[1:], default=0)
    for _ in range(draw(st.integers(1, 3))):
        out, k = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])) if image else 1
        pool = image and size >= 2 and draw(st.booleans())
        act = draw(st.sampled_from(MONOTONE if pool else KINDS))
        if act == "clip":
            lo = draw(st.floats(-1.0, 0.5))
            params = (lo, lo + draw(st.floats(0.1, 2.0)))
        elif act == "leaky":
            params = draw(st.floats(0.0, 1.0))
        elif act == "hardsigmoid":
            params = (draw(st.sampled_from([-0.7, 0.3, 1.0])), draw(st.floats(-0.5, 1.0)))
        else:
            params = act == "max" and draw(st.booleans())
        layers.append((out, k, act, params, pool))
        size //= 2 if pool else 1
    return pwl_dag(seed, shape, layers, draw(st.integers(1, 3)))


PARAMS = {"clip": (-0.5, 1.0), "leaky": 0.2, "hardsigmoid": (-0.7, 0.4), "max": True}
# every activation kind at least once whatever the profile (derandomized CI draws few of them): an image network
# with a layer of that kind (max-pooled when monotone) before a ReLU layer
KIND_EXAMPLES = [pwl_dag(3 + i, (2, 4, 5), [(3, 3, act, PARAMS.get(act), act in MONOTONE), (2, 1, "relu", None, False)], 2)
                 for i, act in enumerate(KINDS)]


def with_kind_examples(test):
    for dag in KIND_EXAMPLES:
        test = example(dag=dag)(test)
    return test


@settings(max_examples=20, deadline=None)
@given(dag=pwl_dags())
@with_kind_examples
def test_random_piecewise_linear_dags_are_exact(tmp_path_factory, dag):
    """onnxruntime = the IR forward pass; calibrated on the inputs it runs on, the spiking network equals
    the float64 forward pass within 1e-9 of the largest logit, without early spikes."""
    model, shape, seed = dag
    tmp = tmp_path_factory.mktemp("pwl")
    path = save_model(model, tmp)
    graph = onnx_import.import_model(path).graph
    x = (2.0 * np.random.default_rng(seed).standard_normal((24, *shape))).astype(np.float32)
    assert_close(ir.forward(graph, x), run_ort(model, x))
    np.save(tmp / "x.npy", x)
    convert.convert(path, str(tmp / "x.npy"), tmp / "m.snn.h5")
    result = simulator.simulate(h5io.read(tmp / "m.snn.h5"), x)
    want = ir.forward(graph, x)
    assert result.counts.early_spikes == 0
    assert np.max(np.abs(result.logits - want)) <= 1e-9 * max(np.max(np.abs(want)), 1e-12)


@settings(max_examples=12, deadline=None)
@given(dag=pwl_dags())
@with_kind_examples
def test_random_piecewise_linear_dags_match_the_reference_with_early_spikes(tmp_path_factory, dag):
    """Calibrated on small inputs and run on large ones, so activations overrun their windows and neurons fire
    early: the simulator equals the event-by-event reference, spike by spike."""
    model, shape, seed = dag
    tmp = tmp_path_factory.mktemp("pwl")
    path = save_model(model, tmp)
    rng = np.random.default_rng(seed)
    np.save(tmp / "c.npy", (0.2 * rng.normal(size=(32,) + shape)).astype(np.float32))
    convert.convert(path, str(tmp / "c.npy"), tmp / "m.snn.h5", input_range=(-6, 6))
    net = h5io.read(tmp / "m.snn.h5")
    x = 2.0 * rng.normal(size=(3,) + shape)
    result = simulator.simulate(net, x, batch_size=2, keep_times=True)
    assume(result.counts.early_spikes > 0)   # the case this test is for: neurons that fire early
    assert_matches_reference(net, x, result)


def save_model(model, directory) -> Path:
    return Path(save(model, directory / "m.onnx"))


@pytest.mark.parametrize("pool", [dict(kernel_shape=[2, 2], strides=[2, 2]),
                                  dict(kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 0], count_include_pad=1),
                                  None], ids=["2x2", "3x3-padded", "global"])
def test_densenet_transition_composes_the_pooling_with_the_1x1_conv(tmp_path, pool):
    """BN → ReLU → Conv1x1 → AveragePool → BN → ReLU: P·(W ⋆ a + b) = (W/K over the window) ⋆ a + P·b, one
    spiking layer for the pooled transition, no split."""
    rng = np.random.default_rng(25)
    b = GraphBuilder((2, 6, 6))
    h = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])
    h = conv(b, rng, h, 3, kernel=(1, 1))
    h = b.op("AveragePool", [h], **pool) if pool else b.op("GlobalAveragePool", [h])
    h = b.op("Relu", [bn(b, rng, h)])
    imp, _ = pipeline(readout(b, rng, h), tmp_path)
    assert relus(imp.graph) == 2
