"""NumPy kernels shared by the ANN forward pass and the spiking simulator.

Batch axis first, channels next (N, C, H, W); explicit float64 in, float64 out.
Padding follows ONNX: ``pads = (top, left, bottom, right)``.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Pair = tuple[int, int]
Quad = tuple[int, int, int, int]


def channel_axis(values, ndim: int) -> np.ndarray:
    """A per-channel vector (C,) shaped (C, 1, …, 1) to broadcast over a (C, …) array of ``ndim`` dimensions."""
    return np.asarray(values).reshape((-1,) + (1,) * (ndim - 1))


def per_neuron(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-channel vector (C,) or a full map, broadcast to the output ``shape`` (C, …)."""
    return np.broadcast_to(values if values.ndim == len(shape) else channel_axis(values, len(shape)), shape)


def out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
             dilation: int, ceil_mode: bool = False) -> int:
    """Output length of a sliding window: ⌊(size + pads − ((k−1)·d + 1)) / s⌋ + 1 (⌈·⌉ with ceil_mode).

    With ``ceil_mode`` a last window that would start in the end padding is dropped,
    as ONNX (and PyTorch) define it.
    """
    span = (kernel - 1) * dilation + 1
    room = size + pad_begin + pad_end - span
    n = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (n - 1) * stride >= size + pad_begin:
        n -= 1
    return n


def lift(kernel, strides, pads, dilations) -> tuple[Pair, Pair, Quad, Pair]:
    """1-D geometry ((k,), (s,), (begin, end), (d,)) as the 2-D geometry of a height-1 image; 2-D unchanged."""
    if len(kernel) == 2:
        return tuple(kernel), tuple(strides), tuple(pads), tuple(dilations)
    return (1, kernel[0]), (1, strides[0]), (0, pads[0], 0, pads[1]), (1, dilations[0])


def out_spatial(size, kernel, strides, pads, dilations, ceil_mode: bool = False) -> tuple[int, ...]:
    """Output spatial shape of a 1-D or 2-D sliding window: ``out_size`` along each axis (pads: begins, then ends)."""
    n = len(kernel)
    return tuple(out_size(size[i], kernel[i], strides[i], pads[i], pads[i + n], dilations[i], ceil_mode)
                 for i in range(n))


def windows(x: np.ndarray, kernel, strides, pads, dilations, pad_value: float,
            ceil_mode: bool = False) -> np.ndarray:
    """View of every sliding window: (N, C, H, W) → (N, C, Ho, Wo, kh, kw); 1-D input (N, C, L) as H = 1.

    Positions outside the input read ``pad_value``. The result is a strided view of a
    padded copy, so it costs one copy of the input.
    """
    if x.ndim == 3:
        x = x[:, :, None, :]
    kernel, strides, pads, dilations = lift(kernel, strides, pads, dilations)
    n, c, h, w = x.shape
    ho, wo = out_spatial((h, w), kernel, strides, pads, dilations, ceil_mode)
    span_h = (kernel[0] - 1) * dilations[0] + 1
    span_w = (kernel[1] - 1) * dilations[1] + 1
    need_h = (ho - 1) * strides[0] + span_h
    need_w = (wo - 1) * strides[1] + span_w
    extra_h = max(0, need_h - (h + pads[0] + pads[2]))
    extra_w = max(0, need_w - (w + pads[1] + pads[3]))
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2] + extra_h), (pads[1], pads[3] + extra_w)),
                    constant_values=pad_value)
    view = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    return view[:, :, :need_h - span_h + 1:strides[0], :need_w - span_w + 1:strides[1],
                ::dilations[0], ::dilations[1]]


def unwindows(taps: np.ndarray, size, kernel, strides, pads, dilations) -> np.ndarray:
    """The transpose of ``windows``: each tap (N, C, Ho, Wo, kh, kw) added back to the input position it read,
    taps on padding dropped, → (N, C, *size); a 1-D ``size`` (L,) as H = 1, returned as (N, C, L)."""
    one_d = len(size) == 1
    (kh, kw), (sh, sw), pad, (dh, dw) = lift(kernel, strides, pads, dilations)
    h, w = (1, size[0]) if one_d else size
    n, c, ho, wo = taps.shape[:4]
    out = np.zeros((n, c, max(h + pad[0] + pad[2], (ho - 1) * sh + (kh - 1) * dh + 1),
                    max(w + pad[1] + pad[3], (wo - 1) * sw + (kw - 1) * dw + 1)))
    for u in range(kh):
        for v in range(kw):
            out[:, :, u * dh:u * dh + (ho - 1) * sh + 1:sh, v * dw:v * dw + (wo - 1) * sw + 1:sw] += taps[..., u, v]
    out = out[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w]
    return out[:, :, 0, :] if one_d else out


def _unlift(y: np.ndarray, ndim: int) -> np.ndarray:
    """(N, C, 1, L) back to (N, C, L) when the input was 1-D."""
    return y[:, :, 0, :] if ndim == 3 else y


def weighted_sum(x: np.ndarray, weight: np.ndarray, geometry=None) -> np.ndarray:
    """Σ_j w_ij·x_j over a batch x (N, *in_shape): for a dense weight (out, in), x flattened in C order, → (N, out);
    for a kernel (O, C/groups, *k), the convolution ``conv`` with the strides, pads, dilations and groups of
    ``geometry`` (an ``ir.Conv`` or ``snn.Synapses``), → (N, O, *spatial). Zero padding; the dtype is x's and w's."""
    if weight.ndim == 2:
        return x.reshape(len(x), -1) @ weight.T
    return conv(x, weight, geometry.strides, geometry.pads, geometry.dilations, geometry.groups)


def conv(x: np.ndarray, weight: np.ndarray, strides, pads, dilations, groups: int = 1) -> np.ndarray:
    """1-D or 2-D grouped cross-correlation without bias, zero padding:
    y[n,o,i,j] = Σ_{c∈group(o),u,v} w[o,c,u,v]·x_pad[n,c,i·s+u·d, j·s+v·d].

    x (N, C, H, W) or (N, C, L); weight (O, C/groups, kh, kw) or (O, C/groups, k). One
    matrix product over all positions (im2col), so BLAS does the work; groups > 1 as one
    einsum over the group axis.
    """
    w = weight if weight.ndim == 4 else weight[:, :, None, :]
    patches = windows(x, weight.shape[2:], strides, pads, dilations, 0.0)
    if groups == 1:
        y = np.tensordot(patches, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)  # (N, O, Ho, Wo)
    else:
        n, c, ho, wo, kh, kw = patches.shape
        p = patches.reshape(n, groups, c // groups, ho, wo, kh, kw)
        g = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
        y = np.einsum("ngchwuv,gocuv->ngohw", p, g, optimize=True).reshape(n, -1, ho, wo)
    return _unlift(np.ascontiguousarray(y), x.ndim)


def pool(x: np.ndarray, kernel, strides, pads, dilations, pad_value: float, combine, ceil_mode: bool = False):
    """``combine`` (np.minimum or np.maximum) over each 1-D or 2-D window, one kernel tap at a time.

    kh·kw element-wise passes over (N, C, Ho, Wo) strided views: far faster than a reduction
    over the two small trailing axes of ``windows``, with the same result.
    """
    view = windows(x, kernel, strides, pads, dilations, pad_value, ceil_mode)
    out = view[..., 0, 0].copy()
    for u in range(view.shape[4]):
        for v in range(view.shape[5]):
            if u or v:
                combine(out, view[..., u, v], out=out)
    return _unlift(out, x.ndim)


def max_pool(x: np.ndarray, kernel, strides, pads, dilations, ceil_mode: bool = False) -> np.ndarray:
    """Max over each 1-D or 2-D window, padded positions ignored (they read −∞)."""
    return pool(x, kernel, strides, pads, dilations, -np.inf, np.maximum, ceil_mode)


def min_pool(x: np.ndarray, kernel, strides, pads, dilations, ceil_mode: bool = False) -> np.ndarray:
    """Min over each 1-D or 2-D window, padded positions ignored (they read +∞): the earliest spike."""
    return pool(x, kernel, strides, pads, dilations, np.inf, np.minimum, ceil_mode)


def reshape(x: np.ndarray, shape) -> np.ndarray:
    """(N, *in_shape) → (N, *shape) in C order."""
    return x.reshape((len(x),) + tuple(shape))


def transpose(x: np.ndarray, perm) -> np.ndarray:
    """The non-batch axes permuted: y.shape[1 + i] = x.shape[1 + perm[i]]."""
    return np.ascontiguousarray(x.transpose((0,) + tuple(p + 1 for p in perm)))


def concat(xs: list[np.ndarray], axis: int) -> np.ndarray:
    """Batches side by side along non-batch ``axis``."""
    return np.concatenate(xs, axis=axis + 1)


def take(x: np.ndarray, indices, axis: int) -> np.ndarray:
    """The positions ``indices`` of non-batch ``axis``, in that order (a slice, a split part, a gather)."""
    return np.ascontiguousarray(np.take(x, list(indices), axis=axis + 1))


def pool_channels(x: np.ndarray, latest, pool_max, pool_min, *geometry) -> np.ndarray:
    """``pool_max`` on every channel except those listed in ``latest``, which get ``pool_min``."""
    y = pool_max(x, *geometry)
    if len(latest):
        idx = list(latest)
        y[:, idx] = pool_min(x[:, idx], *geometry)
    return y


STACK_BUDGET = 1 << 26   # elements of the im2col copy of one product of ``ramp_products`` (256 MB in float32)


def ramp_products(product, a: list[np.ndarray], sigmas: np.ndarray, dtype, cost: int,
                  budget: int = STACK_BUDGET) -> np.ndarray:
    """product(ramps) of the ramps (a_k − σ)+ of every σ in ``sigmas``, in ``dtype``, as (len(sigmas), N, ·): the
    ramps of several σ stacked on the batch axis of one product (one BLAS call instead of one per σ), as many as
    keep ``cost`` (im2col elements per sample: output positions × fan-in) times the stacked batch within ``budget``.
    a: one (N, …) array per synapse set; ``product`` takes one ramp array per set and returns (rows, …)."""
    n = len(a[0])
    step = max(1, budget // max(1, n * cost))
    parts = []
    for lo in range(0, len(sigmas), step):
        chunk = sigmas[lo:lo + step]
        ramps = [np.concatenate([np.maximum(a_k - sigma, 0.0).astype(dtype) for sigma in chunk]) for a_k in a]
        parts.append(product(ramps).reshape(len(chunk), n, -1))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def gather_fan_ins(sources: list[np.ndarray], weights: list[np.ndarray], shape: tuple[int, ...],
                   samples: np.ndarray, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and weights of P (sample, flat neuron index) pairs over the synapse sets of a layer that reads
    several populations, side by side: two (P, ΣK) arrays (``gather_inputs`` and each neuron's weight rows)."""
    channel = neurons // int(np.prod(shape[1:]))
    return (gather_inputs(sources, weights, shape, samples, neurons),
            np.concatenate([w.reshape(w.shape[0], -1)[channel] for w in weights], axis=1))


def gather_inputs(sources: list[np.ndarray], weights: list[np.ndarray], shape: tuple[int, ...],
                  samples: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """The inputs of P (sample, flat neuron index) pairs, (P, ΣK), synapse set after synapse set.

    Dense: a ``source`` is the input (N, *in_shape), flattened, and its ``weight`` (out, K). Convolution:
    ``source`` is ``windows(...)`` of the input (N, C, Ho, Wo, kh, kw) — its padded taps read the
    pad value — and ``weight`` (O, C/groups, kh, kw) (or 1-D (O, C/groups, k)); ``shape`` is the
    output shape (O, Ho, Wo) or (O, L). Each output channel reads the channels of its group.
    """
    parts = []
    for source, weight in zip(sources, weights):
        if weight.ndim == 2:
            parts.append(source[samples].reshape(len(samples), -1))
            continue
        o, i, j = np.unravel_index(neurons, shape if len(shape) == 3 else (shape[0], 1, shape[1]))
        per_group = weight.shape[1]
        groups = source.shape[1] // per_group
        channels = (o // (weight.shape[0] // groups))[:, None] * per_group + np.arange(per_group)
        taps = source[samples[:, None], channels, i[:, None], j[:, None]]   # (P, C/groups, kh, kw)
        parts.append(taps.reshape(len(samples), -1))
    return np.concatenate(parts, axis=1)


def fan_in_keys(sources: list[np.ndarray], weights: list[np.ndarray], shape: tuple[int, ...],
                samples: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    """One integer per (sample, flat neuron index) pair, equal for pairs that read the same inputs in the same
    order (``gather_inputs``): the sample, the output position of a convolution, and the group of the
    output channel in each grouped convolution. A dense layer's neurons all read the whole input."""
    per_channel = int(np.prod(shape[1:]))
    channel, position = np.divmod(neurons, per_channel)
    key = samples.astype(np.int64) * per_channel + position
    for source, weight in zip(sources, weights):
        if weight.ndim > 2:
            groups = source.shape[1] // weight.shape[1]
            key = key * groups + channel // (weight.shape[0] // groups)
    return key


def sorted_fan_ins(fn, sources: list[np.ndarray], weights: list[np.ndarray], shape: tuple[int, ...],
                   samples: np.ndarray, neurons: np.ndarray, budget: int = 1 << 20, workers: int | None = None):
    """Yield (index, fn(index, a, w)) over P (sample, neuron) pairs in chunks of about ``budget`` elements:
    for the pairs ``index`` (into samples/neurons), their positive input codes in decreasing order, a (p, m),
    and the weights of those inputs in the same order, w (p, m). A row with fewer than m positive codes
    ends in codes 0 (inputs at or after the end of the input window, which add nothing before it; a
    negative code reads 0 too) with their weights.

    ``sources`` hold input codes as ``gather_inputs`` reads them (padded taps read 0) and ``weights``
    the synapse sets, side by side as in ``gather_fan_ins``. The inputs of pairs with the same
    ``fan_in_keys`` are gathered and sorted once, however many neurons read them: for a convolution
    every output channel at a position shares one sort. The chunks' weight gathers and ``fn`` run in
    ``workers`` threads (NumPy releases the GIL in them), in order, a few chunks in flight.
    """
    keys, first, inverse = np.unique(fan_in_keys(sources, weights, shape, samples, neurons),
                                     return_index=True, return_inverse=True)
    by_key = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[by_key], np.arange(len(keys) + 1))
    flat = [w.reshape(w.shape[0], -1) for w in weights]
    channels = neurons // int(np.prod(shape[1:]))
    key_step = max(1, budget // sum(f.shape[1] for f in flat))

    def chunk(index, local, codes, order, positive):
        m = int(positive[local].max(initial=0))
        a = codes[local, :m]
        w = np.empty(a.shape)
        runs = np.flatnonzero(np.diff(local, prepend=-1, append=len(codes)))   # pairs of one key are adjacent
        for begin, end in zip(runs[:-1], runs[1:]):
            rows = [np.take(f, channels[index[begin:end]], axis=0) for f in flat]
            rows = rows[0] if len(rows) == 1 else np.concatenate(rows, axis=1)
            np.take(rows, order[local[begin], :m], axis=1, out=w[begin:end])
        return index, fn(index, np.maximum(a, 0.0, out=a), w)

    def tasks():
        for lo in range(0, len(keys), key_step):
            hi = min(lo + key_step, len(keys))
            rep = first[lo:hi]
            codes = gather_inputs(sources, weights, shape, samples[rep], neurons[rep])
            order = np.argsort(-codes, axis=1)            # ties: equal codes add w·(a − a) = 0, in any order
            codes = np.take_along_axis(codes, order, axis=1)
            positive = np.count_nonzero(codes > 0, axis=1)
            pairs = by_key[starts[lo]:starts[hi]]
            step = max(1, budget // max(1, int(positive.max(initial=0))))
            for p_lo in range(0, len(pairs), step):
                index = pairs[p_lo:p_lo + step]
                yield index, inverse[index] - lo, codes, order, positive

    yield from threaded(chunk, tasks(), workers)


def threaded(fn, tasks, workers: int | None = None):
    """fn(*task) for each task of an iterable, in ``workers`` threads (default: the usable cores), results in
    order; at most two tasks per worker are taken ahead, so memory stays bounded."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers <= 1:
        yield from (fn(*task) for task in tasks)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for task in tasks:
            pending.append(pool.submit(fn, *task))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
