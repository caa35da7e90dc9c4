"""rounding.py: the first-order bound of float64 rounding on the logits verify compares (docs/math.md §1,
"How exact is exact"), checked against a longdouble truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from builders import GraphBuilder, converted_sample, save
from relu2snn_cli import convert, h5io, ir, ops, rounding, snn, verify
from relu2snn_cli.convert import import_model
from relu2snn_cli.simulator import Simulator

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
LD = np.longdouble


def truth(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    """The forward pass with every activation in longdouble (11 more mantissa bits on x86), parameters exact."""
    out = {graph.input.name: np.asarray(x, dtype=LD)}
    for node in graph.nodes[1:]:
        out[node.name] = ir.apply(node, [out[name] for name in node.inputs])
    return out[graph.nodes[-1].name]


def errors_and_bounds(artifact, onnx_path, x):
    """(|SNN − truth|, its bound, |forward pass − truth|, its bound), per sample and logit."""
    net = h5io.read(artifact)
    graph = import_model(onnx_path, len(x), net.meta.get("source_output")).graph
    exact = truth(graph, x)
    result = Simulator(net).run(x, keep_times=True)
    values = ir.forward(graph, x, keep=True)
    ann = values[graph.nodes[-1].name]
    return (np.abs(result.logits - exact).astype(np.float64), rounding.snn_bound(net, result.times),
            np.abs(ann - exact).astype(np.float64), rounding.ann_bound(graph, values))


def deep_stack(depth: int = 5, width: int = 8, big: float = 50.0, seed: int = 0):
    """A dense ReLU stack whose code scales shrink 50-fold per layer (docs/math.md §3): neuron 0 of each layer
    never fires (bias −1000) but sends a weight of 50 to every neuron of the next, so s ≈ 50/c and c ≈ 0.02·c_prev,
    while the activations stay near 1: at depth 5 the codes are 1e-10 of the activations, as deep in MnasNet."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((width,))
    h = "x"
    for _ in range(depth):
        w = rng.normal(0, 1 / np.sqrt(width), (width, width))
        w[0, :] = big
        bias = rng.normal(0, 0.1, width) + 0.5
        bias[0] = -1e3
        h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.const(w)]), b.const(bias)])])
    return b.build(b.op("MatMul", [h, b.const(rng.normal(0, 1, (width, 3)))]))


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deep")
    model = save(deep_stack(), folder / "deep.onnx")
    rng = np.random.default_rng(1)
    np.save(folder / "calib.npy", rng.normal(0, 1, (64, 8)).astype(np.float32))
    np.save(folder / "x.npy", np.load(folder / "calib.npy")[:16])
    convert.convert(model, str(folder / "calib.npy"), folder / "deep.snn.h5")
    return folder / "deep.snn.h5", model, folder / "x.npy"


@pytest.mark.parametrize("geometry", [
    dict(shape=(3, 7, 6), kernel=(4, 3, 3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1),
    dict(shape=(4, 9, 8), kernel=(6, 2, 3, 2), strides=(2, 3), pads=(0, 1, 2, 0), dilations=(2, 1), groups=2),
    dict(shape=(4, 6, 6), kernel=(4, 1, 3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=4),
    dict(shape=(3, 11), kernel=(5, 3, 3), strides=(2,), pads=(1, 2), dilations=(2,), groups=1),
])
def test_conv_transpose_is_the_adjoint_of_conv(geometry):
    """<conv(x), g> = <x, conv_transpose(g)> to 1e-12 relative, for strides, pads, dilations, groups, 1-D."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + geometry["shape"])
    w = rng.normal(size=geometry["kernel"])
    args = (geometry["strides"], geometry["pads"], geometry["dilations"], geometry["groups"])
    y = ops.conv(x, w, *args)
    g = rng.normal(size=y.shape)
    back = rounding.conv_transpose(g, w, geometry["shape"], *args)
    assert back.shape == x.shape
    assert np.sum(y * g) == pytest.approx(np.sum(x * back), rel=1e-12)


@pytest.mark.parametrize("node", [
    ir.Take("t", "x", (4, 3, 5), 2, (4, 0, 4, 1)),
    ir.Concat("c", ("x", "z"), ((4, 3, 5), (2, 3, 5)), 0),
    ir.Transpose("p", "x", (4, 3, 5), (2, 0, 1)),
    ir.Reshape("r", "x", (4, 3, 5), (60,)),
    ir.MaxPool("m", "x", (4, 3, 5), (2, 2), (1, 2), (1, 0, 0, 1), (1, 1), latest=(1,)),
    ir.MaxPool("m1", "x", (4, 5), (3,), (2,), (1, 1), (1,), ceil_mode=True),
])
def test_move_transpose_is_the_adjoint_of_the_move(node):
    """For every node that moves neurons, <move'(x)·dx, g> = <dx, move_transpose(g)>, the move's Jacobian at x
    (a pooling: the input each window took, values distinct) taken as the difference quotient of a step 1e-6."""
    rng = np.random.default_rng(3)
    shapes = node.in_shapes if isinstance(node, ir.Concat) else (node.in_shape,)
    xs = [rng.permutation(2 * np.prod(s))[:np.prod(s)].reshape((1,) + tuple(s)).astype(np.float64) for s in shapes]
    dxs = [rng.uniform(-1, 1, x.shape) for x in xs]
    y = node.move(xs)
    step = (node.move([x + 1e-6 * dx for x, dx in zip(xs, dxs)]) - y) / 1e-6
    g = rng.normal(size=y.shape)
    backs = rounding.move_transpose(node, g, xs, y)
    assert np.sum(step * g) == pytest.approx(sum(np.sum(dx * b) for dx, b in zip(dxs, backs)), rel=1e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "concat", "cnn1d", "dwsep", "mobilenet"])
def test_bound_holds_on_the_sample_models(name, tmp_path):
    """Both the simulator's and the forward pass's logits lie within their bounds of the longdouble truth, on 16
    test samples of each sample model (pooling, residual sums, concatenations, 1-D, depthwise, linear
    bottlenecks); the sum of the two bounds is what verify uses, here far below 1e-9 of max |logit|."""
    artifact, x, _ = converted_sample(tmp_path, name, 16)
    err_snn, bound_snn, err_ann, bound_ann = errors_and_bounds(artifact, SAMPLES / name / "model.onnx", np.load(x))
    assert np.all(err_snn <= bound_snn) and np.all(err_ann <= bound_ann)
    net = h5io.read(artifact)
    scale = np.max(np.abs(Simulator(net).run(np.load(x)).logits))
    assert np.max(bound_snn + bound_ann) < 1e-9 * scale


def test_bound_holds_on_a_deep_stack_with_a_large_error(deep):
    """On the deep stack the simulator's error is above verify's plain 1e-9 of max |logit| (its absolute spike
    times round to u·T, codes are 1e-10 of that), the forward pass's is far below; both lie within their bounds,
    and the simulator's bound is within 1000 times its error (not a bound that lets everything pass)."""
    artifact, model, x = deep
    err_snn, bound_snn, err_ann, bound_ann = errors_and_bounds(artifact, model, np.load(x))
    scale = np.max(np.abs(Simulator(h5io.read(artifact)).run(np.load(x)).logits))
    assert np.max(err_snn) > 1e-9 * scale
    assert np.max(err_ann) < 1e-12 * scale
    assert np.all(err_snn <= bound_snn) and np.all(err_ann <= bound_ann)
    assert np.max(bound_snn) < 1e3 * np.max(err_snn)


def test_verify_passes_within_the_bound_and_fails_beyond_it(deep, tmp_path):
    """verify passes the deep stack, whose logit error exceeds 1e-9 of max |logit| but not logit_rounding_bound;
    a spike time moved in the last hidden layer (its ϑ raised for one neuron, so the neuron fires 1% of its
    code later) moves the logits far beyond the bound, and verify fails naming the bound."""
    artifact, model, x = deep
    report = verify.verify(artifact, model, str(x))
    assert report["passed"], report["failures"]
    assert report["max_abs_logit_error_ref"] > 1e-9 * report["max_abs_logit"]
    assert report["max_abs_logit_error_ref"] <= report["logit_rounding_bound"]
    assert report["logit_error_beyond_bound"] == 0.0
    net = h5io.read(artifact)
    last = [i for i, n in enumerate(net.nodes) if isinstance(n, snn.SpikingLayer)][-1]
    layer = net.nodes[last]
    codes = sum(layer.window) - Simulator(net).run(np.load(x), keep_times=True).times[layer.name]
    neuron = int(np.argmax(codes.max(axis=0)))
    slope = layer.alpha[neuron] + layer.synapses[0].J[neuron].sum()
    theta = layer.theta.copy()
    theta[neuron] += 0.01 * codes[:, neuron].max() * slope
    moved = dataclasses.replace(layer, theta=theta)
    h5io.write(tmp_path / "moved.snn.h5", snn.Network(net.nodes[:last] + (moved,) + net.nodes[last + 1:], net.meta))
    off = verify.verify(tmp_path / "moved.snn.h5", model, str(x))
    assert not off["passed"]
    assert off["max_abs_logit_error_ref"] > 100 * off["logit_rounding_bound"]
    assert off["logit_error_beyond_bound"] == off["max_abs_logit_error_ref"]
    [message] = off["failures"]
    assert "logit_rounding_bound" in message


def test_verify_reports_no_bound_where_the_plain_check_passes(tmp_path):
    """On a sample model the logit error is within 1e-9 of max |logit|: no bound is computed (null)."""
    artifact, x, _ = converted_sample(tmp_path, "mlp", 16)
    report = verify.verify(artifact, SAMPLES / "mlp" / "model.onnx", str(x))
    assert report["passed"] and report["logit_rounding_bound"] is None
    assert report["logit_error_beyond_bound"] == report["max_abs_logit_error_ref"]


def test_failures_allow_the_rounding_bound_and_name_it():
    """The logit check fails only for an error above --max-logit-error × max_abs_logit that is also above its own
    (sample, logit) rounding bound (logit_error_beyond_bound); its sentence then names the bound."""
    from relu2snn_cli.verify import failures
    report = {"agreement": 1.0, "min_agreement": 1.0, "max_logit_error": 1e-9, "max_abs_logit": 20.0,
              "max_abs_logit_error_ref": 1e-6, "logit_rounding_bound": 1e-5, "logit_error_beyond_bound": 0.0,
              "early_spikes": 0, "max_early_spikes": 0, "out_of_range_inputs": 0}
    assert failures(report) == []
    assert failures({**report, "logit_error_beyond_bound": 2e-8}) == []   # above its bound, within the limit
    [message] = failures({**report, "max_abs_logit_error_ref": 2e-5, "logit_error_beyond_bound": 2e-5})
    assert message.startswith("max_abs_logit_error_ref 2e-05") and "logit_rounding_bound up to 1e-05" in message
    plain = {k: v for k, v in report.items() if k not in ("logit_rounding_bound", "logit_error_beyond_bound")}
    [message] = failures(plain)   # a report without bounds: the largest error against the limit, as before
    assert message.startswith("max_abs_logit_error_ref 1e-06") and "rounding" not in message
