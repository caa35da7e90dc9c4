"""relu2snn export: the NIR graph (loads with nir.read, reads back to the same network) and the stand-alone
Brian2 script (docs/exports.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from relu2snn_cli import h5io, ops, snn
from relu2snn_cli.cli import cli
from relu2snn_cli.convert import convert
from relu2snn_cli.errors import ExportError
from relu2snn_cli.export import brian2 as export_brian2
from relu2snn_cli.export import nir as export_nir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # brian2 uses pyparsing's old names
nir = pytest.importorskip("nir")
pytest.importorskip("brian2")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module", params=["mlp", "cnn", "resnet"])
def converted(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "model.snn.h5"
    convert(SAMPLES / name / "model.onnx", str(SAMPLES / name / "calib.npy"), out)
    return name, out


def assert_same_network(a: snn.Network, b: snn.Network) -> None:
    """Every field of every node equal: arrays exactly, windows and delays exactly; meta equal."""
    assert a.meta == b.meta
    assert [type(n) for n in a.nodes] == [type(n) for n in b.nodes]
    for x, y in zip(a.nodes, b.nodes):
        for field in x.__dataclass_fields__:
            u, v = getattr(x, field), getattr(y, field)
            if field == "synapses":
                assert len(u) == len(v)
                for s, t in zip(u, v):
                    assert (s.input, tuple(s.in_shape), s.delay, tuple(s.strides), tuple(s.pads),
                            tuple(s.dilations), s.groups) == (t.input, tuple(t.in_shape), t.delay, tuple(t.strides),
                                                             tuple(t.pads), tuple(t.dilations), t.groups)
                    assert s.J.dtype == t.J.dtype and np.array_equal(s.J, t.J)
            elif isinstance(u, np.ndarray):
                assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v), (x.name, field)
            else:
                assert tuple(u) == tuple(v) if isinstance(u, (tuple, list)) else u == v, (x.name, field)
    assert h5io.content_hash(a) == h5io.content_hash(b)


# ----------------------------------------------------------------------------- NIR

def test_nir_export_loads_and_round_trips(converted, tmp_path):
    name, path = converted
    net = h5io.read(path)
    out = tmp_path / "model.nir"
    report = export_nir.write(net, out)
    graph = nir.read(out)          # nir's own reader, with its type check
    assert isinstance(graph, nir.NIRGraph)
    assert report["nir_nodes"] == len(graph.nodes)
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert {"Input", "Output", "I", "IF"} <= kinds
    assert ("SumPool2d" in kinds) == (name == "cnn")
    # the residual sums of the sample ResNet read populations of different windows: their spikes are delayed
    delays = sorted(s.delay for n in net.nodes for s in getattr(n, "synapses", ()) if s.delay)
    assert bool(delays) == (name == "resnet")
    assert sorted(float(n.delay.flat[0]) for n in graph.nodes.values() if isinstance(n, nir.Delay)) == delays
    assert_same_network(net, export_nir.read(out))


def test_nir_primitives_mean_what_relu2snn_means(converted):
    """IF threshold = ϑ + α·T_in (a NIR bias is on from t = 0, relu2snn's ramp from T_in); the readout's drive
    gives α·B_in at T_out; synaptic weights are J; the Affine/Conv drive carries α exactly."""
    _, path = converted
    net = h5io.read(path)
    graph = export_nir.to_nir(net)
    for k, node in enumerate(net.nodes):
        if isinstance(node, snn.SpikingLayer):
            t_in, _ = net.input_window(node)
            alpha = ops.per_neuron(node.alpha, node.shape)
            expected = ops.per_neuron(node.theta, node.shape) + alpha * t_in
            assert np.allclose(graph.nodes[f"n{k}"].v_threshold, expected, rtol=1e-15, atol=0)
            assert np.array_equal(graph.nodes[f"n{k}.drive"].bias, node.alpha)
            assert np.array_equal(graph.nodes[f"n{k}.syn0"].weight, node.synapses[0].J)
        if isinstance(node, snn.Readout):
            t_in, b_in = net.input_window(node)
            bias = graph.nodes[f"n{k}.drive"].bias
            assert np.allclose(bias * (t_in + b_in), node.alpha * b_in, rtol=1e-14, atol=0)


def test_nir_pool_thresholds_count_inputs():
    """Earliest-spike channels fire on the first input (threshold 1/2), latest-spike channels once every input
    of the window has fired (threshold count − 1/2; padded taps are not inputs)."""
    net = pool_network(latest=(1,), pads=(1, 1, 1, 1))
    graph = export_nir.to_nir(net)
    threshold = graph.nodes["n1"].v_threshold
    assert np.all(threshold[0] == 0.5)
    # 4×4 input, kernel 2, stride 2, pad 1: corner windows hold 1 input, edge windows 2, the middle 4
    assert threshold[1].tolist() == [[0.5, 1.5, 0.5], [1.5, 3.5, 1.5], [0.5, 1.5, 0.5]]
    assert_same_network(net, export_nir.from_nir(graph))


def test_nir_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(ExportError, match="padding .* differs at the two ends"):
        export_nir.to_nir(pool_network(latest=(), pads=(0, 0, 1, 1)))
    concat = tmp_path / "concat.snn.h5"
    convert(SAMPLES / "concat" / "model.onnx", str(SAMPLES / "concat" / "calib.npy"), concat)
    result = run("export", concat, "--format", "nir", "-o", tmp_path / "c.nir")
    assert result.exit_code == 2
    assert "NIR has no primitive for Concat" in error_line(result)
    assert not (tmp_path / "c.nir").exists()


def test_nir_reader_refuses_tampered_and_foreign_graphs(tmp_path):
    net = pool_network(latest=(), pads=(0, 0, 0, 0))
    out = tmp_path / "m.nir"
    export_nir.write(net, out)
    with h5py.File(out, "r+") as f:
        f["node/nodes/n2.drive/bias"][0] += 1e-3        # the readout's drive no longer gives its α
    with pytest.raises(ExportError, match="disagrees with the value kept in its metadata"):
        export_nir.read(out)
    graph = export_nir.to_nir(net)
    del graph.nodes["n1"].metadata["latest"]
    with pytest.raises(ExportError, match="n1: its metadata lacks 'latest'"):
        export_nir.from_nir(graph)
    graph = export_nir.to_nir(net)
    graph.nodes["n1.taps"] = nir.Scale(scale=np.ones((2, 4, 4)))
    with pytest.raises(ExportError, match="n1.taps: a NIR Scale where relu2snn's export layout has SumPool2d"):
        export_nir.from_nir(graph)
    graph = export_nir.to_nir(net)
    graph.edges.append(("input", "n2.syn0"))
    with pytest.raises(ExportError, match="n2.syn0: expected one incoming edge"):
        export_nir.from_nir(graph)
    foreign = nir.NIRGraph.from_list(nir.Linear(weight=np.ones((2, 3))), nir.IF(r=np.ones(2), v_threshold=np.ones(2)))
    with pytest.raises(ExportError, match="not exported by relu2snn"):
        export_nir.from_nir(foreign)


def pool_network(latest, pads) -> snn.Network:
    """Encoder (2, 4, 4) → SpikePool (kernel 2, stride 2) → Readout (3 classes), windows as the mapping sets them."""
    rng = np.random.default_rng(0)
    enc = snn.Encoder("input", (2, 4, 4), -1.0, 1.0)
    pool = snn.SpikePool("pool", "input", (2, 4, 4), (2, 2), (2, 2), tuple(pads), (1, 1), latest=tuple(latest),
                         window=enc.window)
    size = int(np.prod(pool.shape))
    readout = snn.Readout("out", (snn.Synapses("pool", pool.shape, rng.normal(size=(3, size))),),
                          rng.normal(size=3), enc.window)
    return snn.Network((enc, pool, readout), {"tool": "relu2snn"})


# ----------------------------------------------------------------------------- Brian2 script

def test_brian2_script_runs_stand_alone(tmp_path):
    """The script imports only the standard library, numpy and brian2, runs in a fresh interpreter in another
    directory, and prints the logits Brian2 computes: the same numbers as relu2snn's Brian2 run, and within
    3 % of the largest |logit| of the exact simulator at dt = 0.01 (docs/exports.md, "How close")."""
    path = tmp_path / "model.snn.h5"
    convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), path)
    net = h5io.read(path)
    x = np.load(SAMPLES / "mlp" / "test.npy")[:4]
    np.save(tmp_path / "x.npy", x)
    result = run("export", path, "--format", "brian2", "-o", tmp_path / "net.py", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "brian2" and report["dt"] == 0.01
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "net.py"), "--data", str(tmp_path / "x.npy")],
                          cwd=work, capture_output=True, text=True, check=True)
    printed = np.array([[float(v) for v in line.split()] for line in proc.stdout.strip().splitlines()])
    tree = ast.parse((tmp_path / "net.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "argparse", "base64", "io", "json", "time", "numpy", "brian2"}
    in_process = export_brian2.run(net, x, 0.01)["logits"]
    assert np.array_equal(printed, in_process)
    from relu2snn_cli.simulator import simulate
    exact = simulate(net, x).logits
    assert np.array_equal(printed.argmax(axis=1), exact.argmax(axis=1))
    assert np.max(np.abs(printed - exact)) <= 0.03 * np.max(np.abs(exact))


def test_export_cli_output_rules_and_missing_extra(tmp_path, monkeypatch):
    path = tmp_path / "m.snn.h5"
    convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), path)
    out = tmp_path / "m.nir"
    assert run("export", path, "--format", "nir", "-o", out).exit_code == 0
    again = run("export", path, "--format", "nir", "-o", out)
    assert again.exit_code == 2 and "pass --force" in error_line(again)
    assert run("export", path, "--format", "nir", "-o", out, "--force").exit_code == 0
    for module, fmt in (("nir", "nir"), ("brian2", "brian2")):
        monkeypatch.setitem(sys.modules, module, None)     # importlib then finds no such module
        result = run("export", path, "--format", fmt, "-o", tmp_path / f"x.{fmt}")
        assert result.exit_code == 2
        assert error_line(result) == (f"relu2snn: error: export --format {fmt} needs the optional extra: "
                                      f"pip install 'relu2snn[{fmt}]'")
        monkeypatch.delitem(sys.modules, module)


def test_exports_refuse_the_sparse_coding(tmp_path):
    """A sparse artifact (docs/math.md §9) is refused by both exports and by crosscheck in one line, exit 2: their
    neuron models have the dense coding's dynamics. Nothing is written."""
    from relu2snn_cli.export import dense_only
    from relu2snn_cli.mapping import MappingOptions
    path = tmp_path / "sparse.snn.h5"
    convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), path, MappingOptions(coding="sparse"))
    for fmt in ("nir", "brian2"):
        out = tmp_path / f"x.{fmt}"
        result = run("export", path, "--format", fmt, "-o", out)
        assert result.exit_code == 2 and not out.exists()
        assert error_line(result) == (f"relu2snn: error: {path}: export --format {fmt}: the network uses the sparse "
                                      "coding; export supports the dense coding only (convert with --coding dense)")
    result = run("crosscheck", path, "--data", SAMPLES / "mlp" / "test.npy", "--samples", 2)
    assert result.exit_code == 2
    assert error_line(result) == (f"relu2snn: error: {path}: crosscheck --simulator brian2: the network uses the "
                                  "sparse coding; crosscheck supports the dense coding only (convert with --coding "
                                  "dense)")
    with pytest.raises(ExportError, match="dense coding only"):
        dense_only(h5io.read(path), "export --format nir")
