"""End-to-end runs of the command line, as a user would type them (click's CliRunner, in tmp_path)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import reference
from builders import GraphBuilder, save
from relu2snn_cli import h5io, snn
from relu2snn_cli.cli import cli
from relu2snn_cli.simulator import Simulator

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def strict_json(text: str):
    """json.loads that refuses the non-JSON tokens NaN, Infinity and -Infinity."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


SAMPLE_NAMES = ["mlp", "cnn", "resnet", "cnn1d", "dwsep", "concat", "concat_dense", "nhwc"]


@pytest.fixture(scope="module", params=SAMPLE_NAMES)
def converted(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "model.snn.h5"
    result = run("convert", SAMPLES / name / "model.onnx", "--calib", SAMPLES / name / "calib.npy", "-o", out,
                 "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return name, out, json.loads(result.stdout)


def test_convert_report(converted):
    name, out, report = converted
    assert out.is_file()
    assert report["calibration_samples"] == 256
    assert report["forward_max_abs_error_vs_onnxruntime"] <= 1e-4 * report["forward_max_abs_logit"]
    assert report["removed_output_ops"] == (["Softmax"] if name in ("mlp", "nhwc") else [])
    assert set(report["seconds"]) == {"import", "calibration", "mapping", "write"}
    assert isinstance(report["requirement_pairs"], int) and report["requirement_pairs"] >= 0


def test_verify_sample_model_is_exact(converted):
    name, out, _ = converted
    result = run("verify", out, "--onnx", SAMPLES / name / "model.onnx", "--data", SAMPLES / name / "test.npy",
                 "--labels", SAMPLES / name / "labels.npy", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = strict_json(result.stdout)
    assert report["n_samples"] == 597
    assert report["agreement"] == 1.0
    assert report["failures"] == [] and report["passed"] is True
    assert report["accuracy_snn"] == report["accuracy_ann"] >= 0.95
    assert report["max_abs_logit_error_ref"] <= 1e-9 * report["max_abs_logit"]
    assert report["max_abs_logit_error_onnx"] <= 1e-4 * report["max_abs_logit"]
    assert report["max_spike_time_error"] <= 1e-9 * report["latency"]
    assert report["early_spikes"] == 0 and report["out_of_range_inputs"] == 0
    assert report["spikes_per_neuron"] == 1.0  # every neuron fires once, at the latest at its window end
    assert 0.05 < report["forced_spike_share"] < 0.95  # ReLU zeros: about half the hidden neurons
    for key in ("latency", "spike_time_error_per_layer", "checked_pairs", "event_scan_pairs"):
        assert key in report


def test_verify_text_report_and_no_labels(converted):
    name, out, _ = converted
    result = run("verify", out, "--onnx", SAMPLES / name / "model.onnx", "--data", SAMPLES / name / "test.npy")
    assert result.exit_code == 0
    assert "agreement" in result.stdout and "accuracy_snn" in result.stdout
    assert "n/a" in result.stdout  # no labels, no accuracy
    assert any(line.split() == ["failures", "[]"] for line in result.stdout.splitlines())


def test_verify_fails_with_exit_1_below_min_agreement(tmp_path):
    """An input range far narrower than the data overruns every window; verify must say so with exit status 1."""
    out = tmp_path / "narrow.snn.h5"
    assert run("convert", SAMPLES / "mlp" / "model.onnx", "--calib", SAMPLES / "mlp" / "calib.npy", "-o", out,
               "--input-range", "0", "0.05", "--quiet").exit_code == 0
    result = run("verify", out, "--onnx", SAMPLES / "mlp" / "model.onnx", "--data", SAMPLES / "mlp" / "test.npy",
                 "--json", "--quiet")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["agreement"] < 1.0 and report["out_of_range_inputs"] > 0 and report["passed"] is False
    assert any("below --min-agreement" in f for f in report["failures"])
    assert "below --min-agreement" in error_line(result)
    relaxed = run("verify", out, "--onnx", SAMPLES / "mlp" / "model.onnx", "--data", SAMPLES / "mlp" / "test.npy",
                  "--min-agreement", "0", "--quiet", "--json")
    assert relaxed.exit_code == 1  # the logits are still wrong, with early spikes: those checks still fail
    assert not any("agreement" in f for f in json.loads(relaxed.stdout)["failures"])
    ok = run("verify", out, "--onnx", SAMPLES / "mlp" / "model.onnx", "--data", SAMPLES / "mlp" / "test.npy",
             "--min-agreement", "0", "--max-logit-error", "1e9", "--max-early-spikes", "1000000000", "--quiet")
    assert ok.exit_code == 0


@pytest.fixture(scope="module")
def cnn_zeta0(tmp_path_factory):
    """The cnn sample converted with --zeta 0 (no headroom), and its test inputs scaled by 1.5 (beyond the
    calibration range)."""
    tmp = tmp_path_factory.mktemp("zeta0")
    out = tmp / "cnn.snn.h5"
    assert run("convert", SAMPLES / "cnn" / "model.onnx", "--calib", SAMPLES / "cnn" / "calib.npy", "-o", out,
               "--zeta", "0", "--quiet").exit_code == 0
    np.save(tmp / "big.npy", 1.5 * np.load(SAMPLES / "cnn" / "test.npy")[:60])
    return out, tmp / "big.npy"


def test_verify_fails_on_early_spikes(cnn_zeta0):
    """Neurons that fire before their inputs are in make the SNN inexact: verify lists the early spikes in
    failures, with the hint to reconvert with a larger --zeta, and exits 1 after printing the report."""
    out, data = cnn_zeta0
    net = h5io.read(out)
    x = np.load(data)
    result = Simulator(net).run(x, keep_times=True)
    layers = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    early = sum(int(np.sum(result.times[n.name] < n.window[0])) for n in layers)
    assert early == result.counts.early_spikes > 0
    # the event-by-event reference confirms an early spike in a sample the simulator says has one
    sample = next(i for i in range(len(x)) if any(np.any(result.times[n.name][i] < n.window[0]) for n in layers))
    _, times = reference.run(net, x[sample:sample + 1])
    assert any(np.any(times[n.name] < n.window[0]) for n in layers)

    result = run("verify", out, "--onnx", SAMPLES / "cnn" / "model.onnx", "--data", data, "--json", "--quiet")
    assert result.exit_code == 1
    report = strict_json(result.stdout)
    assert report["early_spikes"] == early and report["passed"] is False
    assert report["out_of_range_inputs"] > 0
    [message] = [f for f in report["failures"] if f.startswith("early_spikes")]
    assert f"early_spikes {early} exceeds --max-early-spikes 0" in message and "--zeta" in message
    assert "--input-range" in message  # the inputs themselves left the calibrated range
    line = error_line(result)
    assert line.startswith("relu2snn: error:") and "early_spikes" in line and "--zeta" in line
    text = run("verify", out, "--onnx", SAMPLES / "cnn" / "model.onnx", "--data", data, "--quiet")
    assert text.exit_code == 1 and "early_spikes" in text.stdout and "failures" in text.stdout
    relaxed = run("verify", out, "--onnx", SAMPLES / "cnn" / "model.onnx", "--data", data, "--json", "--quiet",
                  "--max-early-spikes", str(early), "--max-logit-error", "1", "--min-agreement", "0")
    assert relaxed.exit_code == 0 and strict_json(relaxed.stdout)["failures"] == []


def test_verify_fails_on_a_logit_error(tmp_path):
    """A readout whose α is raised so that every logit is 1e-2 too large: the argmax, and so the agreement, is
    unchanged and no neuron fires early, but the logits are not exact; only --max-logit-error says so."""
    out = tmp_path / "mlp.snn.h5"
    assert run("convert", SAMPLES / "mlp" / "model.onnx", "--calib", SAMPLES / "mlp" / "calib.npy", "-o", out,
               "--quiet").exit_code == 0
    net = h5io.read(out)
    readout = net.nodes[-1]
    shifted = dataclasses.replace(readout, alpha=readout.alpha + 1e-2 / readout.window[1])  # V(T_out) += 1e-2
    h5io.write(tmp_path / "off.snn.h5", snn.Network(net.nodes[:-1] + (shifted,), net.meta))
    args = ["verify", tmp_path / "off.snn.h5", "--onnx", SAMPLES / "mlp" / "model.onnx",
            "--data", SAMPLES / "mlp" / "test.npy", "--json", "--quiet"]
    result = run(*args)
    assert result.exit_code == 1
    report = strict_json(result.stdout)
    assert report["agreement"] == 1.0 and report["early_spikes"] == 0
    assert report["max_abs_logit_error_ref"] == pytest.approx(1e-2, rel=1e-6)
    [message] = report["failures"]
    assert message.startswith("max_abs_logit_error_ref") and "--max-logit-error 1e-09" in message
    assert "max_abs_logit_error_ref" in error_line(result)
    # the limit is relative to the largest |logit| (about 20 here): 1e-3 of it tolerates an error of 1e-2
    assert report["max_abs_logit"] > 10
    assert run(*args, "--max-logit-error", "1e-3").exit_code == 0
    assert run(*args, "--max-logit-error", "1e-4").exit_code == 1


def test_simulate_and_inspect(converted, tmp_path):
    name, out, _ = converted
    npz = tmp_path / "out.npz"
    result = run("simulate", out, "--data", SAMPLES / name / "test.npy", "-o", npz, "--times", "--quiet")
    assert result.exit_code == 0, result.output
    with np.load(npz) as z:
        assert z["logits"].shape == (597, 10)
        assert any(k.startswith("times/") for k in z.files)
    result = run("inspect", out)
    assert result.exit_code == 0
    assert "SpikingLayer" in result.stdout and "Readout" in result.stdout and "content_sha256" in result.stdout
    described = json.loads(run("inspect", out, "--json").stdout)
    assert described["layers"][0]["kind"] == "Encoder"
    assert all(r["window"][1] > r["window"][0] for r in described["layers"])


def test_existing_output_needs_force(converted, tmp_path):
    name, out, _ = converted
    result = run("convert", SAMPLES / name / "model.onnx", "--calib", SAMPLES / name / "calib.npy", "-o", out)
    assert result.exit_code == 2
    assert "--force" in error_line(result)


@pytest.mark.parametrize("command", ["convert", "verify", "simulate", "inspect"])
def test_help_has_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"relu2snn {command}" in result.output


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "relu2snn_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "relu2snn" in result.stdout


# ----------------------------------------------------------------------------- bad input: one line, exit 2

def _unsupported_model(tmp_path) -> Path:
    b = GraphBuilder((4,))
    h = b.op("Gemm", ["x", b.const(np.ones((3, 4))), b.const(np.zeros(3))], transB=1)
    h = b.op("Sigmoid", [h])
    h = b.op("Gemm", [h, b.const(np.ones((2, 3))), b.const(np.zeros(2))], transB=1)
    return Path(save(b.build(b.op("Tanh", [h])), tmp_path / "bad.onnx"))


def test_unsupported_operators_are_all_named(tmp_path):
    model = _unsupported_model(tmp_path)
    np.save(tmp_path / "c.npy", np.zeros((4, 4), np.float32))
    result = run("convert", model, "--calib", tmp_path / "c.npy", "-o", tmp_path / "o.snn.h5")
    assert result.exit_code == 2
    line = error_line(result)
    assert "Sigmoid" in line and "Tanh" in line and "Sigmoid_" in line and "supported-operators" in line
    assert not (tmp_path / "o.snn.h5").exists()


@pytest.mark.parametrize("case", ["missing-model", "not-onnx", "wrong-shape", "nan", "booleans", "pickle",
                                  "missing-dir", "bad-snn", "labels"])
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    model, calib = SAMPLES / "mlp" / "model.onnx", tmp_path / "c.npy"
    np.save(calib, np.load(SAMPLES / "mlp" / "calib.npy")[:8])
    out = tmp_path / "o.snn.h5"
    args = ["convert", model, "--calib", calib, "-o", out]
    expect = "c.npy"
    if case == "missing-model":
        args[1], expect = tmp_path / "nope.onnx", "nope.onnx"
    elif case == "not-onnx":
        (tmp_path / "x.onnx").write_bytes(b"\x00garbage" * 10)
        args[1], expect = tmp_path / "x.onnx", "x.onnx"
    elif case == "wrong-shape":
        np.save(calib, np.zeros((8, 63), np.float32))
        expect = "(64,)"
    elif case == "nan":
        bad = np.zeros((8, 64), np.float32)
        bad[5, 3] = np.nan
        np.save(calib, bad)
        expect = "sample 5"
    elif case == "booleans":
        np.save(calib, np.zeros((8, 64), bool))
        expect = "bool"
    elif case == "pickle":
        np.save(calib, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        expect = "pickle"
    elif case == "missing-dir":
        args[-1], expect = tmp_path / "no" / "o.snn.h5", "does not exist"
    elif case == "bad-snn":
        (tmp_path / "b.snn.h5").write_bytes(b"not hdf5")
        args, expect = ["inspect", tmp_path / "b.snn.h5"], "b.snn.h5"
    elif case == "labels":
        assert run(*args, "--quiet").exit_code == 0
        np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
        args = ["verify", out, "--onnx", model, "--data", calib, "--labels", tmp_path / "y.npy"]
        expect = "y.npy"
    result = run(*args)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert line.startswith("relu2snn: error:") and expect in line


def test_debug_shows_the_traceback(tmp_path):
    """With --debug our error propagates (the traceback); without it, it becomes exit 2 and one line."""
    from relu2snn_cli.errors import ArtifactError
    args = ["inspect", str(tmp_path / "missing.snn.h5")]
    debug = CliRunner().invoke(cli, ["--debug", *args])
    assert isinstance(debug.exception, ArtifactError)
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 2 and isinstance(plain.exception, SystemExit)


def test_progress_bar_only_after_a_second_and_not_when_quiet(capsys, monkeypatch):
    from relu2snn_cli import cli as cli_module
    from relu2snn_cli.cli import Progress
    monkeypatch.setattr(cli_module.time, "monotonic", lambda: 100.0)   # a clock that stands still
    quick = Progress("x", enabled=True)
    quick(5, 10)
    assert quick.bar is None  # under a second: no bar
    slow = Progress("working", enabled=True)
    slow.start -= 2.0
    slow(5, 10)
    slow(5, 10)
    assert slow.bar is not None and slow.done == 10
    slow.close()
    quiet = Progress("x", enabled=False)
    quiet.start -= 2.0
    quiet(5, 10)
    assert quiet.bar is None


def test_convert_twice_gives_the_same_bytes_and_inspect_hash(tmp_path):
    """Reproducibility through the command line: same model, same data → byte-identical files, one content hash."""
    from relu2snn_cli import h5io
    hashes = []
    for name in ("a.snn.h5", "b.snn.h5"):
        assert run("convert", SAMPLES / "cnn" / "model.onnx", "--calib", SAMPLES / "cnn" / "calib.npy",
                   "-o", tmp_path / name, "--quiet").exit_code == 0
        line = next(line for line in run("inspect", tmp_path / name).stdout.splitlines()
                    if line.startswith("content_sha256"))
        hashes.append(line.split()[1])
        assert hashes[-1] == h5io.content_hash(h5io.read(tmp_path / name))
    assert (tmp_path / "a.snn.h5").read_bytes() == (tmp_path / "b.snn.h5").read_bytes()
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64


def test_failures_name_each_check_and_the_fix():
    from relu2snn_cli.verify import failures
    report = {"agreement": 1.0, "min_agreement": 1.0, "max_logit_error": 1e-9, "max_abs_logit": 20.0,
              "max_abs_logit_error_ref": 2e-8, "early_spikes": 0, "max_early_spikes": 0, "out_of_range_inputs": 0}
    assert failures(report) == []  # an error of exactly the limit passes
    assert failures({**report, "max_abs_logit_error_ref": 2.1e-8})[0].startswith("max_abs_logit_error_ref 2.1e-08")
    assert failures({**report, "agreement": 0.99})[0] == "agreement 0.99 is below --min-agreement 1"
    [early] = failures({**report, "early_spikes": 3})
    assert early.startswith("early_spikes 3 exceeds --max-early-spikes 0: the test inputs drive hidden layers")
    assert "--zeta" in early and "--input-range" not in early
    [early] = failures({**report, "early_spikes": 3, "out_of_range_inputs": 5})
    assert "5 input values lie outside the calibrated input range" in early and "--input-range" in early
    assert failures({**report, "early_spikes": 3, "max_early_spikes": 3}) == []
