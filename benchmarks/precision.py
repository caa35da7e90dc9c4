"""How exact is a converted network in float64? The logit errors of a sweep case against a longdouble truth
(docs/math.md §1, "How exact is exact"; docs/sweep.md).

For one converted case (a folder of benchmarks/sweep.py with model.onnx, model.snn.h5 and test.npy) it computes
the logits of the same network several ways and prints each one's largest error against the truth, relative to
the largest |logit|:

- truth: the ANN forward pass of the imported graph in np.longdouble (80-bit on x86: 11 more mantissa bits
  than float64), its float64 parameters taken as exact;
- ANN float64: ``ir.forward``, the reference ``verify`` compares with;
- SNN float64: the simulator as ``verify`` runs it (absolute spike times t ~ T up to the latency);
- SNN longdouble: the simulator's own code (``CompiledLayer.fire``, fast path and certificates, and the readout)
  on longdouble spike times, with the windows, thresholds and slopes widened to longdouble: only the arithmetic
  changes, the artifact's float64 parameters stay;
- SNN float64, relative times: the fast path written on codes a = T + B − t relative to each population's own
  window (no absolute time ever formed), as the simulator could keep them.

Then the bounds: the first-order bounds of ``relu2snn_cli.rounding`` for the simulator and the forward pass,
their sum (``logit_rounding_bound`` of verify), and the textbook worst-case bound through |J| (``worst_case``).

    python benchmarks/sweep.py --only mnasnet0_5-torchscript13 --work /tmp/relu2snn-sweep
    python benchmarks/precision.py /tmp/relu2snn-sweep/mnasnet0_5-torchscript13 [--samples 8]

Needs only the library (no torch): the sweep builds the folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from relu2snn_cli import h5io, ir, ops, rounding, snn
from relu2snn_cli.convert import import_model
from relu2snn_cli.simulator import CompiledLayer, Simulator, move

LD = np.longdouble


def forward(graph: ir.Graph, x: np.ndarray, dtype) -> np.ndarray:
    """The ANN forward pass of ``ir.forward`` with every activation held in ``dtype`` (parameters float64)."""
    out = {graph.input.name: np.asarray(x, dtype=dtype)}
    for node in graph.nodes[1:]:
        out[node.name] = ir.apply(node, [out[name] for name in node.inputs])
    return out[graph.nodes[-1].name]


def chained_windows(net: snn.Network) -> dict[str, tuple]:
    """Every node's window in longdouble, its start recomputed from the chain T_n = T_in + B_in (docs/math.md
    §1, §2; ``snn.merge_windows``) and its length B_n the artifact's: the float64 starts the artifact stores are
    roundings of these, and a spike time measured against a rounded start carries that rounding."""
    windows = {}
    for node in net.nodes:
        if isinstance(node, snn.Encoder):
            windows[node.name] = (LD(node.window[0]), LD(node.window[1]))
            continue
        (t_in, b_in), _ = snn.merge_windows([windows[name] for name in node.inputs])
        windows[node.name] = (t_in + b_in, LD(node.window[1])) if isinstance(node, snn.SpikingLayer) else (t_in, b_in)
    return windows


def widened(net: snn.Network) -> dict[str, CompiledLayer]:
    """The simulator's compiled layers with their windows, thresholds, drives and slopes in longdouble."""
    windows = chained_windows(net)
    compiled = {}
    for node in net.nodes:
        if isinstance(node, snn.SpikingLayer):
            layer = CompiledLayer(node, [windows[name] for name in node.inputs])
            layer.t_end = windows[node.name][0] + windows[node.name][1]
            layer.alpha = layer.alpha.astype(LD)
            layer.theta = layer.theta.astype(LD)
            sums = sum(syn.J.reshape(syn.J.shape[0], -1).astype(LD).sum(axis=1) for syn in node.synapses)
            layer.slope = layer.alpha + ops.per_neuron(sums, node.shape).reshape(-1)
            compiled[node.name] = layer
    return compiled


def simulate_longdouble(net: snn.Network, x: np.ndarray) -> np.ndarray:
    """Logits of the simulator's arithmetic in longdouble (spike times, codes, drives, crossings, readout)."""
    windows = chained_windows(net)
    compiled = widened(net)
    enc = net.nodes[0]
    t0, b0 = windows[enc.name]
    times = {enc.name: t0 + b0 - (x.astype(LD) - LD(enc.low)) / (LD(enc.high) - LD(enc.low)) * b0}
    for node in net.nodes[1:]:
        t_in = [times[name] for name in node.inputs]
        if isinstance(node, snn.SpikingLayer):
            out = compiled[node.name].fire(t_in)[0]
            if np.any(out < compiled[node.name].t_start):
                raise SystemExit(f"{node.name}: early spikes in longdouble")
            times[node.name] = out
        elif isinstance(node, snn.Readout):
            end = windows[node.name][0] + windows[node.name][1]
            (_, _), delays = snn.merge_windows([windows[name] for name in node.inputs])
            u = sum(ops.conv(np.maximum(end - (t + d), 0), s.J, s.strides, s.pads, s.dilations, s.groups)
                    if s.is_conv else np.maximum(end - (t + d), 0).reshape(len(t), -1) @ s.J.T
                    for s, t, d in zip(node.synapses, t_in, delays))
            alpha = ops.per_neuron(node.alpha.astype(LD), node.shape)
            return alpha * windows[node.name][1] + u
        elif isinstance(node, snn.Concat):
            _, delays = snn.merge_windows([windows[name] for name in node.inputs])
            times[node.name] = ops.concat([t + d for t, d in zip(t_in, delays)], node.axis)
        else:
            times[node.name] = move(node, t_in)
    raise SystemExit("no readout")


def simulate_relative(net: snn.Network, x: np.ndarray) -> np.ndarray:
    """Logits of the fast path (docs/math.md §1) in float64 on codes relative to each population's own window:
    a = (x − low)/(high − low) for the input; a = max(B − τ, 0) with τ = (ϑ − α·B_in − Σ J·a)/(α + Σ J) the
    crossing time after the input window's end; V = α·B_in + Σ J·a for the readout. Exact where no neuron
    fires early, as in the cases here (checked: ``verify`` reports 0 early spikes)."""
    enc = net.nodes[0]
    codes = {enc.name: (np.asarray(x, dtype=np.float64) - enc.low) / (enc.high - enc.low) * enc.window[1]}
    for node in net.nodes[1:]:
        a_in = [codes[name] for name in node.inputs]
        if isinstance(node, (snn.SpikingLayer, snn.Readout)):
            u = sum(ops.conv(a, s.J, s.strides, s.pads, s.dilations, s.groups) if s.is_conv
                    else a.reshape(len(a), -1) @ s.J.T for s, a in zip(node.synapses, a_in))
            _, b_in = net.input_window(node)
            alpha = ops.per_neuron(node.alpha, node.shape)
            if isinstance(node, snn.Readout):
                return alpha * b_in + u
            theta = ops.per_neuron(node.theta, node.shape)
            slope = alpha + ops.per_neuron(sum(s.J.reshape(s.J.shape[0], -1).sum(axis=1) for s in node.synapses),
                                           node.shape)
            with np.errstate(divide="ignore"):
                tau = np.where(slope > 0, (theta - alpha * b_in - u) / slope, np.inf)
            codes[node.name] = np.maximum(node.window[1] - tau, 0.0)
        elif isinstance(node, snn.SpikePool):   # the latest spike is the smallest code, the earliest the largest
            geometry = (node.kernel, node.strides, node.pads, node.dilations, node.ceil_mode)
            codes[node.name] = ops.pool_channels(a_in[0], node.latest, ops.max_pool, ops.min_pool, *geometry)
        elif isinstance(node, snn.Concat):   # each input's code is relative to its own window already
            codes[node.name] = ops.concat(a_in, node.axis)
        else:
            codes[node.name] = node.move(a_in)
    raise SystemExit("no readout")


def worst_case(net: snn.Network, times: dict[str, np.ndarray]) -> np.ndarray:
    """The textbook bound instead of ``rounding.snn_bound``'s first-order one: each population's rounding
    (``rounding.snn_local``) carried on through |J|/s, every layer's worst case (a max pooling: the largest
    bound of its window), E_out = [active]·(|J|·E_in/s + λ); the readout: |J|·E_in + λ. Per sample and logit."""
    local = rounding.snn_local(net, times)
    bounds = {}
    for node in net.nodes:
        parts = local.get(node.name)
        if isinstance(node, (snn.SpikingLayer, snn.Readout)):
            lam, active, slope = parts
            spread = sum(ops.weighted_sum(bounds[s.input], np.abs(s.J), s) for s in node.synapses)
            bounds[node.name] = np.where(active, spread / slope + lam, 0.0)
            if isinstance(node, snn.Readout):
                return bounds[node.name]
        elif isinstance(node, snn.Encoder):
            bounds[node.name] = parts[0]
        elif isinstance(node, snn.SpikePool):
            geometry = (node.kernel, node.strides, node.pads, node.dilations, node.ceil_mode)
            bounds[node.name] = ops.max_pool(bounds[node.inputs[0]], *geometry)
        else:
            kind = next(k for k in ir.MOVEMENT if isinstance(node, k))
            moved = kind.move(node, [bounds[name] for name in node.inputs])
            bounds[node.name] = moved + (parts[0] if parts is not None else 0.0)
    raise SystemExit("no readout")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a case folder of benchmarks/sweep.py")
    parser.add_argument("--samples", type=int, default=8, help="the first samples of test.npy")
    args = parser.parse_args(argv)
    net = h5io.read(args.folder / "model.snn.h5")
    graph = import_model(args.folder / "model.onnx", args.samples, net.meta.get("source_output")).graph
    x = np.load(args.folder / "test.npy")[:args.samples]
    truth = forward(graph, x, LD)
    scale = float(np.max(np.abs(truth)))
    ann = ir.forward(graph, x)
    result = Simulator(net).run(x, keep_times=True)
    rows = {
        "ANN float64 (verify's reference)": ann,
        "SNN float64 (the simulator)": result.logits,
        "SNN longdouble (the simulator's code)": simulate_longdouble(net, x),
        "SNN float64, relative times": simulate_relative(net, x),
    }
    print(f"{args.folder.name}: {len(x)} samples, latency T_out = {net.latency:.4g}, max |logit| = {scale:.4g}, "
          f"early spikes {result.counts.early_spikes}, event-scanned pairs {result.counts.scanned}")
    print(f"  {'logits':40s} max |error vs longdouble ANN| / max |logit|")
    for name, logits in rows.items():
        print(f"  {name:40s} {float(np.max(np.abs(logits.astype(LD) - truth))) / scale:.2e}")
    print(f"  {'SNN float64 vs ANN float64 (verify)':40s} {float(np.max(np.abs(result.logits - ann))) / scale:.2e}")
    values = ir.forward(graph, x, keep=True)
    snn_bound, ann_bound = rounding.snn_bound(net, result.times), rounding.ann_bound(graph, values)
    print(f"  {'first-order bound of the SNN float64':40s} {float(np.max(snn_bound)) / scale:.2e}")
    print(f"  {'first-order bound of the ANN float64':40s} {float(np.max(ann_bound)) / scale:.2e}")
    print(f"  {'logit_rounding_bound (verify: the sum)':40s} {float(np.max(snn_bound + ann_bound)) / scale:.2e}")
    print(f"  {'worst-case bound of the SNN (|J| pass)':40s} {float(np.max(worst_case(net, result.times))) / scale:.2e}")
    for name, logits, bound in (("SNN", result.logits, snn_bound), ("ANN", ann, ann_bound)):
        error = np.abs(logits.astype(LD) - truth).astype(np.float64).reshape(bound.shape)
        print(f"  {name} error within its bound for every (sample, logit): {bool(np.all(error <= bound))}, "
              f"smallest bound / error {float(np.min(bound / np.maximum(error, 1e-300))):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
