"""Calibration (``relu2snn_cli.calibrate``) and the no-early-spike bound it feeds (``mapping.required_window``).

- ``input_stats``: min, max and sha256 (float32 bytes, C order) equal numpy's, for any batch size;
- ``calibrate`` on the sample models: per-channel maxima equal onnxruntime's (rtol 1e-6), are
  independent of the batch size (to 1e-12), and the float64 forward pass agrees with onnxruntime
  to 1e-4 of the largest logit;
- the window bound: no sample model converted with ζ = 0.5 or ζ = 0 fires a calibration sample early, ``required_window``
  equals a brute-force maximum (1e-9 relative) and ``update_requirement`` computes it for exactly the
  pairs whose certificate bound exceeds the running maximum;
- bad calibration data: DataError naming the file, the sample or the shapes, on one line.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from relu2snn_cli import calibrate, convert, h5io, ir, mapping, simulator, snn
from relu2snn_cli.errors import DataError, ModelError
from relu2snn_cli.onnx_import import import_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
MODELS = ("mlp", "cnn")
ALL_MODELS = tuple(sorted(p.parent.name for p in SAMPLES.glob("*/model.onnx")))


def one_line_error(excinfo, *names) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for name in names:
        assert str(name) in msg, msg
    return msg


# ----------------------------------------------------------------------------- input_stats

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_input_stats_equal_numpy(dtype, batch_size):
    x = np.random.default_rng(3).normal(2.0, 5.0, size=(11, 3, 4)).astype(dtype)
    stats = calibrate.input_stats(x, (3, 4), "x.npy", batch_size=batch_size)
    assert stats.low == float(x.min()) and stats.high == float(x.max())
    assert stats.n_samples == 11
    assert stats.sha256 == hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def test_input_stats_memmap_and_fortran_order(tmp_path):
    x = np.random.default_rng(4).normal(size=(9, 5)).astype(np.float32)
    want = hashlib.sha256(x.tobytes()).hexdigest()
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for arr in (mm, np.asfortranarray(x)):
        stats = calibrate.input_stats(arr, (5,), "x.npy", batch_size=4)
        assert (stats.low, stats.high, stats.n_samples, stats.sha256) == (float(x.min()), float(x.max()), 9, want)


def test_input_stats_rejects_nan_with_index():
    x = np.zeros((10, 4), np.float32)
    x[7, 2] = np.nan
    with pytest.raises(DataError) as excinfo:
        calibrate.input_stats(x, (4,), "calib.npy", batch_size=3)
    one_line_error(excinfo, "calib.npy", "sample 7 ")


# ----------------------------------------------------------------------------- calibrate on the samples

class Setup:
    """Import, input range and scaled graph of a sample model, as convert computes them."""

    def __init__(self, model: str):
        self.model_path = SAMPLES / model / "model.onnx"
        self.calib_path = SAMPLES / model / "calib.npy"
        self.graph = import_model(self.model_path).graph
        self.data = np.load(self.calib_path, mmap_mode="r")
        stats = calibrate.input_stats(self.data, self.graph.input.shape, str(self.calib_path))
        self.range = mapping.encoding_range(stats.low, stats.high, mapping.MappingOptions().zeta)
        self.scaled = mapping.scale_graph(self.graph, self.range)
        self.layers = [n for n in self.scaled.graph.nodes if isinstance(n, ir.Affine) and n.relu]

    def run(self, batch_size: int, data=None) -> calibrate.Calibration:
        return calibrate.calibrate(self.model_path, self.graph, self.scaled, self.data if data is None else data,
                                   self.range, str(self.calib_path), batch_size)


@pytest.fixture(scope="module")
def setups():
    return {m: Setup(m) for m in MODELS}


@pytest.fixture(scope="module")
def calibrations(setups):
    return {m: {bs: setups[m].run(bs) for bs in (7, 256)} for m in MODELS}


class Converted(dict):
    """The sample models converted with ζ = 0.5 (default) and ζ = 0 (windows X_n, no headroom), each when first asked for."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, key):
        model, zeta, *coding = key
        path = self.tmp_path_factory.mktemp(model) / f"z{zeta}.snn.h5"
        convert.convert(SAMPLES / model / "model.onnx", str(SAMPLES / model / "calib.npy"), path,
                        mapping.MappingOptions(zeta=zeta, coding=coding[0] if coding else "dense"))
        self[key] = h5io.read(path)
        return self[key]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return Converted(tmp_path_factory)


def ort_channel_max(model_path, tensors: list[str], x: np.ndarray) -> dict:
    """Per-channel max of the named tensors, straight from onnxruntime (independent of calibrate.session)."""
    model = onnx.load(str(model_path))
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(tensors, {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})
    return {t: y.astype(np.float64).max(axis=(0,) + tuple(range(2, y.ndim))) for t, y in zip(tensors, outs)}


@pytest.mark.parametrize("model", MODELS)
def test_x_max_equals_onnxruntime(setups, calibrations, converted, model):
    setup = setups[model]
    net = converted[model, 0.5]
    layers = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    assert [n.name for n in layers] == [n.name for n in setup.layers]
    want = ort_channel_max(setup.model_path, [n.source for n in layers], setup.data)
    for layer in layers:
        expected = want[layer.source]
        assert np.any(expected > 0), layer.name
        np.testing.assert_allclose(calibrations[model][256].x_max[layer.name], expected, rtol=1e-6, atol=0)
        np.testing.assert_allclose(layer.x_max, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("model", MODELS)
def test_calibration_independent_of_batch_size(setups, calibrations, model):
    """x_max and the layer bound X_n = max(c·x_max, required) that sets the window, to float64 rounding: the
    float64 products of a batch may round differently with the batch's size (BLAS picks its kernels by shape)."""
    small, large = calibrations[model][7], calibrations[model][256]
    for layer in setups[model].layers:
        np.testing.assert_allclose(small.x_max[layer.name], large.x_max[layer.name], rtol=1e-12, atol=0,
                                   err_msg=layer.name)
        c = setups[model].scaled.scales[layer.name]
        x_small = max(np.max(c * small.x_max[layer.name]), small.required[layer.name])
        x_large = max(np.max(c * large.x_max[layer.name]), large.required[layer.name])
        assert x_small == pytest.approx(x_large, rel=1e-12, abs=0), layer.name
    opts = mapping.MappingOptions()
    nodes = [mapping.spiking_nodes(setups[model].scaled, cal.x_max, cal.required, setups[model].range, opts)
             for cal in (small, large)]
    np.testing.assert_allclose([n.window for n in nodes[0]], [n.window for n in nodes[1]], rtol=1e-12, atol=0)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch_size", [7, 256])
def test_forward_error_small(calibrations, model, batch_size):
    cal = calibrations[model][batch_size]
    assert cal.max_logit > 1.0
    assert 0 <= cal.forward_error <= 1e-4 * cal.max_logit


# ----------------------------------------------------------------------------- the window bound

@pytest.mark.parametrize("zeta", [0.5, 0.0])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_no_early_spike_on_calibration_data(converted, model, zeta):
    """The window rule's guarantee for every ζ ≥ 0, at its edge ζ = 0 too, where the pair with the largest
    activation crosses within the rounding margin of its window start (docs/math.md §4)."""
    net = converted[model, zeta]
    calib = np.load(SAMPLES / model / "calib.npy")
    result = simulator.simulate(net, calib, keep_times=True)
    assert result.counts.early_spikes == 0
    if zeta == 0.0:
        assert result.counts.checked > 0  # the exact check ran: the bound was really exercised
    sim = simulator.Simulator(net)
    for node in net.nodes:
        if isinstance(node, snn.SpikingLayer):
            _, early, _, _ = sim.compiled[node.name].fire([result.times[name] for name in node.inputs])
            assert early == 0, node.name


@pytest.mark.parametrize("zeta", [0.5, 0.0])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_no_early_spike_on_calibration_data_sparse(converted, model, zeta):
    """The same guarantee in the sparse coding (docs/math.md §9): R* with slope 0 holds every calibration sample's
    input phase below ϑ = B − b."""
    net = converted[model, zeta, "sparse"]
    assert net.coding == "sparse"
    calib = np.load(SAMPLES / model / "calib.npy")
    result = simulator.simulate(net, calib, keep_times=True)
    assert result.counts.early_spikes == 0


def brute_force_r_star(a, w, b, s, grid=2001, c=None) -> float:
    """max over σ ∈ linspace(0, 2·max a) ∪ {0} ∪ {a_j} of R(σ) = b + Σ w·max(0, a − σ) − c·σ, c = 1 − s unless
    given (0: the sparse coding, where R = b beyond the largest code)."""
    c = 1.0 - s if c is None else c
    sigma = np.concatenate([np.linspace(0.0, 2.0 * a.max(initial=0.0), grid), a, [0.0]])
    r = b + np.maximum(0.0, a[None, :] - sigma[:, None]) @ w - c * sigma
    return float(r.max())


def test_sparse_required_window_equals_brute_force():
    """R* with c = 0 (docs/math.md §9) against the brute-force maximum, which is never below b; the bound from
    sums is never below it."""
    for a, w, b, s in random_cases(seed=5):
        got = mapping.required_window(a[None], w[None], np.array([b]), np.array([s]), np.zeros(1))[0]
        want = brute_force_r_star(a, w, b, s, c=0.0)
        scale = max(1.0, abs(want), abs(b) + float(np.abs(w) @ a) + float(a.max()))
        assert abs(got - want) <= 1e-9 * scale and got >= b - 1e-12 * scale, (a, w, b, got, want)
        z, p = b + w @ a, b + np.clip(w, 0, None) @ a
        bound = mapping.requirement_bound(np.array([z]), np.array([p]), np.array([s]),
                                          np.array([np.clip(w, None, 0).sum()]), np.zeros(1))[0]
        assert bound >= got - 1e-9 * scale


def test_sparse_required_window_is_the_smallest_safe_window():
    """Simulated with the sparse neuron (J = W, α = 0, ϑ = B_out − b): with B_out a little above R* the input
    phase never reaches ϑ by the end T of the input window; a little below R* (reached at some σ > 0) it does."""
    t_in = 3.0
    checked_early = 0
    for a, w, b, s in random_cases(120, seed=13):
        r_star = mapping.required_window(a[None], w[None], np.array([b]), np.array([s]), np.zeros(1))[0]
        b_in = float(a.max()) + 1.0
        t_end = t_in + b_in
        times = t_end - a
        eps = 1e-6 * max(1.0, abs(r_star))
        for b_out, early in ((r_star + eps, False), (r_star - eps, True)):
            theta = mapping.sparse_threshold(np.array([b]), b_out)
            t = simulator.first_crossing(times[None], w[None], np.zeros(1), theta, t_in)[0]
            if not early:
                assert t > t_end, (a, w, b)
            elif r_star > b + w @ a + 10 * eps:  # the maximum is not at σ = 0 (the pre-activation z)
                assert t < t_end, (a, w, b)
                checked_early += 1
    assert checked_early > 10


def random_cases(n=200, seed=7):
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(1, 25))
        a = rng.exponential(1.0, k) * rng.choice([0.1, 1.0, 10.0])
        if i % 4 == 0:
            a[rng.random(k) < 0.3] = 0.0          # silent inputs
        if i % 5 == 0 and k > 2:
            a[1:3] = a[0]                          # ties
        w = rng.normal(0.0, 1.0, k) * rng.choice([0.1, 1.0, 5.0])
        b = float(rng.normal(0.0, 2.0))
        s = float(rng.choice([rng.uniform(-10.0, 0.99), 0.99, 0.0, -10.0, w.sum() if w.sum() < 1 else 0.5]))
        yield a, w, b, s


def test_required_window_equals_brute_force():
    cases = list(random_cases())
    got_each = [mapping.required_window(a[None], w[None], np.array([b]), np.array([s]))[0] for a, w, b, s in cases]
    for (a, w, b, s), got in zip(cases, got_each):
        want = brute_force_r_star(a, w, b, s)
        scale = max(1.0, abs(want), abs(b) + float(np.abs(w) @ a) + float(a.max()))
        assert abs(got - want) <= 1e-9 * scale, (a, w, b, s, got, want)
    # the same cases padded to one batch (padding: silent inputs with zero weight) give the same values
    k = max(len(a) for a, *_ in cases)
    a_all = np.zeros((len(cases), k))
    w_all = np.zeros((len(cases), k))
    for i, (a, w, _, _) in enumerate(cases):
        a_all[i, :len(a)], w_all[i, :len(w)] = a, w
    batch = mapping.required_window(a_all, w_all, np.array([c[2] for c in cases]), np.array([c[3] for c in cases]))
    np.testing.assert_allclose(batch, got_each, rtol=1e-12, atol=1e-12)


def test_required_window_is_the_smallest_safe_window():
    """Simulated: with B_out a little above R* no input makes the neuron fire before T_in + B_in;
    a little below R*, where R* is reached only at some σ > 0, it fires early."""
    t_in = 3.0
    checked_early = 0
    for a, w, b, s in random_cases(120, seed=11):
        r_star = mapping.required_window(a[None], w[None], np.array([b]), np.array([s]))[0]
        b_in = float(a.max()) + 1.0
        times = t_in + b_in - a
        j = w / (1.0 - s)
        eps = 1e-6 * max(1.0, abs(r_star))
        for b_out, early in ((r_star + eps, False), (r_star - eps, True)):
            theta = mapping.spike_threshold(np.array([b]), np.array([s]), b_in, b_out)
            t = simulator.first_crossing(times[None], j[None], np.ones(1), theta, t_in)[0]
            if not early:
                assert t >= t_in + b_in, (a, w, b, s)
            elif r_star > b + w @ a + 10 * eps:  # the maximum is not at σ = 0 (the pre-activation z)
                assert t < t_in + b_in, (a, w, b, s)
                checked_early += 1
    assert checked_early > 10


def gathered_dense(layer, a):
    weight = layer.terms[0].weight
    return [(n, o, a[n], weight[o]) for n in range(len(a)) for o in range(layer.shape[0])]


def gathered_conv(layer, a):
    """(sample, flat neuron, inputs, weights) by explicit loops, zero padding."""
    term = layer.terms[0]
    o_n, c_n, kh, kw = term.weight.shape
    _, ho, wo = layer.shape
    sh, sw = term.strides
    dh, dw = term.dilations
    top, left = term.pads[:2]
    out = []
    for n in range(len(a)):
        for o in range(o_n):
            for i in range(ho):
                for j in range(wo):
                    vals, wts = [], []
                    for c in range(c_n):
                        for u in range(kh):
                            for v in range(kw):
                                y, x = i * sh + u * dh - top, j * sw + v * dw - left
                                inside = 0 <= y < a.shape[2] and 0 <= x < a.shape[3]
                                vals.append(a[n, c, y, x] if inside else 0.0)
                                wts.append(term.weight[o, c, u, v])
                    out.append((n, (o * ho + i) * wo + j, np.array(vals), np.array(wts)))
    return out


def dense(name, source, weight, bias):
    return ir.Affine(name, (ir.Dense(source, weight, (weight.shape[1],)),), bias, relu=True)


def dense_layer(rng):
    weight = rng.normal(0.2, 1.0, (6, 9))
    bias = rng.normal(0.0, 1.0, 6)
    bias[4] = -100.0  # channel 4 never exceeds the running maximum
    return dense("d", "x", weight, bias), rng.uniform(0, 2, (12, 9)), gathered_dense


def conv_layer(rng):
    term = ir.Conv("x", rng.normal(0.1, 1.0, (4, 2, 3, 2)), (2, 6, 5), strides=(2, 1), pads=(1, 0, 2, 1),
                   dilations=(1, 2))
    bias = rng.normal(0.0, 1.0, term.shape)  # a bias map: every position its own bias
    bias[2] = -100.0
    layer = ir.Affine("c", (term,), bias, relu=True)
    return layer, rng.uniform(0, 2, (3, 2, 6, 5)), gathered_conv


@pytest.mark.parametrize("coding", ["dense", "sparse"])
@pytest.mark.parametrize("make", [dense_layer, conv_layer], ids=["dense", "conv"])
def test_update_requirement(make, coding):
    """Against ``required_window`` on explicitly gathered inputs, with R's slope c = 1 − s (dense) or 0 (sparse,
    docs/math.md §9)."""
    rng = np.random.default_rng(5)
    layer, a, gather = make(rng)
    channels = layer.shape[0]
    per_channel = int(np.prod(layer.shape[1:]))
    s = ir.incoming_sum(layer)
    bias = ir.full_bias(layer).reshape(-1)
    positive = np.clip(layer.terms[0].weight, 0, None)
    pairs = gather(layer, a)
    bound = {(n, c): bias[c] + positive.reshape(channels, -1)[c // per_channel] @ vals
             for n, c, vals, _ in pairs}
    running = float(np.median(list(bound.values())))
    slope = mapping.ramp_slope(s, coding)
    needs = [mapping.required_window(vals[None], wts[None], bias[c:c + 1], s[c // per_channel:c // per_channel + 1],
                                     slope[c // per_channel:c // per_channel + 1])[0]
             for n, c, vals, wts in pairs]
    want = max(running, max(needs))  # pairs below the running maximum have R* ≤ bound ≤ running
    got, _ = calibrate.update_requirement(layer, [a], running, coding=coding)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("make", [dense_layer, conv_layer], ids=["dense", "conv"])
def test_update_requirement_with_weights_beyond_float32(make):
    """Weights of 1e39 overflow the float32 screening sums (inf, and NaN where a padded tap reads 0): those
    sums rule out nothing, no NumPy warning is raised, and the requirement is the exact one."""
    rng = np.random.default_rng(5)
    small, a, gather = make(rng)
    layer = dataclasses.replace(small, terms=(dataclasses.replace(small.terms[0], weight=small.terms[0].weight * 1e39),),
                                bias=small.bias * 1e39)
    per_channel = int(np.prod(layer.shape[1:]))
    s, bias = ir.incoming_sum(layer), ir.full_bias(layer).reshape(-1)
    needs = [mapping.required_window(vals[None], wts[None], bias[c:c + 1], s[c // per_channel:c // per_channel + 1])[0]
             for n, c, vals, wts in gather(layer, a)]
    running = float(np.median(needs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, evaluated = calibrate.update_requirement(layer, [a], running)
    assert got == pytest.approx(max(needs), rel=1e-12) and evaluated > 0


@pytest.mark.parametrize("coding", ["dense", "sparse"])
@pytest.mark.parametrize("make", [dense_layer, conv_layer], ids=["dense", "conv"])
def test_grid_screen_rules_out_only_pairs_that_cannot_raise_the_maximum(make, coding):
    """For running maxima from the smallest to the largest exact R* of the batch, the pairs the grid bound rules
    out all have R* ≤ running (against ``required_window`` on explicitly gathered inputs), and it rules out some."""
    rng = np.random.default_rng(9)
    layer, a, gather = make(rng)
    per_channel = int(np.prod(layer.shape[1:]))
    s, bias = ir.incoming_sum(layer), ir.full_bias(layer).reshape(-1)
    pairs = gather(layer, a)
    rows, cols = np.array([n for n, *_ in pairs]), np.array([c for _, c, *_ in pairs])
    slope = mapping.ramp_slope(s, coding)
    need = np.array([mapping.required_window(vals[None], wts[None], bias[c:c + 1],
                                             s[c // per_channel:c // per_channel + 1],
                                             slope[c // per_channel:c // per_channel + 1])[0]
                     for _, c, vals, wts in pairs])
    z = ir.apply_linear(layer, [a]).reshape(len(a), -1)
    p, bounding = calibrate.positive_sums(layer, [a])   # Σ max(W, 0)·a in float32
    positive = calibrate.sum_bounds(p[rows, cols], bounding)
    ruled_out = 0
    for running in np.quantile(need, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]):
        sure = calibrate.grid_screen(layer, [a], rows, cols, positive, z, float(running), coding)
        assert np.all(need[sure] <= running)
        ruled_out += int(np.count_nonzero(sure & (need > np.quantile(need, 0.0))))
    assert ruled_out > 0


@pytest.mark.parametrize("make", [dense_layer, conv_layer], ids=["dense", "conv"])
def test_positive_sums_bound_the_exact_sums(make):
    """positive_sums bounds Σ max(W, 0)·a of every pair from float32 sums (within a few K·2⁻²⁴ of it, K the fan-in);
    with a code below 0 (an input below the encoder's range) it gives the float64 sums themselves."""
    rng = np.random.default_rng(4)
    layer, a, gather = make(rng)
    a = a * 10.0 ** rng.uniform(-3, 3, a.shape)   # magnitudes over six decades
    pos = np.clip(layer.terms[0].weight, 0, None)
    per_channel = int(np.prod(layer.shape[1:]))
    exact = {(n, c): math.fsum(pos.reshape(pos.shape[0], -1)[c // per_channel] * vals) for n, c, vals, _ in
             gather(layer, a)}
    low, high = calibrate.sum_bounds(*calibrate.positive_sums(layer, [a]))
    fan_in = pos[0].size
    for (n, c), want in exact.items():
        assert low[n, c] <= want <= high[n, c]
        assert high[n, c] - low[n, c] <= 8 * (fan_in + 2) * 2.0 ** -24 * want + 1e-30
    a[0].flat[0] = -0.5
    p, bounding = calibrate.positive_sums(layer, [a])
    assert bounding is None and p.dtype == np.float64


def test_update_requirement_ignores_pairs_below_running_maximum():
    rng = np.random.default_rng(6)
    layer, a, _ = dense_layer(rng)
    positive = np.clip(layer.terms[0].weight, 0, None)
    top = float(np.max(a @ positive.T + layer.bias))
    assert calibrate.update_requirement(layer, [a], top) == (top, 0)


def test_update_requirement_only_pairs_above_running():
    """The requirement of a pair above the running maximum raises it; nothing below it can."""
    weight = np.array([[1.0, -5.0]])          # s = −4, 1 − s = 5
    layer = dense("d", "x", weight, np.zeros(1))
    a = np.array([[0.9, 0.0],                 # bound 0.9: R* = z = 0.9
                  [3.0, 0.6]])                # bound 3.0: R* = max(z = 0, −0.6, −15) = 0
    s = ir.incoming_sum(layer)
    need = mapping.required_window(a, np.repeat(weight, 2, axis=0), np.zeros(2), np.repeat(s, 2))
    np.testing.assert_allclose(need, [0.9, 0.0], atol=1e-12)
    assert calibrate.update_requirement(layer, [a], 0.5)[0] == pytest.approx(0.9, abs=1e-12)
    assert calibrate.update_requirement(layer, [a], 1.0) == (1.0, 0)
    assert calibrate.update_requirement(layer, [a], 3.0) == (3.0, 0)


# ----------------------------------------------------------------------------- bad calibration data

@pytest.mark.parametrize("model, bad_index", [("mlp", 37), ("cnn", 0), ("cnn", 300)])
def test_nan_in_calibration_data(tmp_path, model, bad_index):
    calib = np.concatenate([np.load(SAMPLES / model / "calib.npy")] * 2)
    calib[bad_index].flat[5] = np.nan
    calib[bad_index + 20].flat[0] = np.inf
    spec = tmp_path / "calib.npy"
    np.save(spec, calib)
    out = tmp_path / "m.snn.h5"
    with pytest.raises(DataError) as excinfo:
        convert.convert(SAMPLES / model / "model.onnx", str(spec), out)
    one_line_error(excinfo, spec, f"sample {bad_index} ")
    assert list(tmp_path.iterdir()) == [spec]


def test_nan_in_later_batch_of_calibrate(setups):
    """calibrate itself (pass 2) names the sample, counting across batches."""
    setup = setups["cnn"]
    data = np.array(setup.data)
    data[100, 0, 3, 3] = np.nan
    with pytest.raises(DataError) as excinfo:
        setup.run(32, data)
    one_line_error(excinfo, setup.calib_path, "sample 100 ")


@pytest.mark.parametrize("model, shape, want", [("mlp", (10, 63), "(64,)"), ("cnn", (10, 1, 8, 7), "(1, 8, 8)"),
                                                ("cnn", (10, 64), "(1, 8, 8)")])
def test_wrong_shape_calibration_data(tmp_path, model, shape, want):
    spec = tmp_path / "calib.npy"
    np.save(spec, np.zeros(shape, np.float32))
    with pytest.raises(DataError) as excinfo:
        convert.convert(SAMPLES / model / "model.onnx", str(spec), tmp_path / "m.snn.h5")
    one_line_error(excinfo, spec, want, str(tuple(shape[1:])))
    assert list(tmp_path.iterdir()) == [spec]


def test_boolean_calibration_data(tmp_path):
    """Integers are converted to float64 (tests/test_errors.py); booleans are refused."""
    spec = tmp_path / "calib.npy"
    np.save(spec, np.zeros((10, 64), bool))
    with pytest.raises(DataError) as excinfo:
        convert.convert(SAMPLES / "mlp" / "model.onnx", str(spec), tmp_path / "m.snn.h5")
    one_line_error(excinfo, spec, "bool")


def test_an_import_that_does_not_reproduce_onnxruntime_is_refused(tmp_path, monkeypatch):
    """If the float64 forward pass of the imported graph disagrees with onnxruntime, convert stops: an import
    whose readout bias is off by 1."""
    real = convert._import_model

    def wrong(path, *args):
        imported = real(path, *args)
        *body, last = imported.graph.nodes
        nodes = (*body, dataclasses.replace(last, bias=last.bias + 1.0))
        return dataclasses.replace(imported, graph=dataclasses.replace(imported.graph, nodes=nodes))

    monkeypatch.setattr(convert, "_import_model", wrong)
    with pytest.raises(ModelError) as info:
        convert.convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), tmp_path / "m.snn.h5")
    assert "does not reproduce onnxruntime" in str(info.value)
    assert not (tmp_path / "m.snn.h5").exists()


def test_sparse_requirement_holds_the_bias():
    """In the sparse coding R(σ) = b beyond the largest code (docs/math.md §9): a neuron with bias 1 whose input
    inhibits it (z = 1 − 5·1 = −4) needs B > 1, or ϑ = B − b ≤ 0 fires it before its inputs arrive; the dense
    coding's R falls beyond the codes (c = 1 − s = 6), so there R* = z."""
    layer = dense("d", "x", np.array([[-5.0]]), np.ones(1))
    a = np.array([[1.0]])
    assert calibrate.update_requirement(layer, [a], 0.0, coding="sparse")[0] == pytest.approx(1.0, abs=1e-12)
    assert calibrate.update_requirement(layer, [a], 0.0, coding="dense") == (0.0, 0)
    assert calibrate.update_requirement(layer, [a], -10.0, coding="dense")[0] == pytest.approx(-4.0, abs=1e-12)
