"""NumPy kernels shared by the ANN forward pass and the spiking simulator.

Batch axis first, channels next (N, C, H, W); explicit float64 in, float64 out.
Padding follows ONNX: ``pads = (top, left, bottom, right)``.
"""

from __future__ import annotations

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


def out_shape2d(size: Pair, kernel: Pair, strides: Pair, pads: Quad, dilations: Pair,
                ceil_mode: bool = False) -> Pair:
    """(Ho, Wo) of a 2-D sliding window over (H, W): ``out_size`` along each axis."""
    return (out_size(size[0], kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil_mode),
            out_size(size[1], kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil_mode))


def windows(x: np.ndarray, kernel: Pair, strides: Pair, pads: Quad, dilations: Pair,
            pad_value: float, ceil_mode: bool = False) -> np.ndarray:
    """View of every sliding window: (N, C, H, W) → (N, C, Ho, Wo, kh, kw).

    Positions outside the input read ``pad_value``. The result is a strided view of a
    padded copy, so it costs one copy of the input.
    """
    n, c, h, w = x.shape
    ho = out_size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0], ceil_mode)
    wo = out_size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1], ceil_mode)
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


def conv2d(x: np.ndarray, weight: np.ndarray, strides: Pair, pads: Quad, dilations: Pair) -> np.ndarray:
    """2-D cross-correlation without bias: y[n,o,i,j] = Σ_{c,u,v} w[o,c,u,v]·x_pad[n,c,i·s+u·d, j·s+v·d].

    x (N, C, H, W), weight (O, C, kh, kw) → (N, O, Ho, Wo); zero padding. One matrix
    product over all positions (im2col), so BLAS does the work.
    """
    patches = windows(x, weight.shape[2:], strides, pads, dilations, 0.0)
    y = np.tensordot(patches, weight, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def pool2d(x: np.ndarray, kernel: Pair, strides: Pair, pads: Quad, dilations: Pair, pad_value: float,
           combine, ceil_mode: bool = False) -> np.ndarray:
    """``combine`` (np.minimum or np.maximum) over each window, one kernel tap at a time.

    kh·kw element-wise passes over (N, C, Ho, Wo) strided views: far faster than a
    reduction over the two small trailing axes of ``windows``; the result is the same.
    """
    view = windows(x, kernel, strides, pads, dilations, pad_value, ceil_mode)
    out = view[..., 0, 0].copy()
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            if u or v:
                combine(out, view[..., u, v], out=out)
    return out


def max_pool2d(x: np.ndarray, kernel: Pair, strides: Pair, pads: Quad, dilations: Pair,
               ceil_mode: bool = False) -> np.ndarray:
    """Max over each window, padded positions ignored (they read −∞)."""
    return pool2d(x, kernel, strides, pads, dilations, -np.inf, np.maximum, ceil_mode)


def min_pool2d(x: np.ndarray, kernel: Pair, strides: Pair, pads: Quad, dilations: Pair,
               ceil_mode: bool = False) -> np.ndarray:
    """Min over each window, padded positions ignored (they read +∞): the earliest spike."""
    return pool2d(x, kernel, strides, pads, dilations, np.inf, np.minimum, ceil_mode)


def gather_fan_in(source: np.ndarray, weight: np.ndarray, shape: tuple[int, ...], samples: np.ndarray,
                  neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and weights of P (sample, flat neuron index) pairs, as two (P, K) arrays.

    Dense: ``source`` is the input (N, K) and ``weight`` (out, K). Convolution: ``source`` is
    ``windows(...)`` of the input (N, C, Ho, Wo, kh, kw) — its padded taps read the pad value —
    and ``weight`` (O, C, kh, kw); ``shape`` is the output shape (O, Ho, Wo).
    """
    if weight.ndim == 2:
        return source[samples], weight[neurons]
    o, i, j = np.unravel_index(neurons, shape)
    return source[samples, :, i, j].reshape(len(samples), -1), weight.reshape(weight.shape[0], -1)[o]
