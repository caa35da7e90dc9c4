"""A converted network run in Brian2, from a plain description (docs/exports.md, "Brian2").

This module needs only numpy and brian2 and imports nothing from relu2snn: ``relu2snn export
--format brian2`` copies its source into the exported script, so the script and ``relu2snn
crosscheck`` run the same code. The description ("spec") is the network of docs/math.md as
plain data: a list of node dicts (``relu2snn_cli.export.brian2.network_spec``) and a dict of
arrays.

Time is in units of τ_c, one τ_c = 1 ms of Brian2 time, shifted by ``offset`` (a multiple of dt
minus T_out, at least the earliest input's lateness before 0) so that T_out falls on the grid and
no input fires before 0. Every spiking neuron (docs/math.md §1) is

    dv/dt = α·[t > T_in] + β·[t > T] + I,   I += J on each input spike (after its delay),

fires when v ≥ ϑ or at the window end, once (a ``fired`` flag); β is the sum of J over the
padded taps of a convolution, virtual inputs firing at the end T of the input window. The
switches are written clip((t − T_in)/dt, 0, 1): Euler's step then adds exactly the part of the
ramp that falls in the step, so v equals the potential on the grid given the grid's spikes. The
readout is the same neuron without a threshold: its v at T_out is the logit. Max pooling
(docs/math.md §6) is a neuron that counts its input spikes: it fires on the first (earliest
spike), or for the ``latest`` channels once every input in its window has fired.
"""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np

NEURON = """
dv/dt = (alpha*clip((t - t_on)/dt, 0, 1) + beta*clip((t - t_pad)/dt, 0, 1) + I) / ms : 1
I : 1
alpha : 1 (constant)
beta : 1 (constant)
theta : 1 (constant)
fired : boolean
"""
POOL = """
count : 1
need : 1 (constant)
fired : boolean
"""


# ----------------------------------------------------------------------------- the spec as text

def pack(nodes: list, arrays: dict) -> str:
    """The spec as one ASCII string: base64 of an .npz holding the arrays and the node list as JSON."""
    buf = io.BytesIO()
    np.savez_compressed(buf, __nodes__=np.array(json.dumps(nodes)), **arrays)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def unpack(text: str) -> tuple[list, dict]:
    """The inverse of ``pack``."""
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(str(arrays.pop("__nodes__"))), arrays


# ----------------------------------------------------------------------------- connectivity

def conv_taps(J: np.ndarray, in_shape, strides, pads, dilations, groups: int):
    """Every tap of a 1-D or 2-D convolution: (pre flat index, post flat index, weight) of the taps that
    read the input, and the per-post-neuron sum β of the weights of the taps that read padding."""
    if J.ndim == 3:   # 1-D as a height-1 image
        J, in_shape = J[:, :, None, :], (in_shape[0], 1, in_shape[1])
        strides, dilations = (1, strides[0]), (1, dilations[0])
        pads = (0, pads[0], 0, pads[1])
    o, cg, kh, kw = J.shape
    c, h, w = in_shape
    ho = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    oo, yy, xx, cc, ky, kx = np.meshgrid(np.arange(o), np.arange(ho), np.arange(wo), np.arange(cg), np.arange(kh),
                                         np.arange(kw), indexing="ij")
    iy = yy * strides[0] - pads[0] + ky * dilations[0]
    ix = xx * strides[1] - pads[1] + kx * dilations[1]
    ic = (oo // (o // groups)) * cg + cc
    post = (oo * ho + yy) * wo + xx
    weight = J[oo, cc, ky, kx]
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    pre = (ic * h + np.clip(iy, 0, h - 1)) * w + np.clip(ix, 0, w - 1)
    beta = np.zeros(o * ho * wo)
    np.add.at(beta, post[~inside], weight[~inside])
    return pre[inside], post[inside], weight[inside], beta


def dense_taps(J: np.ndarray):
    """(pre, post, weight) of the non-zero entries of a dense J (out, in); no padding (β = 0)."""
    post, pre = np.nonzero(J)
    return pre, post, J[post, pre], np.zeros(J.shape[0])


def pool_taps(in_shape, kernel, strides, pads, dilations, ceil_mode: bool):
    """(pre, post) of every input in each pooling window (padding left out), and the output shape."""
    if len(kernel) == 1:
        in_shape = (in_shape[0], 1, in_shape[1])
        kernel, strides, dilations, pads = (1, kernel[0]), (1, strides[0]), (1, dilations[0]), (0, pads[0], 0, pads[1])
    c, h, w = in_shape

    def size(n, k, s, p0, p1, d):
        room = n + p0 + p1 - ((k - 1) * d + 1)
        out = (-(-room // s) if ceil_mode else room // s) + 1
        return out - 1 if ceil_mode and (out - 1) * s >= n + p0 else out

    ho = size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0])
    wo = size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1])
    cc, yy, xx, ky, kx = np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo), np.arange(kernel[0]),
                                     np.arange(kernel[1]), indexing="ij")
    iy = yy * strides[0] - pads[0] + ky * dilations[0]
    ix = xx * strides[1] - pads[1] + kx * dilations[1]
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    pre = (cc * h + iy) * w + ix
    post = (cc * ho + yy) * wo + xx
    return pre[inside], post[inside]


def routes(nodes: list) -> dict:
    """For every node, where each of its neurons lives: (index of the node holding it, index in that node,
    extra delay) as three arrays of the node's shape. Encoders, spiking layers and pools hold neurons;
    reshaping, transposing and concatenating only move them (docs/math.md §2)."""
    out = {}
    for group, node in enumerate(nodes):
        kind, shape = node["kind"], tuple(node["shape"])
        if kind in ("Encoder", "SpikingLayer", "SpikePool"):
            size = int(np.prod(shape))
            out[node["name"]] = (np.full(shape, group), np.arange(size).reshape(shape), np.zeros(shape))
        elif kind == "Reshape":
            out[node["name"]] = tuple(a.reshape(shape) for a in out[node["input"]])
        elif kind == "Transpose":
            out[node["name"]] = tuple(np.transpose(a, node["perm"]) for a in out[node["input"]])
        elif kind == "Concat":
            parts = [out[name] for name in node["inputs"]]
            out[node["name"]] = tuple(np.concatenate([p[i] + (d if i == 2 else 0) for p, d in
                                                      zip(parts, node["delays"])], axis=node["axis"])
                                      for i in range(3))
    return out


# ----------------------------------------------------------------------------- the Brian2 network

def build(nodes: list, arrays: dict, x: np.ndarray, dt: float):
    """A Brian2 Network of the spec for the N samples x (N, *input shape), all run side by side.

    Sets Brian2's global ``prefs.codegen.target`` ("numpy") and ``defaultclock.dt``. Returns (network,
    spike monitors per group name, readout group, offset, number of steps).
    """
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"
    b2.defaultclock.dt = dt * b2.ms
    n = len(x)
    enc = nodes[0]
    a = (np.asarray(x, dtype=np.float64).reshape(n, -1) - enc["low"]) / (enc["high"] - enc["low"])
    t_in = enc["window"][0] + enc["window"][1] - a * enc["window"][1]   # docs/math.md §7
    t_out = nodes[-1]["window"][0] + nodes[-1]["window"][1]
    steps = int(np.ceil((t_out + max(0.0, -float(t_in.min()))) / dt - 1e-9))
    offset = steps * dt - t_out
    where = routes(nodes)
    groups, sizes, monitors, objects = [], [], {}, []
    readout = None
    for k, node in enumerate(nodes):
        kind, name = node["kind"], node["name"]
        size = int(np.prod(node["shape"]))
        if kind == "Encoder":
            ticks = np.round((t_in + offset) / dt)
            g = b2.SpikeGeneratorGroup(n * size, np.arange(n * size), ticks.reshape(-1) * dt * b2.ms,
                                       name=f"g{k}", order=2 * k)
        elif kind in ("SpikingLayer", "Readout"):
            t_start, b_in = node["input_window"]
            spiking = kind == "SpikingLayer"
            namespace = {"t_on": (t_start + offset) * b2.ms, "t_pad": (t_start + b_in + offset) * b2.ms,
                         "t_end": (sum(node["window"]) + offset) * b2.ms}
            g = b2.NeuronGroup(n * size, NEURON, method="euler", namespace=namespace, name=f"g{k}",
                               threshold="not fired and (v >= theta or t > t_end - 0.001*dt)" if spiking else None,
                               reset="fired = True" if spiking else None)
            g.alpha = np.tile(arrays[f"{k}/alpha"].reshape(-1), n)
            if spiking:
                g.theta = np.tile(arrays[f"{k}/theta"].reshape(-1), n)
            beta = np.zeros(size)
            for m, syn in enumerate(node["synapses"]):
                J = arrays[f"{k}/J{m}"]
                if J.ndim == 2:
                    pre, post, w, b = dense_taps(J)
                else:
                    pre, post, w, b = conv_taps(J, syn["in_shape"], syn["strides"], syn["pads"], syn["dilations"],
                                                syn["groups"])
                beta += b
                objects += connect(b2, groups, sizes, where[syn["input"]], pre, post, w, syn["delay"], g, size, n,
                                   "I_post += w", f"s{k}_{m}", dt)
            g.beta = np.tile(beta, n)
            if spiking:
                g.thresholder["spike"].order = 2 * k
            else:
                readout = g
        elif kind == "SpikePool":
            g = b2.NeuronGroup(n * size, POOL, threshold="not fired and count >= need", reset="fired = True",
                               name=f"g{k}")
            pre, post = pool_taps(node["in_shape"], node["kernel"], node["strides"], node["pads"], node["dilations"],
                                  node["ceil_mode"])
            count = np.bincount(post, minlength=size).astype(float)
            latest = np.zeros(node["shape"], dtype=bool)
            latest[list(node["latest"])] = True
            g.need = np.tile(np.where(latest.reshape(-1), count, 1.0), n)
            g.thresholder["spike"].order = 2 * k
            objects += connect(b2, groups, sizes, where[node["input"]], pre, post, np.ones(len(pre)), 0.0, g, size,
                               n, "count_post += 1", f"s{k}", dt, order=2 * k - 1)
        else:
            groups.append(None)
            sizes.append(0)
            continue
        groups.append(g)
        sizes.append(size)
        objects.append(g)
        if kind != "Readout":
            monitors[name] = b2.SpikeMonitor(g, name=f"m{k}")
            objects.append(monitors[name])
    return b2.Network(*objects), monitors, readout, offset, steps


def connect(b2, groups, sizes, route, pre, post, weight, delay, target, size, n, on_pre, name, dt, order=None):
    """Synapses from the groups that hold ``pre`` (flat indices into the input node, resolved by its
    ``route``) to ``post`` of ``target``, replicated for the n samples; one Synapses per source group.
    With ``order`` the synapses act in the threshold slot just before the target's threshold test, so a
    pool fires in the same step as its input."""
    group, index, extra = (r.reshape(-1) for r in route)
    made = []
    for gi in np.unique(group[pre]):
        sel = group[pre] == gi
        src = groups[gi]
        s = b2.Synapses(src, target, "w : 1 (constant)", on_pre=on_pre, name=f"{name}_{gi}")
        base_pre, base_post = index[pre[sel]], post[sel]
        shift = np.arange(n)[:, None]
        s.connect(i=(shift * sizes[gi] + base_pre).reshape(-1), j=(shift * size + base_post).reshape(-1))
        s.w = np.tile(weight[sel], n)
        delays = np.tile(delay + extra[pre[sel]], n)
        s.delay = np.round(delays / dt) * dt * b2.ms
        if order is not None:
            s.pre.when, s.pre.order = "thresholds", order
        made.append(s)
    return made


def run(nodes: list, arrays: dict, x: np.ndarray, dt: float) -> dict:
    """Run the N samples x in Brian2 with time step dt (in τ_c).

    Returns ``logits`` (N, *readout shape), ``times`` {node name: (N, *shape) spike times in relu2snn's
    time, NaN where a neuron did not fire}, ``seconds`` (build and run) and ``steps``.
    """
    import brian2 as b2

    clock = time.perf_counter()
    net, monitors, readout, offset, steps = build(nodes, arrays, x, dt)
    net.run((steps + 1) * dt * b2.ms, namespace={})   # the readout's v after the last step is V at T_out
    n = len(x)
    shapes = {node["name"]: tuple(node["shape"]) for node in nodes}
    times = {}
    for name, mon in monitors.items():
        size = int(np.prod(shapes[name]))
        t = np.full(n * size, np.nan)
        t[np.asarray(mon.i)] = np.asarray(mon.t / b2.ms) - offset
        times[name] = t.reshape((n,) + shapes[name])
    logits = np.asarray(readout.v[:]).reshape((n,) + shapes[nodes[-1]["name"]])
    return {"logits": logits, "times": times, "seconds": time.perf_counter() - clock, "steps": steps}
