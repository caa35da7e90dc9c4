"""The robustness sweep (relu2snn_cli/robustness.py, docs/hardware.md): the perturbations as numbers, the sample
CNN's sweep, seeded determinism, and perturbed networks against the event-by-event reference (tests/reference.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import reference
from builders import GraphBuilder, converted_sample, save
from relu2snn_cli import convert, h5io, mapping, robustness, simulator, snn
from relu2snn_cli.errors import ArtifactError, DataError, GraphError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
TOL = 1e-9


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """The sample CNN converted, and its first 40 test samples and labels."""
    out, x, y = converted_sample(tmp_path_factory.mktemp("cnn"), "cnn", 40)
    return out, str(x), str(y)


# ----------------------------------------------------------------------------- the perturbations

def test_quantise_times_puts_both_window_ends_on_the_grid():
    t = np.array([2.0, 2.0 + 3.0 / 7 * 0.4, 2.0 + 3.0 / 7 * 0.6, 5.0, 1.5])
    got = robustness.quantise_times(t, (2.0, 3.0), 3)   # 8 levels, step 3/7
    np.testing.assert_allclose(got, [2.0, 2.0, 2.0 + 3.0 / 7, 5.0, 2.0 - 3.0 / 7], rtol=0, atol=1e-12)


def test_weight_quantisation_per_layer_and_per_channel():
    J = np.array([[1.0, -0.26, 0.1], [0.02, -0.05, 0.0]])
    step = robustness.weight_step([J], 3)                   # 2^2 − 1 = 3 levels each side: step 1/3
    assert step == pytest.approx(1 / 3, abs=1e-15)
    np.testing.assert_allclose(robustness.quantise_weights(J, step), [[1.0, -1 / 3, 0.0], [0.0, 0.0, 0.0]],
                               atol=1e-15)
    steps = robustness.weight_step([J], 3, per_channel=True)
    np.testing.assert_allclose(steps, [1 / 3, 0.05 / 3], atol=1e-15)
    np.testing.assert_allclose(robustness.quantise_weights(J, steps), [[1.0, -1 / 3, 0.0], [0.05 / 3, -0.05, 0.0]],
                               atol=1e-15)
    assert np.array_equal(robustness.quantise_weights(np.zeros((2, 2)), 0.0), np.zeros((2, 2)))


def test_mismatched_drive_is_clipped_at_zero():
    got = robustness.mismatched_drive(np.array([1.0, 1.0, 0.5]), np.array([0.25, -1.5, -0.5]))
    assert got.tolist() == [1.25, 0.0, 0.0]


def test_negative_zeta_only_for_the_sweep(tmp_path):
    with pytest.raises(GraphError, match="≥ 0"):
        mapping.MappingOptions(zeta=-0.2)
    assert mapping.MappingOptions(zeta=-0.2, short_windows=True).zeta == -0.2
    with pytest.raises(GraphError, match="> -1"):
        mapping.MappingOptions(zeta=-1.0, short_windows=True)
    with pytest.raises(GraphError, match="robustness sweep only"):
        convert.convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), tmp_path / "never.snn.h5",
                        mapping.MappingOptions(zeta=-0.2, short_windows=True))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the sample CNN

def test_sample_cnn_exact_without_noise_and_at_16_time_bits_not_under_large_jitter(cnn):
    """The issue's acceptance test: agreement 1.0 at σ_t = 0 and at 16 time bits; the σ_t sweep falls below 1.0
    at its largest level, σ_t = 1 τ_c."""
    path, x, y = cnn
    report = robustness.robustness(path, x, y, {"time_noise": [0, 1e-3, 1e-2, 1e-1, 1], "time_bits": [16]},
                                   trials=2, seed=3)
    rows = {(r["axis"], r["value"]): r for r in report["levels"]}
    assert rows["time_noise", 0.0]["agreement_mean"] == 1.0 and rows["time_noise", 0.0]["agreement_std"] == 0.0
    assert rows["time_bits", 16]["agreement_mean"] == 1.0
    assert rows["time_noise", 1.0]["agreement_mean"] < 1.0
    assert rows["time_noise", 0.0]["accuracy_mean"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert rows["time_bits", 16]["trials"] == 1 and rows["time_noise", 1.0]["trials"] == 2
    assert all(r["latency"] == pytest.approx(report["latency"], abs=1e-12) for r in report["levels"])


def test_same_seed_same_numbers_and_batch_size_does_not_matter(cnn):
    path, x, y = cnn
    axes = {"time_noise": [0.1], "alpha_noise": [0.02], "threshold_noise": [0.2]}
    first = robustness.robustness(path, x, y, axes, trials=2, seed=5, batch_size=16)
    again = robustness.robustness(path, x, y, axes, trials=2, seed=5, batch_size=7)
    other = robustness.robustness(path, x, y, axes, trials=2, seed=6, batch_size=16)
    assert first == again
    assert [r["agreement_mean"] for r in first["levels"]] != [r["agreement_mean"] for r in other["levels"]]


def test_zeta_levels_reconvert(cnn):
    """ζ = 0.5 (the artifact's) agrees fully; a negative ζ shortens the latency and makes neurons fire early."""
    path, x, y = cnn
    with pytest.raises(DataError, match="--onnx and --calib"):
        robustness.robustness(path, x, y, {"zeta": [0.0]})
    report = robustness.robustness(path, x, y, {"zeta": [0.5, -0.3]}, onnx_path=SAMPLES / "cnn" / "model.onnx",
                                   calib_spec=str(SAMPLES / "cnn" / "calib.npy"))
    same, short = report["levels"]
    assert same["agreement_mean"] == 1.0 and same["latency"] == pytest.approx(report["latency"], rel=1e-12)
    assert short["latency"] < 0.8 * report["latency"] and short["early_spikes_mean"] > 0
    with pytest.raises(ArtifactError, match="not converted from"):
        robustness.robustness(path, x, y, {"zeta": [0.5]}, onnx_path=SAMPLES / "mlp" / "model.onnx",
                              calib_spec=str(SAMPLES / "mlp" / "calib.npy"))


@pytest.mark.parametrize("axes, match", [({}, "at least one axis"), ({"time_noise": [-1]}, "≥ 0"),
                                         ({"time_bits": [2.5]}, "integers"), ({"weight_bits": [1]}, "integers"),
                                         ({"zeta": [-1]}, "> -1")])
def test_bad_levels_are_refused(cnn, axes, match):
    path, x, _ = cnn
    with pytest.raises(DataError, match=match):
        robustness.robustness(path, x, axes=axes)


# ----------------------------------------------------------------------------- exact under perturbation

def close(a, b, tol=TOL):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(np.abs(a - b) <= tol * (1 + np.abs(b))))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random conv + pool + dense network, converted on its own calibration data."""
    tmp = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(11)
    b = GraphBuilder((2, 5, 5))
    h = b.op("Relu", [b.op("Conv", ["x", b.const(rng.normal(0, 0.7, (3, 2, 3, 3))), b.const(rng.normal(0, 0.2, 3))],
                           pads=[1, 1, 1, 1])])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h])
    h = b.op("Relu", [b.op("Gemm", [h, b.const(rng.normal(0, 0.5, (6, 12))), b.const(rng.normal(0, 0.2, 6))],
                           transB=1)])
    model = b.build(b.op("Gemm", [h, b.const(rng.normal(0, 1, (3, 6))), b.const(np.zeros(3))], transB=1))
    path = save(model, tmp / "m.onnx")
    np.save(tmp / "c.npy", rng.normal(size=(64, 2, 5, 5)).astype(np.float32))
    convert.convert(path, str(tmp / "c.npy"), tmp / "m.snn.h5")
    return h5io.read(tmp / "m.snn.h5"), rng.normal(size=(6, 2, 5, 5))


@pytest.mark.parametrize("axis, value", [("time_noise", 0.3), ("alpha_noise", 0.8), ("threshold_noise", 1.5),
                                         ("time_bits", 3), ("weight_bits", 3)])
def test_perturbed_network_matches_the_reference(small, axis, value):
    """Each perturbation through the production simulator equals the event-by-event reference on the same
    perturbed network and emitted times; the random ones are strong enough that neurons fire early."""
    net, x = small
    emit = emit_again = None
    if axis == "time_noise":
        emit, emit_again = robustness.Jitter(net, value, 1, 0), robustness.Jitter(net, value, 1, 0)
    elif axis == "time_bits":
        emit = emit_again = robustness.time_quantiser(value)
    elif axis == "weight_bits":
        net = robustness.weight_quantised(net, value)
    else:
        net = robustness.mismatched(net, axis, value, 1, 0)
    if axis == "alpha_noise":
        alphas = np.concatenate([n.alpha.reshape(-1) for n in net.nodes if isinstance(n, snn.SpikingLayer)])
        assert alphas.min() == 0.0 and alphas.max() > 1.0   # some clipped, all ≥ 0
    result = simulator.Simulator(net).run(x, keep_times=True, emit=emit)
    logits, times = reference.run(net, x, emit=emit_again)
    for name, t in times.items():
        assert close(result.times[name], t), name
    assert close(result.logits, logits)
    if axis in robustness.RANDOM_AXES:
        assert result.counts.early_spikes > 0
    if emit is None:   # the times as fired: the early ones are those before their window
        assert result.counts.early_spikes == sum(int(np.sum(times[n.name] < n.window[0]))
                                                 for n in net.nodes if isinstance(n, snn.SpikingLayer))


def test_sparse_artifact_sweep(tmp_path):
    """robustness accepts a sparse artifact (docs/math.md §9): agreement 1.0 at zero noise and at 16 time bits; the
    jitter of its hook moves spikes only, so every silent neuron of the run stays silent (its window end), in the
    simulator as in the reference; --zeta reconverts in the sparse coding."""
    path = tmp_path / "sparse.snn.h5"
    convert.convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), path,
                    mapping.MappingOptions(coding="sparse"))
    x = np.load(SAMPLES / "mlp" / "test.npy")[:40]
    np.save(tmp_path / "x.npy", x)
    report = robustness.robustness(path, str(tmp_path / "x.npy"), axes={"time_noise": [0.0, 0.01], "time_bits": [16],
                                                                         "zeta": [0.5]},
                                   trials=2, onnx_path=SAMPLES / "mlp" / "model.onnx",
                                   calib_spec=str(SAMPLES / "mlp" / "calib.npy"))
    by = {(r["axis"], r["value"]): r for r in report["levels"]}
    assert by["time_noise", 0.0]["agreement_mean"] == 1.0 and by["time_bits", 16]["agreement_mean"] == 1.0
    assert by["zeta", 0.5]["agreement_mean"] == 1.0
    net = h5io.read(path)
    jitter, seen = robustness.Jitter(net, 0.05, seed=0, trial=0), {}

    def hook(node, t):   # the times as fired and as jittered, per population
        seen[node.name] = (t, jitter(node, t))
        return seen[node.name][1]

    noisy = simulator.Simulator(net).run(x[:4], keep_times=True, emit=hook)
    silent_total = 0
    for name, (fired, jittered) in seen.items():
        end = sum(next(n for n in net.nodes if n.name == name).window)
        silent = fired >= end
        silent_total += int(silent.sum())
        assert np.array_equal(noisy.times[name][silent], fired[silent]), name   # silent stays silent
        assert np.array_equal(noisy.times[name][~silent], jittered[~silent]), name
    assert silent_total > 0
    logits, times = reference.run(net, x[:4], emit=robustness.Jitter(net, 0.05, seed=0, trial=0))
    for name, t in times.items():
        np.testing.assert_allclose(noisy.times[name], t, rtol=0, atol=1e-9)
    np.testing.assert_allclose(noisy.logits, logits, rtol=0, atol=1e-9)
