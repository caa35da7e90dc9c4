"""The formulas of the mapping (docs/math.md §3) and the laws they must satisfy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from builders import save
from relu2snn_cli import convert, h5io, ir, mapping, ops, simulator, snn
from relu2snn_cli.errors import GraphError
from relu2snn_cli.onnx_import import import_model
from strategies import relu_dags, relu_stacks

TOL = 1e-9


def test_scale_layer_numbers():
    c = mapping.scale_layer(np.array([2.0, 0.5, -20.0, 0.99, -10.0, 1.0]), s_min=-10.0, s_max=0.99)
    assert np.allclose(c, [0.495, 1.0, 0.5, 1.0, 1.0, 0.99], rtol=0, atol=1e-15)


def test_window_length_and_encoding_range():
    assert mapping.window_length(4.0, 0.5) == 6.0
    assert mapping.window_length(0.0, 0.5) == 1.0
    assert mapping.encoding_range(-1.0, 3.0, 0.5) == (-2.0, 4.0)  # span 4, ζ/2·4 = 1 each side
    assert mapping.encoding_range(2.0, 2.0, 0.5) == (1.5, 2.5)
    assert mapping.encoding_range(-1.0, 3.0, 0.0) == (-1.0, 3.0)


def test_options_are_validated():
    with pytest.raises(GraphError):
        mapping.MappingOptions(s_max=1.0)
    with pytest.raises(GraphError):
        mapping.MappingOptions(zeta=-0.1)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 8), b_in=st.floats(0.1, 5), b_out=st.floats(0.1, 5))
def test_spike_time_is_window_end_minus_relu(seed, k, b_in, b_out):
    """The law of docs/math.md §3: with J = W/(1−s), ϑ = B_in + (B_out − b)/(1−s), α = 1, a neuron whose
    window covers its no-early-spike requirement fires at T + B_out − max(0, z)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (1, k))
    s = w.sum(axis=1)
    if s[0] >= 0.99:
        w *= 0.99 / s[0]
        s = w.sum(axis=1)
    a = rng.uniform(0, b_in, k)
    b = rng.normal(0, 1, 1)
    z = float(w[0] @ a + b[0])
    need = float(mapping.required_window(a[None], w, b, s)[0])
    b_out = max(b_out, need + 1e-6, z + 1e-6)
    J = mapping.synaptic_weights(w, s)
    theta = mapping.spike_threshold(b, s, b_in, b_out)
    assert 1.0 + J.sum() == pytest.approx(1.0 / (1.0 - s[0]), rel=1e-12)  # α + ΣJ = 1/(1 − s)
    t0 = 0.0
    times = t0 + b_in - a
    t = reference.first_spike(list(zip(times, J[0])), 1.0, float(theta[0]), t0, t_end=t0 + b_in + b_out)
    assert t == pytest.approx(t0 + b_in + b_out - max(0.0, z), abs=TOL * (1 + b_out))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 8))
def test_required_window_is_exact(seed, k):
    """B_out just above R* never fires before the input window ends (T = B_in here); just below R* it does."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 2, (1, k))
    s = np.minimum(w.sum(axis=1), 0.9)
    a = rng.uniform(0, 3, k)
    b = rng.normal(0, 1, 1)
    need = float(mapping.required_window(a[None], w, b, s)[0])
    b_in = 3.0
    for b_out, early in ((need + 1e-6, False), (need - 1e-6, True)):
        if b_out <= 0:
            continue
        J = w / (1 - s[:, None])
        theta = b_in + (b_out - b[0]) / (1 - s[0])
        t = reference.first_spike(list(zip(b_in - a, J[0])), 1.0, theta, 0.0)
        assert (t < b_in) == early, (b_out, need, t)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_static_certificate_is_sound(seed):
    """A statically certified neuron does not fire before its inputs are in, whatever they are."""
    rng = np.random.default_rng(seed)
    J = rng.normal(0, 1, (5, 4))
    theta = rng.uniform(0, 8, 5)
    alpha = rng.uniform(0.1, 1.0, 5)
    b_in = 2.0
    b_first = rng.uniform(0.5, b_in)   # two input populations: inputs 0, 1 from a shorter window, delayed
    cert = mapping.static_certificate([(J[:, :2], b_first), (J[:, 2:], b_in)], theta, alpha, b_in)
    for _ in range(20):
        times = np.concatenate([rng.uniform(b_in - b_first, b_in, 2), rng.uniform(0, b_in, 2)])
        for i in np.flatnonzero(cert):
            assert reference.first_spike(list(zip(times, J[i])), alpha[i], theta[i], 0.0) >= b_in


def test_scale_graph_preserves_the_function(tmp_path):
    """Scaling and folding the input encoding change nothing but units: codes are c·a, logits equal."""
    graph = import_model("sample_models/cnn/model.onnx").graph
    x = np.load("sample_models/cnn/test.npy")[:32].astype(np.float64)
    low, high = -2.0, 3.0
    scaled = mapping.scale_graph(graph, (low, high))
    ann = ir.forward(graph, x, keep=True)
    codes = ir.forward(scaled.graph, (x - low) / (high - low), keep=True)
    for name, c in scaled.scales.items():
        assert np.allclose(codes[name], ops.per_neuron(c, codes[name].shape[1:]) * ann[name],
                           rtol=1e-12, atol=1e-12)
    last = graph.nodes[-1].name
    assert np.allclose(codes[last], ann[last], rtol=1e-12, atol=1e-12)
    assert any(np.any(c != 1) for c in scaled.scales.values())  # the sample CNN does need scaling
    for node in scaled.graph.nodes:
        if isinstance(node, ir.Affine) and node.relu:
            assert np.all(ir.incoming_sum(node) <= 0.99 + 1e-12)
            assert np.all(ir.incoming_sum(node) >= -10 - 1e-12)


def test_bias_map_with_padding_is_exact():
    """Folding x = 2·a − 1 into a padded conv gives a bias map that differs at the borders."""
    rng = np.random.default_rng(0)
    term = ir.Conv("in", rng.normal(size=(2, 1, 3, 3)), (1, 4, 5), (1, 1), (1, 1, 1, 1), (1, 1))
    conv = ir.Affine("c", (term,), np.zeros(2), relu=False)
    folded = ir.fold_input_affine(conv, {"in": (np.full((1, 4, 5), 2.0), np.full((1, 4, 5), -1.0))})
    assert folded.bias.shape == (2, 4, 5)
    assert not np.allclose(folded.bias[:, 0, 0], folded.bias[:, 1, 1])
    a = rng.uniform(size=(3, 1, 4, 5))
    assert np.allclose(ir.apply_linear(folded, [a]), ir.apply_linear(conv, [2 * a - 1]), rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(stack=st.one_of(relu_stacks(), relu_dags()))
def test_converted_spike_times_equal_window_end_minus_activation(tmp_path_factory, stack):
    """Random Dense/Conv/BN/MaxPool stacks and DAGs (residual sums, concatenations, pooling): every population's
    spike times are its window end minus its scaled activation to 1e-9 — whatever delays its inputs had — and
    the logits equal the float64 ANN's."""
    model, shape, seed = stack
    d = tmp_path_factory.mktemp("m")
    path = save(model, d / "m.onnx")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(48,) + shape).astype(np.float32)
    np.save(d / "c.npy", x)
    convert.convert(path, str(d / "c.npy"), d / "m.snn.h5")
    net = h5io.read(d / "m.snn.h5")
    graph = import_model(path).graph
    result = simulator.simulate(net, x, keep_times=True)
    ann = ir.forward(graph, x, keep=True)
    assert result.counts.early_spikes == 0 and result.counts.out_of_range_inputs == 0
    for node in net.nodes:
        if isinstance(node, snn.SpikingLayer):
            want = sum(node.window) - ops.per_neuron(node.scale, node.shape) * ann[node.name]
            assert np.max(np.abs(result.times[node.name] - want)) <= TOL * (1 + sum(node.window)), node.name
    logits = ann[graph.nodes[-1].name]
    assert np.max(np.abs(result.logits - logits)) <= TOL * max(1.0, np.max(np.abs(logits)))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 8))
def test_early_bound_is_an_upper_bound_and_sharper_than_the_certificate(seed, k):
    """max over the input window of the exact potential ≤ early_bound ≤ α·B_in + Σ max(J, 0)·a."""
    rng = np.random.default_rng(seed)
    J = rng.normal(0, 1.5, k)
    alpha, b_in = rng.uniform(0.2, 2.0), rng.uniform(0.5, 4.0)
    a = rng.uniform(0, 1.3 * b_in, k)   # some inputs before the window starts
    a[rng.random(k) < 0.2] = 0.0
    t0 = 0.0
    times = list(zip(b_in - a, J))
    grid = sorted({0.0, b_in} | {float(x) for x in b_in - a if 0 < x < b_in})
    exact = max(reference.potential(t, times, alpha, t0) for t in grid)
    u, p, j_neg = J @ a, np.clip(J, 0, None) @ a, np.clip(J, None, 0).sum()
    bound = mapping.early_bound(np.array([u]), np.array([p]), np.array([alpha]), b_in, np.array([j_neg]))[0]
    assert exact <= bound + 1e-9 * (1 + abs(exact))
    assert bound <= alpha * b_in + p + 1e-12


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 12), intervals=st.integers(1, 6),
       quantile_grid=st.booleans())
def test_grid_bound_is_never_below_the_potential_on_its_window(seed, k, intervals, quantile_grid):
    """max over σ ∈ [0, σ_G] of V(T − σ) = α·(B_in − σ) + Σ J·(a − σ)+, evaluated densely and at every
    breakpoint with the event-by-event reference, is at most grid_bound; on a grid of the quantiles of the
    codes (as the simulator places it) or at random times; ties, zeros and no input included."""
    rng = np.random.default_rng(seed)
    J = rng.normal(0, 1.5, k) * (rng.random(k) < 0.9)
    alpha, b_in = rng.uniform(0.0, 2.0), rng.uniform(0.5, 4.0)
    a = np.where(rng.random(k) < 0.3, rng.choice([0.0, 0.25 * b_in, b_in], k), rng.uniform(0, b_in, k))
    top = a.max(initial=0.0)
    sigmas = (mapping.grid_times(a, intervals) if quantile_grid or top == 0 else
              np.unique(np.concatenate([[0.0], rng.uniform(0, top, intervals - 1), [top]])))
    assert sigmas[0] == 0.0 and sigmas[-1] == top and len(sigmas) >= 2
    ramps = np.maximum(a[None, :] - sigmas[:, None], 0.0)
    e, i = ramps @ np.clip(J, 0, None), ramps @ np.clip(J, None, 0)
    bound = mapping.grid_bound(e[None], i[None], np.array([alpha * b_in]), np.array([alpha]),
                               np.array([np.clip(J, None, 0).sum()]), sigmas)[0]
    times = list(zip(b_in - a, J))
    dense = np.linspace(0, sigmas[-1], 201)
    checks = np.concatenate([dense, a, sigmas])
    exact = max(reference.potential(b_in - x, times, alpha, 0.0) for x in checks)
    assert exact <= bound + 1e-12 * (1 + alpha * b_in + np.abs(J) @ a)
    # never looser than the bound from sums on the same window (that is the grid with one interval)
    u, p = J @ a, np.clip(J, 0, None) @ a
    plain = mapping.early_bound(np.array([u]), np.array([p]), np.array([alpha]), b_in, np.array([np.clip(J, None, 0).sum()]))[0]
    if len(sigmas) == 2 or not k:
        assert bound <= plain + 1e-12 * (1 + alpha * b_in + np.abs(J) @ a)


def test_grid_bound_numbers():
    """Two inputs, J = (2, −3) at codes (2, 1), α = 1, B_in = 3: V(σ) = 3 − σ + 2·(2 − σ)+ − 3·(1 − σ)+ peaks at
    σ = 1 with 4. Grid {0, 1, 2}: on [0, 1] the line is 3 + 4 − 3σ (E's chord 4 → 2), I from −3 up to 0 with
    slope 3: the maximum 4 at σ = 1; on [1, 2]: 2 + 2 − 3·1 … at σ = 1, 4. The bound is exact here."""
    a, J = np.array([2.0, 1.0]), np.array([2.0, -3.0])
    sigmas = np.array([0.0, 1.0, 2.0])
    ramps = np.maximum(a[None] - sigmas[:, None], 0.0)
    e, i = ramps @ np.clip(J, 0, None), ramps @ np.clip(J, None, 0)
    bound = mapping.grid_bound(e[None], i[None], np.array([3.0]), np.array([1.0]), np.array([-3.0]), sigmas)[0]
    assert bound == pytest.approx(4.0, abs=1e-12)
    # one interval [0, 2]: 3 − σ + chord of E (4 → 0) + min(I(2) = 0, −3 + 3σ): at σ* = 1, 3 − 1 + 2 + 0 = 4
    one = mapping.grid_bound(e[None][:, ::2], i[None][:, ::2], np.array([3.0]), np.array([1.0]), np.array([-3.0]),
                             sigmas[::2])[0]
    assert one == pytest.approx(4.0, abs=1e-12)


def exact_26bit(rng, size, low_exp, high_exp):
    """Non-negative float64 numbers with 26-bit significands (not float32 numbers: their cast rounds), exponents in
    [low_exp, high_exp), some zeros: products of two are exact in float64."""
    m = rng.integers(2 ** 25, 2 ** 26, size).astype(np.float64)
    return np.ldexp(m, rng.integers(low_exp, high_exp, size) - 26) * (rng.random(size) < 0.9)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([1, 2, 7, 100, 4608, 65536, 200000]),
       spread=st.sampled_from([(0, 1), (-20, 20), (-150, -110), (-140, 30), (40, 64)]))
def test_float32_sums_are_bounded_rigorously(seed, k, spread):
    """The exact sum Σ w·x of non-negative float64 numbers lies within float32_sum_bounds of the same sum computed
    in float32, and a float32 sum at most float32_sum_limit(x) has an upper bound (and exact sum) ≤ x, for every order a float32 sum can take: BLAS dot and matrix products, pairwise and sequential
    sums, the largest terms first (small ones absorbed) or last; huge fan-ins, magnitudes mixed over 40
    binades, subnormal float32 casts and products, and overflow (a float32 inf: the bounds give up)."""
    rng = np.random.default_rng(seed)
    w, x = exact_26bit(rng, k, *spread), exact_26bit(rng, k, *spread)
    if k > 2:
        w[0], x[0] = np.ldexp(1.0, spread[1]), np.ldexp(1.0, spread[1])  # one large term beside many small ones
    terms = w * x                    # exact: 26 + 26 bits
    exact = math.fsum(terms)         # correctly rounded; the bounds carry far more slack than its rounding
    w32, x32 = w.astype(np.float32), x.astype(np.float32)
    order = np.argsort(-terms)
    with np.errstate(over="ignore", invalid="ignore"):
        sums = [np.dot(w32, x32), (x32[None] @ w32[:, None])[0, 0], np.sum(w32 * x32),
                np.cumsum(w32[order] * x32[order])[-1], np.cumsum(w32[order[::-1]] * x32[order[::-1]])[-1]]
    scale = float(w.max() + x.max())
    for s in sums:
        low, high = mapping.float32_sum_bounds(np.array([s]), k, scale)
        assert low[0] <= exact <= high[0], (s, exact, low, high)
        # the limit screens raw sums: s ≤ limit(x) only where the upper bound is at most x, so x ≥ the exact sum
        for x_ in (exact * (1 - 1e-3), exact, high[0], exact * (1 + 1e-3), exact * (1 + 1e-9)):
            if s <= mapping.float32_sum_limit(np.array([x_]), k, scale)[0]:
                assert high[0] <= x_ * (1 + 1e-15) and exact <= x_
        if np.isfinite(s):   # useful: within a few K·u of the sum, plus twice the slack A for underflows
            slack = k * 2.0 ** -126 * (4 + 2 * scale)
            assert high[0] - low[0] <= 8 * (k + 2) * 2.0 ** -24 * exact + 4 * slack


def test_float32_sum_bounds_numbers():
    """K = 3: c = 8·2⁻²⁴, the slack A = 3·2⁻¹²⁶·(4 + 2·scale) is negligible; a non-finite sum or a fan-in above
    8 million bounds nothing."""
    low, high = mapping.float32_sum_bounds(np.array([1.0, np.inf, np.nan]), 3, 2.0)
    c = 8 * 2.0 ** -24
    assert low[0] == pytest.approx(1 - c, rel=1e-15) and high[0] == pytest.approx(1 / (1 - c), rel=1e-15)
    assert low[1] == low[2] == -np.inf and high[1] == high[2] == np.inf
    low, high = mapping.float32_sum_bounds(np.array([1.0]), 2 ** 23, 1.0)
    assert low[0] == -np.inf and high[0] == np.inf


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 8))
def test_requirement_bound_is_an_upper_bound_of_the_exact_requirement(seed, k):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 1.5, k), rng.normal(0, 1)
    s = w.sum()
    a = rng.uniform(0, 3, k)
    need = mapping.required_window(a[None], w[None], np.array([b]), np.array([s]))[0]
    z, p = b + w @ a, b + np.clip(w, 0, None) @ a
    bound = mapping.requirement_bound(np.array([z]), np.array([p]), np.array([s]), np.array([np.clip(w, None, 0).sum()]))[0]
    if s < 1:   # the mapping only builds neurons with s < 1
        assert need <= bound + 1e-9 * (1 + abs(need))
        assert z - 1e-12 <= bound <= p + 1e-12


@pytest.mark.parametrize("activation, required, zeta, want", [
    (2.0, 0.0, 0.5, 2.0),      # no pair needs more than the activations' window
    (2.0, 2.9, 0.5, 2.0),      # 2.9 < (1 + ζ)·2 = 3: the window of the activations holds it
    (2.0, 3.0, 0.5, 3.0),      # reaches that window: R* rules, with its own headroom
    (2.0, 2.5, 0.0, 2.5),      # no headroom: any larger requirement rules
    (0.0, 0.0, 0.5, 0.0),
    (0.25, 0.0, 0.0, 0.25),    # below the input window's length 1: the margin is absolute, 1e-9
])
def test_layer_extent(activation, required, zeta, want):
    """The rule's X plus the rounding margin 1e-9·max(X, 1)."""
    margin = mapping.ROUNDING_MARGIN * max(want, 1.0) if want > 0 else 0.0
    assert mapping.layer_extent(activation, required, zeta) == want + margin


def test_sparse_mapping_writes_j_w_and_theta_b_minus_bias():
    """The sparse coding (docs/math.md §9): no scaling (c = 1), J = W of the folded graph, ϑ = B − b (a bias map
    where the folded bias is one), α = 0; the readout as in the dense coding. An unknown coding is refused."""
    graph = import_model("sample_models/cnn/model.onnx").graph
    options = mapping.MappingOptions(coding="sparse")
    scaled = mapping.scale_graph(graph, (-2.0, 3.0), options)
    assert all(np.all(c == 1) for c in scaled.scales.values())
    layers = [n for n in scaled.graph.nodes if isinstance(n, ir.Affine) and n.relu]
    x_max = {n.name: np.ones(n.shape[0]) for n in layers}
    nodes = {n.name: n for n in mapping.spiking_nodes(scaled, x_max, {}, (-2.0, 3.0), options)}
    for node in layers:
        out = nodes[node.name]
        assert np.array_equal(out.synapses[0].J, node.terms[0].weight)
        assert np.array_equal(out.alpha, np.zeros(node.shape[0])) and np.array_equal(out.scale, np.ones(node.shape[0]))
        bias = node.bias if node.bias.ndim > 1 else ops.channel_axis(node.bias, len(node.shape))
        assert np.allclose(ops.per_neuron(out.theta, node.shape), out.window[1] - np.broadcast_to(bias, node.shape),
                           rtol=0, atol=1e-15)
    assert any(nodes[n.name].theta.ndim > 1 for n in layers)   # the first conv's bias map (input folded, padding)
    with pytest.raises(GraphError, match="coding"):
        mapping.MappingOptions(coding="rate")
