"""The NumPy kernels of relu2snn_cli.ops against onnxruntime's Conv and MaxPool.

Every case builds a single-op ONNX graph with ``GraphBuilder``, runs it in
onnxruntime (float32) and compares with the float64 kernel. Tolerance: rtol 1e-4
and atol 1e-4 · max|ORT output|.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from builders import GraphBuilder, run_ort
from relu2snn_cli import ops

# Input (N, C, H, W): non-square, big enough for a 5×5 kernel with dilation 2 (span 9).
N, C, H, W = 2, 3, 11, 10
O = 4

KERNELS = [(1, 1), (2, 2), (3, 3), (5, 5), (2, 3), (3, 1), (1, 5)]
STRIDES = [(1, 1), (2, 2), (3, 3), (1, 3)]
PADS = [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 2, 0), (1, 0, 0, 1)]  # (top, left, bottom, right)
DILATIONS = [(1, 1), (2, 2), (2, 1)]


def assert_close(got, want, rel=1e-4):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != ORT shape {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1e-6) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * scale)


def _geom_id(kernel, strides, pads, dilations, ceil_mode=None) -> str:
    s = f"k{kernel[0]}x{kernel[1]}-s{strides[0]}x{strides[1]}-p{''.join(map(str, pads))}-d{dilations[0]}x{dilations[1]}"
    return s if ceil_mode is None else f"{s}-ceil{int(ceil_mode)}"


def _fits(kernel, pads, dilations, size=(H, W)) -> bool:
    """At least one window fits (span ≤ padded size) along both axes."""
    return all((k - 1) * d + 1 <= n + pb + pe
               for k, d, n, pb, pe in zip(kernel, dilations, size, pads[:2], pads[2:]))


CONV_GRID = [g for g in itertools.product(KERNELS, STRIDES, PADS, DILATIONS) if _fits(g[0], g[2], g[3])]
# ONNX / onnxruntime require every pool pad to be smaller than the kernel.
POOL_GRID = [(k, s, p, d, c) for (k, s, p, d), c in itertools.product(CONV_GRID, (False, True))
             if p[0] < k[0] and p[2] < k[0] and p[1] < k[1] and p[3] < k[1]]


def ort_conv(x, w, strides, pads, dilations) -> np.ndarray:
    b = GraphBuilder(x.shape[1:])
    y = b.op("Conv", ["x", b.const(w)], kernel_shape=list(w.shape[2:]), strides=list(strides),
             pads=list(pads), dilations=list(dilations))
    return run_ort(b.build(y), x)


def ort_maxpool(x, kernel, strides, pads, dilations, ceil_mode) -> np.ndarray:
    b = GraphBuilder(x.shape[1:])
    y = b.op("MaxPool", ["x"], kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
             dilations=list(dilations), ceil_mode=int(ceil_mode))
    return run_ort(b.build(y), x)


def _data(seed, *shape):
    # float32-representable values, so ORT and NumPy see exactly the same numbers
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------- conv2d

@pytest.mark.parametrize("kernel,strides,pads,dilations", CONV_GRID,
                         ids=[_geom_id(*g) for g in CONV_GRID])
def test_conv2d_matches_onnxruntime(kernel, strides, pads, dilations):
    x = _data(1, N, C, H, W)
    w = _data(2, O, C, *kernel)
    want = ort_conv(x, w, strides, pads, dilations)
    got = ops.conv(x, w, strides, pads, dilations)
    assert got.dtype == np.float64
    assert_close(got, want)
    # out_size gives ORT's output shape
    assert want.shape == (N, O,
                          ops.out_size(H, kernel[0], strides[0], pads[0], pads[2], dilations[0]),
                          ops.out_size(W, kernel[1], strides[1], pads[1], pads[3], dilations[1]))


def test_conv2d_is_cross_correlation_by_hand():
    """A tiny case computed by hand: 1×1 input channel, 2×2 kernel, no padding."""
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    want = np.array([[[[0 + 2 + 9 + 16, 1 + 4 + 12 + 20], [3 + 8 + 18 + 28, 4 + 10 + 21 + 32]]]], dtype=np.float64)
    np.testing.assert_array_equal(ops.conv(x, w, (1, 1), (0, 0, 0, 0), (1, 1)), want)


# ----------------------------------------------------------------------------- max_pool2d / min_pool2d

@pytest.mark.parametrize("kernel,strides,pads,dilations,ceil_mode", POOL_GRID,
                         ids=[_geom_id(*g) for g in POOL_GRID])
def test_max_pool2d_matches_onnxruntime(kernel, strides, pads, dilations, ceil_mode):
    x = _data(3, N, C, H, W)
    want = ort_maxpool(x, kernel, strides, pads, dilations, ceil_mode)
    got = ops.max_pool(x, kernel, strides, pads, dilations, ceil_mode)
    assert got.dtype == np.float64
    assert np.all(np.isfinite(got)), "a window saw only padding"
    # max-pooling only selects values: exact equality on float32-representable data
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert want.shape == (N, C,
                          ops.out_size(H, kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil_mode),
                          ops.out_size(W, kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil_mode))


def test_max_pool2d_ignores_padding_for_negative_inputs():
    x = -1.0 - np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)  # all negative: a zero pad would win
    got = ops.max_pool(x, (2, 2), (2, 2), (1, 1, 1, 1), (1, 1))
    np.testing.assert_array_equal(got, ort_maxpool(x, (2, 2), (2, 2), (1, 1, 1, 1), (1, 1), False))
    assert np.all(got < 0)


MIN_POOL_CASES = [g for i, g in enumerate(POOL_GRID) if i % 7 == 0]


@pytest.mark.parametrize("kernel,strides,pads,dilations,ceil_mode", MIN_POOL_CASES,
                         ids=[_geom_id(*g) for g in MIN_POOL_CASES])
def test_min_pool2d_is_negated_max_pool_of_negation(kernel, strides, pads, dilations, ceil_mode):
    t = _data(4, N, C, H, W)
    got = ops.min_pool(t, kernel, strides, pads, dilations, ceil_mode)
    np.testing.assert_array_equal(got, -ops.max_pool(-t, kernel, strides, pads, dilations, ceil_mode))
    assert np.all(np.isfinite(got))


# ----------------------------------------------------------------------------- out_size

# (size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode), including ceil-mode cases where
# the last window would start in the end padding and must be dropped.
OUT_SIZE_CASES = [
    (5, 2, 3, 0, 1, 1, True),
    (4, 2, 2, 1, 1, 1, True),
    (9, 3, 2, 1, 0, 1, True),
    (8, 2, 3, 1, 1, 1, True),
    (7, 3, 3, 2, 2, 1, True),
    (7, 3, 3, 2, 2, 1, False),
    (6, 3, 2, 0, 2, 2, True),
    (10, 4, 3, 3, 3, 1, True),
    (10, 4, 3, 3, 3, 1, False),
    (1, 1, 3, 0, 0, 1, True),
    (3, 3, 1, 0, 0, 1, False),
    (12, 5, 4, 2, 1, 2, True),
]


@pytest.mark.parametrize("size,kernel,stride,pb,pe,dilation,ceil_mode", OUT_SIZE_CASES)
def test_out_size_matches_onnxruntime_pool_shape(size, kernel, stride, pb, pe, dilation, ceil_mode):
    x = _data(5, 1, 1, size, 2)
    want = ort_maxpool(x, (kernel, 1), (stride, 1), (pb, 0, pe, 0), (dilation, 1), ceil_mode)
    assert want.shape[2] == ops.out_size(size, kernel, stride, pb, pe, dilation, ceil_mode)
    np.testing.assert_array_equal(ops.max_pool(x, (kernel, 1), (stride, 1), (pb, 0, pe, 0), (dilation, 1),
                                                 ceil_mode), want)


def test_out_size_formula_examples():
    assert ops.out_size(28, 5, 1, 0, 0, 1) == 24
    assert ops.out_size(28, 3, 1, 1, 1, 1) == 28
    assert ops.out_size(28, 2, 2, 0, 0, 1) == 14
    assert ops.out_size(7, 2, 2, 0, 0, 1) == 3
    assert ops.out_size(7, 2, 2, 0, 0, 1, ceil_mode=True) == 4
    assert ops.out_size(10, 3, 1, 0, 0, 2) == 6


# ----------------------------------------------------------------------------- random geometries

@st.composite
def conv_geometries(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    c, o, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    return dict(kernel=(kh, kw), strides=(sh, sw), dilations=(dh, dw), pads=pads, shape=(n, c, h, w), o=o, seed=seed)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(conv_geometries())
def test_conv2d_random_geometry_matches_onnxruntime(g):
    n, c, h, w = g["shape"]
    assume(_fits(g["kernel"], g["pads"], g["dilations"], (h, w)))
    x = _data(g["seed"], n, c, h, w)
    wt = _data(g["seed"] + 1, g["o"], c, *g["kernel"])
    want = ort_conv(x, wt, g["strides"], g["pads"], g["dilations"])
    got = ops.conv(x, wt, g["strides"], g["pads"], g["dilations"])
    assert_close(got, want)
    assert want.shape[2:] == tuple(
        ops.out_size(size, k, s, pb, pe, d)
        for size, k, s, pb, pe, d in zip((h, w), g["kernel"], g["strides"], g["pads"][:2], g["pads"][2:],
                                         g["dilations"]))


# ----------------------------------------------------------------------------- shared sorted fan-ins

def _synapse_sets(kind, rng):
    """(sources as gather_inputs reads them, weights, output shape) for one layer kind; codes ≥ 0 with zeros and ties."""
    def codes(shape):
        a = rng.choice([0.0, 0.5, 1.0, 2.0], size=shape) * rng.random(shape) ** (rng.random(shape) < 0.5)
        return a
    if kind == "dense":
        return [codes((3, 7))], [rng.normal(0, 1, (5, 7))], (5,)
    if kind == "conv":
        x, w = codes((2, 2, 5, 4)), rng.normal(0, 1, (3, 2, 3, 2))
        return [ops.windows(x, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 0.0)], [w], (3,) + ops.out_spatial(
            (5, 4), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2))
    if kind == "conv1d-grouped":
        x, w = codes((2, 4, 7)), rng.normal(0, 1, (6, 2, 3))
        return [ops.windows(x, (3,), (2,), (1, 2), (2,), 0.0)], [w], (6,) + ops.out_spatial((7,), (3,), (2,), (1, 2), (2,))
    x1, x2 = codes((2, 2, 4, 4)), codes((2, 3, 4, 4))   # a conv and a grouped 1×1 conv side by side
    w1, w2 = rng.normal(0, 1, (3, 2, 3, 3)), rng.normal(0, 1, (3, 1, 1, 1))
    return ([ops.windows(x1, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 0.0),
             ops.windows(x2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 0.0)], [w1, w2], (3, 4, 4))


@pytest.mark.parametrize("kind", ["dense", "conv", "conv1d-grouped", "two-sets"])
@pytest.mark.parametrize("budget", [40, 1 << 20])
def test_sorted_fan_ins_are_each_pairs_positive_inputs_in_decreasing_order(kind, budget):
    """Every pair comes out once, with exactly its positive codes (decreasing) and their weights, then zero codes;
    a small budget splits the work into many chunks and gives the same rows."""
    rng = np.random.default_rng(5)
    sources, weights, shape = _synapse_sets(kind, rng)
    n = sources[0].shape[0]
    samples, neurons = np.divmod(rng.permutation(n * int(np.prod(shape)))[:25], int(np.prod(shape)))
    want_a, want_w = ops.gather_fan_ins(sources, weights, shape, samples, neurons)
    seen = np.zeros(len(samples), int)
    for index, (a, w) in ops.sorted_fan_ins(lambda index, a, w: (a, w), sources, weights, shape, samples,
                                            neurons, budget):
        seen[index] += 1
        for row, i in enumerate(index):
            positive = want_a[i] > 0
            count = int(positive.sum())
            assert np.all(np.diff(a[row]) <= 0) and np.all(a[row, count:] == 0)
            got = sorted(zip(a[row, :count], w[row, :count]))
            assert got == sorted(zip(want_a[i][positive], want_w[i][positive]))
    assert np.all(seen == 1)


def test_fan_in_keys_share_only_identical_inputs():
    rng = np.random.default_rng(6)
    sources, weights, shape = _synapse_sets("conv1d-grouped", rng)
    size = int(np.prod(shape))
    samples, neurons = np.divmod(np.arange(sources[0].shape[0] * size), size)
    keys = ops.fan_in_keys(sources, weights, shape, samples, neurons)
    inputs, _ = ops.gather_fan_ins(sources, weights, shape, samples, neurons)
    for key in np.unique(keys):
        rows = inputs[keys == key]
        assert np.array_equal(rows, np.broadcast_to(rows[0], rows.shape))
    assert len(np.unique(keys)) == sources[0].shape[0] * shape[1] * 2   # samples × positions × groups


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threaded_keeps_order_and_takes_only_a_few_tasks_ahead(workers):
    taken = []

    def tasks():
        for i in range(20):
            taken.append(i)
            yield i, i * i

    results = []
    for result in ops.threaded(lambda i, sq: (i, sq + 1), tasks(), workers):
        results.append(result)
        assert len(taken) <= len(results) + 2 * workers   # bounded lookahead: memory stays per chunk
    assert results == [(i, i * i + 1) for i in range(20)]


def test_ramp_products_stack_the_times_within_the_budget():
    """ramp_products gives product((a − σ)+) for every σ, (len(σ), N, …), whatever the number of σ per product: one
    product per σ (budget below one), some per product, all in one; the ramps in the dtype asked for."""
    rng = np.random.default_rng(2)
    a = [rng.uniform(0, 2, (3, 4)), rng.uniform(0, 1, (3, 2))]
    w = [rng.normal(size=(4, 5)), rng.normal(size=(2, 5))]
    sigmas = np.array([0.2, 0.5, 0.9, 1.4])
    calls, dtypes = [], set()

    def product(ramps):
        calls.append(len(ramps[0]))
        dtypes.update(r.dtype for r in ramps)
        return sum(r @ w_k for r, w_k in zip(ramps, w))

    want = np.stack([sum(np.maximum(a_k - s, 0.0) @ w_k for a_k, w_k in zip(a, w)) for s in sigmas])
    for budget, stacked in ((1, [3, 3, 3, 3]), (3 * 6 * 2, [6, 6]), (10 ** 6, [12])):
        calls.clear()
        got = ops.ramp_products(product, a, sigmas, np.float64, 6, budget)
        assert calls == stacked and got.shape == (4, 3, 5)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
    assert dtypes == {np.dtype(np.float64)}
    dtypes.clear()
    ops.ramp_products(product, a, sigmas, np.float32, 6)
    assert dtypes == {np.dtype(np.float32)}
