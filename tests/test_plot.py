"""Pictures of the spikes (relu2snn_cli/plot.py) and the plot and robustness commands (docs/hardware.md)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from builders import converted_sample
from relu2snn_cli import h5io, plot, snn
from relu2snn_cli.cli import cli
from relu2snn_cli.simulator import Simulator



def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return converted_sample(tmp_path_factory.mktemp("cnn"), "cnn", 24)


def test_membrane_potential_is_the_ramp_sum():
    grid = np.array([0.0, 0.5, 1.0, 2.0])
    v = plot.membrane_potential(np.array([0.5, 1.0]), np.array([2.0, -3.0]), 0.5, 0.0, grid)
    np.testing.assert_allclose(v, [0.0, 0.25, 0.5 + 1.0, 1.0 + 3.0 - 3.0], atol=1e-15)


def test_traces_reach_the_threshold_at_the_simulators_spike_times(cnn):
    """For threshold spikes V(spike) = ϑ and V < ϑ before; for forced ones V stays at or below ϑ up to the
    window end (tolerance 1e-9 of max(1, |ϑ|))."""
    path, x, _ = cnn
    net = h5io.read(path)
    result = Simulator(net).run(np.load(x)[2:3], keep_times=True)
    checked = {"threshold": 0, "forced": 0}
    for layer in (n for n in net.nodes if isinstance(n, snn.SpikingLayer)):
        t = result.times[layer.name].reshape(-1)
        end = sum(layer.window)
        for kind, picks in (("threshold", np.flatnonzero(t < end)[:3]), ("forced", np.flatnonzero(t == end)[:2])):
            for index in picks:
                tr = plot.trace(net, result.times, layer.name, int(index))
                tol = 1e-9 * max(1.0, abs(tr["theta"]))
                assert tr["grid"][-1] == tr["spike"] and tr["grid"][0] == tr["input_window"][0]
                assert np.all(tr["v"][:-1] < tr["theta"] + tol)
                if kind == "threshold":
                    assert abs(tr["v"][-1] - tr["theta"]) <= tol
                else:
                    assert tr["v"][-1] <= tr["theta"] + tol
                checked[kind] += 1
    assert checked["threshold"] >= 8 and checked["forced"] >= 8


def test_plot_writes_a_png_that_is_not_blank(cnn, tmp_path):
    path, x, _ = cnn
    out = tmp_path / "raster.png"
    result = run("plot", path, "--data", x, "--sample", 1, "-o", out, "--neurons", "#1:0,7", "--neurons",
                 "/body/body.12/Gemm:3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [n["index"] for n in report["neurons"]] == [0, 7, 3]
    assert [p["neurons"] for p in report["populations"]] == [64, 512, 1024, 256, 32]
    import matplotlib.image
    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 600 and image.shape[1] >= 1200
    rgb = image[..., :3]
    assert 0.01 < np.mean(np.any(rgb < 0.9, axis=-1)) < 0.9    # marks on a mostly white page
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20      # several colours: bands, spikes, lines


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_plot_format_from_the_extension(cnn, tmp_path, suffix, magic):
    path, x, _ = cnn
    out = tmp_path / f"raster{suffix}"
    assert run("plot", path, "--data", x, "-o", out).exit_code == 0
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/r.gif"], "use one of .png, .svg, .pdf"),
    (["-o", "{tmp}/r.png", "--sample", "99"], "holds samples 0..23"),
    (["-o", "{tmp}/r.png", "--neurons", "nolayer:1"], "spiking layer's name or #row"),
    (["-o", "{tmp}/r.png", "--neurons", "#1:512"], "not a neuron index in 0..511"),
])
def test_plot_refuses_in_one_line(cnn, tmp_path, args, message):
    path, x, _ = cnn
    result = run("plot", path, "--data", x, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_without_matplotlib_one_line_says_how_to_install_it(cnn, tmp_path, monkeypatch):
    path, x, _ = cnn
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for args in (["plot", path, "--data", x, "-o", tmp_path / "r.png"],
                 ["robustness", path, "--data", x, "--time-bits", "8", "--plot", tmp_path / "r.png"]):
        result = run(*args)
        assert result.exit_code == 2
        assert "pip install 'relu2snn[plot]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_robustness_command_json_table_and_plot(cnn, tmp_path):
    """--json gives the issue's fields per level; the same command gives the same numbers; --plot writes a PNG."""
    path, x, y = cnn
    args = ["robustness", path, "--data", x, "--labels", y, "--time-noise", "0,0.05", "--alpha-noise", "0.01",
            "--time-bits", "16", "--trials", "2", "--seed", "4", "--quiet"]
    first, again = run(*args, "--json"), run(*args, "--json")
    assert first.exit_code == 0, first.output
    assert first.output == again.output
    report = json.loads(first.output)
    keys = {"axis", "value", "agreement_mean", "agreement_std", "accuracy_mean", "accuracy_std", "early_spikes_mean",
            "latency"}
    assert [(r["axis"], r["value"]) for r in report["levels"]] == [("time_noise", 0.0), ("time_noise", 0.05),
                                                                    ("alpha_noise", 0.01), ("time_bits", 16)]
    assert all(keys <= set(r) for r in report["levels"])
    assert report["levels"][0]["agreement_mean"] == 1.0 and report["levels"][3]["agreement_mean"] == 1.0
    table = run(*args, "--plot", tmp_path / "rob.png")
    assert table.exit_code == 0, table.output
    assert "time_noise" in table.output and "1.0000 ± 0.0000" in table.output
    import matplotlib.image
    assert matplotlib.image.imread(tmp_path / "rob.png").shape[1] >= 600
    bad = run("robustness", path, "--data", x, "--time-noise", "0,x")
    assert bad.exit_code == 2 and "comma-separated list" in bad.output
    none = run("robustness", path, "--data", x)
    assert none.exit_code == 2 and "at least one axis" in none.output


def test_sparse_traces_and_raster(tmp_path):
    """In the sparse coding (docs/math.md §9) a trace rises with slope 1 after its input window and reaches ϑ at the
    simulator's spike time; a silent neuron stays at or below ϑ up to its window end; the raster does not count
    silent neurons as forced spikes (tolerance 1e-9 of max(1, |ϑ|))."""
    from relu2snn_cli import convert
    from relu2snn_cli.mapping import MappingOptions
    path = tmp_path / "sparse.snn.h5"
    convert.convert("sample_models/cnn/model.onnx", "sample_models/cnn/calib.npy", path,
                    MappingOptions(coding="sparse"))
    net = h5io.read(path)
    result = Simulator(net).run(np.load("sample_models/cnn/test.npy")[2:3], keep_times=True)
    checked = {"spike": 0, "silent": 0}
    for layer in (n for n in net.nodes if isinstance(n, snn.SpikingLayer)):
        t = result.times[layer.name].reshape(-1)
        end = sum(layer.window)
        for kind, picks in (("spike", np.flatnonzero(t < end)[:3]), ("silent", np.flatnonzero(t == end)[:2])):
            for index in picks:
                tr = plot.trace(net, result.times, layer.name, int(index))
                tol = 1e-9 * max(1.0, abs(tr["theta"]))
                assert np.all(tr["v"][:-1] < tr["theta"] + tol)
                after = tr["grid"] > tr["input_window"][1]
                np.testing.assert_allclose(np.diff(tr["v"][after]), np.diff(tr["grid"][after]), rtol=0, atol=tol)
                if kind == "spike":
                    assert abs(tr["v"][-1] - tr["theta"]) <= tol
                else:
                    assert tr["v"][-1] <= tr["theta"] + tol
                checked[kind] += 1
    assert checked["spike"] >= 8 and checked["silent"] >= 6
    pops = plot.populations(net, result.times)
    assert all(not p["forced"].any() for p in pops) and sum(p["silent"].sum() for p in pops) > 0
