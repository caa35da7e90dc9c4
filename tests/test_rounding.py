"""rounding.py: the first-order bound of float64 rounding on the logits verify compares (docs/math.md §1,
"How exact is exact"), checked against a longdouble truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from builders import GraphBuilder, converted_sample, save
from relu2snn_cli import convert, h5io, ir, ops, rounding, snn, verify
from relu2snn_cli.cli import cli
from relu2snn_cli.convert import import_model
from relu2snn_cli.mapping import MappingOptions
from relu2snn_cli.simulator import Simulator

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
LD = np.longdouble
# the truth needs more mantissa bits than float64 (52): 63 on x86; where long double is double, nothing to compare
needs_longdouble = pytest.mark.skipif(np.finfo(LD).nmant <= 52, reason="np.longdouble is no wider than float64")


def truth(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    """The forward pass with every activation in longdouble (11 more mantissa bits on x86), parameters exact."""
    out = {graph.input.name: np.asarray(x, dtype=LD)}
    for node in graph.nodes[1:]:
        out[node.name] = ir.apply(node, [out[name] for name in node.inputs])
    return out[graph.nodes[-1].name]


def floor(net: snn.Network) -> np.ndarray:
    """u·T_out·Σ_j |J_oj| per logit o: how far rounding each input spike time of the readout by u·T_out (half an
    ulp of the last window's end) moves logit o; the readout's own bound (``rounding.snn_local``) is 6 times it."""
    readout = net.nodes[-1]
    return rounding.U * sum(readout.window) * sum(np.abs(s.J).reshape(len(s.J), -1).sum(axis=1)
                                                  for s in readout.synapses)


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


def sparse_stack(depth: int = 5, width: int = 8, seed: int = 1):
    """A ReLU stack for the sparse coding (docs/math.md §9) on which the dense closed form is wrong in every layer:
    neuron 0 of each layer never fires (bias −1000) but sends a weight of −50 to every neuron of the next, so
    Σ J < 0 (the dense slope α + Σ J would never cross) while the sparse slope is 1 and a silent input adds
    nothing; neurons 1 and 2 of the second-to-last layer are twins 1e-3 apart (same weights) whose difference the last
    layer reads with weights ±1000, so the rounding of their absolute spike times reaches the logits 1000-fold."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((width,))
    h = "x"
    for n in range(depth):
        w = rng.normal(0, 1 / np.sqrt(width), (width, width))
        bias = rng.normal(0, 0.1, width) + 0.5
        if n:
            w[0, :] = -50.0
        if n == depth - 2:
            w[:, 2] = w[:, 1]
            bias[2] = bias[1] - 1e-3
        if n == depth - 1:
            w[1, :] += 1e3
            w[2, :] -= 1e3
        bias[0] = -1e3
        h = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.const(w)]), b.const(bias)])])
    return b.build(b.op("MatMul", [h, b.const(rng.normal(0, 1, (width, 3)))]))


def stack_files(folder, model, options=MappingOptions()):
    """``model`` saved and converted with ``options`` on 64 normal samples; its first 16 as test inputs."""
    path = save(model, folder / "model.onnx")
    rng = np.random.default_rng(1)
    np.save(folder / "calib.npy", rng.normal(0, 1, (64, 8)).astype(np.float32))
    np.save(folder / "x.npy", np.load(folder / "calib.npy")[:16])
    convert.convert(path, str(folder / "calib.npy"), folder / "model.snn.h5", options)
    return folder / "model.snn.h5", path, folder / "x.npy"


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    return stack_files(tmp_path_factory.mktemp("deep"), deep_stack())


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    return stack_files(tmp_path_factory.mktemp("sparse"), sparse_stack(), MappingOptions(coding="sparse"))


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
def test_move_back_is_the_adjoint_of_the_move(node):
    """For every node that moves neurons, <move'(x)·dx, g> = <dx, move_back(g)>, the move's Jacobian at x
    (a pooling: the input each window took, values distinct) taken as the difference quotient of a step 1e-6."""
    rng = np.random.default_rng(3)
    shapes = node.in_shapes if isinstance(node, ir.Concat) else (node.in_shape,)
    xs = [rng.permutation(2 * np.prod(s))[:np.prod(s)].reshape((1,) + tuple(s)).astype(np.float64) for s in shapes]
    dxs = [rng.uniform(-1, 1, x.shape) for x in xs]
    y = node.move(xs)
    step = (node.move([x + 1e-6 * dx for x, dx in zip(xs, dxs)]) - y) / 1e-6
    g = rng.normal(size=y.shape)
    backs = node.move_back(g, xs, y)
    assert np.sum(step * g) == pytest.approx(sum(np.sum(dx * b) for dx, b in zip(dxs, backs)), rel=1e-6)


@needs_longdouble
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


@needs_longdouble
def test_bound_holds_on_a_deep_stack_with_a_large_error(deep):
    """On the deep stack the simulator's error is above verify's plain 1e-9 of max |logit| (its absolute spike
    times round to u·T, codes are 1e-10 of that), the forward pass's is far below; both lie within their bounds.
    The simulator's bound is within 100 times ``floor``, the effect of one rounding of each spike time the
    readout reads (not a bound that lets everything pass): the readout and the last layer allow 6 roundings of
    their times each and every earlier layer about 50 times less, about 12 floors in all (8–12 measured). The
    floor comes from the network, not from the error itself, which a lucky CPU or BLAS can make small."""
    artifact, model, x = deep
    err_snn, bound_snn, err_ann, bound_ann = errors_and_bounds(artifact, model, np.load(x))
    net = h5io.read(artifact)
    scale = np.max(np.abs(Simulator(net).run(np.load(x)).logits))
    assert np.max(err_snn) > 1e-9 * scale
    assert np.max(err_ann) < 1e-12 * scale
    assert np.all(err_snn <= bound_snn) and np.all(err_ann <= bound_ann)
    assert np.all(bound_snn >= floor(net)) and np.max(bound_snn) < 100 * np.max(floor(net))


@needs_longdouble
def test_bound_holds_on_a_sparse_stack(sparse):
    """In the sparse coding (docs/math.md §9) a layer's output phase has slope 1 and its silent inputs add nothing:
    on the sparse stack, whose Σ J are negative and whose last layer reads twins with weights ±1000, the
    simulator's and the forward pass's logits lie within their bounds of the longdouble truth, the sum far
    below 1e-9 of max |logit|; each layer passes the gradient J (factor 1)."""
    artifact, model, x = sparse
    err_snn, bound_snn, err_ann, bound_ann = errors_and_bounds(artifact, model, np.load(x))
    net = h5io.read(artifact)
    result = Simulator(net).run(np.load(x), keep_times=True)
    assert result.counts.scanned == 0 and result.counts.early_spikes == 0   # all in closed form
    assert np.all(err_snn <= bound_snn) and np.all(err_ann <= bound_ann)
    assert np.max(bound_snn + bound_ann) < 1e-9 * np.max(np.abs(result.logits))
    local = rounding.snn_local(net, result.times)
    for layer in net.nodes:
        if isinstance(layer, snn.SpikingLayer):
            assert np.all(local[layer.name][2] == 1.0)


@needs_longdouble
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_sparse_bound_holds_and_active_is_fired(name, tmp_path):
    """On sample models converted to the sparse coding (16 test samples), a spiking neuron passes the gradient
    exactly where it fired (its time before its window end; none lies within 1e-6 of
    its sums' size of firing, where it would count as active too), and both logits lie within their bounds."""
    samples = SAMPLES / name
    artifact = tmp_path / "sparse.snn.h5"
    convert.convert(samples / "model.onnx", str(samples / "calib.npy"), artifact, MappingOptions(coding="sparse"))
    x = np.load(samples / "test.npy")[:16]
    net = h5io.read(artifact)
    times = Simulator(net).run(x, keep_times=True).times
    local = rounding.snn_local(net, times)
    for layer in net.nodes:
        if isinstance(layer, snn.SpikingLayer):
            fired = times[layer.name] < sum(layer.window)
            assert 0 < np.mean(fired) < 1
            np.testing.assert_array_equal(local[layer.name][1], fired)
    err_snn, bound_snn, err_ann, bound_ann = errors_and_bounds(artifact, samples / "model.onnx", x)
    assert np.all(err_snn <= bound_snn) and np.all(err_ann <= bound_ann)


def test_active_is_fired_on_the_sparse_stack(sparse):
    """On the sparse stack too, whose Σ J are negative: a spiking neuron is active exactly where it fired."""
    artifact, _, x = sparse
    net = h5io.read(artifact)
    times = Simulator(net).run(np.load(x), keep_times=True).times
    local = rounding.snn_local(net, times)
    for layer in net.nodes:
        if isinstance(layer, snn.SpikingLayer):
            np.testing.assert_array_equal(local[layer.name][1], times[layer.name] < sum(layer.window))


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
    assert verify.verify(artifact, model, str(x), max_logit_error=0.0)["passed"]   # every error within its bound
    [message] = verify.verify(tmp_path / "moved.snn.h5", model, str(x), max_logit_error=0.0)["failures"]
    assert "exceeds both its own float64 rounding bound" in message and "--max-logit-error 0 " in message


def test_verify_reports_no_bound_where_the_plain_check_passes(tmp_path):
    """On a sample model the logit error is within 1e-9 of max |logit|: no bound is computed (null)."""
    artifact, x, _ = converted_sample(tmp_path, "mlp", 16)
    report = verify.verify(artifact, SAMPLES / "mlp" / "model.onnx", str(x))
    assert report["passed"] and report["logit_rounding_bound"] is None
    assert report["logit_error_beyond_bound"] == report["max_abs_logit_error_ref"]


def test_max_logit_error_0_judges_every_error_by_its_bound(tmp_path):
    """`verify --max-logit-error 0`: every batch with a logit error gets its rounding bound (above min(1e-9, 0) of
    its max |logit|), so the mlp sample, whose errors of 1e-13 are float64 rounding far below 1e-9, passes with
    its bound rather than failing for want of one; 16 samples in two batches."""
    artifact, x, _ = converted_sample(tmp_path, "mlp", 16)
    result = CliRunner().invoke(cli, [str(a) for a in ("verify", artifact, "--onnx", SAMPLES / "mlp" / "model.onnx",
                                                       "--data", x, "--batch-size", 8, "--max-logit-error", 0,
                                                       "--json", "--quiet")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["max_logit_error"] == 0.0
    assert 0 < report["max_abs_logit_error_ref"] <= report["logit_rounding_bound"] < 1e-9 * report["max_abs_logit"]
    assert report["logit_error_beyond_bound"] == 0.0


def test_sharded_verify_computes_the_same_bounds(tmp_path):
    """The threshold for the bound reaches the workers of a sharded run: with --max-logit-error 0 the report of
    two workers equals the single process's, bound included."""
    distributed = pytest.importorskip("dask.distributed")
    artifact, x, _ = converted_sample(tmp_path, "mlp", 16)
    model = SAMPLES / "mlp" / "model.onnx"
    one = verify.verify(artifact, model, str(x), max_logit_error=0.0, batch_size=8)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        two = verify.verify(artifact, model, str(x), max_logit_error=0.0, batch_size=8, client=client)
    assert one["logit_rounding_bound"] is not None and two == one


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
    assert message == ("max_abs_logit_error_ref 2e-05: an error of 2e-05 exceeds both its own float64 rounding "
                       "bound (logit_rounding_bound up to 1e-05) and --max-logit-error 1e-09 × max_abs_logit 20 "
                       "= 2e-08")
    plain = {k: v for k, v in report.items() if k not in ("logit_rounding_bound", "logit_error_beyond_bound")}
    [message] = failures(plain)   # a report without bounds: the largest error against the limit, as before
    assert message.startswith("max_abs_logit_error_ref 1e-06") and "rounding" not in message
