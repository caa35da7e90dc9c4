"""Exact single-spike simulator of a converted network (docs/math.md §1); needs only numpy and h5py.

Each SpikingLayer is simulated in two passes, vectorized over the batch:

1. fast path — once every input has arrived (t ≥ T, the end of the input window) the
   potential is linear, V(t) = α·B_in + Σ_j J_ij·a_j + (α + Σ_j J_ij)·(t − T) with
   a_j = T − t_j, so the crossing time has a closed form computed with one matrix
   product (a convolution as im2col + BLAS);
2. exact check — the closed form is trusted only where the no-early-spike certificate of
   docs/math.md §5 holds (statically for the neuron, or for this sample's inputs). For the other
   (sample, neuron) pairs the potential is evaluated at every input spike before T
   (``peak_potential``: the inputs of a sample and position are sorted once for all the
   neurons that read them); where it stays below the threshold the closed form holds, else
   the piecewise-linear potential is walked to its first crossing (``first_crossing``),
   which comes before T (an early spike).

A neuron that has not fired by its window end fires there (activation 0): a *forced* spike,
counted apart from the *threshold* spikes, whose potential reached ϑ before the window end.
In the sparse coding (docs/math.md §9) such a neuron is silent: it sends no spike, and is represented by
the time of its window end all the same (activation 0), so that the layers downstream compute the same.
A sparse layer's potential rises with slope 1 once its input window ends, and inputs after that end are lost.
Spike times and logits that come out infinite or NaN (parameters or inputs too large for
float64) are refused with a NonFiniteError naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import h5io, ops, snn
from .data import batches, check_inputs, load_array
from .errors import NonFiniteError, naming
from .mapping import (early_bound, float32_sum_bounds, float32_sum_limit, grid_bound, grid_margin, grid_times,
                      ramp_peak, static_certificate)

SCAN_CHUNK = 1 << 20  # elements per (pairs × fan-in) block in the exact check and scan
TIE = 1e-9            # a peak within TIE·max(1, |ϑ|) below ϑ goes to the event-by-event scan too


# ----------------------------------------------------------------------------- synapses

def drive(syn: snn.Synapses, a: np.ndarray, J: np.ndarray | None = None) -> np.ndarray:
    """Σ_j J_ij·a_j for a batch of input activations a (N, *in_shape) → (N, *shape); zero-padded for convolutions."""
    return ops.weighted_sum(a, syn.J if J is None else J, syn)


def split_drive(syn: snn.Synapses, a: np.ndarray, split: np.ndarray) -> np.ndarray:
    """``drive`` with weights [J⁺; J⁻] stacked on the output axis (2·O, …): the two drives side by side on axis 1
    (a grouped convolution's halves are driven one at a time, since its groups follow the output axis)."""
    if syn.groups == 1:
        return drive(syn, a, split)
    half = len(split) // 2
    return np.concatenate([drive(syn, a, split[:half]), drive(syn, a, split[half:])], axis=1)


def fan_in_source(syn: snn.Synapses, t: np.ndarray, t_pad: float) -> np.ndarray:
    """The (delayed) input spike times as ``ops.gather_inputs`` reads them: for a convolution each output
    position's window (N, C, Ho, Wo, kh, kw), padded taps firing at ``t_pad``."""
    if syn.is_conv:
        return ops.windows(t, syn.J.shape[2:], syn.strides, syn.pads, syn.dilations, t_pad)
    return t.reshape(len(t), -1)


# ----------------------------------------------------------------------------- dynamics

def first_crossing(times: np.ndarray, weights: np.ndarray, alpha: np.ndarray, theta: np.ndarray,
                   t0: float) -> np.ndarray:
    """First t ≥ t0 with α·(t − t0) + Σ_j w_j·max(0, t − t_j) ≥ ϑ, for P neurons at once (inf if never).

    times, weights: (P, K); alpha, theta: (P,). Between the sorted input times the potential
    is linear: segment k runs from max(t_(k−1), t0) to t_(k) with slope α + Σ_{j<k} w_j. The
    potential at each segment start is V(t0) plus the slopes times the lengths of the
    segments before it — sums of exact zeros for coinciding inputs, where the closed form
    C·t − D would cancel to rounding noise. The earliest crossing over all segments is the
    first one, since segments are disjoint and ordered in time.
    """
    order = np.argsort(times, axis=1)  # the order among equal times does not matter: they bound empty segments
    t = np.take_along_axis(times, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    p = t.shape[0]
    alpha, theta = alpha[:, None], theta[:, None]
    slope = alpha + np.concatenate([np.zeros((p, 1)), np.cumsum(w, axis=1)], axis=1)   # segments 0..K
    start = np.maximum(np.concatenate([np.full((p, 1), -np.inf), t], axis=1), t0)
    end = np.concatenate([t, np.full((p, 1), np.inf)], axis=1)
    length = np.maximum(end[:, :-1] - start[:, :-1], 0.0)
    v_t0 = np.sum(w * np.maximum(t0 - t, 0.0), axis=1, keepdims=True)   # inputs before t0
    v0 = v_t0 + np.concatenate([np.zeros((p, 1)), np.cumsum(slope[:, :-1] * length, axis=1)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rise = np.where(slope > 0, (theta - v0) / slope, np.inf)
    reached = v0 >= theta
    # compare the rise with the segment's length, not start + rise with its end: a tiny rise
    # rounded away in start + rise would otherwise count inside a segment of length zero
    ok = (start <= end) & (reached | (rise <= end - start))
    return np.where(ok, np.where(reached, start, start + rise), np.inf).min(axis=1)


def peak_potential(a: np.ndarray, w: np.ndarray, alpha: np.ndarray, b_in: float) -> np.ndarray:
    """max over the input window σ ∈ [0, B_in] of V(T − σ) = α·(B_in − σ) + Σ_j w_j·(a_j − σ)+, for P neurons
    whose inputs all arrive by T; a neuron fires at or before T exactly when this reaches ϑ. w is overwritten.

    a, w: (P, K) the positive input codes in decreasing order and their weights (``ops.sorted_fan_ins``);
    inputs with code ≤ 0 add nothing before T. V is piecewise linear between the input spikes, so the
    maximum is at σ = 0 (V(T) = α·B_in + Σ w·a), at σ = B_in (where the neuron starts: V = 0 when no input
    came earlier) or at an input, σ = min(a_k, B_in): α·B_in + ``mapping.ramp_peak`` with c = α. An input
    before the window start (a > B_in) counts at σ = B_in; partial sums there that leave out later ones
    are not values of V and can only raise the maximum, which then goes to ``first_crossing``.
    """
    sigma = np.minimum(a, b_in) if a.size and a[:, 0].max() > b_in else None
    peak, total = ramp_peak(a, w, alpha, sigma)
    return alpha * b_in + np.maximum(np.maximum(total, peak), -alpha * b_in)


@dataclass
class Counts:
    """Spike statistics, summed over the samples of one or more batches.

    In the dense coding every neuron fires once (docs/math.md §1): an input neuron at its encoded
    time, a hidden neuron when its potential reaches ϑ before its window end (a threshold spike,
    activation > 0) or else at the window end (a forced spike, activation 0). In the sparse coding
    (§9) only the neurons with an activation > 0 fire — input neurons before their window end, hidden
    neurons with a threshold spike —, the others are ``silent`` and there are no forced spikes.
    ``layer_spikes`` holds the spikes per population (the encoder and each spiking layer);
    ``synaptic_events`` the spikes that reach a synapse of nonzero weight, summed over the receiving
    layers and the readout (counted only when ``Simulator.run`` is asked to, else 0).
    """

    samples: int = 0
    input_spikes: int = 0     # spikes of the encoder
    threshold_spikes: int = 0  # hidden neurons whose potential reached ϑ before their window end
    forced_spikes: int = 0    # hidden neurons that fired at their window end without reaching ϑ before it (dense)
    silent: int = 0           # neurons that sent no spike (sparse: input and hidden neurons of activation 0)
    early_spikes: int = 0     # neurons that fired before all their inputs were in
    out_of_range_inputs: int = 0
    checked: int = 0          # (sample, neuron) pairs no certificate covered, checked input by input
    scanned: int = 0          # of those, pairs simulated event by event (an input after T, or ϑ reached)
    synaptic_events: int = 0  # Σ over receiving layers of Σ_i Σ_j [J_ij ≠ 0]·[input j spiked]
    layer_spikes: dict = field(default_factory=dict)   # spikes per population, by node name

    def add(self, other: "Counts") -> None:
        for key in self.__dataclass_fields__:
            if key == "layer_spikes":
                for name, value in other.layer_spikes.items():
                    self.layer_spikes[name] = self.layer_spikes.get(name, 0) + value
            else:
                setattr(self, key, getattr(self, key) + getattr(other, key))

    @property
    def spikes(self) -> int:
        """Spikes emitted: input, threshold and forced spikes."""
        return self.input_spikes + self.threshold_spikes + self.forced_spikes

    @property
    def hidden_spikes(self) -> int:
        """Spikes of the spiking layers: threshold and forced spikes."""
        return self.threshold_spikes + self.forced_spikes

    @property
    def forced_share(self) -> float:
        """The share of the hidden layers' spikes that were forced at the window end (0 without hidden layers)."""
        hidden = self.threshold_spikes + self.forced_spikes
        return self.forced_spikes / hidden if hidden else 0.0


class CompiledLayer:
    """A SpikingLayer with its per-neuron constants expanded once for the simulation.

    ``in_windows`` are the windows (T_k, B_k) of the layer's input populations, in the order
    of its synapses; input k's codes are a = T_k + B_k − t (its own window end minus the
    spike time), the same as T − (t + delay_k) at the end T of the merged input window.
    """

    def __init__(self, layer: snn.SpikingLayer, in_windows: list[tuple[float, float]], coding: str = "dense"):
        self.layer = layer
        self.sparse = coding == "sparse"   # docs/math.md §9
        self.ends = [t + b for t, b in in_windows]
        self.lengths = [b for _, b in in_windows]
        (self.t_in, self.b_in), _ = snn.merge_windows(in_windows)
        self.t_start = self.t_in + self.b_in
        self.t_end = sum(layer.window)
        shape = layer.shape
        self.size = int(np.prod(shape))
        self.alpha = ops.per_neuron(layer.alpha, shape).reshape(-1)
        self.theta = ops.per_neuron(layer.theta, shape).reshape(-1)
        per_channel = [syn.J.reshape(syn.J.shape[0], -1) for syn in layer.synapses]
        self.slope = self.alpha + ops.per_neuron(sum(j.sum(axis=1) for j in per_channel), shape).reshape(-1)
        self.j_neg = ops.per_neuron(sum(np.clip(j, None, 0).sum(axis=1) for j in per_channel), shape).reshape(-1)
        certified = static_certificate([(syn.J, b) for syn, b in zip(layer.synapses, self.lengths)],
                                       layer.theta, layer.alpha, self.b_in)
        self.static = ops.per_neuron(certified, shape).reshape(-1)
        self.unsure = np.flatnonzero(~certified.reshape(certified.shape[0], -1).all(axis=1))  # output channels
        per_ch = self.size // shape[0]
        self.unsure_cols = (self.unsure[:, None] * per_ch + np.arange(per_ch)).reshape(-1)
        self.j_pos = [np.clip(syn.J, 0, None) for syn in layer.synapses]
        # the screens' sums are computed in float32 (docs/math.md §5, float32 screening): the certificate's
        # weights max(J, 0) of the channels not statically certified (all channels of a grouped convolution,
        # whose groups follow the output axis), and ``scale`` ≥ max |J| + the largest code of a sample whose
        # inputs are all in their windows, for ``mapping.float32_sum_bounds``
        with np.errstate(over="ignore"):   # a weight beyond float32 becomes inf: its sums bound nothing
            self.screen_pos = [(j_pos[self.unsure] if syn.groups == 1 else j_pos).astype(np.float32)
                               for syn, j_pos in zip(layer.synapses, self.j_pos)]
        self.scale = max(float(np.abs(syn.J).max(initial=0.0)) for syn in layer.synapses) + max(self.lengths)
        self.fan_in = sum(int(np.prod(syn.J.shape[1:])) for syn in layer.synapses)
        # the grid bound's weights in float32: max(J, 0) above min(J, 0), built on first use
        self.split: list[np.ndarray] | None = None

    def fire(self, t_in: list[np.ndarray]) -> tuple[np.ndarray, int, int, int]:
        """Spike times (N, *shape) for the input spike times of each synapse set (undelayed);
        also the counts of early spikes, checked pairs and pairs scanned event by event.

        Sparse coding (docs/math.md §9): inputs after T (code < 0) are lost, so the codes are max(a, 0); once
        the input window ends the potential is V(T) + (t − T), so the closed form is T + ϑ − V(T) with
        V(T) = α·B_in + Σ J·a; early crossings (at or before T) are found as in the dense coding."""
        layer = self.layer
        n = t_in[0].shape[0]
        a = [end - t for end, t in zip(self.ends, t_in)]
        if self.sparse:
            a = [np.maximum(a_k, 0.0) for a_k in a]
        u, p = self._drives(a)
        if self.sparse:
            t = self.t_start + (self.theta - self.alpha * self.b_in - u)
        else:
            with np.errstate(divide="ignore"):  # a non-rising potential (slope ≤ 0) never crosses after T
                t = np.where(self.slope > 0, self.t_start + (self.theta - self.alpha * self.b_in - u) / self.slope,
                             np.inf)
        failing, late, in_window = self._uncertified(a, u, p)
        rows, cols = np.nonzero(failing)
        screen = np.flatnonzero(in_window[rows])
        if len(screen):   # the grid bound certifies most of the pairs the bound from sums leaves
            sure = self._grid_screen(a, u, p, rows[screen], cols[screen])
            failing[rows[screen[sure]], cols[screen[sure]]] = False
            keep = np.ones(len(rows), dtype=bool)
            keep[screen[sure]] = False
            rows, cols = rows[keep], cols[keep]
        scan = late[rows]    # an input after T: the closed form does not hold, every such pair is scanned
        if not scan.all():
            r, c = rows[~scan], cols[~scan]
            codes = [fan_in_source(syn, a_k, 0.0) for syn, a_k in zip(layer.synapses, a)]
            reaches = np.zeros(len(r), dtype=bool)

            def check(index, a_sorted, w):   # the potential before T at every input spike reaches ϑ
                theta = self.theta[c[index]]
                peak = peak_potential(a_sorted, w, self.alpha[c[index]], self.b_in)
                return ~(peak < theta - TIE * np.maximum(1.0, np.abs(theta)))

            for index, hit in ops.sorted_fan_ins(check, codes, [syn.J for syn in layer.synapses], layer.shape,
                                                 r, c, SCAN_CHUNK):
                reaches[index] = hit
            scan[np.flatnonzero(~scan)[reaches]] = True
        rows, cols = rows[scan], cols[scan]
        early = 0
        if len(rows):
            arrive = [t_k + syn.delay for syn, t_k in zip(layer.synapses, t_in)]
            if self.sparse:   # a late input is lost: it arrives at T at the latest, adding nothing before T
                arrive = [np.minimum(t_k, self.t_start) for t_k in arrive]
            sources = [fan_in_source(syn, t_k, self.t_start) for syn, t_k in zip(layer.synapses, arrive)]
            step = max(1, SCAN_CHUNK // self.fan_in)
            for lo in range(0, len(rows), step):
                r, c = rows[lo:lo + step], cols[lo:lo + step]
                times, weights = ops.gather_fan_ins(sources, [syn.J for syn in layer.synapses], layer.shape, r, c)
                crossing = first_crossing(times, weights, self.alpha[c], self.theta[c], self.t_in)
                t[r, c] = sparse_crossing(crossing, t[r, c], self.t_start) if self.sparse else crossing
                early += int(np.count_nonzero(t[r, c] < self.t_start))
        t = np.minimum(t, self.t_end)
        return t.reshape((n,) + layer.shape), early, int(np.count_nonzero(failing)), len(rows)

    def _drives(self, a: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """u = Σ_k Σ_j J_kij·a_kj (N, neurons) in float64, and the certificate sums p = Σ_k Σ_j max(J_kij, 0)·a_kj
        of the neurons of the ``unsure`` channels (N, ·) in float32, which only screen: ``mapping.float32_sum_bounds``
        bounds the exact p from them (docs/math.md §5, float32 screening)."""
        n = a[0].shape[0]
        u = sum(drive(syn, a_k).reshape(n, -1) for syn, a_k in zip(self.layer.synapses, a))
        p = np.zeros((n, len(self.unsure_cols)), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):   # float32 overflow: inf or NaN, which certify nothing
            for syn, w, a_k in zip(self.layer.synapses, self.screen_pos, a):
                if len(self.unsure):
                    part = drive(syn, a_k.astype(np.float32), w).reshape(n, -1)
                    p += part if syn.groups == 1 else part[:, self.unsure_cols]
        return u, p

    def _uncertified(self, a: list[np.ndarray], u: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
        """(N, neurons) mask of the pairs the closed form cannot be trusted for without a look at their inputs,
        the (N,) mask of samples with an input after T and that of samples with every input in its window.

        A pair is trusted when no input arrives after the input window (a_j < 0, an input value
        above the encoder's range: the closed form assumes every input is in by T) and either the
        neuron is statically certified (every input code within [0, B_k] of its population) or
        ``mapping.early_bound`` of this sample's inputs is below ϑ: with p's upper bound from its float32 sums
        (``mapping.float32_sum_bounds``: the terms are non-negative there), or in float64 for samples with an
        input before its window.
        """
        n = a[0].shape[0]
        failing = np.zeros((n, self.theta.size), dtype=bool)
        flat = [a_k.reshape(n, -1) for a_k in a]
        late = np.any([f.min(axis=1) < 0 for f in flat], axis=0)
        failing[late] = True
        in_window = np.all([f.max(axis=1) <= b for f, b in zip(flat, self.lengths)], axis=0) & ~late
        if len(self.unsure) and in_window.any():
            idx, cols = np.flatnonzero(in_window), self.unsure_cols
            self._mark(failing, idx, cols, u, p[idx] if len(idx) < n else p, ~self.static[cols], float32=True)
        if not (in_window | late).all():   # inputs before their window: no neuron is certified statically
            idx = np.flatnonzero(~in_window & ~late)
            p_all = sum(drive(syn, a_k[idx], j_pos).reshape(len(idx), -1)
                        for syn, j_pos, a_k in zip(self.layer.synapses, self.j_pos, a))
            self._mark(failing, idx, np.arange(self.size), u, p_all, np.ones(self.size, dtype=bool), float32=False)
        return failing, late, in_window

    def _grid_screen(self, a: list[np.ndarray], u: np.ndarray, p: np.ndarray, rows: np.ndarray,
                     cols: np.ndarray) -> np.ndarray:
        """(P,) mask of the pairs (rows, cols) of samples with every input in its window that ``mapping.grid_bound``
        certifies: its bound, plus a rounding margin, is below ϑ − TIE·max(1, |ϑ|) (docs/math.md §5, grid bound).

        E and I at the interior grid times σ_g come from float32 products, the ramps (a − σ_g)+ of the interior
        times stacked on the batch axis (``ops.ramp_products``) against the excitatory and inhibitory weights
        of the channels that have a pair (stacked when not grouped), bounded from above by
        ``mapping.float32_sum_bounds``; at
        σ = 0 they are p and u − p (p's upper and lower bound from its float32 sums), at the largest code of
        these samples both are 0; ``mapping.grid_margin`` covers the float64 rounding of u and of the bound.
        """
        n_pairs, per_ch = len(rows), self.size // self.layer.shape[0]
        samples, r_idx = np.unique(rows, return_inverse=True)
        channels, c_idx = np.unique(cols // per_ch, return_inverse=True)
        sigmas = grid_times(np.concatenate([a_k[samples].reshape(-1) for a_k in a]))
        e, i = np.zeros((n_pairs, len(sigmas))), np.zeros((n_pairs, len(sigmas)))
        in_p = np.searchsorted(self.unsure_cols, cols)   # in-window pairs are in the unsure channels
        p_low, e[:, 0] = float32_sum_bounds(p[rows, in_p], self.fan_in, self.scale)
        i[:, 0] = u[rows, cols] - p_low
        if self.split is None:
            with np.errstate(over="ignore"):
                self.split = [np.concatenate([j_pos, syn.J - j_pos]).astype(np.float32)
                              for syn, j_pos in zip(self.layer.synapses, self.j_pos)]
        n_out = self.layer.shape[0]
        subset = 2 * len(channels) <= n_out and all(syn.groups == 1 for syn in self.layer.synapses)
        if subset:   # only the channels that have a pair, when that saves at least half of the product
            weights = [split[np.concatenate([channels, channels + n_out])] for split in self.split]
            at, n_ch = c_idx * per_ch + cols % per_ch, len(channels)
        else:
            weights, at, n_ch = self.split, cols, n_out
        inner = sigmas[1:-1]
        if len(inner):
            def product(ramps):
                return sum(split_drive(syn, r_k, w) for syn, w, r_k in zip(self.layer.synapses, weights, ramps))

            with np.errstate(over="ignore", invalid="ignore"):   # float32 overflow: inf or NaN, which certify nothing
                both = ops.ramp_products(product, [a_k[samples] for a_k in a], inner, np.float32, per_ch * self.fan_in)
            e[:, 1:-1] = float32_sum_bounds(both[:, r_idx, at].T, self.fan_in, self.scale)[1]
            i[:, 1:-1] = -float32_sum_bounds(-both[:, r_idx, at + n_ch * per_ch].T, self.fan_in, self.scale)[0]
        alpha, theta = self.alpha[cols], self.theta[cols]
        bound = grid_bound(e, i, alpha * self.b_in, alpha, self.j_neg[cols], sigmas)
        margin = grid_margin(e, i, alpha * self.b_in, self.fan_in)
        return bound + margin < theta - TIE * np.maximum(1.0, np.abs(theta))

    def _mark(self, failing, idx, cols, u, p, check, float32: bool) -> None:
        """Mark the pairs (idx × cols, where ``check``) whose ``mapping.early_bound`` is not below ϑ. The plain
        bound α·B_in + p screens first: the sharper one is needed only where the plain one fails. With
        ``float32`` p are float32 sums of non-negative terms, and their upper bounds stand for them
        (``mapping.float32_sum_limit`` for the plain bound, ``mapping.float32_sum_bounds`` for the others)."""
        limit = self.theta[cols] - self.alpha[cols] * self.b_in
        if float32:
            limit = float32_sum_limit(limit, self.fan_in, self.scale)
        r, c = np.nonzero(~(p < limit) & check)
        rows, neurons = idx[r], cols[c]
        p_rc = float32_sum_bounds(p[r, c], self.fan_in, self.scale)[1] if float32 else p[r, c]
        bound = early_bound(u[rows, neurons], p_rc, self.alpha[neurons], self.b_in, self.j_neg[neurons])
        keep = ~(bound < self.theta[neurons])
        failing[rows[keep], neurons[keep]] = True


def sparse_crossing(crossing: np.ndarray, closed: np.ndarray, t_start: float) -> np.ndarray:
    """A sparse neuron's first crossing (docs/math.md §9): the input phase's first crossing where it comes at or
    before T = t_start, else the output phase's closed form T + ϑ − V(T) (``closed``). Up to T the potential is
    the input phase's, which ``first_crossing`` walks; after T it rises with slope 1 from V(T), so the input
    phase's own crossings after T are not the neuron's."""
    return np.where(crossing <= t_start, crossing, np.maximum(closed, t_start))


def spike_counts(t: np.ndarray, t_end: float) -> tuple[int, int]:
    """(threshold spikes, forced spikes) among a layer's spike times t from ``CompiledLayer.fire``.

    ``fire`` computes when the potential first reaches ϑ and clips that time to the window end
    t_end = T + B; the clip returns t_end itself, so t < t_end exactly for the neurons that reached ϑ
    before the window end (activation > 0) and t == t_end for those forced to fire there
    (activation 0: ϑ reached at t_end at the earliest). docs/math.md §1.
    """
    forced = int(np.count_nonzero(t == t_end))
    return t.size - forced, forced


def encode(enc: snn.Encoder, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Spike times t = 1 − (x − low)/(high − low) (docs/math.md §7), and how many inputs lie outside [low, high].

    Outside values are not clipped: they fire before 0 or after 1, and the next layer
    integrates them as they come (an input after the window end is simulated event by event).
    """
    a = (np.asarray(x, dtype=np.float64) - enc.low) / (enc.high - enc.low)
    outside = int(np.count_nonzero((a < 0) | (a > 1)))
    return sum(enc.window) - a * enc.window[1], outside


def read_out(readout: snn.Readout, t_in: list[np.ndarray]) -> np.ndarray:
    """V(T_out) = α·B_in + Σ_j J_ij·max(0, T_out − t_j − delay_j) at the end T_out of the input window."""
    t_out = sum(readout.window)
    u = sum(drive(syn, np.maximum(t_out - (t + syn.delay), 0.0)) for syn, t in zip(readout.synapses, t_in))
    return ops.per_neuron(readout.alpha, readout.shape) * readout.window[1] + u


def move(node, t_in: list[np.ndarray]) -> np.ndarray:
    """Spike times of a node that moves neurons (pooling, reshaping, transposing, concatenating, taking):
    the node's own ``move`` (snn.py)."""
    if not isinstance(node, tuple(snn.SPIKING_MOVEMENT.values())):
        raise TypeError(f"no simulation rule for {type(node).__name__}")
    return node.move(t_in)


@dataclass
class Result:
    """Logits (N, *readout shape), spike times per node name when asked for, and counts."""

    logits: np.ndarray
    times: dict[str, np.ndarray] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)


class Simulator:
    """Runs a ``snn.Network`` on batches of inputs."""

    def __init__(self, net: snn.Network):
        self.net = net
        self.sparse = net.coding == "sparse"
        self.ends = net.window_ends
        windows = {n.name: n.window for n in net.nodes}
        self.compiled = {n.name: CompiledLayer(n, [windows[name] for name in n.inputs], net.coding)
                         for n in net.nodes if isinstance(n, snn.SpikingLayer)}
        self.neurons, self.hidden_neurons = neuron_counts(net)
        self.last_use = {name: i for i, n in enumerate(net.nodes) for name in n.inputs}
        self.nonzero: dict = {}   # per receiving node, its synapse sets' [J ≠ 0], built on first use

    def run(self, x: np.ndarray, keep_times: bool = False, emit=None, count_events: bool = False) -> Result:
        """Simulate one batch x (N, *input shape).

        ``emit(node, t) -> t``, when given, transforms the spike times of each population as it emits them
        (the encoder and every spiking layer; nodes that move neurons pass spikes on unchanged): the hook of
        the robustness sweep for spike-time jitter and quantisation (docs/hardware.md). It applies to the
        spikes only: in the sparse coding a silent neuron stays silent (its time, the window end, is kept).
        The counts describe the spikes as fired, before the transform; the next layers integrate the
        transformed times exactly. With ``count_events`` the counts include the synaptic events
        (``synaptic_events``: one product per synapse set).
        """
        enc = self.net.nodes[0]
        t, outside = encode(enc, x)
        check_finite(t, enc.name, "spike times")
        fired = self.fired(enc.name, t)
        spikes = int(np.count_nonzero(fired))
        if emit is not None:
            t = self._emit(emit, enc, t, fired)
        counts = Counts(samples=len(t), out_of_range_inputs=outside, input_spikes=spikes, silent=t.size - spikes,
                        layer_spikes={enc.name: spikes})
        times = {enc.name: t}
        logits = None
        for i, node in enumerate(self.net.nodes[1:], 1):
            t_in = [times[name] for name in node.inputs]
            if count_events and isinstance(node, (snn.SpikingLayer, snn.Readout)):
                counts.synaptic_events += self.events(node, t_in)
            if isinstance(node, snn.SpikingLayer):
                out, early, checked, scanned = self.compiled[node.name].fire(t_in)
                check_finite(out, node.name, "spike times")
                threshold, forced = spike_counts(out, sum(node.window))
                counts.early_spikes += early
                counts.checked += checked
                counts.scanned += scanned
                counts.threshold_spikes += threshold
                if self.sparse:   # no spike at the window end: the neuron is silent
                    counts.silent += forced
                    forced = 0
                counts.forced_spikes += forced
                counts.layer_spikes[node.name] = threshold + forced
                if emit is not None:
                    out = self._emit(emit, node, out, self.fired(node.name, out))
            elif isinstance(node, snn.Readout):
                logits = read_out(node, t_in)
                check_finite(logits, node.name, "logits")
                continue
            else:
                out = move(node, t_in)
            times[node.name] = out
            if not keep_times:  # free what no later node reads
                times = {k: v for k, v in times.items() if self.last_use.get(k, -1) > i}
        return Result(logits, times if keep_times else {}, counts)

    def fired(self, name: str, t: np.ndarray) -> np.ndarray:
        """The neurons of population ``name`` that sent a spike, given its spike times t: all of them in the dense
        coding; in the sparse one those before their window end (activation > 0, docs/math.md §9)."""
        return t < self.ends[name] if self.sparse else np.ones(t.shape, dtype=bool)

    @staticmethod
    def _emit(emit, node, t: np.ndarray, fired: np.ndarray) -> np.ndarray:
        """``emit(node, t)`` where a neuron fired; silent neurons keep t."""
        out = emit(node, t)
        return out if fired.all() else np.where(fired, out, t)

    def events(self, node, t_in: list[np.ndarray]) -> int:
        """Synaptic events of a receiving node (a spiking layer or the readout) for a batch: spikes that reach a
        synapse of nonzero weight, Σ_i Σ_j [J_ij ≠ 0]·[input j spiked], one product per synapse set with the
        indicator of the inputs that spiked (all of them in the dense coding; in the sparse one those before
        their window end, a > 0). Padded taps of a convolution are not inputs."""
        if node.name not in self.nonzero:
            self.nonzero[node.name] = [(syn.J != 0).astype(np.float64) for syn in node.synapses]
        total = 0.0
        for syn, mask, t in zip(node.synapses, self.nonzero[node.name], t_in):
            total += float(np.sum(drive(syn, self.fired(syn.input, t).astype(np.float64), mask)))
        return int(round(total))

    def stream(self, data, batch_size: int = 256, keep_times: bool = False, progress=None, spec: str = "inputs",
               emit=None, count_events: bool = False):
        """Yield a Result per batch of an array-like ``data`` (read lazily, batch by batch; NaN/Inf refused);
        ``emit`` and ``count_events`` as in ``run``."""
        for _, batch in batches(data, batch_size, spec):
            yield self.run(batch, keep_times, emit, count_events)
            if progress is not None:
                progress(len(batch), len(data))


def check_finite(values: np.ndarray, node: str, what: str) -> None:
    """Refuse spike times or logits that came out infinite or NaN, naming the node where they arose."""
    bad = np.count_nonzero(~np.isfinite(values))
    if bad:
        raise NonFiniteError(f"node '{node}': {bad} of its {values.size} {what} are infinite or NaN: the network's "
                             "parameters or the inputs are too large for float64")


def load(path) -> Simulator:
    """A simulator for a ``.snn.h5`` file."""
    return Simulator(h5io.read(path))


def collect(results) -> Result:
    """One Result from per-batch Results: logits and spike times concatenated, counts summed."""
    parts = list(results)
    counts = Counts()
    for r in parts:
        counts.add(r.counts)
    times = {k: np.concatenate([r.times[k] for r in parts]) for k in parts[0].times} if parts else {}
    return Result(np.concatenate([r.logits for r in parts]), times, counts)


def simulate(net: snn.Network, x: np.ndarray, batch_size: int = 256, keep_times: bool = False) -> Result:
    """Run all of x through the network."""
    return collect(Simulator(net).stream(x, batch_size, keep_times))


def simulate_file(snn_path, data_spec: str, out_path, keep_times: bool = False, batch_size: int = 256,
                  progress=None) -> dict:
    """Simulate a ``.snn.h5`` on a data file and write ``logits`` (and with ``keep_times`` each
    population's spike times, keyed ``times/<node>``) to an ``.npz``, atomically."""
    sim = load(snn_path)
    data = load_array(data_spec)
    check_inputs(data, sim.net.nodes[0].shape, data_spec)
    with naming(snn_path):
        result = collect(sim.stream(data, batch_size, keep_times, progress, data_spec))
    arrays = {"logits": result.logits, **{f"times/{k}": v for k, v in result.times.items()}}
    with h5io.atomic_output(out_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    counts = result.counts
    return {"output": str(out_path), "n_samples": counts.samples, "early_spikes": counts.early_spikes,
            "out_of_range_inputs": counts.out_of_range_inputs, "latency": sim.net.latency,
            "coding": sim.net.coding, **spike_shares(counts, sim.net),
            "forced_spike_share": counts.forced_share}


def neuron_counts(net: snn.Network) -> tuple[int, int]:
    """Spiking neurons per sample: those of the encoder and the spiking layers, and those of the spiking layers."""
    inputs = int(np.prod(net.nodes[0].shape))
    hidden = sum(int(np.prod(n.shape)) for n in net.nodes if isinstance(n, snn.SpikingLayer))
    return inputs + hidden, hidden


def spike_shares(counts: Counts, net: snn.Network) -> dict:
    """``spikes_per_neuron`` (all spikes over the spiking neurons) and ``spikes_per_hidden_neuron`` (the spiking
    layers' spikes over their neurons; None without any) per sample: 1 in the dense coding, in the sparse one
    the share of positive activations (docs/math.md §9)."""
    neurons, hidden = neuron_counts(net)
    return {"spikes_per_neuron": counts.spikes / (counts.samples * neurons),
            "spikes_per_hidden_neuron": counts.hidden_spikes / (counts.samples * hidden) if hidden else None}
