"""Checks of a whole ``snn.Network`` beyond what each node's constructor checks (docs/artifact.md).

``check(net)`` raises GraphError with the reason. It runs on every network read from a
``.snn.h5`` file and on every network before it is written. Most checks are generic over
the dataclass fields of the nodes, so a new node kind is covered without changes here:

- every field has its declared type (int, float, bool, str or a tuple of them); every array field is
  float64 or bool; every number finite and at most MAX_MAGNITUDE in magnitude; every ``*shape`` field
  and node shape positive integers; text is valid UTF-8 without NUL;
- every field named ``window`` is (T, B) finite with B > 0, and a node's window does not
  end before the windows of its inputs (``inputs``); tuples of dataclasses (a layer's
  ``synapses``) are checked field by field the same way;
- sliding-window padding (``pads``) is smaller than the window's extent plus the input size;
- the root attributes are plain values (text, numbers, lists of them); those convert writes
  (REQUIRED_META) are present and well-formed, and agree with the nodes where they describe them
  (input shape and layout, input range, latency).

Where the mapping of docs/math.md §3 says how fields relate, they must relate so (checked for
the nodes that have the fields involved): the stored static certificate is what
``mapping.static_certificate`` gives for the synapses, ϑ, α and the input windows; the window length
is B = (1 + ζ)·X_n (1 when X_n = 0); X_n is at least the largest scaled activation; the
scales c lie in (0, 1]; with α = 1 the incoming sums s = ΣJ/(1 + ΣJ), over all synapse sets, lie in [s_min, s_max].
In the sparse coding (docs/math.md §9) the mapping writes α = 0 and c = 1 in every spiking layer.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import numpy as np

from . import snn
from .errors import GraphError
from .mapping import static_certificate, window_length

RTOL = 1e-9  # for relations recomputed in floating point (the writer's values are exact)
# No stored number is larger in magnitude: a product of two of them, summed over any fan-in below 10^100,
# stays far below float64's limit (1.8e308).
MAX_MAGNITUDE = 1e100


def _text(v) -> bool:
    return isinstance(v, str)


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _sequence(v, item) -> bool:
    return isinstance(v, (list, tuple)) and all(item(x) for x in v)


# The root attributes convert writes (docs/artifact.md), each with what it must be; the relations of
# input_shape, input_range, latency, zeta, s_min and s_max to the nodes are checked in _check_meta.
REQUIRED_META = {
    "tool": lambda v: v == "relu2snn",
    "tool_version": _text,
    "neuron_model": _text,
    "source_model_name": _text,
    "source_model_sha256": lambda v: _text(v) and re.fullmatch("[0-9a-f]{64}", v) is not None,
    "source_opset": lambda v: _integer(v) and v >= 1,
    "source_input": _text,
    "source_logits": _text,
    "calibration_samples": lambda v: _integer(v) and v >= 1,
    "calibration_sha256": lambda v: _text(v) and re.fullmatch("[0-9a-f]{64}", v) is not None,
    "zeta": _number,
    "s_min": _number,
    "s_max": _number,
    "input_range": lambda v: _sequence(v, _number) and len(v) == 2,
    "input_shape": lambda v: _sequence(v, _integer) and len(v) >= 1,
    "input_layout": lambda v: v in ("NC", "NCL", "NCHW", "NHWC"),
    "removed_output_ops": lambda v: _sequence(v, _text),
    "latency": _number,
}


def check(net: snn.Network) -> None:
    """Raise GraphError naming the node and the field when the network is not one relu2snn would write."""
    nodes = {}
    for node in net.nodes:
        _check_fields(node)
        _check_inputs(node, nodes)
        _check_mapping(node, nodes, net.meta)
        if net.coding == "sparse":
            _check_sparse(node)
        nodes[node.name] = node
    _check_meta(net)


def _check_text(where: str, value: str) -> None:
    """Text HDF5 can store and a terminal can print: UTF-8 (h5py reads invalid bytes as surrogates), no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GraphError(f"{where} = {value!r} is not valid UTF-8") from None
    if "\x00" in value:
        raise GraphError(f"{where} = {value!r} holds a NUL character, which HDF5 cannot store")


def _numbers(value) -> bool:
    """A tuple of numbers or names, or of such tuples (a Concat's ``in_shapes``)."""
    return all(_numbers(v) if isinstance(v, tuple) else
               isinstance(v, (int, float, str, np.integer, np.floating)) and not isinstance(v, bool) for v in value)


def _flat(value) -> list:
    return [x for v in value for x in (_flat(v) if isinstance(v, tuple) else [v])]


def _fits(value, hint) -> bool:
    """Whether a field value has its declared type: int, float (an int will do), bool, str, or a tuple of them."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return isinstance(value, tuple) and len(kinds) == len(value) and all(map(_fits, value, kinds))
    check = {int: _integer, float: _number, bool: lambda v: isinstance(v, (bool, np.bool_)), str: _text}.get(hint)
    return check is None or check(value)


def _check_fields(node, owner: str | None = None) -> None:
    owner = owner or f"{getattr(node, 'name', '?')!r} ({type(node).__name__})"
    hints = typing.get_type_hints(type(node))
    for fld in dataclasses.fields(node):
        value = getattr(node, fld.name)
        where = f"{owner}: {fld.name}"
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                _check_fields(item, f"{owner}: {fld.name}[{i}]")
            continue
        if isinstance(value, np.ndarray):
            if value.dtype not in (np.float64, np.bool_):
                raise GraphError(f"{where} has dtype {value.dtype}, expected float64 or bool")
            if value.dtype == np.float64 and not np.all(np.isfinite(value)):
                raise GraphError(f"{where} holds NaN or infinite values")
            if value.dtype == np.float64 and np.any(np.abs(value) > MAX_MAGNITUDE):
                raise GraphError(f"{where} holds values above {MAX_MAGNITUDE:g} in magnitude")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise GraphError(f"{where} = {value} is not finite")
            if abs(value) > MAX_MAGNITUDE:
                raise GraphError(f"{where} = {value} is above {MAX_MAGNITUDE:g} in magnitude")
        elif isinstance(value, tuple):
            if not _numbers(value):
                raise GraphError(f"{where} = {value!r} is not a tuple of numbers or names")
            if not all(math.isfinite(v) for v in _flat(value) if not isinstance(v, str)):
                raise GraphError(f"{where} = {value} is not finite")
            if any(abs(v) > MAX_MAGNITUDE for v in _flat(value) if not isinstance(v, str)):
                raise GraphError(f"{where} = {value} holds values above {MAX_MAGNITUDE:g} in magnitude")
            if "shape" in fld.name and not all(isinstance(v, (int, np.integer)) and v >= 1 for v in _flat(value)):
                raise GraphError(f"{where} = {value} must be positive integers")
        elif isinstance(value, bytes):
            raise GraphError(f"{where} = {value!r} is not text (invalid UTF-8)")
        elif isinstance(value, str):
            if fld.name == "name" and not value:
                raise GraphError(f"{owner}: empty name")
            _check_text(where, value)
        if not isinstance(value, np.ndarray) and not _fits(value, hints[fld.name]):
            raise GraphError(f"{where} = {value!r} is not of its type {hints[fld.name]}")
    shape = tuple(node.shape)
    if not shape or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in shape):
        raise GraphError(f"{owner}: shape {shape} must be positive integers")
    window = getattr(node, "window", None)
    if window is not None and not (len(window) == 2 and window[1] > 0):
        raise GraphError(f"{owner}: window {window} must be (start, positive length)")
    pads = getattr(node, "pads", None)
    kernel = getattr(node, "kernel", None)
    if kernel is None and getattr(node, "J", None) is not None and node.J.ndim > 2:
        kernel = node.J.shape[2:]
    if pads and kernel is not None and len(getattr(node, "in_shape", ())) == len(kernel) + 1:
        # ONNX allows pads beyond the kernel (a Pad absorbed into a Conv gives them); a pad as large as the
        # input and the window together only adds positions that see nothing but padding: a damaged file
        dilations = getattr(node, "dilations", None) or (1,) * len(kernel)
        limit = [(k - 1) * d + 1 + n for k, d, n in zip(kernel, dilations, node.in_shape[1:])]
        if any(p >= limit[i % len(limit)] for i, p in enumerate(pads)):
            raise GraphError(f"{owner}: pads {pads} are not smaller than the window extent plus the input size "
                             f"{tuple(limit)}")


def _check_inputs(node, earlier: dict) -> None:
    for name in node.inputs:
        src = earlier.get(name)
        if src is None:
            raise GraphError(f"{node.name}: input {name!r} is not an earlier node")
        if sum(node.window) < sum(src.window) * (1 - RTOL):
            raise GraphError(f"{node.name}: window {node.window} ends before its input {name}'s {src.window}")
    if isinstance(node, snn.Encoder) and tuple(node.window) != (0.0, 1.0):
        raise GraphError(f"{node.name}: the encoder's window is {node.window}, expected (0.0, 1.0)")


def _close(a, b) -> bool:
    return bool(np.allclose(a, b, rtol=RTOL, atol=0))


def _check_mapping(node, earlier: dict, meta: dict) -> None:
    fields = {f.name for f in dataclasses.fields(node)}
    if {"synapses", "theta", "alpha", "certified"} <= fields:
        windows = [earlier[syn.input].window for syn in node.synapses]
        (_, b_in), _ = snn.merge_windows(windows)
        want = static_certificate([(syn.J, w[1]) for syn, w in zip(node.synapses, windows)],
                                  node.theta, node.alpha, b_in)
        if want.shape != node.certified.shape or not np.array_equal(want, node.certified):
            raise GraphError(f"{node.name}: the stored certificate is not the static certificate of J, theta and "
                             "alpha")
    if {"x_n", "scale", "x_max"} <= fields:
        if np.any(node.scale <= 0) or np.any(node.scale > 1 + RTOL):
            raise GraphError(f"{node.name}: activation scales must lie in (0, 1]")
        if np.any(node.x_max < 0):
            raise GraphError(f"{node.name}: x_max holds negative values; it is a maximum of ReLU activations")
        if node.x_n < float(np.max(node.scale * node.x_max, initial=0.0)) * (1 - RTOL):
            raise GraphError(f"{node.name}: x_n = {node.x_n} is below the largest scaled activation")
        zeta = meta.get("zeta")
        if isinstance(zeta, (int, float)) and not _close(node.window[1], window_length(node.x_n, zeta)):
            raise GraphError(f"{node.name}: window length {node.window[1]} is not (1 + zeta)·x_n = "
                             f"{window_length(node.x_n, zeta)}")
    s_min, s_max = meta.get("s_min"), meta.get("s_max")
    if ({"synapses", "alpha", "theta"} <= fields and isinstance(s_min, (int, float))
            and isinstance(s_max, (int, float)) and np.all(node.alpha == 1)):
        total = sum(syn.J.reshape(syn.J.shape[0], -1).sum(axis=1) for syn in node.synapses)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = total / (1 + total)
        slack = RTOL * (1 + np.abs(total))
        if not np.all((1 + total > 0) & (s >= s_min - slack) & (s <= s_max + slack)):
            raise GraphError(f"{node.name}: incoming weight sums outside [s_min, s_max] = [{s_min}, {s_max}]")


def _check_sparse(node) -> None:
    """A spiking layer of the sparse coding has no drive in its input phase (α = 0) and no scaling (c = 1):
    J = W and ϑ = B − b (docs/math.md §9)."""
    if isinstance(node, snn.SpikingLayer):
        if np.any(node.alpha != 0):
            raise GraphError(f"{node.name}: alpha must be 0 in the sparse coding (docs/math.md §9)")
        if np.any(node.scale != 1):
            raise GraphError(f"{node.name}: activation scales must be 1 in the sparse coding (docs/math.md §9)")


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_))


def _check_meta(net: snn.Network) -> None:
    meta = net.meta
    for key, value in meta.items():
        if not isinstance(key, str):
            raise GraphError(f"attribute name {key!r} is not text")
        if not _plain(value):
            raise GraphError(f"attribute {key!r} holds {type(value).__name__}, not text or numbers")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str):
                _check_text(f"attribute {key!r}", v)
            if _number(v) and not (math.isfinite(v) and abs(v) <= MAX_MAGNITUDE):
                raise GraphError(f"attribute {key!r} = {value} is not finite or above {MAX_MAGNITUDE:g} in magnitude")
    for key, ok in REQUIRED_META.items():
        if key not in meta:
            raise GraphError(f"missing attribute {key!r}")
        if not ok(meta[key]):
            raise GraphError(f"attribute {key!r} = {meta[key]!r} is not well-formed")
    enc = net.nodes[0]
    expected = {"input_shape": list(enc.shape), "input_range": [enc.low, enc.high], "latency": net.latency}
    for key, want in expected.items():
        got = meta[key]
        got = list(got) if isinstance(got, (list, tuple)) else got
        if isinstance(want, list):
            ok = isinstance(got, list) and len(got) == len(want) and all(
                isinstance(g, (int, float)) and not isinstance(g, bool) for g in got) and _close(got, want)
        else:
            ok = isinstance(got, (int, float)) and _close(got, want)
        if not ok:
            raise GraphError(f"attribute {key!r} = {got} does not match the network ({want})")
    rank = {"NC": 1, "NCL": 2, "NCHW": 3, "NHWC": 3}[meta["input_layout"]]
    if len(meta["input_shape"]) != rank:
        raise GraphError(f"attribute 'input_layout' = {meta['input_layout']!r} does not fit the input shape "
                         f"{meta['input_shape']}")
    if not meta["zeta"] >= 0:
        raise GraphError(f"attribute 'zeta' = {meta['zeta']} must be ≥ 0")
    s_min, s_max = meta["s_min"], meta["s_max"]
    if not s_min < 0 < s_max < 1:
        raise GraphError(f"attributes s_min = {s_min}, s_max = {s_max} need s_min < 0 < s_max < 1")
