"""How far float64 rounding moves the logits ``verify`` compares (docs/math.md §1, "How exact is exact").

``verify`` compares the simulator's logits with the float64 forward pass of the ReLU network. Both are exact
in real arithmetic; in float64 each operation rounds (relative u = 2⁻⁵³; a sum of K products, in any order,
is within γ_K·Σ|w|·|x| of the exact sum, γ_K = K·u/(1 − K·u)), and the network carries every rounding on to
the logits. ``logit_bounds`` bounds |SNN logit − forward-pass logit| per sample and logit to first order in u:

    Σ over populations P of  Σ_i |∂logit/∂y_P,i|·λ_P,i

with λ_P the rounding a population's own computation adds (``snn_local``, ``ann_local``) and ∂logit/∂y_P the
network's Jacobian at the computed point, found by one backward pass per logit (``_backward``): the linear
maps transposed, each ReLU (a spiking neuron's clip to its window) passing the gradient where its neuron is
active. A propagation through |W| instead (each layer's worst case, the textbook bound) is rigorous also to
higher order but grows like Π_n max Σ|W_n|: on MnasNet-0.5 it is 3·10⁷ times the largest logit (docs/sweep.md,
"Precision"), which would let any error pass.

In deep converted networks the spiking term dominates: a spike time t ≈ T is stored absolute, so it carries
u·T however small its code a = T + B − t, and the code scales c of docs/math.md §3 (down to 10⁻⁸) make codes
10⁻⁵ of T in MnasNet-0.5.
"""

from __future__ import annotations

import numpy as np

from . import ir, ops, snn

U = np.finfo(np.float64).eps / 2   # unit roundoff of float64, 2⁻⁵³
TIME_ROUNDINGS = 6        # roundings of u·T a spike time takes on its way to a code (``snn_local``)
PARAMETER_ROUNDINGS = 8   # relative roundings of a stored weight, threshold or drive by the mapping (§3, §7)
KINK = 1e-6               # a neuron this close to its kink, relative to its sums' size, counts as active


def gamma(k) -> float:
    """γ_K = K·u/(1 − K·u): the relative error bound of a sum of K products in float64, in any order."""
    return float(k * U / (1.0 - k * U))


# ----------------------------------------------------------------------------- transposed maps

def _weights(term) -> np.ndarray:
    return term.weight if isinstance(term, (ir.Dense, ir.Conv)) else term.J


def conv_transpose(g: np.ndarray, weight: np.ndarray, in_shape, strides, pads, dilations, groups: int) -> np.ndarray:
    """The transpose of ``ops.conv``: Σ_{o,i,j} g[n,o,i,j]·∂y[n,o,i,j]/∂x[n,c,h,w], (N, O, …) → (N, *in_shape).

    Each kernel tap (u, v) adds g·w[:, :, u, v] to the input position it read (``ops.unwindows``)."""
    one_d = weight.ndim == 3
    w = weight[:, :, None, :] if one_d else weight
    g = g[:, :, None, :] if one_d else g
    n, o, ho, wo = g.shape
    (kh, kw), c = w.shape[2:], in_shape[0]
    per_in, per_out = c // groups, o // groups
    taps = np.einsum("ngohw,gocuv->ngchwuv", g.reshape(n, groups, per_out, ho, wo),
                     w.reshape(groups, per_out, per_in, kh, kw), optimize=True).reshape(n, c, ho, wo, kh, kw)
    return ops.unwindows(taps, tuple(in_shape[1:]), weight.shape[2:], strides, pads, dilations)


def term_transpose(term, g: np.ndarray) -> np.ndarray:
    """The transpose of a synapse term's product (``product``): (N, *out shape) → (N, *in_shape)."""
    weight = _weights(term)
    if weight.ndim == 2:
        return (g.reshape(len(g), -1) @ weight).reshape((len(g),) + tuple(term.in_shape))
    return conv_transpose(g, weight, term.in_shape, term.strides, term.pads, term.dilations, term.groups)


# ----------------------------------------------------------------------------- the two computations

def ann_local(graph: ir.Graph, values: dict[str, np.ndarray]) -> dict:
    """Per Affine node of the float64 forward pass (``ir.forward(..., keep=True)`` values): (λ, active) with
    λ = γ_{K+n+1}·(Σ_k |W_k|·|x̂_k| + |b|) the rounding of its pre-activation ẑ (fan-in K over its n terms) and
    active where its ReLU passes a gradient: ẑ > −KINK·(that sum); the readout is all active."""
    local = {}
    for node in graph.nodes[1:]:
        if isinstance(node, ir.Affine):
            xs = [values[t.input] for t in node.terms]
            size = sum(ops.weighted_sum(np.abs(x), np.abs(t.weight), t) for t, x in zip(node.terms, xs))
            size = size + np.abs(ir.full_bias(node))
            g = gamma(sum(int(np.prod(t.weight.shape[1:])) for t in node.terms) + len(node.terms) + 1)
            active = ir.apply_linear(node, xs) > -KINK * size if node.relu else np.ones(size.shape, dtype=bool)
            local[node.name] = (g * size, active)
    return local


def output_phase(coding: str, alpha: np.ndarray, sums: np.ndarray, abs_sums: np.ndarray) -> tuple:
    """What a spiking layer's coding makes of its potential once its inputs are in: (s, G, clip), per neuron.

    s: the slope V rises with after the input window, τ = (ϑ − α·B_in − Σ J·â)/s (never where s ≤ 0), and
    the gradient a neuron passes, J/s; G: the factor of g·|τ| by which the rounding of s moves τ; clip: whether
    the input codes are max(a, 0).
    dense (docs/math.md §1): s = α + Σ J, a float64 sum, G = (α + Σ|J|)/s; codes as they come.
    sparse (docs/math.md §9): s = 1 exactly (the synaptic currents are off after T), G = 0; codes max(a, 0),
    a late input is lost."""
    if coding == "sparse":
        return np.ones(np.shape(sums)), np.zeros(np.shape(sums)), True
    slope = alpha + sums
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(slope > 0, (alpha + abs_sums) / slope, 0.0)
    return slope, gain, False


def snn_local(net: snn.Network, times: dict[str, np.ndarray]) -> dict:
    """Per spiking layer and readout of the simulator (its spike times, ``Simulator.run(..., keep_times=True)``):
    (λ, active, slope) in the units of its codes (the readout: of its logits), for neurons that cross in closed
    form (docs/math.md §1, fast path; §9 in the sparse coding); per encoder and Concat: λ of their codes.

    A layer of fan-in K crosses at τ = (ϑ − α·B_in − Σ J·â)/s after its input window, s and G as its coding
    says (``output_phase``: dense s = α + Σ J, sparse s = 1 and G = 0); with S = Σ|J|·|â| + |ϑ| + α·B_in +
    |Σ J·â| and g = γ_{2K+5} + PARAMETER_ROUNDINGS·u, its code B − τ is within
    λ = g·(S/s + G·|τ̂|) + TIME_ROUNDINGS·u·(T + B) + |T − (T_in + B_in)| of the exact code for its computed
    inputs: g·S/s the sums, ϑ and the stored parameters; g·G·|τ̂| the slope s, rounded in the simulator's Σ J
    and in the mapping's s inside J and ϑ (γ_K·Σ|J| each); the rest the absolute times, t formed as
    T_in + B_in + τ and read as T + B − t, and the window's start. Active where B − τ̂ > −KINK·S/s (sparse:
    where it fired, τ̂ < B, or is that close to firing). The readout α·B_in + Σ J·â (â ≥ 0 in both codings):
    λ = g'·(Σ|J|·|â| + α·B_in + |V̂|) + Σ|J|·TIME_ROUNDINGS·u·T_out, g' = γ_{K+2} + PARAMETER_ROUNDINGS·u.
    The input: (TIME_ROUNDINGS + 4)·u·(1 + â); a Concat's delays: TIME_ROUNDINGS·u·(T + B)."""
    ends = net.window_ends
    local = {}
    for node in net.nodes:
        if isinstance(node, snn.Encoder):
            local[node.name] = ((TIME_ROUNDINGS + 4) * U * (1.0 + np.abs(ends[node.name] - times[node.name])),)
        elif isinstance(node, snn.Concat):
            local[node.name] = (np.full((1,) + tuple(node.shape), TIME_ROUNDINGS * U * ends[node.name]),)
        elif isinstance(node, (snn.SpikingLayer, snn.Readout)):
            shape = node.shape
            alpha = ops.per_neuron(node.alpha, shape)
            sums = sum(ops.per_neuron(s.J.reshape(len(s.J), -1).sum(axis=1), shape) for s in node.synapses)
            abs_sums = sum(ops.per_neuron(np.abs(s.J).reshape(len(s.J), -1).sum(axis=1), shape) for s in node.synapses)
            slope, gain, clip = output_phase(net.coding, alpha, sums, abs_sums)
            codes = [ends[s.input] - times[s.input] for s in node.synapses]   # as the simulator forms them
            if clip or isinstance(node, snn.Readout):
                codes = [np.maximum(a, 0.0) for a in codes]
            _, b_in = net.input_window(node)
            k = sum(int(np.prod(s.J.shape[1:])) for s in node.synapses)
            drive = sum(ops.weighted_sum(a, s.J, s) for s, a in zip(node.synapses, codes))
            size = sum(ops.weighted_sum(np.abs(a), np.abs(s.J), s) for s, a in zip(node.synapses, codes))
            if isinstance(node, snn.Readout):
                g = gamma(k + 2) + PARAMETER_ROUNDINGS * U
                lam = g * (size + np.abs(alpha * b_in) + np.abs(alpha * b_in + drive))
                local[node.name] = (lam + abs_sums * TIME_ROUNDINGS * U * ends[node.name],
                                    np.ones(drive.shape, dtype=bool), np.ones(shape))
                continue
            theta = ops.per_neuron(node.theta, shape)
            with np.errstate(divide="ignore", invalid="ignore"):
                g = gamma(2 * k + 5) + PARAMETER_ROUNDINGS * U
                tau = np.where(slope > 0, (theta - alpha * b_in - drive) / slope, np.inf)
                scale = np.where(slope > 0, (size + np.abs(theta) + alpha * b_in + np.abs(drive)) / slope, 0.0)
            t_in, _ = net.input_window(node)
            lam = g * (scale + gain * np.where(np.isfinite(tau), np.abs(tau), 0.0))
            lam = lam + TIME_ROUNDINGS * U * ends[node.name] + abs(node.window[0] - (t_in + b_in))
            active = (slope > 0) & (node.window[1] - tau > -KINK * scale)
            local[node.name] = (lam, active, np.where(slope > 0, slope, np.inf))
    return local


def _backward(nodes, local: dict, values: dict, terms, factor) -> np.ndarray:
    """Σ_P Σ_i |∂logit_o/∂y_P,i|·λ_P,i per sample and logit o (N, O): one backward pass per logit through
    ``nodes`` (topological order) at the computed point. ``terms(node)`` gives a layer's synapse terms,
    ``factor(node)`` the per-neuron factor of its output in its pre-activation (1/s for a spiking layer)."""
    last = nodes[-1]
    n = len(next(iter(values.values())))
    n_out = int(np.prod(last.shape))
    total = np.zeros((n, n_out))
    for o in range(n_out):
        unit = np.zeros((n, n_out))
        unit[:, o] = 1.0
        grads = {last.name: unit.reshape((n,) + tuple(last.shape))}
        for node in reversed(nodes):
            g = grads.pop(node.name, None)
            if g is None:
                continue
            parts = local.get(node.name)
            if parts is not None and len(parts) > 1:   # a layer: its rounding, then through its ReLU and weights
                lam, active = parts[0], parts[1]
                g = np.where(active, g, 0.0)
                total[:, o] += np.sum(np.abs(g) * lam, axis=tuple(range(1, g.ndim)))
                g = g * factor(node)
                for term in terms(node):
                    back = term_transpose(term, g)
                    grads[term.input] = grads[term.input] + back if term.input in grads else back
                continue
            if parts is not None:
                total[:, o] += np.sum(np.abs(g) * parts[0], axis=tuple(range(1, g.ndim)))
            if node.inputs:
                backs = node.move_back(g, [values[name] for name in node.inputs], values[node.name])
                for name, back in zip(node.inputs, backs):
                    grads[name] = grads[name] + back if name in grads else back
    return total


def ann_bound(graph: ir.Graph, values: dict[str, np.ndarray]) -> np.ndarray:
    """First-order bound of |computed − exact| of the forward pass's logits (N, O), from its values."""
    local = ann_local(graph, values)
    return _backward(graph.nodes, local, values, lambda node: node.terms, lambda node: 1.0)


def snn_bound(net: snn.Network, times: dict[str, np.ndarray]) -> np.ndarray:
    """First-order bound of |computed − exact| of the simulator's logits (N, O), from its spike times."""
    local = snn_local(net, times)
    ends = net.window_ends
    codes = {name: ends[name] - t for name, t in times.items()}   # pooling compares codes (max: the earliest)
    return _backward(net.nodes, local, codes, lambda node: node.synapses,
                     lambda node: 1.0 / local[node.name][2])


def logit_bounds(net: snn.Network, times: dict[str, np.ndarray], graph: ir.Graph,
                 values: dict[str, np.ndarray]) -> np.ndarray:
    """The first-order bound of |SNN logit − float64 forward-pass logit| per sample and logit (N, O): ``snn_bound``
    of the simulator's spike times plus ``ann_bound`` of the forward pass's values (both against the exact
    logits)."""
    return snn_bound(net, times) + ann_bound(graph, values)
