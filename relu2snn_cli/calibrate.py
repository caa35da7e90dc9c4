"""Activation bounds over the calibration data (docs/math.md §3–4).

Two streaming passes over the calibration data, batch by batch (``data.load_array`` reads a
``.npy`` a batch at a time):

1. ``input_stats``: the inputs' min and max (for the input range), sha256, NaN/Inf check;
2. ``calibrate``: the float64 forward pass of the scaled graph on spike codes — the network the
   simulator runs, not onnxruntime's float32 one, whose maxima can fall one rounding short of it.
   Per ReLU layer it keeps the per-channel maximum activation and the largest exact
   no-early-spike requirement ``mapping.required_window`` that exceeds the window (1 + ζ)·X the
   activations alone would give, evaluated only for the (sample, neuron) pairs whose
   ``mapping.requirement_bound`` exceeds it — so that the window ``mapping.layer_extent`` chooses
   from these makes no calibration sample fire early. onnxruntime runs the source model on the
   first batch only to check that the imported graph reproduces it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import ir, ops
from .data import batches, check_inputs
from .errors import ModelError
from .mapping import (Scaled, float32_sum_bounds, float32_sum_limit, grid_bound, grid_margin, grid_times,
                      ramp_slope, requirement_bound, sorted_requirement)

CHECK_SAMPLES = 64  # samples on which the float64 forward pass is compared with onnxruntime
FORWARD_TOLERANCE = 1e-3  # relative to max |logit|: float32 rounding is far below, an import error far above


@dataclass(frozen=True)
class InputStats:
    low: float
    high: float
    n_samples: int
    sha256: str


@dataclass(frozen=True)
class Calibration:
    """What the calibration data says about the network.

    ``x_max[layer]``: per-channel maximum ANN activation; ``required[layer]``: in code units,
    the largest no-early-spike requirement above (1 + ζ)·(largest scaled activation), else 0;
    ``forward_error``: max |float64 IR logits − onnxruntime logits| on the first samples,
    whose largest |logit| is ``max_logit``; ``requirement_pairs``: the (sample, neuron) pairs whose exact
    requirement R* was evaluated, those no bound could rule out (docs/math.md §4).
    """

    x_max: dict
    required: dict
    forward_error: float
    max_logit: float
    requirement_pairs: int = 0


def session(model_path: str | Path, outputs: list[str], threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime session of the model whose outputs are the named tensors, with ``threads`` intra-op
    threads (0: onnxruntime's default, one per core)."""
    model = onnx.load(str(model_path))
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)
    # onnxruntime's errors reach us as exceptions, which the CLI reports in one line: its own log (written to
    # fd 2 by C code, for load and run-time errors alike) is silenced, the default logger's too.
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{model_path}: onnxruntime cannot load the model ({str(e).splitlines()[0]})") from None


def run_model(sess: ort.InferenceSession, x: np.ndarray) -> list:
    """onnxruntime's outputs for x; a model whose input fixes the batch size gets chunks of exactly that size
    (the last one padded by repeating its last sample, the padding's outputs dropped)."""
    inp = sess.get_inputs()[0]
    input_name, batch = inp.name, inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    x = x.astype(input_dtype(sess))
    if batch is None or len(x) == batch:
        return sess.run(None, {input_name: x})
    parts = []
    for lo in range(0, len(x), batch):
        chunk = x[lo:lo + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        parts.append([y[:len(chunk)] for y in sess.run(None, {input_name: padded})])
    return [np.concatenate(ys) for ys in zip(*parts)]


def input_dtype(sess: ort.InferenceSession) -> type:
    return np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32


def channel_max(y: np.ndarray) -> np.ndarray:
    """Per-channel maximum over the batch and positions: axis 1 is the channel axis."""
    return y.max(axis=(0,) + tuple(range(2, y.ndim)))


def input_stats(data, shape: tuple[int, ...], spec: str, batch_size: int = 1024) -> InputStats:
    """Pass 1: min, max and sha256 of the inputs (float32 bytes, C order)."""
    check_inputs(data, shape, spec)
    lo, hi = np.inf, -np.inf
    digest = hashlib.sha256()
    for _, batch in batches(data, batch_size, spec):
        digest.update(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
        lo, hi = min(lo, float(batch.min())), max(hi, float(batch.max()))
    return InputStats(lo, hi, len(data), digest.hexdigest())


def term_sources(layer: ir.Affine, xs: list[np.ndarray], pad_value: float = 0.0) -> list[np.ndarray]:
    """Each term's input as ``ops.gather_inputs`` reads it: the sliding windows for a convolution (pads read ``pad_value``)."""
    return [ops.windows(x, t.weight.shape[2:], t.strides, t.pads, t.dilations, pad_value)
            if isinstance(t, ir.Conv) else x for t, x in zip(layer.terms, xs)]


def split_term(term: ir.Term, x: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
    """Σ max(W, 0)·x and Σ min(W, 0)·x of one term, side by side on the output axis (N, 2·O, …), in the dtype
    of x (the weights cast to it); only the output ``channels`` listed, when given (not for a grouped convolution)."""
    weight = term.weight if channels is None else term.weight[channels]
    pos = np.clip(weight, 0, None)
    pos, neg = pos.astype(x.dtype), (weight - pos).astype(x.dtype)
    if isinstance(term, ir.Conv) and term.groups > 1:   # the groups follow the output axis: one half at a time
        return np.concatenate([ops.weighted_sum(x, w, term) for w in (pos, neg)], axis=1)
    return ops.weighted_sum(x, np.concatenate([pos, neg]), term)


def fan_in_scale(layer: ir.Affine, a: list[np.ndarray]) -> tuple[int, float]:
    """The fan-in K of a layer and max |W| + the largest code of the batch: the arguments of
    ``mapping.float32_sum_bounds`` for its sums over these codes."""
    fan_in = sum(int(np.prod(t.weight.shape[1:])) for t in layer.terms)
    scale = max(float(np.abs(t.weight).max(initial=0.0)) for t in layer.terms)
    return fan_in, scale + max(float(a_k.max(initial=0.0)) for a_k in a)


def negative_code(a: list[np.ndarray]) -> bool:
    """A code below 0 (an input below the encoder's range): the float32 bounds, for non-negative terms, do not hold."""
    return min(float(a_k.min(initial=0.0)) for a_k in a) < 0


def positive_sums(layer: ir.Affine, a: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, float] | None]:
    """Σ_k Σ_j max(W_kij, 0)·a_kj of every (sample, neuron) (N, neurons), computed in float32, and the arguments
    (K, scale) with which ``mapping.float32_sum_bounds`` bounds the exact sums from them (docs/math.md §5,
    float32 screening); in float64, and None, where a code is negative (``negative_code``)."""
    n = len(a[0])
    dtype = np.float64 if negative_code(a) else np.float32
    with np.errstate(over="ignore", invalid="ignore"):   # float32 overflow: inf or NaN, which rule out nothing
        p = sum(ops.weighted_sum(a_k.astype(dtype), np.clip(t.weight, 0, None).astype(dtype), t)
                for t, a_k in zip(layer.terms, a)).reshape(n, -1)
    return p, (None if dtype == np.float64 else fan_in_scale(layer, a))


def sum_bounds(p: np.ndarray, bounding: tuple[int, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) bounds of the exact sums from sums of ``positive_sums`` and its ``bounding``."""
    return (p, p) if bounding is None else float32_sum_bounds(p, *bounding)


def grid_screen(layer: ir.Affine, a: list[np.ndarray], rows: np.ndarray, cols: np.ndarray,
                positive: tuple[np.ndarray, np.ndarray], z: np.ndarray, running: float,
                coding: str = "dense") -> np.ndarray:
    """(P,) mask of the pairs (rows, cols) whose requirement R* cannot exceed ``running``: ``mapping.grid_bound``
    of R(σ) = b + E(σ) + I(σ) − c·σ (c = ``mapping.ramp_slope``: 1 − s, or 0 in the sparse coding), plus
    ``mapping.grid_margin``, is at most it (docs/math.md §4, §5, §9).

    positive: (low, high) bounds of Σ max(W, 0)·a of the pairs (P,) (``sum_bounds``); z = b + Σ W·a (N, neurons), so
    E(0) ≤ high and I(0) = z − b − Σ max(W, 0)·a ≤ z − b − low; E and I at the interior grid times from
    float32 products, the ramps (a − σ_g)+ of the pairs' samples for the interior times stacked on the batch
    axis (``ops.ramp_products``) against the weights of the pairs' channels (all channels for grouped
    convolutions), bounded from above by ``mapping.float32_sum_bounds`` (float64 where a code is negative).
    Beyond the largest code R falls (c > 0) or stays at b, its value there (c = 0), so the grid's maximum is
    R*'s bound.
    """
    n_out = layer.shape[0]
    per_channel = int(np.prod(layer.shape[1:]))
    fan_in = sum(int(np.prod(t.weight.shape[1:])) for t in layer.terms)
    channel = cols // per_channel
    samples, r_idx = np.unique(rows, return_inverse=True)
    sigmas = grid_times(np.concatenate([a_k[samples].reshape(-1) for a_k in a]))
    bias = ir.full_bias(layer).reshape(-1)[cols]
    e, i = np.zeros((len(rows), len(sigmas))), np.zeros((len(rows), len(sigmas)))
    e[:, 0] = positive[1]
    i[:, 0] = z[rows, cols] - bias - positive[0]
    inner = sigmas[1:-1]
    if len(inner):
        dtype = np.float64 if negative_code(a) else np.float32
        if all(isinstance(t, ir.Dense) or t.groups == 1 for t in layer.terms):   # only the pairs' channels
            subset, c_idx = np.unique(channel, return_inverse=True)
            at, n_ch = c_idx * per_channel + cols % per_channel, len(subset)
        else:
            subset, at, n_ch = None, cols, n_out
        def product(ramps):
            return sum(split_term(t, r_k, subset) for t, r_k in zip(layer.terms, ramps))

        with np.errstate(over="ignore", invalid="ignore"):   # float32 overflow: inf or NaN, which rule out nothing
            both = ops.ramp_products(product, [a_k[samples] for a_k in a], inner, dtype, per_channel * fan_in)
        pos, neg = both[:, r_idx, at].T, both[:, r_idx, at + n_ch * per_channel].T
        if dtype == np.float64:
            e[:, 1:-1], i[:, 1:-1] = pos, neg
        else:
            k, scale = fan_in_scale(layer, a)
            e[:, 1:-1] = float32_sum_bounds(pos, k, scale)[1]
            i[:, 1:-1] = -float32_sum_bounds(-neg, k, scale)[0]
    c = ramp_slope(ir.incoming_sum(layer), coding)[channel]
    w_neg = sum(t.weight.clip(None, 0).reshape(n_out, -1).sum(axis=1) for t in layer.terms)[channel]
    bound = grid_bound(e, i, bias, c, w_neg, sigmas)
    return bound + grid_margin(e, i, bias, fan_in) <= running


def update_requirement(layer: ir.Affine, a: list[np.ndarray], running: float,
                       z: np.ndarray | None = None, coding: str = "dense") -> tuple[float, int]:
    """max(running, the no-early-spike requirement of every (sample, neuron) pair of a batch), and the number of
    pairs whose exact requirement was evaluated.

    a: the layer's input codes, one (N, *in_shape) array per term; z: the layer's pre-activation
    ``ir.apply_linear(layer, a)`` when the caller has it already; ``coding`` chooses R's slope c
    (``mapping.ramp_slope``: 1 − s dense, 0 sparse, docs/math.md §9). A pair whose
    ``mapping.requirement_bound`` is at most ``running`` cannot raise the maximum (its
    requirement is below its bound; p there is the upper bound of its float32 sum from ``positive_sums``, and
    the plain bound b + p, never below it, screens the raw sums first: ``mapping.float32_sum_limit``),
    nor one whose grid bound is (``grid_screen``); the others get the
    exact requirement (``mapping.sorted_requirement`` on ``ops.sorted_fan_ins``), the largest bounds first,
    then those whose bound still exceeds the maximum found. The result does not depend on the batch order.
    """
    n = len(a[0])
    s = ir.incoming_sum(layer)
    slope = ramp_slope(s, coding)
    w_neg = sum(t.weight.clip(None, 0).reshape(t.weight.shape[0], -1).sum(axis=1) for t in layer.terms)
    p, bounding = positive_sums(layer, a)
    z = (ir.apply_linear(layer, a) if z is None else z).reshape(n, -1)
    s_flat, w_neg_flat = ops.per_neuron(s, layer.shape).reshape(-1), ops.per_neuron(w_neg, layer.shape).reshape(-1)
    c_flat = ops.per_neuron(slope, layer.shape).reshape(-1)
    bias = ir.full_bias(layer).reshape(-1)
    limit = running - bias
    rows, cols = np.nonzero(~(p <= (limit if bounding is None else float32_sum_limit(limit, *bounding))))
    positive = sum_bounds(p[rows, cols], bounding)
    with np.errstate(invalid="ignore"):   # inf − inf of a sum that overflowed float32: it bounds nothing
        bound = requirement_bound(z[rows, cols], bias[cols] + positive[1], s_flat[cols], w_neg_flat[cols], c_flat[cols])
    bound[np.isnan(bound)] = np.inf
    keep = bound > running
    rows, cols, bound, positive = rows[keep], cols[keep], bound[keep], (positive[0][keep], positive[1][keep])
    if len(rows):
        keep = ~grid_screen(layer, a, rows, cols, positive, z, running, coding)
        rows, cols, bound = rows[keep], cols[keep], bound[keep]
    if not len(rows):
        return running, 0
    order = np.argsort(-bound, kind="stable")
    rows, cols, bound = rows[order], cols[order], bound[order]
    per_channel = int(np.prod(layer.shape[1:]))
    sources, weights = term_sources(layer, a), [t.weight for t in layer.terms]
    head = max(1, (1 << 20) // sum(int(np.prod(w.shape[1:])) for w in weights))
    found, evaluated = running, 0
    # the largest bounds first: they raise the maximum soonest, and a requirement is at most its bound,
    # so the remaining pairs are only those whose bound still exceeds the maximum found
    for part in (slice(0, head), slice(head, None)):
        keep = bound[part] > found
        r, c = rows[part][keep], cols[part][keep]
        evaluated += len(r)

        def requirement(index, codes, w, c=c):
            ch = c[index] // per_channel
            return float(sorted_requirement(codes, w, bias[c[index]], s[ch], slope[ch]).max())

        for _, need in ops.sorted_fan_ins(requirement, sources, weights, layer.shape, r, c):
            found = max(found, need)
    return found, evaluated


def new_bounds(scaled: Scaled) -> tuple[dict, dict]:
    """Per ReLU layer: per-channel maximum activation 0 and requirement 0, before any batch."""
    layers = [n for n in scaled.graph.nodes if isinstance(n, ir.Affine) and n.relu]
    return {n.name: np.zeros(n.shape[0]) for n in layers}, {n.name: 0.0 for n in layers}


def batch_bounds(scaled: Scaled, batch: np.ndarray, input_range: tuple[float, float], zeta: float,
                 x_max: dict, required: dict, coding: str = "dense") -> tuple[int, np.ndarray]:
    """One batch of pass 2: raise ``x_max`` and ``required`` (per ReLU layer) in place; return the number of
    pairs whose exact requirement was evaluated and the logits of the scaled graph (the ANN's logits).

    ``required`` keeps a layer's largest R* that exceeded the window the activations seen so far give;
    ``mapping.layer_extent`` uses it only when it reaches (1 + ζ)·the final largest activation, so the
    window does not depend on how the batches were grouped (the largest R* of all pairs is found
    whenever it counts: no bound is below it), and per-batch results can be merged by maxima.
    """
    low, high = input_range
    input_name = scaled.graph.nodes[0].name
    codes = {input_name: (batch.astype(np.float64) - low) / (high - low)}
    last_use = {name: node.name for node in scaled.graph.nodes for name in node.inputs}
    pairs = 0
    for node in scaled.graph.nodes[1:]:
        if isinstance(node, ir.Affine) and node.relu:
            inputs = [codes[name] for name in node.inputs]
            c = ops.channel_axis(scaled.scales[node.name], len(node.shape))
            z = ir.apply_linear(node, inputs)
            code = np.maximum(z, 0.0)
            x_max[node.name] = np.maximum(x_max[node.name], channel_max(code / c))
            window = (1.0 + zeta) * float(np.max(c * x_max[node.name].reshape(c.shape)))
            threshold = max(required[node.name], window)
            found, evaluated = update_requirement(node, inputs, threshold, z, coding)
            pairs += evaluated
            if found > threshold:   # some pair would fire early in the window of the activations alone
                required[node.name] = found
            codes[node.name] = code
        else:
            codes[node.name] = ir.apply(node, [codes[name] for name in node.inputs])
        for name in node.inputs:   # free the codes no later node reads
            if last_use[name] == node.name:
                codes.pop(name, None)
    return pairs, codes[scaled.graph.nodes[-1].name]


def forward_check(model_path, sess: ort.InferenceSession, batch: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """max |logits − onnxruntime's| on the first CHECK_SAMPLES of a batch, and the largest |logit| of onnxruntime;
    a ModelError when the difference shows a wrong import (above FORWARD_TOLERANCE). ``logits`` are those of the
    batch from the float64 forward pass of the scaled graph (``batch_bounds``), which computes the imported
    graph's function: the check covers the import and the scaling."""
    ref = logits[:CHECK_SAMPLES]
    onnx_logits = run_model(sess, batch[:CHECK_SAMPLES])[0].astype(np.float64)
    if onnx_logits.shape != ref.shape:
        raise ModelError(f"{model_path}: logits of shape {onnx_logits.shape[1:]} from onnxruntime, "
                         f"{ref.shape[1:]} from the imported graph")
    forward_error = float(np.max(np.abs(ref - onnx_logits)))
    max_logit = float(np.max(np.abs(onnx_logits)))
    if forward_error > FORWARD_TOLERANCE * max(1.0, max_logit):
        raise ModelError(f"{model_path}: the imported graph does not reproduce onnxruntime: max |logit "
                         f"difference| {forward_error:.3g} for logits up to {max_logit:.3g}")
    return forward_error, max_logit


def calibrate(model_path, graph: ir.Graph, scaled: Scaled, data, input_range: tuple[float, float],
              spec: str = "calibration data", batch_size: int = 256, progress=None, zeta: float = 0.5,
              client=None, coding: str = "dense") -> Calibration:
    """Pass 2: the scaled graph's float64 forward pass over ``data`` in batches, and the bounds of every ReLU layer.

    The activations are those of the float64 network the simulator runs (in code units, divided by
    the layer's scale c), so the window holds them exactly; onnxruntime's float32 activations may
    lie a rounding below them (docs/math.md §4); ``coding`` chooses the requirement R* (§4 dense, §9 sparse).
    With a Dask ``client`` the batches (the same ones)
    run on its workers (``shard.calibrate``), and the artifact is the same.
    """
    if client is not None:
        from .shard import calibrate as sharded
        return sharded(client, model_path, graph, scaled, spec, len(data), input_range, batch_size, progress, zeta,
                       coding)
    sess = session(model_path, [graph.output_name])
    x_max, required = new_bounds(scaled)
    forward_error = max_logit = 0.0
    requirement_pairs = 0
    for start, batch in batches(data, batch_size, spec):
        pairs, logits = batch_bounds(scaled, batch, input_range, zeta, x_max, required, coding)
        requirement_pairs += pairs
        if start == 0:
            forward_error, max_logit = forward_check(model_path, sess, batch, logits)
        if progress is not None:
            progress(len(batch), len(data))
    return Calibration(x_max, required, forward_error, max_logit, requirement_pairs)
