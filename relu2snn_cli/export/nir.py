"""NIR export and import of a converted network (docs/exports.md, "NIR").

Each spiking layer becomes, for every synapse set m: [Delay] → Linear/Conv (J) → I (spikes become
current steps) → the drive (identity Affine/Conv with bias α) → IF (the current becomes a ramp),
with the threshold ϑ + α·T_in, since a NIR bias is on from t = 0 while relu2snn's ramp starts at the
input window start T_in. The readout is the same chain ending in an I node whose potential at T_out is
the logit. Max pooling becomes a depthwise all-ones Conv into an IF that fires on its first input spike
(threshold 1/2), or, for the ``latest`` channels, once every input in its window has fired (threshold
count − 1/2). A Reshape that flattens becomes Flatten. What NIR cannot hold (windows, ϑ and the
readout's α exactly, certificates, scales, x_max, X_n, the artifact's meta) is stored in node and graph
metadata; ``from_nir`` rebuilds the same ``snn.Network`` from both, and refuses a graph whose
metadata and primitives disagree.
"""

from __future__ import annotations

import json

import numpy as np

from .. import h5io, ops, snn
from ..errors import ExportError
from . import require

FORMAT = "relu2snn-nir"
VERSION = 1
CHECK = 1e-9   # relative agreement required between a primitive and the exact value kept in metadata


def _nir():
    require("nir", "nir", "export --format nir")
    import nir
    return nir


def _symmetric(name: str, pads) -> tuple[int, ...]:
    """NIR pads both ends of an axis alike: (begins, ends) must be equal."""
    n = len(pads) // 2
    if tuple(pads[:n]) != tuple(pads[n:]):
        raise ExportError(f"{name}: padding {tuple(pads)} differs at the two ends of an axis; NIR pads both ends "
                          "alike (docs/exports.md)")
    return tuple(int(p) for p in pads[:n])


def _conv(nir, name: str, in_shape, J, strides, pads, dilations, groups, bias, metadata=None):
    """A NIR Conv1d or Conv2d of weight J with zero padding ``pads`` (symmetric) and the given bias."""
    pad = _symmetric(name, pads)
    meta = {} if metadata is None else {"metadata": metadata}
    if J.ndim == 3:
        return nir.Conv1d(input_shape=int(in_shape[1]), weight=np.array(J), stride=int(strides[0]), padding=pad[0],
                          dilation=int(dilations[0]), groups=int(groups), bias=np.array(bias, dtype=np.float64),
                          **meta)
    return nir.Conv2d(input_shape=tuple(int(v) for v in in_shape[1:]), weight=np.array(J),
                      stride=tuple(int(v) for v in strides), padding=pad, dilation=tuple(int(v) for v in dilations),
                      groups=int(groups), bias=np.array(bias, dtype=np.float64), **meta)


def ungroup(J: np.ndarray, groups: int) -> np.ndarray:
    """The weights (O, C/groups, *k) of a grouped convolution as those (O, C, *k) of the same convolution with
    groups = 1: output channel o reads input channels g·C/groups … (g + 1)·C/groups − 1 of its group g."""
    o, cg = J.shape[:2]
    full = np.zeros((o, cg * groups) + J.shape[2:])
    for g in range(groups):
        rows = slice(g * (o // groups), (g + 1) * (o // groups))
        full[rows, g * cg:(g + 1) * cg] = J[rows]
    return full


def regroup(where: str, full: np.ndarray, groups: int) -> np.ndarray:
    """The inverse of ``ungroup``; refuses weights outside the groups."""
    o, c = full.shape[:2]
    cg = c // groups
    J = np.concatenate([full[g * (o // groups):(g + 1) * (o // groups), g * cg:(g + 1) * cg] for g in range(groups)])
    if not np.array_equal(ungroup(J, groups), full):
        raise ExportError(f"{where}: weights outside the {groups} groups its metadata names")
    return J


def _drive(nir, name: str, shape, bias):
    """The identity map plus a constant bias, per neuron of a dense layer or per channel of a convolution."""
    if len(shape) == 1:
        return nir.Affine(weight=np.eye(shape[0]), bias=np.array(bias, dtype=np.float64))
    if np.ndim(bias) != 1:
        raise ExportError(f"{name}: its drive α is a map; NIR holds a per-channel bias only (docs/exports.md)")
    eye = np.eye(shape[0]).reshape((shape[0], shape[0]) + (1,) * (len(shape) - 1))
    rank = len(shape) - 1
    return _conv(nir, name, shape, eye, (1,) * rank, (0,) * (2 * rank), (1,) * rank, 1, bias)


def to_nir(net: snn.Network):
    """The NIR graph of ``net`` (docs/exports.md, "NIR"): node keys "input", "n<k>" (node k's spikes, or its
    potential for the readout), "n<k>.delay<m>", "n<k>.flat<m>", "n<k>.syn<m>", "n<k>.current", "n<k>.drive",
    "n<k>.taps" (pooling), "output"."""
    nir = _nir()
    nodes, edges, key = {}, [], {}
    for k, node in enumerate(net.nodes):
        meta = {"name": node.name, "kind": type(node).__name__, "window": np.array(node.window)}
        here = f"n{k}"
        if isinstance(node, snn.Encoder):
            here = "input"
            nodes[here] = nir.Input(input_type={"input": np.array(node.shape)},
                                    metadata={**meta, "low": float(node.low), "high": float(node.high)})
        elif isinstance(node, (snn.SpikingLayer, snn.Readout)):
            t_in, b_in = net.input_window(node)
            for m, s in enumerate(node.synapses):
                src = key[s.input]
                if s.delay:
                    nodes[f"{here}.delay{m}"] = nir.Delay(delay=np.full(s.in_shape, float(s.delay)))
                    edges.append((src, f"{here}.delay{m}"))
                    src = f"{here}.delay{m}"
                if s.is_conv:
                    # NIR types a convolution's input as weight.shape[1] channels whatever its groups: a grouped
                    # one is written as the full convolution, zero outside its groups (docs/exports.md)
                    nodes[f"{here}.syn{m}"] = _conv(nir, node.name, s.in_shape, ungroup(s.J, s.groups), s.strides,
                                                    s.pads, s.dilations, 1, np.zeros(s.J.shape[0]),
                                                    metadata={"groups": int(s.groups)})
                else:
                    if len(s.in_shape) > 1:   # dense synapses read the input flattened in C order
                        nodes[f"{here}.flat{m}"] = nir.Flatten(input_type={"input": np.array(s.in_shape)},
                                                               start_dim=0, end_dim=-1)
                        edges.append((src, f"{here}.flat{m}"))
                        src = f"{here}.flat{m}"
                    nodes[f"{here}.syn{m}"] = nir.Linear(weight=np.array(s.J))
                edges += [(src, f"{here}.syn{m}"), (f"{here}.syn{m}", f"{here}.current")]
            ones = np.ones(node.shape)
            nodes[f"{here}.current"] = nir.I(r=ones)
            edges += [(f"{here}.current", f"{here}.drive"), (f"{here}.drive", here)]
            meta["source"] = node.source
            meta["origin"] = node.origin
            if isinstance(node, snn.SpikingLayer):
                nodes[f"{here}.drive"] = _drive(nir, node.name, node.shape, node.alpha)
                alpha = ops.per_neuron(node.alpha, node.shape)
                threshold = ops.per_neuron(node.theta, node.shape) + alpha * t_in
                meta.update(theta=np.array(node.theta), certified=np.array(node.certified), scale=np.array(node.scale),
                            x_max=np.array(node.x_max), x_n=float(node.x_n))
                nodes[here] = nir.IF(r=ones, v_threshold=np.array(threshold), v_reset=np.zeros(node.shape),
                                     metadata=meta)
            else:
                # read once, at T_out: a bias on from t = 0 must give α·B_in there
                bias = np.array(node.alpha) * b_in / (t_in + b_in)
                nodes[f"{here}.drive"] = _drive(nir, node.name, node.shape, bias)
                meta["alpha"] = np.array(node.alpha)
                nodes[here] = nir.I(r=ones, metadata=meta)
                nodes["output"] = nir.Output(output_type={"output": np.array(node.shape)})
                edges.append((here, "output"))
        elif isinstance(node, snn.SpikePool):
            _pool(nir, node, nodes, edges, key[node.input], here, meta)
        elif isinstance(node, snn.Reshape) and len(node.shape) == 1:
            nodes[here] = nir.Flatten(input_type={"input": np.array(node.in_shape)}, start_dim=0, end_dim=-1,
                                      metadata=meta)
            edges.append((key[node.input], here))
        else:
            what = "a reshape other than a flatten" if isinstance(node, snn.Reshape) else type(node).__name__
            raise ExportError(f"{node.name}: NIR has no primitive for {what} (docs/exports.md)")
        key[node.name] = here
    metadata = {"format": FORMAT, "format_version": VERSION, "nodes": len(net.nodes),
                "meta": json.dumps(net.meta, sort_keys=True), "content_sha256": h5io.content_hash(net)}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def _pool(nir, node: snn.SpikePool, nodes: dict, edges: list, src: str, here: str, meta: dict) -> None:
    """Max pooling as SumPool2d (the count of input spikes in each window) into an IF: threshold 1/2 fires on
    the first input spike (earliest), count − 1/2 once every input of the window has fired (``latest``)."""
    if len(node.kernel) != 2 or tuple(node.dilations) != (1, 1):
        raise ExportError(f"{node.name}: NIR pools in 2-D without dilation only (SumPool2d); this pooling is "
                          f"{len(node.kernel)}-D with dilations {tuple(node.dilations)} (docs/exports.md)")
    plain = ops.out_spatial(node.in_shape[1:], node.kernel, node.strides, node.pads, node.dilations)
    if node.ceil_mode and tuple(plain) != tuple(node.shape[1:]):
        raise ExportError(f"{node.name}: pooling with ceil_mode adds windows past the padding; NIR's SumPool2d "
                          "has no ceil mode (docs/exports.md)")
    pad = _symmetric(node.name, node.pads)
    nodes[f"{here}.taps"] = nir.SumPool2d(kernel_size=np.array(node.kernel), stride=np.array(node.strides),
                                          padding=np.array(pad))
    c = node.in_shape[0]
    ones = np.ones((c, 1) + tuple(node.kernel))
    count = ops.conv(np.ones((1,) + tuple(node.in_shape)), ones, node.strides, node.pads, node.dilations, c)[0]
    threshold = np.full(node.shape, 0.5)
    latest = list(node.latest)
    threshold[latest] = count[latest] - 0.5
    meta.update(latest=np.array(latest, dtype=np.int64), ceil_mode=bool(node.ceil_mode))
    nodes[here] = nir.IF(r=np.ones(node.shape), v_threshold=threshold, v_reset=np.zeros(node.shape), metadata=meta)
    edges += [(src, f"{here}.taps"), (f"{here}.taps", here)]


def write(net: snn.Network, path) -> dict:
    """Write the NIR graph of ``net`` to ``path`` (HDF5, with ``nir.write``), atomically; a short report."""
    nir = _nir()
    graph = to_nir(net)
    with h5io.atomic_output(path) as tmp:
        nir.write(tmp, graph)
    return {"output": str(path), "format": "nir", "nir_nodes": len(graph.nodes), "nir_edges": len(graph.edges),
            "content_sha256": graph.metadata["content_sha256"]}


# ----------------------------------------------------------------------------- reading back

def _text(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _ints(value) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(value))


def _check(where: str, what: str, primitive: np.ndarray, exact: np.ndarray) -> None:
    scale = np.maximum(1.0, np.abs(exact))
    if primitive.shape != exact.shape or np.any(np.abs(primitive - exact) > CHECK * scale):
        raise ExportError(f"{where}: the graph's {what} disagrees with the value kept in its metadata")


def _node(graph, key: str, *kinds: str):
    """Node ``key`` of the graph, which must be one of the NIR primitives ``kinds``."""
    if key not in graph.nodes:
        raise ExportError(f"the NIR graph lacks node {key!r} of relu2snn's export layout (docs/exports.md)")
    node = graph.nodes[key]
    if type(node).__name__ not in kinds:
        raise ExportError(f"{key}: a NIR {type(node).__name__} where relu2snn's export layout has {' or '.join(kinds)}")
    return node


def _population(names: dict, key: str, src: str) -> str:
    if src not in names:
        raise ExportError(f"{key}: reads {src!r}, which is not an earlier population")
    return names[src]


def _one(key: str, sources: list) -> str:
    if len(sources) != 1:
        raise ExportError(f"{key}: expected one incoming edge in relu2snn's export layout, found {len(sources)}")
    return sources[0]


class _Metadata:
    """A node's or the graph's metadata; a missing key is an ExportError naming the node."""

    def __init__(self, where: str, values: dict):
        self.where, self.values = where, values

    def __getitem__(self, key):
        if key not in self.values:
            raise ExportError(f"{self.where}: its metadata lacks {key!r} (not a relu2snn export, or damaged)")
        return self.values[key]


def _synapses(graph, here: str, input_names: dict) -> tuple:
    """The synapse sets feeding node ``here``'s current, in the order of their keys "<here>.syn<m>"."""
    into = {}
    for a, b in graph.edges:
        into.setdefault(b, []).append(a)
    keys = sorted((k for k in graph.nodes if k.startswith(f"{here}.syn")), key=lambda k: int(k.rsplit("syn", 1)[1]))
    out = []
    for k in keys:
        syn = _node(graph, k, "Linear", "Conv1d", "Conv2d")
        src = _one(k, into.get(k, []))
        if src.startswith(f"{here}.flat"):
            src = _one(src, into.get(src, []))
        delay = 0.0
        if src.startswith(f"{here}.delay"):
            values = np.asarray(_node(graph, src, "Delay").delay, dtype=np.float64)
            delay = float(values.flat[0])
            if np.any(values != delay):
                raise ExportError(f"{src}: a population's spikes share one delay; this Delay holds several")
            src = _one(src, into.get(src, []))
        J = np.asarray(syn.weight, dtype=np.float64)
        name = _population(input_names, k, src)
        if type(syn).__name__ == "Linear":
            out.append((name, J, delay, (), (), (), 1))
        else:
            pad = _ints(syn.padding)
            groups = int(syn.metadata.get("groups", 1))
            if int(syn.groups) != 1 or groups < 1 or J.shape[1] % groups or J.shape[0] % groups:
                raise ExportError(f"{k}: groups {int(syn.groups)} (metadata {groups}) do not fit weights {J.shape}")
            out.append((name, regroup(k, J, groups) if groups > 1 else J, delay, _ints(syn.stride), pad + pad,
                        _ints(syn.dilation), groups))
    return tuple(out)


def from_nir(graph) -> snn.Network:
    """The ``snn.Network`` that ``to_nir`` exported (docs/exports.md, "Reading back")."""
    if _text(graph.metadata.get("format", "")) != FORMAT:
        raise ExportError("this NIR graph was not exported by relu2snn (no relu2snn metadata): relu2snn reads back "
                          "only its own exports")
    meta = _Metadata("the NIR graph", graph.metadata)
    if int(meta["format_version"]) > VERSION:
        raise ExportError(f"NIR export version {int(meta['format_version'])} is newer than this relu2snn's {VERSION}")
    count = int(meta["nodes"])
    keys = ["input"] + [f"n{k}" for k in range(1, count)]
    names, shapes, windows, out = {}, {}, {}, []
    for k, here in enumerate(keys):
        prim = _node(graph, here, "Input", "IF", "I", "Flatten")
        m = _Metadata(here, prim.metadata)
        name, kind, window = _text(m["name"]), _text(m["kind"]), tuple(float(v) for v in m["window"])
        expected = {"Encoder": "Input", "SpikingLayer": "IF", "SpikePool": "IF", "Readout": "I", "Reshape": "Flatten"}
        if expected.get(kind, type(prim).__name__) != type(prim).__name__:
            raise ExportError(f"{here}: a NIR {type(prim).__name__} for a relu2snn {kind}")
        if kind == "Encoder":
            node = snn.Encoder(name, _ints(prim.input_type["input"]), float(m["low"]), float(m["high"]), window)
        elif kind in ("SpikingLayer", "Readout"):
            sets = _synapses(graph, here, names)
            syns = tuple(snn.Synapses(src, shapes[src], J, d, st, p, dl, g) for src, J, d, st, p, dl, g in sets)
            drive = _node(graph, f"{here}.drive", "Affine", "Conv1d", "Conv2d")
            bias = np.asarray(drive.bias, dtype=np.float64)
            t_in, b_in = snn.merge_windows([windows[s.input] for s in syns])[0]
            if kind == "SpikingLayer":
                theta = np.asarray(m["theta"], dtype=np.float64)
                shape = syns[0].shape
                _check(name, "threshold ϑ + α·T_in", np.asarray(prim.v_threshold, dtype=np.float64),
                       ops.per_neuron(theta, shape) + ops.per_neuron(bias, shape) * t_in)
                node = snn.SpikingLayer(name, syns, bias, window, theta=theta,
                                        certified=np.asarray(m["certified"], dtype=bool),
                                        scale=np.asarray(m["scale"], dtype=np.float64),
                                        x_max=np.asarray(m["x_max"], dtype=np.float64), x_n=float(m["x_n"]),
                                        source=_text(m["source"]), origin=_text(m["origin"]))
            else:
                alpha = np.asarray(m["alpha"], dtype=np.float64)
                _check(name, "drive α·B_in/T_out", bias, alpha * b_in / (t_in + b_in))
                node = snn.Readout(name, syns, alpha, window, source=_text(m["source"]), origin=_text(m["origin"]))
        elif kind == "SpikePool":
            taps = _node(graph, f"{here}.taps", "SumPool2d")
            src = _population(names, here, _one(f"{here}.taps", [a for a, b in graph.edges if b == f"{here}.taps"]))
            pad = _ints(taps.padding)
            latest = _ints(m["latest"]) if np.size(m["latest"]) else ()
            node = snn.SpikePool(name, src, shapes[src], _ints(taps.kernel_size), _ints(taps.stride),
                                 pad + pad, (1, 1), bool(m["ceil_mode"]), latest, window=window)
        elif kind == "Reshape":
            src = _population(names, here, _one(here, [a for a, b in graph.edges if b == here]))
            node = snn.Reshape(name, src, shapes[src], (int(np.prod(shapes[src])),), window=window)
        else:
            raise ExportError(f"{here}: unknown relu2snn node kind {kind!r} in the NIR metadata")
        names[here] = name
        shapes[name] = tuple(int(v) for v in node.shape)
        windows[name] = node.window
        out.append(node)
    net = snn.Network(tuple(out), json.loads(_text(meta["meta"])))
    if h5io.content_hash(net) != _text(meta["content_sha256"]):
        raise ExportError("the network read back from the NIR graph differs from the one exported (content_sha256)")
    return net


def read(path) -> snn.Network:
    """Read a NIR file written by ``write`` back into the same ``snn.Network``."""
    nir = _nir()
    return from_nir(nir.read(path))
