"""relu2snn crosscheck: the converted network run in Brian2 against relu2snn's simulator (docs/exports.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from relu2snn_cli import h5io, ops, snn
from relu2snn_cli.cli import cli
from relu2snn_cli.convert import convert
from relu2snn_cli.crosscheck import amplification, crosscheck, error_bounds
from relu2snn_cli.simulator import simulate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # brian2 uses pyparsing's old names
pytest.importorskip("brian2")
from relu2snn_cli.export import brian2 as export_brian2  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
N = 8                 # samples per Brian2 run: small enough for CI
DTS = (0.02, 0.005)   # two time steps, a factor 4 apart
MULTIPLE = 60         # the stated bound on each layer's spike-time difference, in dt (docs/exports.md)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def converted(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "model.snn.h5"
    convert(SAMPLES / name / "model.onnx", str(SAMPLES / name / "calib.npy"), out)
    return name, out


@pytest.fixture(scope="module")
def reports(converted):
    name, path = converted
    return name, path, {dt: crosscheck(path, str(SAMPLES / name / "test.npy"), dt, samples=N) for dt in DTS}


def test_brian2_agrees_within_a_multiple_of_dt(reports):
    """Agreement 1.0; every population's largest spike-time difference within MULTIPLE·dt and within its
    propagated bound; the largest difference and the logit difference shrink from dt = 0.02 to 0.005."""
    _, _, by_dt = reports
    for dt, r in by_dt.items():
        assert r["n_samples"] == N and r["dt"] == dt
        assert r["agreement"] == 1.0 and r["passed"]
        assert r["missing_spikes"] == 0 and r["within_bounds"]
        for layer, diff in r["spike_time_difference_per_layer"].items():
            assert diff <= MULTIPLE * dt, (dt, layer, diff / dt)
            assert diff <= r["spike_time_bound_per_layer"][layer]
        assert r["spike_time_difference_per_layer"]["input"] <= dt / 2 + 1e-12
        assert r["max_abs_logit_difference"] <= r["logit_difference_bound"]
    coarse, fine = by_dt[DTS[0]], by_dt[DTS[1]]
    assert fine["max_spike_time_difference"] < coarse["max_spike_time_difference"]
    assert fine["max_abs_logit_difference"] < coarse["max_abs_logit_difference"]


def test_first_layer_is_exact_to_one_step(converted):
    """Given Brian2's own (grid-rounded) input spikes, the first hidden layer fires in [t, t + dt) of the exact
    crossing time t: the ramp starts exactly at T_in, each input steps the current exactly, and the threshold
    is tested once per step (docs/exports.md, "How close")."""
    name, path = converted
    net = h5io.read(path)
    x = np.load(SAMPLES / name / "test.npy")[:N]
    dt = 0.01
    result = export_brian2.run(net, x, dt)
    enc, first = net.nodes[0], net.nodes[1]
    t = result["times"][enc.name]
    on_grid = (1.0 - t) * (enc.high - enc.low) + enc.low      # the inputs that fire at Brian2's times
    exact = simulate(net, on_grid, keep_times=True).times[first.name]
    diff = result["times"][first.name] - exact
    assert np.min(diff) >= -1e-9 and np.max(diff) < dt + 1e-9


def test_pool_neurons_fire_with_their_first_or_last_input():
    """Earliest-spike pooling fires in the step of its first input, the ``latest`` channels in the step of the
    last input of their window (padded taps are not inputs): Brian2's pool times equal the min / max of its
    own input times exactly."""
    rng = np.random.default_rng(1)
    enc = snn.Encoder("input", (2, 4, 4), -1.0, 1.0)
    pool = snn.SpikePool("pool", "input", (2, 4, 4), (2, 2), (2, 2), (1, 1, 1, 1), (1, 1), latest=(1,),
                         window=enc.window)
    size = int(np.prod(pool.shape))
    readout = snn.Readout("out", (snn.Synapses("pool", pool.shape, rng.normal(size=(3, size))),),
                          rng.normal(size=3), enc.window)
    net = snn.Network((enc, pool, readout))
    x = rng.uniform(-1, 1, size=(5, 2, 4, 4))
    result = export_brian2.run(net, x, 0.01)
    t_in = result["times"]["input"]
    expected = ops.pool_channels(t_in, (1,), ops.min_pool, ops.max_pool, (2, 2), (2, 2), (1, 1, 1, 1), (1, 1))
    assert np.array_equal(result["times"]["pool"], expected)
    exact = simulate(net, x)
    assert np.max(np.abs(result["logits"] - exact.logits)) <= error_bounds(net, 0.01)[1]


def test_error_bounds_follow_the_layers():
    """A dense layer J = [[2, −1]], α = 1: G = (2 + 1)/(1 + 2 − 1) = 1.5, so with inputs rounded to dt/2 its
    spikes differ by at most dt + 1.5·dt/2; the readout J = [[1], [−3]] reads them: logits within 3·that."""
    enc = snn.Encoder("input", (2,), 0.0, 1.0)
    window = (1.0, 2.0)
    layer = snn.SpikingLayer("h", (snn.Synapses("input", (2,), [[2.0, -1.0]]),), [1.0], window, theta=[3.0],
                             certified=[False], scale=[1.0], x_max=[1.0], x_n=1.0)
    readout = snn.Readout("out", (snn.Synapses("h", (1,), [[1.0], [-3.0]]),), [0.5, 0.5], window)
    net = snn.Network((enc, layer, readout))
    assert amplification(layer).tolist() == [1.5]
    bounds, logit = error_bounds(net, 0.1)
    assert bounds["input"] == 0.05
    assert bounds["h"] == pytest.approx(0.1 + 1.5 * 0.05, rel=1e-15)
    assert logit == pytest.approx(3.0 * bounds["h"], rel=1e-15)


def test_crosscheck_cli_json_and_exit_status(monkeypatch, tmp_path):
    path = tmp_path / "mlp.snn.h5"
    convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), path)
    data = SAMPLES / "mlp" / "test.npy"
    result = run("crosscheck", path, "--data", data, "--simulator", "brian2", "--dt", 0.01, "--samples", 4,
                 "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("agreement", "max_spike_time_difference", "spike_time_difference_per_layer",
                "max_abs_logit_difference", "dt", "brian2_seconds", "simulator_seconds", "brian2_over_simulator"):
        assert key in report
    assert report["n_samples"] == 4 and report["agreement"] == 1.0
    assert set(report["spike_time_difference_per_layer"]) == {n.name for n in h5io.read(path).nodes[:-1]}

    real = export_brian2.brian2_runtime.run

    def swapped(*args):   # Brian2 whose classes come out reversed: no sample agrees
        out = real(*args)
        out["logits"] = out["logits"][:, ::-1]
        return out

    monkeypatch.setattr(export_brian2.brian2_runtime, "run", swapped)
    failed = run("crosscheck", path, "--data", data, "--samples", 4, "--min-agreement", 0.5, "--quiet")
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines() == [
        f"relu2snn: error: agreement {report_agreement(failed)} with brian2 is below --min-agreement 0.5"]
    monkeypatch.setattr(export_brian2.brian2_runtime, "run", real)

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 5)))
    bad = run("crosscheck", path, "--data", wrong)
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "wrong.npy" in bad.stderr and "(64,)" in bad.stderr

    monkeypatch.setitem(sys.modules, "brian2", None)
    missing = run("crosscheck", path, "--data", data, "--samples", 4)
    assert missing.exit_code == 2
    assert missing.stderr.strip() == ("relu2snn: error: crosscheck --simulator brian2 needs the optional extra: "
                                      "pip install 'relu2snn[brian2]'")


def report_agreement(result) -> str:
    line = next(line for line in result.stdout.splitlines() if line.startswith("agreement "))
    return line.split()[1]
