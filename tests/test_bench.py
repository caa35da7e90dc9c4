"""``bench``: the work it counts, the report it gives and the regression gate; no timing targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from builders import GraphBuilder, save
from relu2snn_cli import bench, convert, h5io, snn
from relu2snn_cli.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A converted conv → pool → dense network, its ONNX file and test data."""
    tmp = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    b = GraphBuilder((2, 6, 5))
    h = b.op("Conv", ["x", b.const(rng.normal(0, 0.5, (3, 2, 3, 3))), b.const(rng.normal(0, 0.1, 3))],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.op("Relu", [h])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h])
    h = b.op("Gemm", [h, b.const(rng.normal(0, 0.5, (4, 18))), b.const(np.zeros(4))], transB=1)
    h = b.op("Relu", [h])
    h = b.op("Gemm", [h, b.const(rng.normal(0, 0.5, (3, 4))), b.const(np.zeros(3))], transB=1)
    model = save(b.build(h), tmp / "m.onnx")
    np.save(tmp / "calib.npy", rng.normal(0, 1, (64, 2, 6, 5)).astype(np.float32))
    np.save(tmp / "test.npy", rng.normal(0, 1, (10, 2, 6, 5)).astype(np.float32))
    out = tmp / "m.snn.h5"
    convert.convert(model, str(tmp / "calib.npy"), out)
    return {"onnx": model, "snn": out, "data": tmp / "test.npy", "tmp": tmp}


def brute_fan_out(layer: snn.SpikingLayer) -> np.ndarray:
    """Count, by walking every output neuron and tap, the synapses leaving each input neuron."""
    count = np.zeros(layer.in_shape)
    o_n, kh, kw = layer.J.shape[0], *layer.J.shape[2:]
    _, ho, wo = layer.shape
    for o in range(o_n):
        for i in range(ho):
            for j in range(wo):
                for u in range(kh):
                    for v in range(kw):
                        y = i * layer.strides[0] - layer.pads[0] + u * layer.dilations[0]
                        x = j * layer.strides[1] - layer.pads[1] + v * layer.dilations[1]
                        if 0 <= y < layer.in_shape[1] and 0 <= x < layer.in_shape[2]:
                            count[:, y, x] += 1
    return count


@pytest.mark.parametrize("strides, pads, dilations", [((1, 1), (1, 1, 1, 1), (1, 1)),
                                                      ((2, 1), (0, 2, 1, 0), (1, 2)),
                                                      ((2, 2), (0, 0, 0, 0), (1, 1))])
def test_fan_out_counts_real_taps(strides, pads, dilations):
    J = np.ones((3, 2, 3, 2))
    layer = snn.SpikingLayer("c", "x", (2, 7, 6), J, np.ones(3), (1.0, 1.0), strides, pads, dilations,
                             theta=np.full(3, 9.0), certified=np.ones(3, bool), scale=np.ones(3), x_max=np.ones(3))
    got = bench.fan_out(layer)
    np.testing.assert_array_equal(got, brute_fan_out(layer))
    # every multiply-add reads one input, a padded one sends no spike
    assert got.sum() <= bench.macs(layer)
    assert (got.sum() == bench.macs(layer)) == (max(pads) == 0)


def test_macs_and_events_of_a_network(small):
    net = h5io.read(small["snn"])
    conv, dense, readout = [n for n in net.nodes if isinstance(n, (snn.SpikingLayer, snn.Readout))]
    assert bench.macs(conv) == 3 * 6 * 5 * 2 * 3 * 3
    assert bench.macs(dense) == 4 * 18 and bench.macs(readout) == 3 * 4
    from relu2snn_cli.simulator import Simulator
    result = Simulator(net).run(np.load(small["data"]), keep_times=True)
    events = bench.synaptic_events(net, result.times)
    # every neuron fires once: each sample sends the fan-outs summed over all sending neurons
    per_sample = bench.fan_out(conv).sum() + bench.fan_out(dense).sum() + bench.fan_out(readout).sum()
    assert events == 10 * per_sample
    assert bench.fan_out(dense).sum() == 4 * 18 and bench.fan_out(readout).sum() == 3 * 4


def test_bench_report(small):
    report = bench.bench(small["snn"], str(small["data"]), onnx_path=small["onnx"], batch_size=4, repeats=2)
    net = h5io.read(small["snn"])
    assert report["n_samples"] == 10 and report["batch_size"] == 4 and report["repeats"] == 2
    assert report["snn_seconds_per_sample"] > 0 and report["ann_seconds_per_sample"] > 0
    assert report["snn_over_ann"] == pytest.approx(report["snn_seconds_per_sample"] / report["ann_seconds_per_sample"])
    assert report["ann_macs_per_sample"] == 3 * 6 * 5 * 2 * 3 * 3 + 4 * 18 + 3 * 4
    assert 0 < report["synaptic_events_per_sample"] <= report["ann_macs_per_sample"]
    assert report["spikes_per_neuron"] == 1.0
    assert report["latency"] == net.latency
    assert report["peak_rss_mb"] > 10
    layers = [n.name for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    assert list(report["layer_seconds_per_sample"]) == layers
    assert 0 < sum(report["layer_seconds_per_sample"].values()) < 10 * report["snn_seconds_per_sample"]
    assert "passed" not in report


def test_bench_without_onnx(small):
    report = bench.bench(small["snn"], str(small["data"]), repeats=1)
    assert report["ann_seconds_per_sample"] is None and report["snn_over_ann"] is None


def test_cli_json_and_regression_gate(small):
    result = run("bench", small["snn"], "--data", small["data"], "--onnx", small["onnx"], "--repeats", "1",
                 "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("snn_seconds_per_sample", "ann_seconds_per_sample", "snn_over_ann", "synaptic_events_per_sample",
                "ann_macs_per_sample", "spikes_per_neuron", "latency", "peak_rss_mb"):
        assert key in report
    slow = small["tmp"] / "slow.json"
    slow.write_text(json.dumps({**report, "snn_seconds_per_sample": 1e3}))
    ok = run("bench", small["snn"], "--data", small["data"], "--repeats", "1", "--baseline", slow, "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["passed"] is True
    fast = small["tmp"] / "fast.json"
    fast.write_text(json.dumps({**report, "snn_seconds_per_sample": 1e-12}))
    bad = run("bench", small["snn"], "--data", small["data"], "--repeats", "1", "--baseline", fast,
              "--max-regression", "0.1")
    assert bad.exit_code == 1
    assert "regression" in bad.stdout  # the report is printed before the gate fails
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "above the baseline" in lines[0] and "--max-regression 0.1" in lines[0]


@pytest.mark.parametrize("text", ["not json", "{}", '{"snn_seconds_per_sample": -1}'])
def test_unreadable_baseline_is_bad_input(small, text):
    path = small["tmp"] / "baseline.json"
    path.write_text(text)
    result = run("bench", small["snn"], "--data", small["data"], "--baseline", path)
    assert result.exit_code == 2
    assert "snn_seconds_per_sample" in result.stderr and "Traceback" not in result.output


def test_wrong_data_shape_is_bad_input(small):
    path = small["tmp"] / "wrong.npy"
    np.save(path, np.zeros((3, 4), np.float32))
    result = run("bench", small["snn"], "--data", path)
    assert result.exit_code == 2 and "expects" in result.stderr


def test_help_has_an_example():
    result = run("bench", "--help")
    assert result.exit_code == 0 and "relu2snn bench" in result.output and "--baseline" in result.output
