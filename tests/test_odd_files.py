"""Old and odd ONNX files: opsets 7–10 upgraded on import, unsorted graphs, slicing and splitting as data
movement, n-ary sums, several graph outputs, and the graphs of ../shared/realworld-onnx when present.

Each model is checked twice: the float64 IR forward pass against onnxruntime (``check``: rtol 1e-4, atol
1e-4 · max |ORT output|), and the whole pipeline (``exact``): convert with the test inputs as calibration
data, then the simulated spiking logits agree with the float64 forward pass in every argmax, with no early
spike, and within 1e-9 · max |logit|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper

from builders import GraphBuilder, run_ort, save
from relu2snn_cli import convert, h5io, ir, simulator
from relu2snn_cli.calibrate import run_model, session
from relu2snn_cli.errors import ModelError, UnsupportedOperatorError
from relu2snn_cli.onnx_import import import_model
from test_onnx_import import bn, check, conv, gemm, import_error, readout

REALWORLD = Path(__file__).resolve().parents[1].parent / "shared" / "realworld-onnx"


def exact(model_path, graph, tmp_path, x, **options) -> dict:
    """Convert with x as calibration data and simulate x: agreement 1.0, no early spike, logit error
    ≤ 1e-9 · max |logit| against the float64 forward pass; returns the artifact's meta."""
    np.save(tmp_path / "c.npy", x)
    convert.convert(model_path, str(tmp_path / "c.npy"), tmp_path / "m.snn.h5", **options)
    net = h5io.read(tmp_path / "m.snn.h5")
    result = simulator.simulate(net, x)
    want = ir.forward(graph, x)
    assert result.counts.early_spikes == 0
    assert np.mean(np.argmax(result.logits, 1) == np.argmax(want, 1)) == 1.0
    assert np.max(np.abs(result.logits - want)) <= 1e-9 * np.max(np.abs(want))
    return net.meta


def inputs(shape, n=24, seed=0) -> np.ndarray:
    return (2.0 * np.random.default_rng(seed).standard_normal((n, *shape))).astype(np.float32)


# ----------------------------------------------------------------------------- opsets 7–10

def _old_cnn(opset: int):
    """A CNN in the forms of an old opset: BatchNormalization with ``spatial`` (opset < 9), Dropout, MaxPool,
    Reshape to a constant target, Gemm with its C operand, Softmax."""
    rng = np.random.default_rng(opset)
    b = GraphBuilder((2, 8, 8), opset=opset)
    h = conv(b, rng, "x", 4, pads=[1, 1, 1, 1])
    h = bn(b, rng, h)
    if opset < 9:
        b.nodes[-1].attribute.extend([helper.make_attribute("spatial", 1)])
    h = b.op("Relu", [h])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Dropout", [h], **({"ratio": 0.3} if opset < 12 else {}))
    h = b.op("Reshape", [h, b.int_const([0, -1])])
    h = b.op("Relu", [gemm(b, rng, h, 6)])
    return b, gemm(b, rng, h, 3)


@pytest.mark.parametrize("opset", [7, 8, 9, 10])
def test_old_opsets_are_upgraded_on_import(tmp_path, opset):
    b, logits = _old_cnn(opset)
    model = b.build(logits)
    imp = check(model, tmp_path)
    assert (imp.opset, imp.imported_opset) == (opset, 11)
    meta = exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 8, 8)))
    assert (meta["source_opset"], meta["imported_opset"]) == (opset, 11)


def test_opset_11_is_imported_as_is(tmp_path):
    b, logits = _old_cnn(11)
    imp = check(b.build(logits), tmp_path)
    assert (imp.opset, imp.imported_opset) == (11, 11)


def test_an_old_file_the_converter_cannot_upgrade_names_the_node(tmp_path):
    """BatchNormalization with spatial = 0 (per-position statistics, opset < 9) has no newer form."""
    b, _ = _old_cnn(8)
    bn_node = next(n for n in b.nodes if n.op_type == "BatchNormalization")
    for a in bn_node.attribute:
        if a.name == "spatial":
            a.i = 0
    model = b.build(b.nodes[-1].output[0])
    _, msg = import_error(model, tmp_path)
    assert "opset 8 cannot be upgraded to 11" in msg
    assert f"BatchNormalization node '{bn_node.name}'" in msg and "spatial" in msg


def test_opset_older_than_7_is_refused(tmp_path):
    b = GraphBuilder((3,), opset=6)
    model = b.build(b.op("Relu", ["x"]))
    _, msg = import_error(model, tmp_path)
    assert "opset 6 is older than 7" in msg


# ----------------------------------------------------------------------------- unsorted graphs

def test_nodes_out_of_topological_order_are_sorted(tmp_path):
    """keras2onnx 1.5 writes nodes in no particular order; onnxruntime accepts such a file, and so does the
    importer, which sorts them (the recorded sha256 is still the file's)."""
    rng = np.random.default_rng(5)
    b = GraphBuilder((2, 6, 6), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("Add", [b.op("Relu", [conv(b, rng, h, 3, pads=[1, 1, 1, 1])]), h])
    model = readout(b, rng, b.op("Relu", [h]))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())   # save() would run the checker, which refuses the order
    imp = import_model(path)
    x = inputs((2, 6, 6))
    np.testing.assert_allclose(ir.forward(imp.graph, x), run_ort(model, x), rtol=1e-4,
                               atol=1e-4 * np.max(np.abs(run_ort(model, x))))
    exact(path, imp.graph, tmp_path, x)


def test_a_graph_with_a_cycle_is_refused_by_the_checker(tmp_path):
    b = GraphBuilder((3,), opset=13)
    h = b.op("Relu", ["x"])
    model = b.build(h)
    model.graph.node[0].input[0] = "y"   # Relu reads the Identity that reads it
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        import_model(path)


# ----------------------------------------------------------------------------- Reshape allowzero

@pytest.mark.parametrize("fixed_batch", [False, True])
def test_reshape_with_allowzero_to_the_batch_size_from_shape(tmp_path, fixed_batch):
    """PyTorch 2.9's dynamo export of x.view(x.size(0), -1): Reshape(allowzero = 1) to Concat(Shape(x)[0:1],
    [-1]). At run time the target's first entry is the batch size, never zero."""
    rng = np.random.default_rng(6)
    b = GraphBuilder((2, 5, 5), opset=18)
    h = b.op("Relu", [conv(b, rng, "x", 3)])
    size = b.op("Shape", [h], start=0, end=1)
    target = b.op("Concat", [size, b.int_const([-1])], axis=0)
    h = b.op("Reshape", [h, target], allowzero=1)
    model = b.build(gemm(b, rng, b.op("Relu", [gemm(b, rng, h, 5, k=27)]), 3))
    if fixed_batch:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 24
    imp = check(model, tmp_path, batches=(24,) if fixed_batch else (1, 7))
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 5, 5)))


def test_reshape_with_allowzero_and_a_zero_after_the_batch_axis_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    b = GraphBuilder((2, 5, 5), opset=18)
    h = b.op("Relu", [conv(b, rng, "x", 3)])
    h = b.op("Reshape", [h, b.int_const([-1, 0, 9])], allowzero=1)
    model = b.build(h)
    _, msg = import_error(model, tmp_path, kind=UnsupportedOperatorError)
    assert "allowzero=1" in msg and "Reshape node" in msg


# ----------------------------------------------------------------------------- Sum and Mean

@pytest.mark.parametrize("op", ["Sum", "Mean"])
@pytest.mark.parametrize("form", ["relu_outputs", "linear_layers", "with_constant", "one_operand"])
def test_sum_and_mean_of_several_activations(tmp_path, op, form):
    """Sum (a residual sum of n terms, as Caffe2's ResNet-50 and ShuffleNet write it) and Mean, of ReLU
    outputs (non-negative: no new ReLU) or of linear layers before their ReLU, with a constant operand."""
    rng = np.random.default_rng(8)
    b = GraphBuilder((3, 6, 6), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])
    branches = [conv(b, rng, h, 4, pads=[1, 1, 1, 1]) for _ in range(3)]
    if form == "relu_outputs":
        operands = [h] + [b.op("Relu", [x]) for x in branches]
    elif form == "linear_layers":
        operands = [h] + branches
    elif form == "with_constant":
        operands = [h, branches[0], b.const(rng.standard_normal((4, 1, 1))), b.op("Relu", [branches[1]])]
    else:
        operands = [branches[0]]
    model = readout(b, rng, b.op("Relu", [b.op(op, operands)]))
    imp = check(model, tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((3, 6, 6)))


# ----------------------------------------------------------------------------- messages

# ----------------------------------------------------------------------------- several outputs

def _two_outputs(zipmap: bool = False, hidden_output: bool = False):
    """An MLP with skl2onnx's outputs: the label (ArgMax, int64) and the probabilities (Softmax, float; or,
    with ``zipmap``, a sequence of maps as skl2onnx writes by default). ``hidden_output``: a hidden ReLU
    layer is a third, float, output."""
    rng = np.random.default_rng(11)
    b = GraphBuilder((5,), opset=13)
    hidden = b.op("Relu", [gemm(b, rng, "x", 6)])
    logits = gemm(b, rng, hidden, 3)
    probabilities = b.op("Softmax", [logits], axis=1)
    label = b.op("ArgMax", [probabilities], axis=1, keepdims=0)
    b.nodes.append(helper.make_node("Identity", [label], ["label"], name="label_identity"))
    if zipmap:
        b.nodes.append(helper.make_node("ZipMap", [probabilities], ["probabilities"], name="zipmap",
                                        domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]))
    else:
        b.nodes.append(helper.make_node("Identity", [probabilities], ["probabilities"], name="probabilities_identity"))
    outputs = [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]),
               helper.make_value_info("probabilities", helper.make_sequence_type_proto(helper.make_map_type_proto(
                   onnx.TensorProto.INT64, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, []))))
               if zipmap else helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", 3])]
    if hidden_output:
        outputs.append(helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, ["N", 6]))
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 5])],
                              outputs, initializer=b.inits)
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("ai.onnx.ml", 1)] if zipmap else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, logits, hidden


def _cli(*args):
    from click.testing import CliRunner
    from relu2snn_cli.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_label_and_probabilities_convert_the_probabilities(tmp_path):
    """skl2onnx's two outputs without ZipMap: the only float output is converted (its Softmax removed), and
    verify finds the same output from the artifact's source_output."""
    model, logits, _ = _two_outputs()
    path = save(model, tmp_path / "model.onnx")
    imp = import_model(path)
    assert (imp.output, imp.graph.output_name, imp.graph.removed) == ("probabilities", logits, ("Softmax",))
    x = inputs((5,), n=40)
    meta = exact(path, imp.graph, tmp_path, x)
    assert (meta["source_output"], meta["source_logits"]) == ("probabilities", logits)
    np.save(tmp_path / "x.npy", x)
    result = _cli("verify", tmp_path / "m.snn.h5", "--onnx", path, "--data", tmp_path / "x.npy", "--json")
    assert result.exit_code == 0, result.output


def test_zipmap_probabilities_are_refused_with_the_option_and_the_argmax_input(tmp_path):
    model, logits, _ = _two_outputs(zipmap=True)
    path = save(model, tmp_path / "model.onnx")
    with pytest.raises(ModelError) as info:
        import_model(path)
    msg = str(info.value)
    assert "2 outputs, 'label' (int64), 'probabilities' (sequence_type)" in msg and "--onnx-output NAME" in msg
    probabilities = next(n.output[0] for n in model.graph.node if n.op_type == "Softmax")
    assert f"'{probabilities}', the tensor an ArgMax reads" in msg
    # the tensor named: the ZipMap and ArgMax (not convertible) are left out, the Softmax removed
    imp = import_model(path, probabilities)
    assert (imp.output, imp.graph.output_name) == (probabilities, logits)
    x = inputs((5,), n=40)
    np.save(tmp_path / "x.npy", x)
    result = _cli("convert", path, "--calib", tmp_path / "x.npy", "-o", tmp_path / "m.snn.h5",
                  "--onnx-output", probabilities, "--quiet")
    assert result.exit_code == 0, result.output
    net = h5io.read(tmp_path / "m.snn.h5")
    np.testing.assert_allclose(simulator.simulate(net, x).logits, ir.forward(imp.graph, x), rtol=0,
                               atol=1e-9 * np.max(np.abs(ir.forward(imp.graph, x))))
    result = _cli("verify", tmp_path / "m.snn.h5", "--onnx", path, "--data", tmp_path / "x.npy", "--json")
    assert result.exit_code == 0, result.output


def test_two_float_outputs_are_refused_unless_one_is_named(tmp_path):
    model, logits, hidden = _two_outputs(hidden_output=True)
    path = save(model, tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="2 are a float tensor computed by a linear layer; pass --onnx-output"):
        import_model(path)
    assert import_model(path, "probabilities").graph.output_name == logits
    with pytest.raises(ModelError, match="--onnx-output 'nothing' is not a tensor of the model"):
        import_model(path, "nothing")


# ----------------------------------------------------------------------------- Slice, Split, Gather

def _slice(b, x, starts, ends, axes=None, steps=None, opset=13):
    if opset < 10:
        return b.op("Slice", [x], starts=starts, ends=ends, **({"axes": axes} if axes is not None else {}))
    inputs = [x, b.int_const(starts), b.int_const(ends)]
    if axes is not None:
        inputs.append(b.int_const(axes))
    if steps is not None:
        inputs.append(b.int_const(steps))
    return b.op("Slice", inputs)


SLICES = {
    "channels": dict(starts=[1], ends=[3], axes=[1]),
    "negative_axis_and_step": dict(starts=[-1], ends=[-(2**62)], axes=[-1], steps=[-2]),
    "two_axes_with_steps": dict(starts=[0, 4], ends=[4, 0], axes=[1, 2], steps=[2, -1]),
    "clamped_ends": dict(starts=[1, 0], ends=[2**62, 3], axes=[2, 3]),
    "whole_batch_and_channels": dict(starts=[0, 2], ends=[2**63 - 1, 4], axes=[0, 1]),
}


@pytest.mark.parametrize("case", SLICES)
def test_slice_of_an_image_population(tmp_path, case):
    rng = np.random.default_rng(12)
    b = GraphBuilder((2, 6, 6), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])
    h = _slice(b, h, **SLICES[case])
    h = b.op("Relu", [conv(b, rng, h, 3, kernel=(2, 2))])
    imp = check(readout(b, rng, h), tmp_path)
    assert any(isinstance(n, ir.Take) for n in imp.graph.nodes)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 6, 6)))


@pytest.mark.parametrize("opset", [9, 13])
def test_slice_of_a_vector_in_both_opset_forms(tmp_path, opset):
    """Slice with attributes (opset < 10, upgraded on import) and with inputs, of an MLP's hidden layer under
    a pending BatchNorm map, and of the network input."""
    rng = np.random.default_rng(13)
    b = GraphBuilder((8,), opset=opset)
    x = _slice(b, "x", [1], [7], [1], opset=opset)
    h = b.op("Relu", [gemm(b, rng, x, 10)])
    h = b.op("BatchNormalization", [h, b.const(rng.uniform(-1.5, 1.5, 10)), b.const(rng.standard_normal(10)),
                                    b.const(rng.standard_normal(10)), b.const(rng.uniform(0.5, 2, 10))])
    h = _slice(b, h, [2], [9], [1], opset=opset)
    model = b.build(gemm(b, rng, b.op("Relu", [gemm(b, rng, h, 5)]), 3))
    imp = check(model, tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((8,)))


def _split(b, x, n_out, opset, sizes=None, axis=1, num_outputs=False):
    if num_outputs:
        return b.op("Split", [x], n_out=n_out, axis=axis, num_outputs=n_out)
    if sizes is None:
        return b.op("Split", [x], n_out=n_out, axis=axis)
    if opset < 13:
        return b.op("Split", [x], n_out=n_out, axis=axis, split=sizes)
    return b.op("Split", [x, b.int_const(sizes)], n_out=n_out, axis=axis)


@pytest.mark.parametrize("opset,form", [(9, "sizes"), (11, "sizes"), (13, "sizes"), (13, "equal"),
                                        (18, "num_outputs")])
def test_split_shufflenet_block(tmp_path, opset, form):
    """ShuffleNetV2's unit: split the channels in two (5 channels into 3 + 2 with num_outputs), one part through
    a branch, concatenate, shuffle the channels (Reshape–Transpose–Reshape)."""
    rng = np.random.default_rng(14)
    b = GraphBuilder((3, 6, 6), opset=opset)
    h = b.op("Relu", [conv(b, rng, "x", 5 if form == "num_outputs" else 6, pads=[1, 1, 1, 1])])
    sizes = {"sizes": [2, 4], "equal": None, "num_outputs": None}[form]
    first = _split(b, h, 2, opset, sizes, num_outputs=form == "num_outputs")
    second = first[:-1] + "1"
    branch = b.op("Relu", [conv(b, rng, second, 3 if form != "sizes" else 4, kernel=(1, 1))])
    h = b.op("Concat", [first, branch], axis=1)   # 6 channels in every form
    h = b.op("Reshape", [h, b.int_const([0, 2, 3, 6, 6])])
    h = b.op("Transpose", [h], perm=[0, 2, 1, 3, 4])
    h = b.op("Reshape", [h, b.int_const([0, 6, 6, 6])])
    h = b.op("Relu", [conv(b, rng, h, 4)])
    imp = check(readout(b, rng, h), tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((3, 6, 6)))


GATHERS = {
    "scalar_spatial": (2, np.int64(-2)),
    "channels_repeated_negative": (1, np.array([3, -1, 0, 0])),
    "matrix_of_rows": (2, np.array([[0, 4], [2, 2]])),
}


@pytest.mark.parametrize("case", GATHERS)
def test_gather_with_constant_indices(tmp_path, case):
    axis, indices = GATHERS[case]
    rng = np.random.default_rng(15)
    b = GraphBuilder((2, 5, 5), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 4, pads=[1, 1, 1, 1])])
    h = b.op("Gather", [h, b.int_const(indices)], axis=axis)
    h = b.op("Relu", [b.op("Mul", [h, b.const(1.5)])])
    imp = check(readout(b, rng, h), tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 5, 5)))


@pytest.mark.parametrize("op", ["Slice", "Gather"])
def test_selecting_along_the_batch_axis_is_refused(tmp_path, op):
    rng = np.random.default_rng(16)
    b = GraphBuilder((6,), opset=13)
    h = b.op("Relu", [gemm(b, rng, "x", 4)])
    h = _slice(b, h, [0], [1], [0]) if op == "Slice" else b.op("Gather", [h, b.int_const([0])], axis=0)
    _, msg = import_error(b.build(h), tmp_path, kind=UnsupportedOperatorError)
    assert f"{op} node" in msg and "batch axis" in msg


# ----------------------------------------------------------------------------- ../shared/realworld-onnx

def _realworld_script():
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "realworld_onnx.py"
    spec = importlib.util.spec_from_file_location("realworld_onnx", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not REALWORLD.is_dir(), reason="../shared/realworld-onnx is absent")
@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet", "light_inception_v2"])
def test_realworld_opset_9_graphs_import_like_onnxruntime(tmp_path, name):
    """onnx-caffe2's SqueezeNet (Fire modules, Dropout), ShuffleNet (channel shuffles, a linear layer concatenated
    with an AveragePool with count_include_pad = 0) and Inception-v2 (pool projections: that pooling read by a
    Conv) at opset 9, with seeded random weights: upgraded on import, the float64 forward pass equals
    onnxruntime's on two samples (rtol 1e-4, atol 1e-4 · max |output| as ``check``). ResNet-50 (``Sum``
    residuals) and DenseNet-121 take 20 s and more: benchmarks/realworld_onnx.py runs them."""
    path = _realworld_script().materialize(REALWORLD / f"{name}.onnx", tmp_path / f"{name}.onnx")
    imp = import_model(path)
    assert (imp.opset, imp.imported_opset, imp.graph.removed) == (9, 11, ("Softmax",))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = run_model(session(path, [imp.graph.output_name]), x)[0]   # the file fixes batch 1: one at a time
    got = ir.forward(imp.graph, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)))


@pytest.mark.skipif(not REALWORLD.is_dir(), reason="../shared/realworld-onnx is absent")
def test_realworld_squeezenet_converts_exactly(tmp_path):
    path = _realworld_script().materialize(REALWORLD / "light_squeezenet.onnx", tmp_path / "squeezenet.onnx")
    imp = import_model(path)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    meta = exact(path, imp.graph, tmp_path, x, batch_size=2)
    assert (meta["source_opset"], meta["imported_opset"]) == (9, 11)


# ----------------------------------------------------------------------------- property: selections in random nets

@st.composite
def selection_nets(draw):
    """(model, input shape, seed): conv → ReLU, then a Slice (random start, end, step, possibly negative),
    a Split (random sizes, one part or both read) or a Gather (random indices, repeats, negative) along a
    random non-batch axis, optionally a BatchNorm map before it, then conv → ReLU (or a residual sum with
    the other part) and a readout."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shape = (draw(st.integers(1, 2)), draw(st.integers(3, 6)), draw(st.integers(3, 6)))
    b = GraphBuilder(shape, opset=13)
    c = draw(st.integers(2, 4))
    h = b.op("Relu", [conv(b, rng, "x", c, pads=[1, 1, 1, 1])])
    if draw(st.booleans()):
        h = bn(b, rng, h)
    axis = draw(st.integers(1, 3))
    n = (c, *shape[1:])[axis - 1]
    op = draw(st.sampled_from(["Slice", "Split", "Gather"]))
    if op == "Slice":
        step = draw(st.sampled_from([1, 2, -1, -2]))
        start, end = draw(st.integers(-n - 1, n + 1)), draw(st.integers(-n - 1, n + 1))
        if not len(range(n)[slice(start, end, step)]):
            start, end = (0, n) if step > 0 else (n - 1, -n - 1)
        h = _slice(b, h, [start], [end], [axis], [step])
    elif op == "Split":
        first = draw(st.integers(1, n - 1)) if n > 1 else 1
        sizes = [first, n - first] if n > 1 else [1]
        h = _split(b, h, len(sizes), 13, sizes, axis=axis)
        if len(sizes) == 2 and draw(st.booleans()):
            h = h[:-1] + "1"
    else:
        indices = draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4))
        h = b.op("Gather", [h, b.int_const(indices)], axis=axis)
    h = b.op("Relu", [conv(b, rng, h, 3, kernel=(1, 1))])
    return readout(b, rng, h), shape, seed


@settings(max_examples=20, deadline=None)
@given(net=selection_nets())
def test_selections_are_exact_and_match_the_event_reference(tmp_path_factory, net):
    """The pipeline is exact against the float64 forward pass (``exact``), and with calibration on small inputs
    and a run on large ones (early spikes provoked) the simulator equals the event-by-event reference."""
    import reference
    model, shape, seed = net
    tmp = tmp_path_factory.mktemp("sel")
    path = save(model, tmp / "model.onnx")
    graph = import_model(path).graph
    x = inputs(shape, n=16, seed=seed % 1000)
    exact(path, graph, tmp, x)
    np.save(tmp / "small.npy", 0.2 * x)
    convert.convert(path, str(tmp / "small.npy"), tmp / "early.snn.h5", input_range=(-6, 6))
    net_early = h5io.read(tmp / "early.snn.h5")
    big = 2.0 * x[:3].astype(np.float64)
    result = simulator.simulate(net_early, big, keep_times=True)
    assume(result.counts.early_spikes > 0)   # the case this test is for: neurons that fire early
    logits, times = reference.run(net_early, big)
    for name, t in times.items():
        np.testing.assert_allclose(result.times[name], t, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-9, atol=1e-9 * max(1.0, np.max(np.abs(logits))))


# ----------------------------------------------------------------------------- AveragePool, count_include_pad = 0

AVERAGE_POOLS = {
    "padded_3x3": dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    "padded_strided": dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1]),
    "ceil_mode_cut_windows": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "same_upper": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
}


@pytest.mark.parametrize("after_pad", [False, True])
@pytest.mark.parametrize("case", AVERAGE_POOLS)
def test_average_pool_without_padding_in_the_count(tmp_path, case, after_pad):
    """Inception-v2's pooling: each window divided by how many of its positions lie in the tensor (a Pad's
    zeros do; the pooling's own padding and ceil_mode's cut windows do not). Through a ReLU (the identity on
    it) and a BatchNorm map, read by a dense layer: exact."""
    rng = np.random.default_rng(17)
    b = GraphBuilder((2, 5, 5), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    if after_pad:
        h = b.op("Pad", [h, b.int_const([0, 0, 1, 0, 0, 0, 0, 1])])
    h = b.op("AveragePool", [h], count_include_pad=0, **AVERAGE_POOLS[case])
    imp = check(readout(b, rng, bn(b, rng, b.op("Relu", [h]))), tmp_path)   # the BN map joins the divisors
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 5, 5)))


def test_ceil_mode_keeps_a_last_window_that_starts_in_a_pads_zeros(tmp_path):
    """ceil_mode drops a last window that starts in the pooling's own padding, not one that starts in the zeros
    of a Pad before it (real positions of the pooled tensor): 6 columns and 1 of the Pad → 4 windows, not 3."""
    rng = np.random.default_rng(21)
    b = GraphBuilder((2, 4, 6), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("Pad", [h, b.int_const([0, 0, 0, 0, 0, 0, 0, 1])])
    h = b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    imp = check(readout(b, rng, h), tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 4, 6)))


@pytest.mark.parametrize("reader", ["conv1x1", "conv3x3", "bn_then_conv"])
@pytest.mark.parametrize("after_pad", [False, True])
@pytest.mark.parametrize("case", AVERAGE_POOLS)
def test_average_pool_without_padding_in_the_count_read_by_a_conv(tmp_path, case, after_pad, reader):
    """Inception-v2's pool projection: the pooling read by a convolution, which cannot carry a divisor that
    varies with the position. The pooling becomes spiking blocks of positions with one divisor each, concatenated
    back: as many neurons as pooled positions, exact against onnxruntime and in the whole pipeline."""
    rng = np.random.default_rng(18)
    b = GraphBuilder((2, 5, 6), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    if after_pad:
        h = b.op("Pad", [h, b.int_const([0, 0, 1, 0, 0, 0, 0, 1])])
    h = b.op("AveragePool", [h], count_include_pad=0, **AVERAGE_POOLS[case])
    if reader == "bn_then_conv":
        h = bn(b, rng, h)
    kernel, pads = ((3, 3), [1, 1, 1, 1]) if reader == "conv3x3" else ((1, 1), [0, 0, 0, 0])
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, kernel=kernel, pads=pads)])), tmp_path)
    blocks = [n for n in imp.graph.nodes if isinstance(n, ir.Affine) and "average pooling" in n.origin]
    after = imp.graph.nodes[imp.graph.nodes.index(blocks[-1]) + 1:]
    reader = next(n for n in after if isinstance(n, ir.Affine))   # the convolution reading the pooling
    assert blocks and all(n.relu for n in blocks)
    assert sum(int(np.prod(n.shape)) for n in blocks) == int(np.prod(reader.terms[0].in_shape))
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 5, 6)))


def test_two_average_pools_without_padding_in_the_count_in_sequence(tmp_path):
    """Two poolings made of blocks, each read by a convolution: the blocks of each share one code scale per
    channel, the second pooling's blocks scaled only once the walk reaches them (docs/math.md §8)."""
    rng = np.random.default_rng(22)
    b = GraphBuilder((2, 6, 6), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    for _ in range(2):
        h = b.op("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
        h = b.op("Relu", [conv(b, rng, h, 3, kernel=(1, 1))])
    imp = check(readout(b, rng, h), tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 6, 6)))


def test_average_pool_scaled_by_a_map_of_many_blocks_read_by_a_conv_is_refused(tmp_path):
    """A pooling multiplied by a constant that changes at every position would need one spiking block per
    position: refused naming the pooling."""
    rng = np.random.default_rng(23)
    b = GraphBuilder((2, 10, 10), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    h = b.op("AveragePool", [h], kernel_shape=[1, 1])
    h = b.op("Mul", [h, b.const(rng.uniform(0.5, 1.5, (1, 10, 10)))])
    _, msg = import_error(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, kernel=(1, 1))])), tmp_path,
                          kind=UnsupportedOperatorError)
    assert "AveragePool 'AveragePool_" in msg and "more than 64 blocks" in msg


def test_average_pool_without_padding_in_the_count_in_1d(tmp_path):
    rng = np.random.default_rng(19)
    b = GraphBuilder((2, 9), opset=13)
    h = b.op("Relu", [conv(b, rng, "x", 3, kernel=(3,), pads=[1, 1])])
    h = b.op("AveragePool", [h], kernel_shape=[3], strides=[2], pads=[1, 1], count_include_pad=0, ceil_mode=1)
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, kernel=(3,), pads=[1, 1])])), tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 9)))


def test_linear_layer_concatenated_with_an_average_pool_without_padding_in_the_count(tmp_path):
    """ShuffleNet (Caffe2) units with stride 2: Concat(BN(Conv(...)) before its ReLU, AveragePool of the unit's
    input with count_include_pad = 0), then Relu. The linear layer is stacked with the pooling, whose divisor
    varies over positions: the pooling becomes spiking blocks first."""
    rng = np.random.default_rng(20)
    b = GraphBuilder((2, 6, 6), opset=9)
    x = b.op("Relu", [conv(b, rng, "x", 3, pads=[1, 1, 1, 1])])
    branch = bn(b, rng, conv(b, rng, x, 4, pads=[1, 1, 1, 1], strides=[2, 2]))
    pool = b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    h = b.op("Relu", [b.op("Concat", [branch, pool], axis=1)])
    imp = check(readout(b, rng, b.op("Relu", [conv(b, rng, h, 2, kernel=(1, 1))])), tmp_path)
    exact(tmp_path / "model.onnx", imp.graph, tmp_path, inputs((2, 6, 6)))
