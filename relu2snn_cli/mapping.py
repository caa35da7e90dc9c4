"""The exact ReLU → TTFS mapping of docs/math.md §3 as pure functions, and ``spiking_nodes`` that applies them.

Every function works in float64 and names the formula it computes. Time is in τ_c;
activation = window end − spike time (see ``snn``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from . import ir, ops, snn
from .errors import GraphError


@dataclass(frozen=True)
class MappingOptions:
    """The knobs of docs/math.md §3: ζ (window headroom), the band [s_min, s_max] for incoming sums (dense coding
    only: the sparse one needs no scaling) and the ``coding``, dense (§3) or sparse (§9).

    ζ ≥ 0 keeps the conversion exact. ``short_windows`` also admits −1 < ζ < 0, windows shorter than the
    calibrated activations, for the robustness sweep only (docs/hardware.md): its networks are simulated in
    memory, where early spikes are exact events, and compared with the exact one; never written as an artifact.
    """

    zeta: float = 0.5
    s_min: float = -10.0
    s_max: float = 0.99
    short_windows: bool = False
    coding: str = "dense"

    def __post_init__(self):
        if self.coding not in snn.CODINGS:
            raise GraphError(f"coding must be one of {', '.join(snn.CODINGS)}, got {self.coding!r}")
        if self.short_windows and not self.zeta > -1:
            raise GraphError(f"zeta must be > -1, got {self.zeta}")
        if not self.short_windows and not self.zeta >= 0:
            raise GraphError(f"zeta must be ≥ 0, got {self.zeta}")
        if not (self.s_min < 0 < self.s_max < 1):
            raise GraphError(f"need s_min < 0 < s_max < 1, got s_min={self.s_min}, s_max={self.s_max}")


def encoding_range(lo: float, hi: float, zeta: float) -> tuple[float, float]:
    """Input range [p, q] from the calibration data's min and max, widened by ζ/2 of the span on each side.

    p = lo − ζ/2·(hi − lo), q = hi + ζ/2·(hi − lo): the total span (1 + ζ)·(hi − lo) gives
    the input the same headroom as a hidden window B = (1 + ζ)·X (docs/math.md §3, §7), so test
    inputs slightly beyond the calibration extremes stay exact. A constant input gets a span of 1.
    """
    span = hi - lo if hi > lo else 1.0
    margin = 0.5 * zeta * span if hi > lo else 0.5
    return float(lo - margin), float(hi + margin)


def scale_layer(s: np.ndarray, s_min: float, s_max: float) -> np.ndarray:
    """Scaling factor c_i of docs/math.md §3: s_max/s_i where s_i > s_max, s_min/s_i where s_i < s_min, else 1."""
    s = np.asarray(s, dtype=np.float64)
    c = np.ones_like(s)
    high, low = s > s_max, s < s_min
    c[high] = s_max / s[high]
    c[low] = s_min / s[low]
    return c


ROUNDING_MARGIN = 1e-9  # relative (to max(X_n, 1), the input window's length) widening of every X_n


def layer_extent(activation: float, required: float, zeta: float) -> float:
    """X_n of the window rule B = (1 + ζ)·X_n (docs/math.md §4): the largest scaled activation, or the largest
    no-early-spike requirement R* of the calibration data when the activations' window would not hold it
    (R* ≥ (1 + ζ)·activation), plus ROUNDING_MARGIN·max(X, 1).

    Without the margin the pair with the largest activation crosses exactly at the window start when
    ζ = 0, so a rounding of the simulator's spike-time arithmetic (which differs from calibration's
    forward pass by about 1e-12 in code units) could make it early. With it, no calibration sample
    fires early for any ζ ≥ 0, and R*, when it rules, gets the same ζ headroom.
    """
    x = required if required >= (1.0 + zeta) * activation and required > 0 else activation
    return x + ROUNDING_MARGIN * max(x, 1.0) if x > 0 else 0.0


def window_length(x_max: float, zeta: float) -> float:
    """B_n = (1 + ζ)·X_n, or 1 when the layer never activates (X_n = 0) — docs/math.md §3."""
    return (1.0 + zeta) * x_max if x_max > 0 else 1.0


def synaptic_weights(weight: np.ndarray, s: np.ndarray) -> np.ndarray:
    """J_ij = W_ij / (1 − s_i) — docs/math.md §3 (s per output neuron or channel, axis 0 of weight)."""
    return weight / ops.channel_axis(1.0 - s, weight.ndim)


def spike_threshold(bias: np.ndarray, s: np.ndarray, b_in: float, b_out: float) -> np.ndarray:
    """ϑ_i = B_in + (B_out − b_i) / (1 − s_i) — docs/math.md §3 (bias a vector or a per-position map)."""
    return b_in + (b_out - bias) / ops.channel_axis(1.0 - s, bias.ndim)


def sparse_threshold(bias: np.ndarray, b_out: float) -> np.ndarray:
    """ϑ_i = B_out − b_i of the sparse coding — docs/math.md §9 (bias a vector or a per-position map)."""
    return b_out - np.asarray(bias, dtype=np.float64)


def static_certificate(blocks: list[tuple[np.ndarray, float]], theta: np.ndarray, alpha: np.ndarray,
                       b_in: float) -> np.ndarray:
    """Neurons that cannot fire before their last input window ends, for every input in its window.

    ``blocks`` are (J_k, B_k): the synapses from input population k and its window length.
    With every a_j ≤ B_k: V_i(t) ≤ α_i·B_in + Σ_k B_k·Σ_j max(J_kij, 0) on the input window;
    certified where that bound is below ϑ_i (docs/math.md §5). Same shape as theta.
    """
    pos = sum(b_k * np.clip(J, 0, None).reshape(J.shape[0], -1).sum(axis=1) for J, b_k in blocks)
    alpha = alpha if alpha.ndim == theta.ndim else ops.channel_axis(alpha, theta.ndim)
    return alpha * b_in + ops.channel_axis(pos, theta.ndim) < theta


def early_bound(u: np.ndarray, p: np.ndarray, alpha: np.ndarray, b_in: float, j_neg: np.ndarray) -> np.ndarray:
    """An upper bound of the potential V(T − σ) over the input window σ ∈ [0, B_in] (docs/math.md §5,
    sharpened); the closed form is exact where it is below ϑ.

    With a_j ≥ 0 the codes of a neuron's inputs, u = Σ_j J_ij·a_j, p = Σ_j max(J_ij, 0)·a_j and
    j_neg = Σ_j min(J_ij, 0): the excitatory ramps are at most p, the inhibitory ones at most 0 and
    at most (u − p) − σ·j_neg (since (a − σ)+ ≥ a − σ), so
        V(T − σ) ≤ min(A(σ), B(σ)),  A = α·(B_in − σ) + p,  B = α·(B_in − σ) + u − σ·j_neg.
    Both are lines, their minimum is concave: its maximum is at σ = 0, σ = B_in or where they cross,
    σ* = (u − p)/j_neg. Never above the plain certificate α·B_in + p, which is A(0).
    """
    a0, b0 = alpha * b_in + p, alpha * b_in + u
    a_end, b_end = a0 - alpha * b_in, b0 - (alpha + j_neg) * b_in
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(j_neg < 0, (u - p) / j_neg, 0.0)
    inside = (cross > 0) & (cross < b_in)
    at_cross = np.where(inside, a0 - alpha * np.where(inside, cross, 0.0), -np.inf)
    return np.maximum(np.maximum(np.minimum(a0, b0), np.minimum(a_end, b_end)), at_cross)


def ramp_slope(s: np.ndarray, coding: str = "dense") -> np.ndarray:
    """c of R(σ) = b + Σ_j w_j·(a_j − σ)+ − c·σ: 1 − s in the dense coding (docs/math.md §4), 0 in the sparse one,
    whose input phase has no drive α (§9)."""
    s = np.asarray(s, dtype=np.float64)
    return np.zeros_like(s) if coding == "sparse" else 1.0 - s


def requirement_bound(z: np.ndarray, p: np.ndarray, s: np.ndarray, w_neg: np.ndarray,
                      c: np.ndarray | None = None) -> np.ndarray:
    """An upper bound of ``required_window`` R* from sums, without sorting: which pairs need the exact R*.

    The two lines of ``early_bound`` in these units: R(σ) = b + Σ_j w_j·(a_j − σ)+ − c·σ (c = 1 − s unless
    given, ``ramp_slope``; c ≥ 0) is at most p − c·σ and at most z − (c + w_neg)·σ, with z = b + Σ w·a (the
    pre-activation), p = b + Σ max(w, 0)·a and w_neg = Σ min(w, 0). The maximum of their minimum over σ ≥ 0
    is z when c + w_neg ≥ 0, else where they cross, σ* = (z − p)/w_neg. Never above p, the plain bound.
    """
    c = 1.0 - s if c is None else c
    slope = c + w_neg            # −(slope of the second line)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(w_neg < 0, (z - p) / w_neg, 0.0)
    return np.where(slope >= 0, z, p - c * np.maximum(cross, 0.0))


GRID_INTERVALS = 4   # intervals of the grid bound: the grid times 0 < σ_1 < … < σ_3 < σ_G cost one product each


def grid_times(codes: np.ndarray, intervals: int = GRID_INTERVALS) -> np.ndarray:
    """The grid times σ_0 = 0 < σ_1 < … < σ_G of ``grid_bound`` (docs/math.md §5, grid bound): σ_G the largest
    input code, the interior ones at the quantiles g/G of the positive codes, so that each interval holds
    about as many input spikes — the bound is loose by about the ramps that start inside an interval."""
    top = float(codes.max(initial=0.0))
    positive = codes[::max(1, codes.size >> 16)]   # the quantiles of at most 65,536 codes place the grid well
    positive = positive[positive > 0]
    if top <= 0:
        return np.zeros(2)
    inner = np.quantile(positive, np.arange(1, intervals) / intervals) if positive.size else []
    return np.unique(np.concatenate([[0.0], inner, [top]]))


def grid_bound(e: np.ndarray, i: np.ndarray, base: np.ndarray, c: np.ndarray, j_neg: np.ndarray,
               sigmas: np.ndarray) -> np.ndarray:
    """An upper bound of F(σ) = base − c·σ + E(σ) + I(σ) over σ ∈ [σ_0, σ_G] from E and I at grid times
    (docs/math.md §5, grid bound).

    E(σ) = Σ_{J>0} J·(a − σ)+ and I(σ) = Σ_{J<0} J·(a − σ)+; e, i: (P, G+1) their values at the increasing
    grid times ``sigmas`` (G+1,); base, c, j_neg = Σ_{J<0} J: (P,). On an interval [σ_g, σ_{g+1}] of
    length h, E is convex, so at most its chord, and I is non-decreasing with slope at most −j_neg, so
    I(σ_g + x) ≤ min(I(σ_{g+1}), I(σ_g) − j_neg·x). The bound is the sum of a line and a concave
    two-piece line: its maximum is at x = 0, x = h or where the two pieces of the minimum meet,
    x* = (I(σ_{g+1}) − I(σ_g))/(−j_neg). The maximum over the intervals is returned (P,).
    For the potential of the simulator base = α·B_in, c = α; for the requirement R*, base = b, c = 1 − s.
    """
    h = np.diff(sigmas)
    base, c, slope = base[:, None], c[:, None], -j_neg[:, None]
    line0 = e[:, :-1] - c * sigmas[:-1]     # the line (−c·σ and E's chord) at both ends of each interval
    line0 += base
    line1 = e[:, 1:] - c * sigmas[1:]
    line1 += base
    i0, i1 = i[:, :-1], i[:, 1:]
    best = np.minimum(i0, i1)               # x = 0
    best += line0
    end = slope * h                         # x = h
    end += i0
    np.minimum(end, i1, out=end)
    end += line1
    np.maximum(best, end, out=best)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.subtract(i1, i0, out=end)    # where the two pieces of the minimum meet, x* (in place of end)
        x /= slope
        inside = (x > 0) & (x < h)
        x /= h
        line1 -= line0                      # there: the line at x*/h of the way, plus I(σ_{g+1})
        line1 *= x
        line1 += line0
        line1 += i1
    np.maximum(best, line1, out=best, where=inside)
    return best.max(axis=1)


ROUNDING = 4 * np.finfo(np.float64).eps   # per input: the rounding of a float64 sum of K products, K·ROUNDING·Σ|terms|


def grid_margin(e: np.ndarray, i: np.ndarray, base: np.ndarray, fan_in: int) -> np.ndarray:
    """What float64 rounding can add to ``grid_bound`` (docs/math.md §5, grid bound): each E and I is a sum of
    K = fan_in products of one sign, within K·ROUNDING of its own size, and the bound adds at most a few of
    them and base: K·ROUNDING·(Σ_g (|E_g| + |I_g|) + |base|)."""
    return fan_in * ROUNDING * (np.sum(np.abs(e) + np.abs(i), axis=1) + np.abs(base))


F32_UNIT = 2.0 ** -24    # u, the unit roundoff of float32
F32_TINY = 2.0 ** -126   # μ, the smallest normal float32: the most an underflow or a flush to zero can lose


def float32_sum_bounds(s: np.ndarray, fan_in: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (low, high) of exact sums T = Σ_{j≤K} w_j·x_j of K = ``fan_in`` products of non-negative float64
    numbers, from s, the same sums computed in float32 (docs/math.md §5, float32 screening).

    s: w and x each cast to float32, the products and their sum evaluated in float32 in any order and
    blocking (a BLAS product, with or without fused multiply-adds); ``scale`` ≥ max w + max x. Every
    cast, product and addition has a relative error of at most u = 2⁻²⁴ plus, at an underflow or a flush
    to zero, an absolute error of at most μ = 2⁻¹²⁶; a sum of K non-negative terms in any order is within
    γ_{K−1} = (K−1)·u/(1 − (K−1)·u) of the sum of its terms. Tracing both through the casts and products
    gives, with c = (2K + 2)·u and A = K·μ·(4 + 2·scale),
        (s − A)·(1 − c) ≤ T ≤ (s + A)/(1 − c),
    (c carries one u more than the derivation needs, which covers this function's own float64 rounding).
    A sum of non-positive terms is the negated sum of their magnitudes. Where c ≥ 1 (K > 8 million) or s
    is not finite (an overflow, or inf·0 after one) the bounds are −∞ and +∞: nothing is certified from them.
    """
    s = np.asarray(s, dtype=np.float64)
    c = (2.0 * fan_in + 2.0) * F32_UNIT
    if not c < 1.0:
        return np.full(s.shape, -np.inf), np.full(s.shape, np.inf)
    slack = fan_in * F32_TINY * (4.0 + 2.0 * scale)
    low, high = s - slack, s + slack
    low *= 1.0 - c
    high /= 1.0 - c
    bad = ~np.isfinite(s)     # an overflow in float32 says nothing of the exact sum
    if bad.any():
        low[bad], high[bad] = -np.inf, np.inf
    return low, high


def float32_sum_limit(x: np.ndarray, fan_in: int, scale: float) -> np.ndarray:
    """x·(1 − c) − A, with c and A of ``float32_sum_bounds``: a float32 sum s ≤ it has the upper bound
    (s + A)/(1 − c) ≤ x, so one comparison of the raw sums screens a whole array (docs/math.md §5, float32
    screening); −∞ where c ≥ 1. c's spare u covers the rounding of this evaluation."""
    c = (2.0 * fan_in + 2.0) * F32_UNIT
    x = np.asarray(x, dtype=np.float64)
    return x * (1.0 - c) - fan_in * F32_TINY * (4.0 + 2.0 * scale) if c < 1.0 else np.full(x.shape, -np.inf)


def readout_drive(bias: np.ndarray, b_in: float) -> np.ndarray:
    """α = b / B_in for the readout, so that V(T_out) = α·B_in + Σ J·a = W·a + b — docs/math.md §3."""
    return bias / b_in


def required_window(a: np.ndarray, w: np.ndarray, b: np.ndarray, s: np.ndarray,
                    c: np.ndarray | None = None) -> np.ndarray:
    """The smallest B_out for which a neuron does not fire before its last input window ends.

    With J = W/(1 − s), α = 1 and ϑ = B_in + (B_out − b)/(1 − s) (docs/math.md §3), the potential
    σ before the end of the input window stays below ϑ exactly when
    R(σ) = b + Σ_j w_j·max(0, a_j − σ) − c·σ < B_out with c = 1 − s; in the sparse coding (J = W, α = 0,
    ϑ = B_out − b, §9) the same with c = 0 (``ramp_slope``, passed as ``c``). R is piecewise linear with
    breakpoints at the a_j and, beyond them, falls (c > 0) or stays at b (c = 0), so
    R* = max over σ ∈ {0} ∪ {a_j}; R(0) = z, the pre-activation. a, w: (P, K) inputs (codes) and weights
    of P neurons; b, s (and c): (P,).
    """
    order = np.argsort(-a, axis=1)  # ties add w·(a − σ) = 0 at σ = a, in any order
    return sorted_requirement(np.take_along_axis(a, order, axis=1), np.take_along_axis(w, order, axis=1), b, s, c)


def sorted_requirement(a: np.ndarray, w: np.ndarray, b: np.ndarray, s: np.ndarray,
                       c: np.ndarray | None = None) -> np.ndarray:
    """``required_window`` for codes already in decreasing order along each row (P, K), as
    ``ops.sorted_fan_ins`` gives them: b + max(Σ w·a, ``ramp_peak``(a, w, c)), c = 1 − s unless given."""
    peak, total = ramp_peak(a, w, 1.0 - s if c is None else c)
    return b + np.maximum(total, peak)


def ramp_peak(a: np.ndarray, w: np.ndarray, c: np.ndarray, sigma: np.ndarray | None = None):
    """max over k of Σ_{m≤k} w_m·(a_m − σ_k) − c·σ_k, and Σ_m w_m·a_m, for P rows of codes a (P, K) in
    decreasing order with weights w; σ_k = a_k unless ``sigma`` gives them. w is overwritten.

    This is the value of a sum of ramps Σ_j w_j·(a_j − σ)+ − c·σ at each breakpoint σ_k = a_k, where the
    inputs m ≤ k are exactly those with a_m ≥ σ_k: two running sums, C1 = Σ w·a and C0 = Σ w, give
    C1_k − σ_k·(C0_k + c). Summing up to k inclusive is exact also among equal codes, since an input
    adds w·(a − σ) = 0 at its own breakpoint. For ``required_window`` c = 1 − s; for the potential of
    ``simulator.peak_potential``, c = α.
    """
    sum_wa = np.cumsum(w * a, axis=1)
    total = sum_wa[:, -1].copy() if a.shape[1] else np.zeros(len(a))
    sum_w = np.cumsum(w, axis=1, out=w)
    sum_w += c[:, None]
    sum_w *= a if sigma is None else sigma
    sum_wa -= sum_w
    return sum_wa.max(axis=1, initial=-np.inf), total


@dataclass(frozen=True)
class Scaled:
    """The ReLU network rewritten on spike codes (docs/math.md §3, §7): its input is the input code
    a ∈ [0, 1] and each ReLU layer's output is its code c·a. ``scales[name]`` is c per output channel."""

    graph: ir.Graph
    scales: dict


def move_codes(node, codes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The code map (scale, shift) of a node that moves neurons, from its inputs' maps (full-shape arrays):
    the maps moved as the neurons are (``node.move``). A max-pooling's maps are one number per channel
    (checked on import), which the pooling keeps."""
    if not isinstance(node, ir.MOVEMENT):
        raise GraphError(f"no spiking mapping for {type(node).__name__}")
    return tuple(node.move([c[i][None] for c in codes])[0] for i in (0, 1))


def spatial_groups(graph: ir.Graph) -> dict[str, frozenset]:
    """ReLU layers whose neurons a Concat puts side by side along a spatial axis (directly, through max
    poolings or through other spatial Concats): each with the set of layers it meets. A convolution reading
    the concatenation needs one code scale per channel across them (``scale_graph``)."""
    by_name = {n.name: n for n in graph.nodes}

    def layers_of(name) -> set:
        node = by_name[name]
        while isinstance(node, ir.MaxPool):
            node = by_name[node.input]
        if isinstance(node, ir.Concat) and node.axis > 0:
            return set().union(*(layers_of(i) for i in node.inputs))
        return {node.name} if isinstance(node, ir.Affine) and node.relu else set()

    groups: dict[str, frozenset] = {}
    for node in graph.nodes:
        if isinstance(node, ir.Concat) and node.axis > 0:
            members = set().union(*(layers_of(name) for name in node.inputs))
            for name in list(members):
                members |= groups.get(name, frozenset())
            for name in members:
                groups[name] = frozenset(members)
    return groups


def scale_graph(graph: ir.Graph, input_range: tuple[float, float], options: MappingOptions = MappingOptions()) -> Scaled:
    """Fold the input encoding and every scaling compensation into the next layers, and scale each ReLU layer.

    Walks the graph in topological order, keeping for every population the affine map from
    its code to the ANN value (x = (q − p)·a + p for the input, a_ANN = a / c for a scaled
    layer) and folding it into every layer that reads the population — each consumer sees
    the same map, so a population with several consumers stays consistent; then
    c = scale_layer(s) for a ReLU layer.

    Layers concatenated along a spatial axis (``spatial_groups``) take the smallest c of their group per
    channel: any 0 < c' ≤ c keeps s·c' in [s_min, s_max] (docs/math.md §3), and a convolution over the
    concatenation then sees one scale per channel. A smaller c upstream changes the sums downstream, so
    the walk repeats with the group minima as caps until they agree (a few passes at most).
    """
    groups = spatial_groups(graph)
    cap: dict[str, np.ndarray] = {}
    for _ in range(2 + 2 * len(groups)):
        scaled = _scale_once(graph, input_range, options, cap, groups)
        if not isinstance(scaled, dict):
            return scaled
        cap = {name: np.min([scaled[m] for m in members if m in scaled], axis=0)   # groups the walk reached
               for name, members in groups.items() if any(m in scaled for m in members)}
    raise GraphError("the code scales of layers concatenated along a spatial axis do not settle")


def _settled(scales: dict, groups: dict) -> bool:
    """Every group of ``spatial_groups`` whose layers are all scaled has one c per channel."""
    return all(np.array_equal(scales[name], np.min([scales[m] for m in members], axis=0))
               for name, members in groups.items() if all(m in scales for m in members))


def _scale_once(graph: ir.Graph, input_range: tuple[float, float], options: MappingOptions, cap: dict,
                groups: dict) -> Scaled | dict:
    """One walk of ``scale_graph``, each layer's c at most ``cap[name]`` where given; the scales so far
    (a dict) instead of the result when the groups' scales are not yet equal (and a layer could not fold
    them, or the walk ends)."""
    low, high = input_range
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise GraphError(f"input range [{low}, {high}] must be finite and non-empty")
    shape = tuple(graph.input.shape)
    code = {graph.input.name: (np.full(shape, high - low), np.full(shape, float(low)))}
    nodes, scales = [graph.input], {}
    for node in graph.nodes[1:]:
        if isinstance(node, ir.Affine):
            try:
                node = ir.fold_input_affine(node, code)
            except GraphError as e:
                if not _settled(scales, groups):
                    return scales
                raise GraphError(f"layer {node.name}: {e}") from None
            c = np.ones(node.shape[0])
            if node.relu:   # the sparse coding needs no scaling (docs/math.md §9): c = 1
                c = c if options.coding == "sparse" else scale_layer(ir.incoming_sum(node), options.s_min,
                                                                      options.s_max)
                c = np.minimum(c, cap[node.name]) if node.name in cap else c
                node = ir.scale_outputs(node, c)
                scales[node.name] = c
            code[node.name] = (ops.per_neuron(1.0 / c, node.shape), np.zeros(node.shape))
        else:
            code[node.name] = move_codes(node, [code[name] for name in node.inputs])
        nodes.append(node)
    if not _settled(scales, groups):
        return scales
    return Scaled(replace(graph, nodes=tuple(nodes)), scales)


def _fields(node) -> dict:
    """A movement node's fields, to make its spiking counterpart (the same fields plus a window)."""
    return {f.name: getattr(node, f.name) for f in fields(node)}


def _synapses(layer: ir.Affine, weights: list[np.ndarray], delays: tuple[float, ...]) -> tuple[snn.Synapses, ...]:
    out = []
    for term, J, delay in zip(layer.terms, weights, delays):
        geometry = ({"strides": term.strides, "pads": term.pads, "dilations": term.dilations, "groups": term.groups}
                    if isinstance(term, ir.Conv) else {})
        out.append(snn.Synapses(term.input, tuple(term.in_shape), J, delay, **geometry))
    return tuple(out)


def spiking_nodes(scaled: Scaled, x_max: dict, required: dict, input_range: tuple[float, float],
                  options: MappingOptions = MappingOptions()) -> tuple:
    """The spiking network's nodes (docs/math.md §2–4) from the scaled graph and its calibrated bounds.

    ``x_max[name]``: per-channel maximum of a ReLU layer's ANN activation; ``required[name]``:
    the largest ``required_window`` over the calibration data that the activations' window would
    not hold (code units; 0 if none). The window is B = (1 + ζ)·X_n with X_n = ``layer_extent``:
    no calibration sample fires early. A node reading several populations gets the input window
    and delays of ``snn.merge_windows``. A spiking layer has J = W/(1 − s), ϑ of ``spike_threshold`` and α = 1
    in the dense coding (§3), J = W, ϑ = B − b (``sparse_threshold``) and α = 0 in the sparse one (§9).
    """
    graph = scaled.graph
    enc = snn.Encoder(graph.input.name, tuple(graph.input.shape), float(input_range[0]), float(input_range[1]))
    nodes = [enc]
    window = {enc.name: enc.window}
    for node in graph.nodes[1:]:
        (t_in, b_in), delays = snn.merge_windows([window[name] for name in node.inputs])
        if isinstance(node, ir.Affine) and node.relu:
            c = scaled.scales[node.name]
            xm = np.asarray(x_max[node.name], dtype=np.float64).reshape(-1)
            x_n = layer_extent(float(np.max(c * xm, initial=0.0)), float(required.get(node.name, 0.0)), options.zeta)
            b_out = window_length(x_n, options.zeta)
            if options.coding == "sparse":   # J = W, ϑ = B − b, α = 0 (docs/math.md §9)
                J = [t.weight for t in node.terms]
                theta = sparse_threshold(node.bias, b_out)
                alpha = np.zeros(node.shape[0])
            else:
                s = ir.incoming_sum(node)
                J = [synaptic_weights(t.weight, s) for t in node.terms]
                theta = spike_threshold(node.bias, s, b_in, b_out)
                alpha = np.ones(node.shape[0])
            certified = static_certificate([(j, window[t.input][1]) for j, t in zip(J, node.terms)], theta, alpha, b_in)
            out = snn.SpikingLayer(node.name, _synapses(node, J, delays), alpha, (t_in + b_in, b_out),
                                   theta=theta, certified=certified, scale=c, x_max=xm, x_n=x_n, source=node.source,
                                   origin=node.origin)
        elif isinstance(node, ir.Affine):
            out = snn.Readout(node.name, _synapses(node, [t.weight for t in node.terms], delays),
                              readout_drive(node.bias, b_in), (t_in, b_in), source=node.source,
                              origin=node.origin)
        elif type(node) in snn.SPIKING_MOVEMENT:
            kind = snn.SPIKING_MOVEMENT[type(node)]
            extra = {"delays": delays} if kind is snn.Concat else {}
            out = kind(**_fields(node), window=(t_in, b_in), **extra)
        else:
            raise GraphError(f"no spiking mapping for {type(node).__name__}")
        nodes.append(out)
        window[out.name] = out.window
    return tuple(nodes)
