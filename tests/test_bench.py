"""``bench``: the work it counts, the report it gives and the regression gate; no timing targets."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from builders import GraphBuilder, save
from relu2snn_cli import bench, convert, h5io, snn
from relu2snn_cli.cli import cli
from relu2snn_cli.mapping import MappingOptions
from relu2snn_cli.simulator import Simulator


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


def brute_fan_out(syn: snn.Synapses) -> np.ndarray:
    """Count, by walking every output neuron and tap, the synapses leaving each input neuron (flat)."""
    count = np.zeros(syn.in_shape)
    o_n, per_group, kh, kw = syn.J.shape
    per_out = o_n // syn.groups
    _, ho, wo = syn.shape
    for o in range(o_n):
        channels = range(o // per_out * per_group, (o // per_out + 1) * per_group)
        for i in range(ho):
            for j in range(wo):
                for u in range(kh):
                    for v in range(kw):
                        y = i * syn.strides[0] - syn.pads[0] + u * syn.dilations[0]
                        x = j * syn.strides[1] - syn.pads[1] + v * syn.dilations[1]
                        if 0 <= y < syn.in_shape[1] and 0 <= x < syn.in_shape[2]:
                            count[list(channels), y, x] += 1
    return count.reshape(-1)


@pytest.mark.parametrize("strides, pads, dilations, groups", [((1, 1), (1, 1, 1, 1), (1, 1), 1),
                                                              ((2, 1), (0, 2, 1, 0), (1, 2), 1),
                                                              ((2, 2), (0, 0, 0, 0), (1, 1), 1),
                                                              ((1, 2), (1, 0, 0, 1), (1, 1), 2)])
def test_events_count_real_taps(strides, pads, dilations, groups):
    """Synaptic events of a convolution whose weights are all nonzero, with every input spiking (dense coding): the
    synapses leaving each input neuron counted by walking every output neuron and tap; padded taps send nothing.
    With a zero weight its events are gone."""
    syn = snn.Synapses("x", (2, 7, 6), np.ones((4, 2 // groups, 3, 2)), 0.0, strides, pads, dilations, groups)
    layer = snn.SpikingLayer("c", (syn,), np.ones(4), (1.0, 1.0), theta=np.full(4, 9.0),
                             certified=np.ones(4, bool), scale=np.ones(4), x_max=np.ones(4))
    readout = snn.Readout("out", (snn.Synapses("c", layer.shape, np.zeros((1, int(np.prod(layer.shape))))),),
                          np.zeros(1), (1.0, 1.0))
    sim = Simulator(snn.Network((snn.Encoder("x", (2, 7, 6), 0.0, 1.0), layer, readout), {}))
    t = np.full((3, 2, 7, 6), 0.5)
    got = sim.events(layer, [t])
    assert got == 3 * brute_fan_out(syn).sum()
    # every multiply-add reads one input, a padded one sends no spike
    assert got <= 3 * bench.macs(layer)
    assert (got == 3 * bench.macs(layer)) == (max(pads) == 0)
    assert sim.events(readout, [np.zeros((3,) + layer.shape)]) == 0   # zero weights: no events
    J = syn.J.copy()
    J[0, 0, 0, 0] = 0.0
    sparser = dataclasses.replace(layer, name="c0", synapses=(dataclasses.replace(syn, J=J),))
    assert sim.events(sparser, [t]) < got


def test_macs_and_events_of_a_network(small):
    net = h5io.read(small["snn"])
    conv, dense, readout = [n for n in net.nodes if isinstance(n, (snn.SpikingLayer, snn.Readout))]
    assert bench.macs(conv) == 3 * 6 * 5 * 2 * 3 * 3
    assert bench.macs(dense) == 4 * 18 and bench.macs(readout) == 3 * 4
    result = Simulator(net).run(np.load(small["data"]), count_events=True)
    # every neuron fires once: each sample sends the fan-outs summed over all sending neurons (nonzero weights)
    fan = [brute_fan_out(conv.synapses[0]).sum(), 4 * 18, 3 * 4]
    assert np.all(dense.synapses[0].J != 0) and np.all(readout.synapses[0].J != 0) and np.all(conv.synapses[0].J != 0)
    assert result.counts.synaptic_events == 10 * sum(fan)


def test_bench_report(small):
    report = bench.bench(small["snn"], str(small["data"]), onnx_path=small["onnx"], batch_size=4, repeats=2)
    net = h5io.read(small["snn"])
    assert report["n_samples"] == 10 and report["batch_size"] == 4 and report["repeats"] == 2
    assert report["snn_seconds_per_sample"] > 0 and report["ann_seconds_per_sample"] > 0
    assert report["snn_over_ann"] == pytest.approx(report["snn_seconds_per_sample"] / report["ann_seconds_per_sample"])
    assert report["ann_macs_per_sample"] == 3 * 6 * 5 * 2 * 3 * 3 + 4 * 18 + 3 * 4
    assert 0 < report["synaptic_events_per_sample"] <= report["ann_macs_per_sample"]
    assert report["spikes_per_neuron"] == 1.0 and report["spikes_per_hidden_neuron"] == 1.0
    assert report["coding"] == "dense" and report["spikes"] == report["spikes_per_sample"] * 10
    assert report["synaptic_events"] == report["synaptic_events_per_sample"] * 10
    assert report["layer_spikes_per_sample"] == {n.name: float(np.prod(n.shape)) for n in net.nodes
                                                 if isinstance(n, (snn.Encoder, snn.SpikingLayer))}
    # the same share of forced spikes as one run over the data
    counts = Simulator(net).run(np.load(small["data"])).counts
    assert 0 < counts.forced_spikes < counts.threshold_spikes + counts.forced_spikes
    assert report["forced_spike_share"] == pytest.approx(counts.forced_share, rel=1e-12)
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
                "ann_macs_per_sample", "spikes_per_neuron", "forced_spike_share", "latency", "peak_rss_mb"):
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


def test_overflowing_network_is_bad_input(tmp_path, monkeypatch):
    """A readout α of 1e308 (finite) overflows the logits of the MLP sample, whose readout window is about
    16 long: one line naming the file and the readout, exit 2, no report. (Validation refuses such magnitudes on
    read; the bound is lifted here to reach the simulator's own check.)"""
    import dataclasses

    from relu2snn_cli import validate
    monkeypatch.setattr(validate, "MAX_MAGNITUDE", np.inf)
    path = tmp_path / "mlp.snn.h5"
    convert.convert("sample_models/mlp/model.onnx", "sample_models/mlp/calib.npy", path)
    net = h5io.read(path)
    readout = net.nodes[-1]
    assert readout.window[1] > 2
    huge = dataclasses.replace(readout, alpha=np.full_like(readout.alpha, 1e308))
    h5io.write(tmp_path / "huge.snn.h5", snn.Network(net.nodes[:-1] + (huge,), net.meta))
    result = run("bench", tmp_path / "huge.snn.h5", "--data", "sample_models/mlp/test.npy", "--repeats", "1",
                 "--json")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "huge.snn.h5" in lines[0] and f"'{readout.name}'" in lines[0]


def test_bench_sparse_coding_counts_real_spikes(small):
    """The same network converted with the sparse coding: spikes per hidden neuron is the share of threshold spikes
    (the positive activations), the per-population spikes add up to the spikes, and the synaptic events fall
    below the dense coding's."""
    sparse = small["tmp"] / "sparse.snn.h5"
    convert.convert(small["onnx"], str(small["tmp"] / "calib.npy"), sparse, MappingOptions(coding="sparse"))
    report = bench.bench(sparse, str(small["data"]), batch_size=4, repeats=1)
    dense = bench.bench(small["snn"], str(small["data"]), batch_size=4, repeats=1)
    net = h5io.read(sparse)
    counts = Simulator(net).run(np.load(small["data"]), count_events=True).counts
    hidden = sum(int(np.prod(n.shape)) for n in net.nodes if isinstance(n, snn.SpikingLayer))
    assert report["coding"] == "sparse" and counts.forced_spikes == 0
    assert report["spikes_per_hidden_neuron"] == counts.threshold_spikes / (10 * hidden) < 1.0
    assert report["spikes"] == counts.spikes == sum(report["layer_spikes_per_sample"].values()) * 10
    assert report["synaptic_events"] == counts.synaptic_events < dense["synaptic_events"]
    assert report["spikes_per_neuron"] < dense["spikes_per_neuron"] == 1.0
