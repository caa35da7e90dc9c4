"""Fuzzing the command line with hypothesis.

(a) random valid ReLU stacks (``strategies.relu_stacks``): convert, then verify on the
    calibration data is exact;
(b) damaged inputs — byte mutations and protobuf field edits of the sample ONNX models, their
    Conv and pooling window attributes out of range, byte flips and attribute/dataset edits
    of a converted ``.snn.h5``, damaged or drawn headers of .npy, .npz and HDF5 data — give either a
    successful run or exit 2 with one line on stderr: never a traceback (exit 3 or an
    uncaught exception), never a hang (each case runs under an alarm), never a file left
    behind in the output directory; a damaged ``.snn.h5`` that runs gives the logits of the
    undamaged one.

The number of cases comes from a profile: ``ci`` (default, a few dozen per test, well
under two minutes in all) or ``fuzz`` for a long campaign (``HYPOTHESIS_PROFILE=fuzz``,
``make fuzz``); ``FUZZ_EXAMPLES`` overrides the count of either. Under ``CI=true`` the ``ci``
profile draws the same cases on every run (tests/conftest.py); ``fuzz`` is always random.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from onnx import helper

from builders import save
from relu2snn_cli import h5io
from relu2snn_cli.cli import cli
from conftest import DERANDOMIZE
from strategies import relu_stacks

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
CASE_SECONDS = 60  # a case running longer than this counts as a hang

_COMMON = dict(deadline=None, database=None, derandomize=DERANDOMIZE,
               phases=[Phase.explicit, Phase.generate, Phase.shrink],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("fuzz", max_examples=2000, **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FUZZ = settings(settings.get_profile(PROFILE if PROFILE in ("ci", "fuzz") else "ci"),
                **({"max_examples": int(os.environ["FUZZ_EXAMPLES"])} if "FUZZ_EXAMPLES" in os.environ else {}))


class Hang(BaseException):
    """Raised by the alarm when a case runs too long (a BaseException, so nothing on the way catches it)."""


@contextmanager
def time_limit(seconds: int = CASE_SECONDS):
    def alarm(signum, frame):
        raise Hang(f"a case ran longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(*args):
    with time_limit():
        result = CliRunner().invoke(cli, [str(a) for a in args])
    result.runner_args = [str(a) for a in args]
    return result


def check_clean(result, out_dir: Path, writes: str | None = None) -> str:
    """Exit 0, or exit 2 with one line "relu2snn: error: ..."; ``out_dir`` then holds only what was there
    before, plus ``writes`` (the command's output) on success."""
    if isinstance(result.exception, Hang):
        raise result.exception
    cause = result.exception.__context__ if result.exception is not None else None
    assert result.exit_code in (0, 2), (result.exit_code, result.output,
                                        "".join(traceback.format_exception(cause)) if cause else result.exc_info)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    left = {p.name for p in out_dir.iterdir()}
    assert not any(name.endswith(".tmp") for name in left), left
    command = result.runner_args[0] if hasattr(result, "runner_args") else ""
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("relu2snn: error: "), result.stderr
        assert writes not in left, left
        event(f"{command} exit 2")
        return result.stderr.strip()
    event(f"{command} exit 0")
    return "ok"


@contextmanager
def workdir():
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "out").mkdir()
        yield d


# ----------------------------------------------------------------------------- (a) valid stacks are exact

@FUZZ
@given(stack=relu_stacks())
def test_random_relu_stack_converts_and_verifies_exactly(stack):
    model, shape, seed = stack
    with workdir() as d:
        path = save(model, d / "m.onnx")
        x = np.random.default_rng(seed).normal(size=(32,) + shape).astype(np.float32)
        np.save(d / "x.npy", x)
        out = d / "out" / "m.snn.h5"
        converted = run("convert", path, "--calib", d / "x.npy", "-o", out, "--quiet", "--json")
        assert converted.exit_code == 0, converted.output
        verified = run("verify", out, "--onnx", path, "--data", d / "x.npy", "--quiet", "--json",
                       "--min-agreement", "0", "--max-logit-error", "1")  # the logit error is checked below
        assert verified.exit_code == 0, verified.output
        report = json.loads(verified.stdout)
        assert report["early_spikes"] == 0 and report["out_of_range_inputs"] == 0
        assert report["max_abs_logit_error_ref"] <= 1e-9 * max(1.0, report["max_abs_logit"])
        assert report["max_spike_time_error"] <= 1e-9 * report["latency"]


# ----------------------------------------------------------------------------- (b) damaged ONNX files

MODELS = ("mlp", "cnn")
WINDOW_MODELS = ("cnn", "cnn1d")  # Conv and MaxPool in 2-D; Conv, MaxPool and AveragePool in 1-D
CALIB = {name: np.load(SAMPLES / name / "calib.npy")[:8] for name in MODELS + WINDOW_MODELS}


def convert_cleanly(d: Path, model_bytes: bytes, name: str) -> str:
    """convert the given bytes; if that works, verify the result too; both must be clean."""
    (d / "m.onnx").write_bytes(model_bytes)
    np.save(d / "c.npy", CALIB[name])
    out = d / "out" / "m.snn.h5"
    outcome = check_clean(run("convert", d / "m.onnx", "--calib", d / "c.npy", "-o", out, "--quiet"),
                          d / "out", "m.snn.h5")
    if outcome == "ok":
        verified = run("verify", out, "--onnx", d / "m.onnx", "--data", d / "c.npy", "--quiet", "--json",
                       "--min-agreement", "0", "--max-logit-error", "1")  # check_exact's tolerance instead
        check_clean(verified, d / "out")
        if verified.exit_code == 0:
            check_exact(json.loads(verified.stdout), out)
    return outcome


def check_exact(report: dict, snn_path: Path) -> None:
    """Spike times exact to float64 rounding of the time; logit errors no larger than those spike-time errors
    explain through the readout weights.

    A damaged weight can make a window far shorter than the latency before it: spike times stay exact to
    eps·T, but the logits then lose digits in proportion to T/B (a weight of 1.3e8 gave a window of 2.4e-4
    at T = 11.7 and a logit error of 3e-8 on logits of 27.8).
    """
    assert report["early_spikes"] == 0
    assert report["max_spike_time_error"] <= 1e-9 * report["latency"], report
    readout = h5io.read(snn_path).nodes[-1]
    gain = float(sum(np.abs(syn.J.reshape(syn.J.shape[0], -1)).sum(axis=1) for syn in readout.synapses).max())
    time_error = max(report["max_spike_time_error"], 1e-15 * report["latency"])
    allowed = 1e-9 * max(1.0, report["max_abs_logit"]) + 4 * gain * time_error
    assert report["max_abs_logit_error_ref"] <= allowed, (report, gain)


def byte_edits(size: int):
    """A list of edits: (position, replacement bytes, bytes removed)."""
    edit = st.tuples(st.integers(0, size - 1), st.binary(min_size=0, max_size=8), st.integers(0, 8))
    return st.lists(edit, min_size=1, max_size=6)


def apply_edits(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for pos, new, removed in edits:
        pos = min(pos, len(buf))
        buf[pos:pos + removed] = new
    return bytes(buf)


@FUZZ
@given(name=st.sampled_from(MODELS), data=st.data())
def test_onnx_byte_mutations(name, data):
    raw = (SAMPLES / name / "model.onnx").read_bytes()
    mutated = data.draw(st.one_of(
        byte_edits(len(raw)).map(lambda e: apply_edits(raw, e)),
        st.integers(0, len(raw) - 1).map(lambda n: raw[:n])))
    with workdir() as d:
        convert_cleanly(d, mutated, name)


OPS = ["Relu", "Gemm", "Conv", "MatMul", "Add", "Sub", "Mul", "Div", "BatchNormalization", "MaxPool", "Flatten",
       "Reshape", "Identity", "Dropout", "Softmax", "LogSoftmax", "Constant", "Sigmoid", "Concat", "", "NoSuchOp"]
ATTRS = ["kernel_shape", "strides", "pads", "dilations", "group", "transA", "transB", "alpha", "beta", "axis",
         "epsilon", "ceil_mode", "auto_pad", "training_mode", "allowzero", "storage_order"]
NUMBERS = st.one_of(st.integers(-3, 70), st.sampled_from([0, 1, 2, -1, 2**31, -(2**40)]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e38, 1e-45]))


@st.composite
def proto_edit(draw, model: onnx.ModelProto):
    """One edit of a protobuf field of a model (applied in place); returns a description."""
    g = model.graph
    kind = draw(st.sampled_from(["op_type", "drop_node", "rewire", "attr", "drop_attr", "init_value", "init_dims",
                                 "input_dim", "input_type", "opset", "extra_output", "drop_output", "domain",
                                 "rename_output", "dup_node", "ir_version"]))
    if kind in ("op_type", "drop_node", "rewire", "attr", "drop_attr", "domain", "dup_node") and not g.node:
        return "none"
    i = draw(st.integers(0, max(0, len(g.node) - 1)))
    if kind == "op_type":
        g.node[i].op_type = draw(st.sampled_from(OPS))
    elif kind == "drop_node":
        del g.node[i]
    elif kind == "rewire":
        names = [t for n in g.node for t in n.output] + [t.name for t in g.initializer] + [g.input[0].name, "", "zz"]
        node = g.node[i]
        if node.input:
            node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names))
        else:
            node.input.append(draw(st.sampled_from(names)))
    elif kind == "attr":
        name = draw(st.sampled_from(ATTRS))
        value = draw(st.one_of(NUMBERS, FLOATS, st.lists(NUMBERS, max_size=5), st.text(max_size=6)))
        node = g.node[i]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        if not (isinstance(value, list) and not value):
            node.attribute.append(helper.make_attribute(name, value))
    elif kind == "drop_attr":
        if g.node[i].attribute:
            del g.node[i].attribute[draw(st.integers(0, len(g.node[i].attribute) - 1))]
    elif kind == "domain":
        g.node[i].domain = draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "x"]))
    elif kind == "dup_node":
        g.node.append(g.node[i])
    elif kind == "init_value":
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        try:
            arr = onnx.numpy_helper.to_array(t).copy()
        except ValueError:  # dims edited before
            return "none"
        if arr.size:
            with np.errstate(over="ignore", invalid="ignore"):
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(FLOATS)
        t.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), t.name))
    elif kind == "init_dims":
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        dims = draw(st.lists(st.integers(0, 70), max_size=4))
        del t.dims[:]
        t.dims.extend(dims)
    elif kind == "input_dim":
        dims = g.input[0].type.tensor_type.shape.dim
        dim = dims[draw(st.integers(0, len(dims) - 1))]
        value = draw(st.one_of(st.integers(-2, 70), st.text(max_size=3)))
        dim.Clear()
        if isinstance(value, int):
            dim.dim_value = value
        else:
            dim.dim_param = value
    elif kind == "input_type":
        g.input[0].type.tensor_type.elem_type = draw(st.sampled_from([0, 2, 6, 7, 10, 11, 16]))
    elif kind == "opset":
        model.opset_import[0].version = draw(st.integers(-1, 30))
    elif kind == "extra_output":
        g.output.append(helper.make_tensor_value_info(draw(st.sampled_from([t for n in g.node for t in n.output]
                                                                           or ["zz"])), 1, None))
    elif kind == "drop_output":
        del g.output[:]
    elif kind == "rename_output" and g.output:
        g.output[0].name = draw(st.sampled_from([t for n in g.node for t in n.output] + ["zz"]))
    elif kind == "ir_version":
        model.ir_version = draw(st.integers(0, 20))
    return f"{kind}: {_describe(model, kind, i)}"


def _describe(model: onnx.ModelProto, kind: str, i: int) -> str:
    g = model.graph
    if kind in ("op_type", "rewire", "attr", "drop_attr", "domain") and i < len(g.node):
        return " ".join(helper.printable_node(g.node[i]).split())
    if kind.startswith("init"):
        return ", ".join(f"{t.name}{list(t.dims)}" for t in g.initializer)
    if kind.startswith("input"):
        return " ".join(helper.printable_value_info(g.input[0]).split())
    return f"node {i}; opset {[o.version for o in model.opset_import]}; ir {model.ir_version}; outputs " \
           f"{[o.name for o in g.output]}"


@FUZZ
@given(name=st.sampled_from(MODELS), data=st.data())
def test_onnx_protobuf_field_edits(name, data):
    model = onnx.load(str(SAMPLES / name / "model.onnx"))
    for _ in range(data.draw(st.integers(1, 3))):
        note(f"edit: {data.draw(proto_edit(model))}")
    with workdir() as d:
        convert_cleanly(d, model.SerializeToString(), name)


# The window attributes of the ONNX spec, at and beyond their ranges: 0, negative, huge, the wrong count.
WINDOW_OPS = ("Conv", "MaxPool", "AveragePool")
WINDOW_NUMBERS = st.one_of(st.integers(-3, 9), st.sampled_from([0, -1, 99, 2**31 - 1, 2**40, -(2**40)]))
AUTO_PADS = ["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", "SAME", ""]


@st.composite
def window_edit(draw, model: onnx.ModelProto) -> str:
    """Set (or drop) strides, dilations, pads, kernel_shape or auto_pad of a Conv or pooling node, in place."""
    nodes = [n for n in model.graph.node if n.op_type in WINDOW_OPS]
    node = draw(st.sampled_from(nodes))
    rank = len(model.graph.input[0].type.tensor_type.shape.dim) - 2
    key = draw(st.sampled_from(["strides", "dilations", "pads", "kernel_shape", "auto_pad"]))
    kept = [a for a in node.attribute if a.name != key]
    del node.attribute[:]
    node.attribute.extend(kept)
    if key == "auto_pad":
        value = draw(st.sampled_from(AUTO_PADS))
    else:
        count = draw(st.sampled_from([2 * rank if key == "pads" else rank, 1, 2, 4, 0]))
        value = draw(st.lists(WINDOW_NUMBERS, min_size=count, max_size=count))
    if value != [] and not draw(st.integers(0, 9)) == 0:   # one edit in ten drops the attribute
        node.attribute.append(helper.make_attribute(key, value))
    return f"{node.name}: {key} = {value}"


@FUZZ
@given(name=st.sampled_from(WINDOW_MODELS), data=st.data())
def test_onnx_window_attribute_edits(name, data):
    """strides, dilations, pads, kernel_shape and auto_pad of Conv and pooling nodes set to 0, negative, huge
    values or the wrong count: convert (and verify) run, or exit 2 with one line; never exit 3, never a hang."""
    model = onnx.load(str(SAMPLES / name / "model.onnx"))
    for _ in range(data.draw(st.integers(1, 3))):
        note(f"edit: {data.draw(window_edit(model))}")
    with workdir() as d:
        convert_cleanly(d, model.SerializeToString(), name)


# ----------------------------------------------------------------------------- (b) damaged .snn.h5 files
# The law: a mutated file is refused (exit 2, one line) or, when the mutation changed nothing that is read,
# gives the very logits of the unmutated file; never exit 3, never a hang, never other logits with exit 0.

@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The converted sample models' bytes, and their logits on the first 4 calibration samples."""
    d = tmp_path_factory.mktemp("fuzz")
    out = Artifacts()
    for name in MODELS:
        path = d / f"{name}.snn.h5"
        assert run("convert", SAMPLES / name / "model.onnx", "--calib", SAMPLES / name / "calib.npy", "-o", path,
                   "--quiet").exit_code == 0
        np.save(d / "t.npy", CALIB[name][:4])
        assert run("simulate", path, "--data", d / "t.npy", "-o", d / "o.npz", "--quiet", "--force").exit_code == 0
        with np.load(d / "o.npz") as z:
            out.logits[name] = z["logits"]
        out[name] = path.read_bytes()
    return out


class Artifacts(dict):
    def __init__(self):
        super().__init__()
        self.logits = {}

    def __repr__(self) -> str:
        return "Artifacts(mlp, cnn)"


def use_artifact_cleanly(d: Path, snn_bytes: bytes, name: str, logits: np.ndarray) -> None:
    """inspect, inspect --json and simulate the file: each clean; simulate leaves o.npz only on success, and
    then its logits are the unmutated file's, bit for bit."""
    (d / "m.snn.h5").write_bytes(snn_bytes)
    np.save(d / "t.npy", CALIB[name][:4])
    check_clean(run("inspect", d / "m.snn.h5"), d / "out")
    inspected = run("inspect", d / "m.snn.h5", "--json")
    check_clean(inspected, d / "out")
    if inspected.exit_code == 0:
        json.loads(inspected.stdout)
    simulated = run("simulate", d / "m.snn.h5", "--data", d / "t.npy", "-o", d / "out" / "o.npz", "--quiet")
    check_clean(simulated, d / "out", "o.npz")
    if simulated.exit_code == 0:
        with np.load(d / "out" / "o.npz") as z:
            assert np.array_equal(z["logits"], logits), "a mutated file was simulated with other logits"
        event("same logits")
    else:
        event("refused")


def byte_flips(size: int):
    """A list of (position, xor mask): bytes changed in place anywhere in the file."""
    return st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=4)


def apply_flips(data: bytes, flips) -> bytes:
    buf = bytearray(data)
    for pos, mask in flips:
        buf[pos] ^= mask
    return bytes(buf)


@FUZZ
@given(name=st.sampled_from(MODELS), data=st.data())
def test_snn_byte_mutations(artifacts, name, data):
    raw = artifacts[name]
    mutated = data.draw(st.one_of(
        byte_flips(len(raw)).map(lambda e: apply_flips(raw, e)),
        byte_edits(len(raw)).map(lambda e: apply_edits(raw, e)),
        st.integers(0, len(raw) - 1).map(lambda n: raw[:n])))
    with workdir() as d:
        use_artifact_cleanly(d, mutated, name, artifacts.logits[name])


VALUES = st.one_of(
    NUMBERS, FLOATS, st.booleans(), st.text(st.characters(exclude_characters="\x00"), max_size=5),
    st.lists(NUMBERS, max_size=5).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(FLOATS, max_size=5).map(lambda v: np.array(v, dtype=np.float64)),
    st.sampled_from([np.zeros((2, 2)), np.array([], dtype=np.float64), np.array(["a", "b"], dtype=h5py.string_dtype()),
                     np.ones(3, dtype=np.float32), np.zeros((1,), dtype=[("a", "i4")])]))
GROUPS = st.sampled_from([0, 1, 2, 3, -1, 8, 1.5, 1.0, np.int32(1), np.int64(1), True, np.array([1])])


def retyped(value):
    """The same value stored with another type: int ↔ float, float32, a scalar ↔ a 1-element array."""
    arr = np.asarray(value)
    if arr.dtype.kind in "iub":
        return [arr.astype(np.float64), arr.astype(np.int32), arr.astype(np.uint8), np.atleast_1d(arr)]
    if arr.dtype.kind == "f":
        return [arr.astype(np.float32), arr.astype(np.int64), np.atleast_1d(arr), arr.astype(">f8")]
    return [np.atleast_1d(arr), arr.astype(h5py.string_dtype())]


@st.composite
def h5_edit(draw, f: h5py.File):
    """One edit of an attribute or dataset of an open artifact: of the root, a node or a synapse set."""
    keys = sorted(f["nodes"])
    kind = draw(st.sampled_from(["root_attr", "del_root_attr", "retype_attr", "node_attr", "del_node_attr",
                                 "dataset_value", "dataset_entry", "dataset_shape", "del_dataset", "del_node",
                                 "swap_nodes", "dataset_dtype", "groups", "negate_readout"]))
    if kind in ("root_attr", "del_root_attr") or (kind == "retype_attr" and draw(st.booleans())):
        key = draw(st.sampled_from(sorted(f.attrs) + ["extra"]))
        if kind == "del_root_attr":
            f.attrs.__delitem__(key) if key in f.attrs else None
            return f"{kind} {key}"
        value = draw(VALUES) if kind == "root_attr" or key not in f.attrs else draw(st.sampled_from(retyped(f.attrs[key])))
        f.attrs[key] = value
        return f"{kind} {key} = {value!r}"
    if not keys:
        return "none"
    if kind == "negate_readout":
        last = f["nodes"][keys[-1]]
        for syn in last.get("synapses", {}).values():
            if not isinstance(syn, h5py.Group) or not isinstance(syn.get("J"), h5py.Dataset):
                continue
            J = syn["J"][()]
            del syn["J"]
            syn.create_dataset("J", data=-J)
        return f"{kind} {last.name}"
    groups = []
    f["nodes"].visititems(lambda n, obj: groups.append(obj) if isinstance(obj, h5py.Group) and len(obj.attrs) else None)
    if kind == "groups":
        groups = [g for g in groups if "groups" in g.attrs]
    if not groups:
        return "none"
    g = draw(st.sampled_from(groups))
    datasets = sorted(k for k in g if isinstance(g[k], h5py.Dataset))
    detail = ""
    if kind == "groups":
        g.attrs["groups"] = value = draw(GROUPS)
        detail = f"groups = {value!r}"
    elif kind in ("node_attr", "retype_attr"):
        key = draw(st.sampled_from(sorted(g.attrs)))
        g.attrs[key] = value = draw(VALUES if kind == "node_attr" else st.sampled_from(retyped(g.attrs[key])))
        detail = f"{key} = {value!r}"
    elif kind == "del_node_attr":
        key = draw(st.sampled_from(sorted(g.attrs)))
        del g.attrs[key]
        detail = key
    elif kind == "del_node":
        del f["nodes"][draw(st.sampled_from(keys))]
    elif kind == "swap_nodes" and len(keys) > 1:
        a, b = draw(st.permutations(keys))[:2]
        f["nodes"].move(a, "tmp")
        f["nodes"].move(b, a)
        f["nodes"].move("tmp", b)
    elif datasets:
        name = draw(st.sampled_from(datasets))
        arr = g[name][()]
        if kind in ("dataset_value", "dataset_entry") and arr.size:
            arr = arr.copy()
            i = draw(st.integers(0, arr.size - 1))
            if arr.dtype.kind != "f":
                arr.flat[i] = not arr.flat[i]
            elif kind == "dataset_value":
                arr.flat[i] = draw(FLOATS)
            else:  # the smallest change of one entry
                arr.flat[i] = np.nextafter(arr.flat[i], draw(st.sampled_from([np.inf, -np.inf])))
        elif kind == "dataset_shape":
            arr = np.resize(arr, draw(st.lists(st.integers(0, 9), max_size=4)))
        elif kind == "dataset_dtype":
            arr = arr.astype(draw(st.sampled_from([np.float32, np.int64, np.float16, bool, np.float64])))
        elif kind == "del_dataset":
            arr = None
        del g[name]
        if arr is not None:
            g.create_dataset(name, data=arr)
        detail = f"{name} -> {None if arr is None else (arr.dtype, arr.shape)}"
    return f"{kind} {g.name} {detail}"


@FUZZ
@given(name=st.sampled_from(MODELS), data=st.data())
def test_snn_attribute_and_dataset_edits(artifacts, name, data):
    with workdir() as d:
        path = d / "edited.snn.h5"
        path.write_bytes(artifacts[name])
        with h5py.File(path, "r+") as f:
            for _ in range(data.draw(st.integers(1, 3))):
                note(f"edit: {data.draw(h5_edit(f))}")
        use_artifact_cleanly(d, path.read_bytes(), name, artifacts.logits[name])


# ----------------------------------------------------------------------------- (b) damaged data files

@FUZZ
@given(data=st.data())
def test_npy_byte_mutations(data):
    """convert with a damaged calibration .npy (edits mostly in the header): a run or one clean line."""
    import io
    buf = io.BytesIO()
    np.save(buf, CALIB["mlp"])
    raw = buf.getvalue()
    header = st.lists(st.tuples(st.integers(0, 127), st.binary(min_size=0, max_size=4), st.integers(0, 4)),
                      min_size=1, max_size=4)
    mutated = data.draw(st.one_of(header.map(lambda e: apply_edits(raw, e)),
                                  byte_edits(len(raw)).map(lambda e: apply_edits(raw, e)),
                                  st.integers(0, len(raw) - 1).map(lambda n: raw[:n])))
    with workdir() as d:
        (d / "c.npy").write_bytes(mutated)
        check_clean(run("convert", SAMPLES / "mlp" / "model.onnx", "--calib", d / "c.npy", "-o",
                        d / "out" / "m.snn.h5", "--quiet"), d / "out", "m.snn.h5")


DESCRS = ["<f4", "<f8", ">f4", "|u1", "<i8", "|b1", "<c8", "|O", "<U3", "|V4", "<f2", "xx", 3]
SHAPES = st.one_of(st.lists(st.one_of(st.integers(-3, 70), st.sampled_from([0, 64, -64, 2**31, 2**62, -(2**40)])),
                            max_size=3).map(tuple), st.sampled_from([(8, 64), (-8, 64), (8, -64), (4, 64), 64, "x"]))


def npy_header(fields: dict, version: int) -> bytes:
    """A .npy header of version 1 or 2 holding the repr of ``fields`` as they are, valid or not."""
    text = repr(fields).encode()
    prefix = 10 if version == 1 else 12
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(2 if version == 1 else 4, "little") + text


@st.composite
def npy_bytes(draw) -> bytes:
    """A .npy file whose header fields (descr, fortran_order, shape, version) are drawn, its body the sample
    data's bytes, cut or not."""
    fields = {"descr": draw(st.sampled_from(DESCRS)), "fortran_order": draw(st.booleans()), "shape": draw(SHAPES)}
    body = CALIB["mlp"].tobytes()
    return npy_header(fields, draw(st.sampled_from([1, 2]))) + body[:draw(st.sampled_from([len(body), 0, 100,
                                                                                          len(body) // 2]))]


@st.composite
def data_file(draw, d: Path) -> str:
    """A calibration file in d, a .npy, an .npz or an HDF5 file with a drawn header; its spec."""
    kind = draw(st.sampled_from(["npy", "npz", "h5"]))
    if kind == "npy":
        (d / "c.npy").write_bytes(draw(npy_bytes()))
        return str(d / "c.npy")
    if kind == "npz":
        import zipfile
        member = draw(st.one_of(npy_bytes(), st.binary(max_size=40)))
        with zipfile.ZipFile(d / "c.npz", "w") as z:
            z.writestr(draw(st.sampled_from(["x.npy", "x", "x.npy/"])), member)
        return str(d / "c.npz") + draw(st.sampled_from(["", ":x", ":y"]))
    value = draw(st.one_of(
        st.just(h5py.Empty("f4")), st.just(np.float32(1.5)),
        st.tuples(st.one_of(st.sampled_from([(8, 64), (0, 64), (8, 63)]),
                            st.lists(st.integers(0, 70), max_size=3).map(tuple)),
                  st.sampled_from(["f4", "f8", "u1", "i8", "b1", "c8"]))
        .map(lambda t: np.zeros(t[0], dtype=t[1]))))
    with h5py.File(d / "c.h5", "w") as f:
        f.create_dataset("x", data=value)
    return str(d / "c.h5") + draw(st.sampled_from([":x", ":/x", "", ":/y"]))


@FUZZ
@given(data=st.data())
def test_data_file_header_edits(data):
    """convert with a calibration file whose header says anything: a run or one clean line."""
    with workdir() as d:
        spec = data.draw(data_file(d))
        note(f"spec: {spec}")
        check_clean(run("convert", SAMPLES / "mlp" / "model.onnx", "--calib", spec, "-o", d / "out" / "m.snn.h5",
                        "--quiet"), d / "out", "m.snn.h5")
