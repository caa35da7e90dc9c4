"""The production simulator against the slow event-by-event reference (tests/reference.py)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reference
from builders import GraphBuilder, save
from relu2snn_cli import convert, h5io, ir, mapping, simulator, snn
from relu2snn_cli.errors import NonFiniteError
from relu2snn_cli.mapping import MappingOptions
from relu2snn_cli.onnx_import import import_model
from strategies import relu_dags, relu_stacks

TOL = 1e-9


def close(a, b, tol=TOL):
    a, b = np.asarray(a, float), np.asarray(b, float)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    with np.errstate(invalid="ignore"):
        return bool(np.all(same_inf | (np.abs(a - b) <= tol * (1 + np.abs(b)))))


# ----------------------------------------------------------------------------- one neuron

@settings(max_examples=300, deadline=None)
@example(k=3, seed=528276179, alpha=0.5, theta=9.216487629666519e-234, t0=1.0)  # a rise below rounding
@example(k=5, seed=572, alpha=-1.0, theta=5.00502741064798e-102, t0=0.625)  # opposite inputs at t0 cancel
@given(k=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       alpha=st.floats(-1, 2, allow_subnormal=False), theta=st.floats(-1, 5, allow_subnormal=False),
       t0=st.floats(0, 1))
def test_first_crossing_matches_reference(k, seed, alpha, theta, t0):
    rng = np.random.default_rng(seed)
    times = rng.uniform(-1, 3, k)
    times[rng.random(k) < 0.3] = t0  # ties and inputs exactly at the start
    weights = rng.normal(0, 2, k)
    got = simulator.first_crossing(times[None], weights[None], np.array([alpha]), np.array([theta]), t0)[0]
    want = reference.first_spike(list(zip(times, weights)), alpha, theta, t0)
    assert close(got, want), (got, want)


def test_first_crossing_fires_early_then_inputs_pull_down():
    # one excitatory input at t=0, one strong inhibitory at t=0.5; V peaks at 0.5·(1+4) = 2.5 ≥ ϑ=2
    t = simulator.first_crossing(np.array([[0.0, 0.5]]), np.array([[4.0, -9.0]]), np.array([1.0]),
                                 np.array([2.0]), 0.0)
    assert t[0] == pytest.approx(0.4, abs=1e-12)  # 5·t = 2


@settings(max_examples=300, deadline=None)
@given(k=st.integers(0, 7), seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.1, 2), b_in=st.floats(0.5, 3),
       before=st.booleans())
def test_peak_potential_is_the_largest_potential_before_the_window_end(k, seed, alpha, b_in, before):
    """Against V evaluated directly at every input spike and both window ends; with an input before the
    window start (``before``) it may only be higher. And the law it is used for: the event-by-event
    first crossing is at or before T exactly when the peak reaches ϑ (away from ties)."""
    rng = np.random.default_rng(seed)
    a = b_in * (rng.choice([0.0, 0.3, 0.7], k) + rng.uniform(0, 0.3, k) * (rng.random(k) < 0.7))  # zeros, ties
    if before and k:
        a[0] = b_in + 0.5
    w = rng.normal(0, 2, k)
    sigmas = np.concatenate([[0.0, b_in], np.minimum(a, b_in)])
    v = [alpha * (b_in - x) + float(np.sum(w * np.maximum(a - x, 0.0))) for x in sigmas]
    order = np.argsort(-a)
    got = simulator.peak_potential(a[order][None], w[order][None].copy(), np.array([alpha]), b_in)[0]
    scale = 1.0 + alpha * b_in + float(np.abs(w) @ a)
    assert got >= max(v) - 1e-12 * scale
    if not before:
        assert got <= max(v) + 1e-12 * scale
        t_end = 4.0
        theta = max(v) + rng.choice([-1, 1]) * rng.uniform(1e-6, 1) * scale
        t = simulator.first_crossing((t_end - a)[None], w[None], np.array([alpha]), np.array([theta]), t_end - b_in)[0]
        assert (t <= t_end) == (got >= theta)


# ----------------------------------------------------------------------------- one layer

LAYER_KINDS = ["dense", "conv", "conv1d-grouped", "two-inputs"]


def random_layer(rng, kind: str, early: float) -> tuple[snn.SpikingLayer, list[tuple[float, float]]]:
    """A spiking layer with random parameters and the windows of its inputs; ``early`` lowers thresholds so
    many neurons cross early. "two-inputs": a conv and a depthwise 1×1 conv from a population whose window
    ends earlier (its synapses get a delay)."""
    conv2 = dict(strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2))
    if kind == "dense":
        synapses, windows = [snn.Synapses("in", (7,), rng.normal(0, 1, (6, 7)))], [(1.0, 2.0)]
    elif kind == "conv":
        synapses, windows = [snn.Synapses("in", (2, 5, 4), rng.normal(0, 1, (3, 2, 3, 2)), **conv2)], [(1.0, 2.0)]
    elif kind == "conv1d-grouped":
        synapses = [snn.Synapses("in", (4, 7), rng.normal(0, 1, (6, 2, 3)), 0.0, (2,), (1, 2), (2,), groups=2)]
        windows = [(1.0, 2.0)]
    else:
        windows = [(1.0, 2.0), (0.5, 1.0)]
        (_, b_in), delays = snn.merge_windows(windows)
        synapses = [snn.Synapses("a", (2, 5, 4), rng.normal(0, 1, (3, 2, 3, 2)), delays[0], **conv2),
                    snn.Synapses("b", (3, 3, 3), rng.normal(0, 1, (3, 1, 1, 1)), delays[1], (1, 1), (0, 0, 0, 0),
                                 (1, 1), groups=3)]
    shape = synapses[0].shape
    theta = rng.uniform(0, 6, shape) - early
    alpha = rng.uniform(0.2, 1.5, shape[0])
    (t_in, b_in), _ = snn.merge_windows(windows)
    layer = snn.SpikingLayer("l", tuple(synapses), alpha, (t_in + b_in, 2.5), theta=theta,
                             certified=np.zeros(shape, bool), scale=np.ones(shape[0]), x_max=np.ones(shape[0]), x_n=1.0)
    return layer, windows


def input_times(rng, layer, windows, n):
    """Spike times inside each input's own window, one early and one late outlier."""
    out = []
    for syn, (t, b) in zip(layer.synapses, windows):
        times = t + b - rng.uniform(0, b, (n,) + syn.in_shape)
        times[0].flat[0] = t - 0.5  # an input that itself fired early: outside the window
        times[1].flat[-1] = t + b + 0.7  # an input that arrives after the window (an input above range)
        out.append(times)
    return out


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("early", [0.0, 3.0])
def test_layer_matches_reference(kind, early):
    rng = np.random.default_rng(7 + LAYER_KINDS.index(kind) + int(early))
    total_early = 0
    for _ in range(5):
        layer, windows = random_layer(rng, kind, early)
        t_in = input_times(rng, layer, windows, 4)
        got, n_early, checked, scanned = simulator.CompiledLayer(layer, windows).fire(t_in)
        merged, _ = snn.merge_windows(windows)
        counts = {}
        want = reference.fire_layer(layer, merged, t_in, counts)
        assert close(got, want)
        assert n_early == int(np.sum(want < sum(merged)))
        assert simulator.spike_counts(got, sum(layer.window)) == counts[layer.name]  # threshold, forced: exact
        total_early += n_early
    if early:
        assert total_early > 0  # the case is built to exercise early crossings


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_grid_screen_agrees_with_the_reference(kind, monkeypatch):
    """Inputs all in their windows, thresholds from far above to below the potential's peak: the pairs the
    grid bound certifies take the closed form, the others the exact check, and the spike times equal the
    event-by-event reference's, early spikes included. The screen must have certified and left pairs."""
    screened = {"certified": 0, "left": 0}
    screen = simulator.CompiledLayer._grid_screen

    def spy(self, *args):
        sure = screen(self, *args)
        screened["certified"] += int(sure.sum())
        screened["left"] += int((~sure).sum())
        return sure

    monkeypatch.setattr(simulator.CompiledLayer, "_grid_screen", spy)
    rng = np.random.default_rng(11 + LAYER_KINDS.index(kind))
    total_early = 0
    for early in (-3.0, -1.0, 0.0, 1.5, 3.0):
        for _ in range(3):
            layer, windows = random_layer(rng, kind, early)
            t_in = [t + b - b * rng.choice([0.0, 1.0], (6,) + syn.in_shape) * rng.random((6,) + syn.in_shape)
                    for syn, (t, b) in zip(layer.synapses, windows)]   # codes in [0, B_k], half of them 0
            got, n_early, _, _ = simulator.CompiledLayer(layer, windows).fire(t_in)
            merged, _ = snn.merge_windows(windows)
            want = reference.fire_layer(layer, merged, t_in)
            assert close(got, want)
            assert n_early == int(np.sum(want < sum(merged)))
            total_early += n_early
    assert total_early > 0 and screened["certified"] > 0 and screened["left"] > 0, (total_early, screened)


def test_float32_screens_certify_no_pair_that_reaches_the_threshold():
    """The screens' float32 sums (docs/math.md §5, float32 screening) at the edge of their rounding margin: a dense
    layer with a fan-in of 2,000, weights over four decades, thresholds within ±1e-9 … ±1e-5 (relative; a few
    1e-3 and 1e-2 above) of sample 0's exact bound from sums or of its exact peak potential, or between the exact
    bound from sums and the same bound from float32 sums taken as exact where that is lower. No pair whose
    exact peak reaches ϑ is certified (by the bound from sums or the grid); none whose exact bound from sums
    reaches ϑ is certified by that bound; those 1e-2 above it are, and some 1e-3 above the peak; the pairs
    that stay below ϑ get the closed form, the others fire early."""
    rng = np.random.default_rng(5)
    k, o, n, b_in = 2000, 128, 3, 2.0
    a = b_in * rng.random((n, k)) * (rng.random((n, k)) < 0.8)
    magnitude = 10.0 ** rng.uniform(-3, 1, (o, k)) / k
    # inhibitory inputs late in sample 0 (small codes): its potential rises, then falls, and the bound from sums
    # is where its two lines cross, which depends on p
    J = np.where(a[0] < 0.3 * b_in, -3 * magnitude, magnitude * rng.random((o, k)))
    alpha = rng.uniform(0.2, 1.5, o)
    u, p, j_neg = a @ J.T, a @ np.clip(J, 0, None).T, np.clip(J, None, 0).sum(axis=1)
    exact_bound = mapping.early_bound(u, p, alpha, b_in, j_neg)    # (n, o), p in float64
    sigmas = np.concatenate([[0.0, b_in], a[0]])                     # the potential's corners
    ramps = np.maximum(a[:, None, :] - sigmas[None, :, None], 0.0)   # (n, σ, k)
    peak = (alpha[None, None] * (b_in - sigmas)[None, :, None] + ramps @ J.T).max(axis=1)   # sample 0's corners
    peak[1:] = [(alpha[None] * (b_in - s)[:, None] + np.maximum(a_s[None] - s[:, None], 0.0) @ J.T).max(axis=0)
                for a_s, s in ((a[m], np.concatenate([[0.0, b_in], a[m]])) for m in range(1, n))]
    r = rng.choice([-1, 1], o) * 10.0 ** rng.uniform(-9, -5, o)   # about the float32 sums' rounding
    r[:8] = [-1e-9, 1e-9, 1e-2, 1e-2, 1e-2, 1e-2, 1e-3, 1e-3]
    even = np.arange(o) % 2 == 0
    theta = np.where(even, exact_bound[0], peak[0]) * (1 + r)   # even neurons: at the bound, odd: at the peak
    # where the bound from float32 sums taken as exact falls below the exact bound, ϑ between the two
    raw = mapping.early_bound(u, a.astype(np.float32) @ np.clip(J, 0, None).astype(np.float32).T, alpha, b_in,
                              j_neg)[0]
    below = even & (raw < exact_bound[0]) & (np.arange(o) >= 8)
    theta[below] = 0.5 * (raw + exact_bound[0])[below]
    assert below.sum() >= 8
    layer = snn.SpikingLayer("l", (snn.Synapses("in", (k,), J),), alpha, (1.0 + b_in, 3.0), theta=theta,
                             certified=np.zeros(o, bool), scale=np.ones(o), x_max=np.ones(o), x_n=1.0)
    compiled = simulator.CompiledLayer(layer, [(1.0, b_in)])
    codes = [a]
    drives, sums = compiled._drives(codes)
    failing, _, in_window = compiled._uncertified(codes, drives, sums)
    by_sums = ~failing
    rows, cols = np.nonzero(failing)
    certified = by_sums.copy()
    certified[rows, cols] = compiled._grid_screen(codes, drives, sums, rows, cols)
    assert in_window.all()
    assert not np.any(certified & (peak >= theta[None]))
    assert not np.any(by_sums & (exact_bound >= theta[None]))
    assert by_sums[0, even & (r >= 1e-2)].all() and certified[0, ~even & (r >= 1e-3)].any()
    assert not by_sums[0, even & (r < 0)].any() and not certified[0, ~even & (r < 0)].any()
    assert (~certified[0]).sum() >= o // 4   # the edge is exercised
    got, early, _, _ = compiled.fire([1.0 + b_in - a])
    assert early == int(np.sum(peak >= theta[None]))
    slope = alpha + J.sum(axis=1)   # where the peak stays below ϑ: the closed form, clipped to the window end
    with np.errstate(divide="ignore"):
        want = np.minimum(np.where(slope > 0, 1.0 + b_in + (theta - alpha * b_in - u) / slope, np.inf), 6.0)
    assert close(got[peak < theta[None]], want[peak < theta[None]])


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_weights_beyond_float32_screen_nothing_and_warn_nothing(kind):
    """α, J and ϑ scaled by 1e39 scale the potential, not the spike times; the float32 screening sums overflow
    (inf, or NaN where an inf weight meets a code 0): they certify nothing, no NumPy warning is raised, and the
    spike times are those of the unscaled layer."""
    rng = np.random.default_rng(13 + LAYER_KINDS.index(kind))
    layer, windows = random_layer(rng, kind, early=1.5)
    t_in = [t + b - b * rng.choice([0.0, 1.0], (4,) + syn.in_shape) * rng.random((4,) + syn.in_shape)
            for syn, (t, b) in zip(layer.synapses, windows)]
    huge = dataclasses.replace(layer, synapses=tuple(dataclasses.replace(syn, J=syn.J * 1e39) for syn in layer.synapses),
                               alpha=layer.alpha * 1e39, theta=layer.theta * 1e39)
    want, want_early, _, _ = simulator.CompiledLayer(layer, windows).fire(t_in)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, early, _, _ = simulator.CompiledLayer(huge, windows).fire(t_in)
    assert close(got, want) and early == want_early


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_fast_path_is_used_only_where_certified(kind):
    """A layer whose thresholds are far above any input drive: every neuron is statically certified, no scan."""
    rng = np.random.default_rng(3)
    layer, windows = random_layer(rng, kind, early=0.0)
    layer = dataclasses.replace(layer, theta=np.full(layer.shape, 1e3))
    t_in = [t + b - rng.uniform(0, b, (3,) + syn.in_shape) for syn, (t, b) in zip(layer.synapses, windows)]
    got, early, checked, scanned = simulator.CompiledLayer(layer, windows).fire(t_in)
    assert checked == scanned == 0 and early == 0
    assert close(got, reference.fire_layer(layer, snn.merge_windows(windows)[0], t_in))


# ----------------------------------------------------------------------------- whole networks

def converted(tmp_path, model, shape, seed, calib_scale=1.0, input_range=None, coding="dense"):
    path = save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(seed)
    np.save(tmp_path / "c.npy", (calib_scale * rng.normal(size=(64,) + shape)).astype(np.float32))
    convert.convert(path, str(tmp_path / "c.npy"), tmp_path / "m.snn.h5", MappingOptions(coding=coding),
                    input_range=input_range)
    return h5io.read(tmp_path / "m.snn.h5"), import_model(path).graph, rng


@settings(max_examples=24, deadline=None)
@given(stack=st.one_of(relu_stacks(), relu_dags()))
def test_network_matches_reference_including_early_spikes(tmp_path_factory, stack):
    """Stacks and DAGs with delays, calibrated on small inputs and run on large ones: activations overrun their
    windows and neurons fire early; the simulator equals the event-by-event reference."""
    model, shape, seed = stack
    net, _, rng = converted(tmp_path_factory.mktemp("n"), model, shape, seed, calib_scale=0.2, input_range=(-6, 6))
    x = 2.0 * rng.normal(size=(3,) + shape)
    assert_matches_reference(net, x, simulator.simulate(net, x, batch_size=2, keep_times=True))


def assert_matches_reference(net, x, result) -> None:
    """The simulator's run of x (``result``, with spike times) equals the event-by-event reference: every
    population's spike times, the logits and the spike counts."""
    counts = {}
    logits, times = reference.run(net, x, counts)
    for name, t in times.items():
        assert close(result.times[name], t), name
    assert close(result.logits, logits)
    assert_counts_match(net, result, counts)


def assert_counts_match(net, result, counts: dict) -> None:
    """Threshold and forced spikes per layer as the simulator counts them equal the reference's counts, exactly,
    and add up to the run's Counts; every neuron fires once. In the sparse coding the reference's second count
    is the silent neurons (the encoder's included), which the Counts hold as ``silent``, and the spikes per
    population are the reference's first counts."""
    sim = simulator.Simulator(net)
    windows = {n.name: n.window for n in net.nodes}
    enc = net.nodes[0].name
    for name, want in counts.items():
        if name != enc:
            assert simulator.spike_counts(result.times[name], sum(windows[name])) == want, name
    hidden = {k: v for k, v in counts.items() if k != enc}
    assert result.counts.threshold_spikes == sum(c[0] for c in hidden.values())
    if net.coding == "sparse":
        assert result.counts.forced_spikes == 0
        assert result.counts.silent == sum(c[1] for c in counts.values())
        assert result.counts.input_spikes == counts[enc][0]
        assert result.counts.layer_spikes == {k: v[0] for k, v in counts.items()}
        assert result.counts.spikes + result.counts.silent == result.counts.samples * sim.neurons
    else:
        assert result.counts.forced_spikes == sum(c[1] for c in counts.values())
        assert result.counts.spikes == result.counts.samples * sim.neurons


def test_network_with_early_spikes_counts_them(tmp_path):
    """A fixed case of the test above where early spikes do happen, and the simulator still matches the reference."""
    rng = np.random.default_rng(0)
    b = GraphBuilder((6,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rng.normal(0, 1, (8, 6))), b.const(np.zeros(8))], transB=1)])
    h = b.op("Relu", [b.op("Gemm", [h, b.const(rng.normal(0, 1, (8, 8))), b.const(np.zeros(8))], transB=1)])
    model = b.build(b.op("Gemm", [h, b.const(rng.normal(0, 1, (3, 8))), b.const(np.zeros(3))], transB=1))
    net, graph, rng = converted(tmp_path, model, (6,), 1, calib_scale=0.1, input_range=(-5, 5))
    x = 3.0 * rng.normal(size=(16, 6))
    result = simulator.simulate(net, x, keep_times=True)
    counts = {}
    logits, times = reference.run(net, x, counts)
    assert result.counts.early_spikes > 0
    assert_counts_match(net, result, counts)
    assert result.counts.threshold_spikes > 0 and result.counts.forced_spikes > 0
    assert result.counts.early_spikes == sum(
        int(np.sum(times[n.name] < n.window[0])) for n in net.nodes if isinstance(n, snn.SpikingLayer))
    assert close(result.logits, logits)
    # with early spikes the SNN no longer equals the ANN: the simulator does not just evaluate the ReLU network
    assert not np.allclose(result.logits, ir.forward(graph, x), rtol=1e-6, atol=1e-6)


def test_batches_and_streaming_agree(tmp_path):
    net = h5io.read(_sample(tmp_path, "cnn"))
    x = np.load("sample_models/cnn/test.npy")[:50]
    whole = simulator.simulate(net, x, batch_size=50)
    parts = simulator.simulate(net, x, batch_size=7)
    assert close(whole.logits, parts.logits, 1e-12)  # BLAS blocking differs with the batch size
    assert whole.counts == parts.counts


def test_spike_counts_and_encoding(tmp_path):
    net = h5io.read(_sample(tmp_path, "mlp"))
    x = np.load("sample_models/mlp/test.npy")[:20].astype(np.float64)
    enc = net.nodes[0]
    x[0, 0] = enc.high + 1.0  # out of range: counted, fires before 0
    x[1, 0] = enc.low - 1.0   # fires after 1, when the first layer is already in its own window
    sim = simulator.Simulator(net)
    result = sim.run(x, keep_times=True)
    assert result.counts.out_of_range_inputs == 2
    assert result.counts.spikes == 20 * sim.neurons  # every neuron fires exactly once
    t_in = result.times[enc.name]
    assert t_in[0, 0] < 0.0 and t_in[1, 0] > 1.0
    assert close(t_in, 1.0 - (x - enc.low) / (enc.high - enc.low))
    logits, times = reference.run(net, x[:2])
    assert close(result.logits[:2], logits)  # the late and early inputs are simulated exactly


def _sample(tmp_path, name: str):
    out = tmp_path / f"{name}.snn.h5"
    convert.convert(f"sample_models/{name}/model.onnx", f"sample_models/{name}/calib.npy", out)
    return out


def test_simulator_imports_only_numpy_and_h5py():
    """A deployment target runs a .snn.h5 with numpy and h5py alone."""
    import subprocess
    import sys
    code = ("import sys; import relu2snn_cli.simulator; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'click')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_reference_is_independent_of_the_production_kernels():
    """The oracle imports only the node dataclasses, never the simulator or its NumPy kernels."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(reference))
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {m for m in imported if m[0] and m[0].startswith("relu2snn_cli")} == {("relu2snn_cli", "snn")}


def test_concatenation_and_residual_sum_with_delays(tmp_path):
    """A concatenation and a residual sum of populations that end at different times: the artifact has delays."""
    b = GraphBuilder((5,))
    rng = np.random.default_rng(2)
    h1 = b.op("Relu", [b.op("Gemm", ["x", b.const(rng.normal(0, 1, (4, 5))), b.const(np.zeros(4))], transB=1)])
    h2 = b.op("Relu", [b.op("Gemm", [h1, b.const(rng.normal(0, 1, (4, 4))), b.const(np.zeros(4))], transB=1)])
    cat = b.op("Concat", [h1, h2], axis=1)
    h3 = b.op("Relu", [b.op("Add", [h1, b.op("Gemm", [cat, b.const(rng.normal(0, 1, (4, 8))),
                                                        b.const(np.zeros(4))], transB=1)])])
    model = b.build(b.op("Gemm", [h3, b.const(rng.normal(0, 1, (2, 4))), b.const(np.zeros(2))], transB=1))
    net, graph, rng = converted(tmp_path, model, (5,), 3)
    concat = next(n for n in net.nodes if isinstance(n, snn.Concat))
    assert concat.delays[0] > 0 and concat.delays[1] == 0
    layer = net.nodes[-2]
    assert isinstance(layer, snn.SpikingLayer) and len(layer.synapses) == 2 and layer.synapses[0].delay > 0
    x = rng.normal(size=(6, 5))
    logits, times = reference.run(net, x)
    result = simulator.simulate(net, x, keep_times=True)
    assert close(result.logits, logits) and close(result.logits, ir.forward(graph, x), 1e-9)


# ----------------------------------------------------------------------------- spike counts and finiteness

@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "cnn1d"])
def test_forced_spikes_are_the_zero_activations(tmp_path, name):
    """Per layer, the neurons forced to fire at their window end are exactly the (sample, neuron) pairs whose
    float64 ReLU activation is 0 (no ties at 0 arise on these models: the equality is exact), and the others
    reached ϑ before the window end."""
    path = _sample(tmp_path, name)
    net, graph = h5io.read(path), import_model(f"sample_models/{name}/model.onnx").graph
    x = np.load(f"sample_models/{name}/test.npy")[:200]
    sim = simulator.Simulator(net)
    result = sim.run(x, keep_times=True)
    ref = ir.forward(graph, x, keep=True)
    layers = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    forced_total = 0
    for layer in layers:
        threshold, forced = simulator.spike_counts(result.times[layer.name], sum(layer.window))
        zeros = int(np.count_nonzero(ref[layer.name] == 0))
        assert forced == zeros, layer.name
        assert threshold == ref[layer.name].size - zeros, layer.name
        forced_total += forced
    assert result.counts.early_spikes == 0
    assert result.counts.forced_spikes == forced_total
    hidden = sum(ref[n.name].size for n in layers)
    assert 0.05 < result.counts.forced_share == forced_total / hidden < 0.95
    assert result.counts.input_spikes == x.size
    assert result.counts.spikes == len(x) * sim.neurons


def _replace_readout(net, **fields):
    return snn.Network(net.nodes[:-1] + (dataclasses.replace(net.nodes[-1], **fields),), net.meta)


@pytest.mark.parametrize("field", ["alpha", "J"])
def test_overflowing_readout_is_refused(tmp_path, field):
    """A readout α or J of 1e308 (finite, valid) overflows the logits to inf: refused, naming the readout."""
    net = h5io.read(_sample(tmp_path, "mlp"))
    readout = net.nodes[-1]
    if field == "alpha":
        bad = _replace_readout(net, alpha=np.full_like(readout.alpha, 1e308))
    else:
        syn = readout.synapses[0]
        bad = _replace_readout(net, synapses=(dataclasses.replace(syn, J=np.full_like(syn.J, 1e308)),))
    x = np.load("sample_models/mlp/test.npy")[:4]
    with np.errstate(over="ignore"), pytest.raises(NonFiniteError, match=f"'{readout.name}'.*logits"):
        simulator.Simulator(bad).run(x)


def test_non_finite_spike_times_are_refused():
    """Weights of ±1e308 (finite, valid) make the closed form of a hidden neuron inf − inf: its NaN spike time is
    refused, naming the layer, instead of being passed on to NaN logits."""
    huge = 1e308
    J = np.array([[1.0, huge, 1.7e308, huge, -huge, -huge, -huge]])
    layer = snn.SpikingLayer("hidden", (snn.Synapses("in", (7,), J),), np.array([1.25]), (1.0, 2.5),
                             theta=np.array([huge]), certified=np.zeros(1, bool), scale=np.ones(1), x_max=np.ones(1))
    readout = snn.Readout("out", (snn.Synapses("hidden", (1,), np.ones((2, 1))),), np.zeros(2), (1.0, 2.5))
    net = snn.Network((snn.Encoder("in", (7,), 0.0, 1.0), layer, readout), {})
    x = np.array([[2.5, 1.0, 0.125, 1.0, 1.0, 1.5, 0.125]])
    with np.errstate(all="ignore"), pytest.raises(NonFiniteError, match="'hidden': 1 of its 1 spike times"):
        simulator.Simulator(net).run(x)


def test_overflowing_input_times_are_refused():
    """An input range of ±1e308 (finite) and an input of 1e308: x − low overflows, the input spike time is −inf."""
    enc = snn.Encoder("in", (2,), -1e308, 1e308)
    layer = snn.SpikingLayer("hidden", (snn.Synapses("in", (2,), np.full((1, 2), 0.1)),), np.ones(1), (1.0, 1.0),
                             theta=np.array([5.0]), certified=np.ones(1, bool), scale=np.ones(1), x_max=np.ones(1))
    readout = snn.Readout("out", (snn.Synapses("hidden", (1,), np.ones((2, 1))),), np.zeros(2), (1.0, 1.0))
    sim = simulator.Simulator(snn.Network((enc, layer, readout), {}))
    assert np.all(np.isfinite(sim.run(np.array([[0.0, 1e300]])).logits))
    with np.errstate(all="ignore"), pytest.raises(NonFiniteError, match="'in': 1 of its 2 spike times"):
        sim.run(np.array([[0.0, 1e308]]))


def conv_pool_gemm():
    """A small Conv → ReLU → MaxPool → Gemm model on 1×4×4 inputs (seeded weights) for the emit-hook tests."""
    rng = np.random.default_rng(4)
    b = GraphBuilder((1, 4, 4))
    h = b.op("Relu", [b.op("Conv", ["x", b.const(rng.normal(0, 1, (2, 1, 3, 3))), b.const(np.zeros(2))],
                           pads=[1, 1, 1, 1])])
    h = b.op("Flatten", [b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])])
    return b.build(b.op("Gemm", [h, b.const(rng.normal(0, 1, (3, 8))), b.const(np.zeros(3))], transB=1))


def test_emit_hook_transforms_the_emitted_populations(tmp_path):
    """``Simulator.run(emit=...)`` passes each emitted population (encoder and spiking layers, not pooling) through
    the hook before the next layers read it, as the reference does with the same hook; counts are as fired."""
    model = conv_pool_gemm()
    net, _, rng = converted(tmp_path, model, (1, 4, 4), 2)
    x = rng.normal(size=(4, 1, 4, 4))
    seen = []

    def emit(node, t):
        seen.append(node.name)
        return t + 0.25 * np.sin(7.0 * t)

    result = simulator.Simulator(net).run(x, keep_times=True, emit=emit)
    assert seen == [n.name for n in net.nodes if isinstance(n, (snn.Encoder, snn.SpikingLayer))]
    logits, times = reference.run(net, x, emit=emit)
    for name, t in times.items():
        assert close(result.times[name], t), name
    assert close(result.logits, logits)
    plain = simulator.Simulator(net).run(x)
    assert plain.counts.spikes == result.counts.spikes
    assert not close(plain.logits, result.logits)


# ----------------------------------------------------------------------------- sparse coding (docs/math.md §9)

def sparse_layer(rng, kind: str, early: float) -> tuple[snn.SpikingLayer, list[tuple[float, float]]]:
    """``random_layer`` as the sparse coding has it: α = 0, c = 1, ϑ = B − b for random biases b; ``early``
    lowers the thresholds so that many neurons cross at or before the end of the input window."""
    layer, windows = random_layer(rng, kind, 0.0)
    theta = layer.window[1] - rng.normal(0, 1.5, layer.shape) - early
    return dataclasses.replace(layer, alpha=np.zeros(layer.shape[0]), theta=theta), windows


def sparse_times(rng, layer, windows, n):
    """Spike times in each input's window, a third of them silent (at the window end), and outliers: one input
    before its window, one after it (lost), one exactly at the end of the merged input window."""
    out = input_times(rng, layer, windows, n)
    for t, (start, b) in zip(out, windows):
        t[rng.random(t.shape) < 0.3] = start + b
    return out


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("early", [0.0, 2.0])
def test_sparse_layer_matches_reference(kind, early):
    """A sparse layer (output phase of slope 1, late inputs lost) equals the event-by-event reference to 1e-12,
    early crossings included, and its silent neurons are those the reference finds silent."""
    rng = np.random.default_rng(31 + LAYER_KINDS.index(kind) + int(early))
    total_early = total_silent = 0
    for _ in range(5):
        layer, windows = sparse_layer(rng, kind, early)
        t_in = sparse_times(rng, layer, windows, 4)
        got, n_early, _, _ = simulator.CompiledLayer(layer, windows, "sparse").fire(t_in)
        merged, _ = snn.merge_windows(windows)
        counts = {}
        want = reference.fire_layer(layer, merged, t_in, counts, coding="sparse")
        assert close(got, want, 1e-12)
        assert n_early == int(np.sum(want < sum(merged)))
        assert simulator.spike_counts(got, sum(layer.window)) == counts[layer.name]
        total_early += n_early
        total_silent += counts[layer.name][1]
    assert total_silent > 0
    if early:
        assert total_early > 0


def test_sparse_neuron_by_hand():
    """One neuron, J = (2, −1, 5), input window [0, 2], window [2, 6], inputs at 0.5, 1.5 and 2.5 (late: lost).
    Input phase V(t) = 2·(t − 0.5) − (t − 1.5)+, so V(2) = 2.5; then V = 2.5 + (t − 2). ϑ = 3: fires at 2.5
    (code 3.5); ϑ = 2: crosses at 1.5 in the input phase (early); ϑ = 7: would cross at 6.5 > 6, silent."""
    syn = snn.Synapses("in", (3,), np.array([[2.0, -1.0, 5.0]]))
    layer = snn.SpikingLayer("l", (syn,), np.zeros(1), (2.0, 4.0), theta=np.array([3.0]),
                             certified=np.zeros(1, bool), scale=np.ones(1), x_max=np.ones(1))
    t_in = [np.array([[0.5, 1.5, 2.5]])]
    t, early, _, _ = simulator.CompiledLayer(layer, [(0.0, 2.0)], "sparse").fire(t_in)
    assert t[0, 0] == pytest.approx(2.5, abs=1e-12) and early == 0
    low = dataclasses.replace(layer, theta=np.array([2.0]))
    t, early, _, _ = simulator.CompiledLayer(low, [(0.0, 2.0)], "sparse").fire(t_in)
    assert t[0, 0] == pytest.approx(1.5, abs=1e-12) and early == 1
    high = dataclasses.replace(layer, theta=np.array([7.0]))   # V(2) + (t − 2) = 7 at t = 6.5 > T + B = 6: silent
    t = simulator.CompiledLayer(high, [(0.0, 2.0)], "sparse").fire(t_in)[0]
    assert t[0, 0] == 6.0


@settings(max_examples=20, deadline=None)
@given(stack=st.one_of(relu_stacks(), relu_dags()), short=st.booleans())
def test_sparse_network_matches_reference(tmp_path_factory, stack, short):
    """Sparse stacks and DAGs converted in memory, calibrated on small inputs and run on large ones (inputs beyond
    the range, before and after the input window), or with windows shorter than the activations (ζ = −0.5):
    neurons fire early and inputs arrive late; the simulator equals the reference, counts included."""
    model, shape, seed = stack
    tmp = tmp_path_factory.mktemp("s")
    path = save(model, tmp / "m.onnx")
    rng = np.random.default_rng(seed)
    np.save(tmp / "c.npy", (0.2 * rng.normal(size=(64,) + shape)).astype(np.float32))
    options = MappingOptions(zeta=-0.5 if short else 0.5, short_windows=short, coding="sparse")
    net, _ = convert.build(path, str(tmp / "c.npy"), options, input_range=None if short else (-3, 3))
    assert net.coding == "sparse"
    x = (0.2 if short else 2.0) * rng.normal(size=(3,) + shape)
    assert_matches_reference(net, x, simulator.simulate(net, x, batch_size=2, keep_times=True))


def test_sparse_network_with_early_spikes_and_late_inputs(tmp_path):
    """A fixed sparse case where early spikes and inputs after their window (below the input range) happen."""
    rng = np.random.default_rng(0)
    b = GraphBuilder((6,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rng.normal(0, 1, (8, 6))), b.const(rng.normal(0, 0.3, 8))],
                           transB=1)])
    h = b.op("Relu", [b.op("Gemm", [h, b.const(rng.normal(0, 1, (8, 8))), b.const(rng.normal(0, 0.3, 8))], transB=1)])
    model = b.build(b.op("Gemm", [h, b.const(rng.normal(0, 1, (3, 8))), b.const(np.zeros(3))], transB=1))
    net, graph, rng = converted(tmp_path, model, (6,), 1, calib_scale=0.1, input_range=(-1, 1), coding="sparse")
    x = 3.0 * rng.normal(size=(16, 6))
    result = simulator.simulate(net, x, keep_times=True)
    assert result.counts.early_spikes > 0 and result.counts.out_of_range_inputs > 0
    assert np.any(result.times[net.nodes[0].name] > 1.0)   # late inputs
    assert_matches_reference(net, x, result)
    assert result.counts.silent > 0 and result.counts.threshold_spikes > 0


def test_sparse_emit_hook_leaves_silent_neurons_silent(tmp_path):
    """The emit hook (jitter) moves the spikes only: in the sparse coding a silent neuron keeps its window end,
    in the simulator as in the reference, and the next layers see the same times."""
    model = conv_pool_gemm()
    net, _, rng = converted(tmp_path, model, (1, 4, 4), 2, coding="sparse")
    x = rng.normal(size=(4, 1, 4, 4))
    x[:, 0, 0, :] = net.nodes[0].low   # silent input neurons

    def emit(node, t):
        return t - 0.05 - 0.01 * np.sin(7.0 * t)   # every time earlier: a silent neuron would turn into a spike

    result = simulator.Simulator(net).run(x, keep_times=True, emit=emit)
    plain = simulator.Simulator(net).run(x, keep_times=True)
    for node in net.nodes:
        if isinstance(node, (snn.Encoder, snn.SpikingLayer)):
            silent = plain.times[node.name] >= sum(node.window)
            assert silent.any(), node.name
            if node is net.nodes[0]:
                assert np.array_equal(result.times[node.name][silent], plain.times[node.name][silent])
    logits, times = reference.run(net, x, emit=emit)
    for name, t in times.items():
        assert close(result.times[name], t), name
    assert close(result.logits, logits)


def test_synaptic_events_count_spikes_at_nonzero_synapses():
    """Synaptic events by hand: a dense layer with one zero weight and a readout; in the sparse coding only the
    inputs that spike count, in the dense one all of them; without ``count_events`` none are counted."""
    enc = snn.Encoder("in", (3,), 0.0, 1.0)
    J = np.array([[1.0, 0.0, 2.0], [0.5, 0.5, 0.0]])   # 4 nonzero synapses
    layer = snn.SpikingLayer("h", (snn.Synapses("in", (3,), J),), np.zeros(2), (1.0, 4.0),
                             theta=np.array([3.0, 4.5]), certified=np.zeros(2, bool), scale=np.ones(2),
                             x_max=np.ones(2), x_n=1.0)
    readout = snn.Readout("out", (snn.Synapses("h", (2,), np.array([[1.0, -1.0]])),), np.zeros(1), (1.0, 4.0))
    x = np.array([[0.5, 0.0, 0.8]])   # input 1 is silent in the sparse coding
    sparse = simulator.Simulator(snn.Network((enc, layer, readout), {}, "sparse")).run(x, count_events=True)
    # ϑ = B − b: b = (1, −0.5), codes z = (0.5 + 1.6 + 1, 0.25 − 0.5) = (3.1, −0.25): neuron 0 fires, 1 is silent
    assert sparse.counts.layer_spikes == {"in": 2, "h": 1}
    assert sparse.counts.synaptic_events == (2 + 1) + 1   # inputs 0, 2 reach 2 + 1 synapses; neuron 0 reaches 1
    dense = simulator.Simulator(snn.Network((enc, dataclasses.replace(layer, alpha=np.ones(2)), readout), {}))
    assert dense.run(x, count_events=True).counts.synaptic_events == 4 + 2
    assert dense.run(x).counts.synaptic_events == 0
