"""Every user error of the command line: exit status 2 and one line on stderr naming the file and
the problem; --debug shows the traceback; interrupted runs exit 130/143 and leave no output.

Each case builds its bad input in tmp_path from the sample MLP (64 inputs, 10 classes).
"""

from __future__ import annotations

import json

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from relu2snn_cli import convert, h5io
from relu2snn_cli.cli import cli
from relu2snn_cli.errors import Relu2SnnError

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "sample_models" / "mlp"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def mlp_snn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("snn") / "mlp.snn.h5"
    assert run("convert", MLP / "model.onnx", "--calib", MLP / "calib.npy", "-o", out, "--quiet").exit_code == 0
    return out


def calib(tmp_path, array, name="c.npy") -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


def good_calib():
    return np.load(MLP / "calib.npy")[:16]


def edited_model(tmp_path, edit, name="bad.onnx") -> Path:
    """The sample MLP with an edit applied to its protobuf, saved without checking."""
    model = onnx.load(str(MLP / "model.onnx"))
    edit(model)
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def edited_snn(tmp_path, mlp_snn, edit) -> Path:
    path = tmp_path / "bad.snn.h5"
    path.write_bytes(mlp_snn.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


# ----------------------------------------------------------------------------- convert: the model

def _dim_param(model, index, name):
    dim = model.graph.input[0].type.tensor_type.shape.dim[index]
    dim.Clear()
    dim.dim_param = name


def _second_output(model):
    model.graph.output.append(helper.make_tensor_value_info(model.graph.node[0].output[0], TensorProto.FLOAT, ["N", "K"]))


def _second_input(model):
    model.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3]))


def _dangling_input(model):
    model.graph.node[1].input[0] = "nowhere"


MODEL_CASES = {
    "truncated": (lambda p: p.write_bytes((MLP / "model.onnx").read_bytes()[:200]), "not a valid ONNX model"),
    "empty-file": (lambda p: p.write_bytes(b""), "bad.onnx"),
    "checker": (_dangling_input, "not a valid ONNX model"),
    "two-inputs": (_second_input, "2 inputs"),
    "two-outputs": (_second_output, "2 outputs"),
    "dynamic-dim": (lambda m: _dim_param(m, 1, "F"), "dynamic"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model(tmp_path, case):
    edit, expect = MODEL_CASES[case]
    if case in ("truncated", "empty-file"):
        model = tmp_path / "bad.onnx"
        edit(model)
    else:
        model = edited_model(tmp_path, edit)
    out = tmp_path / "o.snn.h5"
    line = one_line_error(run("convert", model, "--calib", calib(tmp_path, good_calib()), "-o", out))
    assert line.startswith("relu2snn: error: ") and "bad.onnx" in line and expect in line, line
    assert not out.exists()


def _initializer_dims(model):
    del model.graph.initializer[0].dims[:]  # a weight whose dims no longer match its data


def _batchnorm_scale(model):
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.input[1] = next(n for n in model.graph.node if n.op_type == "Conv").input[1]  # a 4-D tensor as the scale


def _nul_in_name(model):
    model.graph.node[0].name = "conv\x00one"


def _bytes_name(raw: bytes) -> bytes:
    """The MLP's first node name made invalid UTF-8 (protobuf then gives Python bytes)."""
    at = raw.index(b"/body/body.0/Gemm\"")
    return raw[:at] + b"\x00\x00\x80" + raw[at + 3:]


def test_invalid_utf8_node_name(tmp_path):
    """Found by fuzzing: a name that is not UTF-8 reached h5py as bytes."""
    path = tmp_path / "bad.onnx"
    path.write_bytes(_bytes_name((MLP / "model.onnx").read_bytes()))
    line = one_line_error(run("convert", path, "--calib", calib(tmp_path, good_calib()), "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and "not text" in line, line


@pytest.mark.parametrize("name, edit, expect", [("mlp", _initializer_dims, "not a valid ONNX model"),
                                                ("cnn", _batchnorm_scale, "vectors of one length"),
                                                ("cnn", _nul_in_name, "NUL")],
                         ids=["initializer-dims", "batchnorm-scale-shape", "nul-in-node-name"])
def test_found_by_fuzzing(tmp_path, name, edit, expect):
    """Models that passed onnx.checker and once ended in an internal error (exit 3)."""
    model = onnx.load(str(ROOT / "sample_models" / name / "model.onnx"))
    edit(model)
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    data = calib(tmp_path, np.load(ROOT / "sample_models" / name / "calib.npy")[:8])
    line = one_line_error(run("convert", path, "--calib", data, "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and expect in line, line


@pytest.mark.parametrize("pads, expect", [(3000, "handles up to"), (400, "--batch-size 51 or less")])
def test_huge_tensor_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, pads, expect):
    """Found by fuzzing: a Conv padding of thousands made the import allocate tens of GB. Shape inference now
    bounds every tensor of a batch (2 GiB) before the import, which does not run."""
    model = onnx.load(str(ROOT / "sample_models" / "cnn" / "model.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "pads").ints[:] = [pads] * 4
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    data = calib(tmp_path, np.load(ROOT / "sample_models" / "cnn" / "calib.npy")[:8])

    def no_import(*args, **kwargs):
        raise AssertionError("the importer ran")

    monkeypatch.setattr(convert, "_import_model", no_import)
    line = one_line_error(run("convert", path, "--calib", data, "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and "too large" in line and expect in line, line


def test_unsupported_op_names_type_node_and_doc(tmp_path):
    def to_sigmoid(model):
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        relu.op_type = "Sigmoid"
        relu.name = "act_one"
    line = one_line_error(run("convert", edited_model(tmp_path, to_sigmoid), "--calib",
                              calib(tmp_path, good_calib()), "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and "Sigmoid" in line and "act_one" in line and "supported-operators" in line


def test_converter_error_names_the_model_file(tmp_path):
    """An error found while converting one node (not in the up-front scan) also names the file."""
    def trans_a(model):
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        gemm.attribute.append(helper.make_attribute("transA", 1))
    line = one_line_error(run("convert", edited_model(tmp_path, trans_a), "--calib",
                              calib(tmp_path, good_calib()), "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and "transA" in line


def test_fixed_batch_dimension(tmp_path, mlp_snn):
    """A model exported with batch size 1 converts and verifies with any --batch-size: onnxruntime is given
    batches of the model's size."""
    def batch_one(model):
        dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    model = edited_model(tmp_path, batch_one)
    data = calib(tmp_path, good_calib())
    out = tmp_path / "o.snn.h5"
    assert run("convert", model, "--calib", data, "-o", out, "--quiet").exit_code == 0
    result = run("verify", out, "--onnx", model, "--data", data, "--json", "--quiet")
    assert result.exit_code == 0 and json.loads(result.stdout)["agreement"] == 1.0


def test_broken_pipe_is_silent(mlp_snn, monkeypatch):
    """``relu2snn inspect x | head -1``: the closed pipe ends the run with 141 and no message."""
    from relu2snn_cli import cli as cli_module

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli_module.click, "echo", closed)
    result = run("inspect", mlp_snn)
    assert result.exit_code == 141 and result.stderr == ""


def test_overflowing_input_range_is_one_line_without_numpy_warnings(tmp_path):
    args = ["convert", MLP / "model.onnx", "--calib", MLP / "calib.npy", "-o", tmp_path / "o.snn.h5",
            "--input-range", "1e308", "1.7e308"]
    proc = subprocess.run([sys.executable, "-m", "relu2snn_cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "NaN or infinite" in proc.stderr and not (tmp_path / "o.snn.h5").exists()


# ----------------------------------------------------------------------------- convert: the data

def _bool_data():
    return good_calib() > 0.5


DATA_CASES = {
    "wrong-shape": (lambda: np.zeros((8, 63), np.float32), "(63,)", "(64,)"),
    "wrong-rank": (lambda: np.zeros((8, 8, 8), np.float32), "(8, 8)", "(64,)"),
    "empty": (lambda: np.zeros((0, 64), np.float32), "no samples", "c.npy"),
    "scalar": (lambda: np.float32(3), "no samples", "c.npy"),
    "nan": (lambda: np.where(np.arange(64) == 7, np.nan, good_calib()).astype(np.float32), "sample 0", "NaN"),
    "inf": (lambda: np.vstack([good_calib(), np.full((1, 64), np.inf, np.float32)]), "sample 16", "infinite"),
    "bool": (_bool_data, "bool", "real-number"),
    "complex": (lambda: good_calib().astype(np.complex64), "complex64", "real-number"),
    "strings": (lambda: np.array([["a"] * 64] * 4), "<U1", "real-number"),
    "records": (lambda: np.zeros(4, dtype=[("a", "f4", (64,))]), "dtype", "real-number"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_calibration_data(tmp_path, case):
    make, *expect = DATA_CASES[case]
    out = tmp_path / "o.snn.h5"
    line = one_line_error(run("convert", MLP / "model.onnx", "--calib", calib(tmp_path, make()), "-o", out))
    assert "c.npy" in line and all(e in line for e in expect), line
    assert not out.exists()


def test_npy_of_python_objects_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "c.npy"
    np.save(path, np.array([_Trap(str(marker))], dtype=object), allow_pickle=True)
    line = one_line_error(run("convert", MLP / "model.onnx", "--calib", path, "-o", tmp_path / "o.snn.h5"))
    assert "c.npy" in line and "pickle" in line
    assert not marker.exists()


class _Trap:
    """Creates a file when unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_integer_inputs_are_converted_exactly(tmp_path):
    """Integer data is accepted: converted to float64, it gives the same artifact as the same values as floats."""
    ints = np.rint(good_calib() * 16).astype(np.uint8)
    a, b = tmp_path / "a.snn.h5", tmp_path / "b.snn.h5"
    assert run("convert", MLP / "model.onnx", "--calib", calib(tmp_path, ints, "i.npy"), "-o", a).exit_code == 0
    floats = calib(tmp_path, ints.astype(np.float32), "f.npy")
    assert run("convert", MLP / "model.onnx", "--calib", floats, "-o", b).exit_code == 0
    assert h5io.content_hash(h5io.read(a)) == h5io.content_hash(h5io.read(b))
    result = run("verify", a, "--onnx", MLP / "model.onnx", "--data", calib(tmp_path, ints, "t.npy"), "--quiet")
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- outputs

def test_output_in_a_missing_directory_is_refused_before_any_work(tmp_path, mlp_snn):
    for args in (["convert", MLP / "model.onnx", "--calib", MLP / "calib.npy", "-o", tmp_path / "no" / "o.snn.h5"],
                 ["simulate", mlp_snn, "--data", MLP / "test.npy", "-o", tmp_path / "no" / "o.npz"]):
        line = one_line_error(run(*args))
        assert str(tmp_path / "no") in line and "does not exist" in line
    assert not (tmp_path / "no").exists()


def test_output_that_is_a_directory(tmp_path):
    (tmp_path / "d.snn.h5").mkdir()
    line = one_line_error(run("convert", MLP / "model.onnx", "--calib", MLP / "calib.npy", "-o", tmp_path / "d.snn.h5",
                              "--force"))
    assert "d.snn.h5" in line and "is a directory" in line and "convert --help" in line


@pytest.mark.parametrize("args", [["convert"], ["convert", "m.onnx", "--calib", "c.npy", "--zeta", "x"], ["bogus"],
                                  ["verify", "a.snn.h5", "--data", "t.npy"]])
def test_usage_errors_are_one_line(args):
    line = one_line_error(run(*args))
    assert line.startswith("relu2snn: error: ") and "--help" in line


def test_output_that_is_an_input_is_refused_even_with_force(tmp_path):
    data = calib(tmp_path, good_calib())
    before = data.read_bytes()
    line = one_line_error(run("convert", MLP / "model.onnx", "--calib", data, "-o", data, "--force"))
    assert "c.npy" in line and "input" in line
    assert data.read_bytes() == before


def test_simulate_existing_output_needs_force(tmp_path, mlp_snn):
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep")
    args = ["simulate", mlp_snn, "--data", MLP / "test.npy", "-o", out, "--quiet"]
    line = one_line_error(run(*args))
    assert "o.npz" in line and "--force" in line and out.read_bytes() == b"keep"
    assert run(*args, "--force").exit_code == 0
    with np.load(out) as z:
        assert z["logits"].shape == (597, 10)


# ----------------------------------------------------------------------------- the .snn.h5 file

SNN_CASES = {
    "newer-version": (lambda f: f.attrs.__setitem__("format_version", h5io.FORMAT_VERSION + 1), "newer"),
    "missing-dataset": (lambda f: f["nodes/001"].__delitem__("theta"), "'theta'"),
    "missing-attribute": (lambda f: f["nodes/001"].attrs.__delitem__("window"), "'window'"),
    "other-format": (lambda f: f.attrs.__setitem__("format", "something.else"), "format"),
}


@pytest.mark.parametrize("command", ["inspect", "verify", "simulate"])
@pytest.mark.parametrize("case", SNN_CASES)
def test_bad_artifact(tmp_path, mlp_snn, case, command):
    edit, expect = SNN_CASES[case]
    bad = edited_snn(tmp_path, mlp_snn, edit)
    args = {"inspect": ["inspect", bad],
            "verify": ["verify", bad, "--onnx", MLP / "model.onnx", "--data", MLP / "test.npy"],
            "simulate": ["simulate", bad, "--data", MLP / "test.npy", "-o", tmp_path / "o.npz"]}[command]
    line = one_line_error(run(*args))
    assert "bad.snn.h5" in line and expect in line, line
    assert not (tmp_path / "o.npz").exists()


def test_verify_against_another_model(tmp_path, mlp_snn):
    line = one_line_error(run("verify", mlp_snn, "--onnx", ROOT / "sample_models" / "cnn" / "model.onnx",
                              "--data", MLP / "test.npy"))
    assert "mlp.snn.h5" in line and "(64,)" in line and "(1, 8, 8)" in line


@pytest.mark.parametrize("labels, expect", [(np.full(597, 10), "0..9"), (np.full(597, -1), "0..9"),
                                            (np.zeros(597, np.float32), "float32"), (np.zeros(5, int), "(5,)")])
def test_bad_labels(tmp_path, mlp_snn, labels, expect):
    path = calib(tmp_path, labels, "y.npy")
    line = one_line_error(run("verify", mlp_snn, "--onnx", MLP / "model.onnx", "--data", MLP / "test.npy",
                              "--labels", path))
    assert "y.npy" in line and expect in line


# ----------------------------------------------------------------------------- --debug and interrupts

def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    args = ["convert", MLP / "model.onnx", "--calib", calib(tmp_path, np.zeros((0, 64), np.float32)),
            "-o", tmp_path / "o.snn.h5"]
    plain = subprocess.run([sys.executable, "-m", "relu2snn_cli", *map(str, args)], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1
    debug = subprocess.run([sys.executable, "-m", "relu2snn_cli", "--debug", *map(str, args)],
                           capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_keyboard_interrupt_exits_130_with_one_line(tmp_path, monkeypatch):
    from relu2snn_cli import convert
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, "calibrate", interrupted)
    out = tmp_path / "o.snn.h5"
    line = one_line_error(run("convert", MLP / "model.onnx", "--calib", MLP / "calib.npy", "-o", out), code=130)
    assert "interrupted" in line and "SIGINT" in line
    assert list(tmp_path.iterdir()) == []


def test_our_errors_all_exit_2_except_a_failed_verification():
    from relu2snn_cli import errors
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, Relu2SnnError):
            assert cls.exit_code == (1 if issubclass(cls, errors.VerificationFailed) else 2), cls


# A child that holds still at a known point until a signal arrives. Python runs a signal's handler in the main
# thread at its next bytecode, but the C-level handler may run in any thread (onnxruntime's, BLAS's), so a blocking
# call in the main thread is not reliably interrupted: the wait is a select() on the fd Python's C-level handler
# writes to (signal.set_wakeup_fd), which wakes whichever thread received the signal. No sleep, no deadline.
WAIT_FOR_SIGNAL = """
import os, select, signal
def wait_for_signal(marker):
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    print(marker, flush=True)
    select.select([r], [], [])
"""

SLOW_CONVERT = WAIT_FOR_SIGNAL + """
import sys
from relu2snn_cli import h5io
def slow_write(path, net):
    # hold the run inside the atomic write, after the temporary file exists
    with h5io.atomic_output(path) as tmp:
        open(tmp, "wb").write(b"partial")
        wait_for_signal("writing")
        for _ in range(10 ** 9):  # the handler raises at one of these bytecodes
            pass
h5io.write = slow_write
from relu2snn_cli.cli import main
sys.argv = ["relu2snn"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("sig, code, times", [(signal.SIGTERM, 143, 1), (signal.SIGINT, 130, 1),
                                              (signal.SIGTERM, 143, 3)])
def test_signal_during_a_write_leaves_nothing(tmp_path, sig, code, times):
    """A signal arriving while the output is half written: exit 128 + signal, and neither the output nor a temporary file remains."""
    out = tmp_path / "out" / "m.snn.h5"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, "convert", str(MLP / "model.onnx"),
                             "--calib", str(MLP / "calib.npy"), "-o", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(list(out.parent.iterdir())) == 1  # the temporary file
        for _ in range(times):  # repeated signals do not interrupt the cleanup
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"relu2snn: interrupted by {signal.Signals(sig).name}"]
    assert list(out.parent.iterdir()) == []


MARKED_CALIBRATION = WAIT_FOR_SIGNAL + """
import sys
from relu2snn_cli import calibrate
real = calibrate.update_requirement
calls = []
def marked(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:   # one layer of the second batch: the calibration is in the middle of its run
        wait_for_signal("calibrating")
    return real(*args, **kwargs)
calibrate.update_requirement = marked
from relu2snn_cli.cli import main
sys.argv = ["relu2snn"] + sys.argv[1:]
main()
"""


def test_sigterm_during_calibration_leaves_nothing(tmp_path):
    """A real calibration (6,400 samples in batches of 1) terminated part-way, in its second batch."""
    big = tmp_path / "big.npy"
    np.save(big, np.tile(good_calib(), (400, 1)))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", MARKED_CALIBRATION, "convert", str(MLP / "model.onnx"), "--calib",
                             str(big), "-o", str(out / "m.snn.h5"), "--batch-size", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "calibrating"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["relu2snn: interrupted by SIGTERM"]
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- the source model; non-finite results

def test_verify_against_another_model_of_the_same_shapes(tmp_path):
    """The cnn sample's artifact against the resnet sample: same input and output shapes, another model. Refused
    before any data is read (the data file does not exist), naming both files and the sha256 mismatch."""
    cnn = tmp_path / "cnn.snn.h5"
    samples = ROOT / "sample_models"
    assert run("convert", samples / "cnn" / "model.onnx", "--calib", samples / "cnn" / "calib.npy", "-o", cnn,
               "--quiet").exit_code == 0
    line = one_line_error(run("verify", cnn, "--onnx", samples / "resnet" / "model.onnx",
                              "--data", tmp_path / "missing.npy"))
    assert "cnn.snn.h5" in line and "resnet/model.onnx" in line and "sha256" in line
    assert "shape" not in line  # the shapes agree: only the hash tells the models apart


def test_verify_names_every_mismatch(tmp_path, mlp_snn):
    line = one_line_error(run("verify", mlp_snn, "--onnx", ROOT / "sample_models" / "cnn" / "model.onnx",
                              "--data", MLP / "test.npy"))
    assert "sha256" in line and "input shape (64,)" in line and "(1, 8, 8)" in line
    assert "output shape" not in line  # both have 10 logits


def _overflowing_readout(tmp_path, mlp_snn, monkeypatch) -> Path:
    """The MLP artifact with every readout weight 1e308: finite, but the logits overflow to inf. Validation refuses
    magnitudes above ``validate.MAX_MAGNITUDE``; the bound is lifted to write the file."""
    import dataclasses
    from relu2snn_cli import snn, validate
    net = h5io.read(mlp_snn)
    readout = net.nodes[-1]
    syn = dataclasses.replace(readout.synapses[0], J=np.full_like(readout.synapses[0].J, 1e308))
    path = tmp_path / "huge.snn.h5"
    with monkeypatch.context() as m:
        m.setattr(validate, "MAX_MAGNITUDE", np.inf)
        h5io.write(path, snn.Network(net.nodes[:-1] + (dataclasses.replace(readout, synapses=(syn,)),), net.meta))
    return path


@pytest.mark.parametrize("command", ["simulate", "verify"])
def test_overflowing_weights_are_refused_on_read(tmp_path, mlp_snn, monkeypatch, command):
    huge = _overflowing_readout(tmp_path, mlp_snn, monkeypatch)
    extra = ["-o", tmp_path / "o.npz"] if command == "simulate" else ["--onnx", MLP / "model.onnx"]
    line = one_line_error(run(command, huge, "--data", MLP / "test.npy", *extra, "--json"))
    assert "huge.snn.h5" in line and "J holds values above 1e+100" in line


def test_simulate_refuses_infinite_logits(tmp_path, mlp_snn, monkeypatch):
    """With the validation bound lifted (a network built in memory is not read from a file), the simulator itself
    refuses the infinite logits instead of writing them."""
    from relu2snn_cli import validate
    huge = _overflowing_readout(tmp_path, mlp_snn, monkeypatch)
    monkeypatch.setattr(validate, "MAX_MAGNITUDE", np.inf)
    out = tmp_path / "o.npz"
    result = run("simulate", huge, "--data", MLP / "test.npy", "-o", out, "--json")
    line = one_line_error(result)
    readout = h5io.read(huge).nodes[-1].name
    assert "huge.snn.h5" in line and f"'{readout}'" in line and "infinite or NaN" in line
    assert result.stdout == "" and not out.exists()


def test_verify_refuses_infinite_logits_and_prints_no_infinity(tmp_path, mlp_snn, monkeypatch):
    from relu2snn_cli import validate
    huge = _overflowing_readout(tmp_path, mlp_snn, monkeypatch)
    monkeypatch.setattr(validate, "MAX_MAGNITUDE", np.inf)
    result = run("verify", huge, "--onnx", MLP / "model.onnx", "--data", MLP / "test.npy", "--json")
    line = one_line_error(result)
    assert "huge.snn.h5" in line and "logits" in line and "infinite or NaN" in line
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout


def test_json_output_refuses_non_json_numbers():
    """Every --json report goes through one function that refuses NaN and ±inf (not JSON) instead of printing
    the tokens NaN or Infinity."""
    from relu2snn_cli.cli import _json
    assert json.loads(_json({"a": 1.5, "b": np.float64(2.0)})) == {"a": 1.5, "b": 2.0}
    for bad in (float("inf"), float("nan"), np.float64("-inf")):
        with pytest.raises(ValueError):
            _json({"x": bad})


# ----------------------------------------------------------------------------- malformed ONNX windows and data files

def _set_attr(node, key, value):
    kept = [a for a in node.attribute if a.name != key]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(key, value)])


def _cnn_with(tmp_path, op, key, value, index=0) -> tuple[Path, str]:
    """The sample CNN with attribute ``key`` of its ``index``-th ``op`` node set to ``value``; its node name."""
    model = onnx.load(str(ROOT / "sample_models" / "cnn" / "model.onnx"))
    node = [n for n in model.graph.node if n.op_type == op][index]
    _set_attr(node, key, value)
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    return path, node.name


@pytest.mark.parametrize("op, key, value", [("Conv", "strides", [0, 1]), ("Conv", "dilations", [0, 1]),
                                            ("Conv", "dilations", [-1, 1]), ("Conv", "pads", [-1, 0, 0, 0]),
                                            ("MaxPool", "strides", [0, 2]), ("MaxPool", "kernel_shape", [-2, 2])])
def test_window_attribute_out_of_range(tmp_path, op, key, value):
    """Found by fuzzing: exit 3 (ZeroDivisionError, "slice step cannot be zero") or a misleading error about a
    later node. Now one line naming the file, the node and the attribute."""
    path, name = _cnn_with(tmp_path, op, key, value)
    data = calib(tmp_path, np.load(ROOT / "sample_models" / "cnn" / "calib.npy")[:8])
    line = one_line_error(run("convert", path, "--calib", data, "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and f"{op} node '{name}'" in line and f"{key} = {value}" in line, line


def test_conv_bias_of_another_shape_is_refused(tmp_path):
    """Found by fuzzing: a Conv whose bias input names its weight (8, 1, 3, 3) ended in exit 3 (a broadcast error)."""
    model = onnx.load(str(ROOT / "sample_models" / "cnn" / "model.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[2] = conv.input[1]
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    data = calib(tmp_path, np.load(ROOT / "sample_models" / "cnn" / "calib.npy")[:8])
    line = one_line_error(run("convert", path, "--calib", data, "-o", tmp_path / "o.snn.h5"))
    assert "bad.onnx" in line and f"Conv node '{conv.name}'" in line and "bias of shape (8, 1, 3, 3)" in line, line


def test_onnxruntime_failure_at_run_time_is_one_line(tmp_path):
    """A scalar Conv bias passes onnx.checker and the import, and onnxruntime refuses it only when it runs:
    its own log line (written by C code to fd 2) came before ours. Run in a subprocess to see fd 2."""
    model = onnx.load(str(ROOT / "sample_models" / "cnn" / "model.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    bias = next(t for t in model.graph.initializer if t.name == conv.input[2])
    bias.CopyFrom(onnx.numpy_helper.from_array(np.float32(0.5), bias.name))
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    data = calib(tmp_path, np.load(ROOT / "sample_models" / "cnn" / "calib.npy")[:8])
    proc = subprocess.run([sys.executable, "-m", "relu2snn_cli", "convert", str(path), "--calib", str(data),
                           "-o", str(tmp_path / "o.snn.h5")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "bad.onnx" in proc.stderr and "onnxruntime cannot run the model" in proc.stderr


def test_sliding_windows_too_large_for_the_batch_are_refused_before_calibration(tmp_path):
    """Found by fuzzing: Conv pads of 99 on the sample ResNet (8×8 inputs) pass the ONNX tensor check, and the
    im2col matrices of the next convolutions over a batch of 256 took over 60 s and 12 GB. The windows of the
    imported graph are now bounded right after the import: a 3×3 conv of 8 channels on 204², padded to 206²,
    holds 8·206² + 8·9·204² (im2col) + 8·204² (output) values per sample."""
    model = onnx.load(str(ROOT / "sample_models" / "resnet" / "model.onnx"))
    _set_attr(next(n for n in model.graph.node if n.op_type == "Conv"), "pads", [99] * 4)
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    line = one_line_error(run("convert", path, "--calib", ROOT / "sample_models" / "resnet" / "calib.npy",
                              "-o", tmp_path / "o.snn.h5"))
    per_sample = 8 * 206 ** 2 + 8 * 9 * 204 ** 2 + 8 * 204 ** 2
    assert "bad.onnx" in line and "'/body/body.3/body/body.0/Conv'" in line and f"{per_sample} values" in line, line
    assert f"--batch-size {(1 << 28) // per_sample} or less" in line, line


def _negative_npy(path):
    np.save(path, good_calib())
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"(16, 64)", b"(-16, 64)", 1))


def _npz_of_text(path):
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", b"hello, not an array")


def _empty_h5(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=h5py.Empty("f4"))


@pytest.mark.parametrize("name, spec, make, expect", [
    ("c.npy", "c.npy", _negative_npy, "negative size"),
    ("c.npz", "c.npz:x", _npz_of_text, "not a .npy array"),
    ("c.h5", "c.h5:x", _empty_h5, "empty dataspace")], ids=["npy-negative-shape", "npz-member-not-npy", "h5-empty"])
def test_damaged_data_file_headers(tmp_path, name, spec, make, expect):
    """Found by fuzzing: each ended in exit 3 (OverflowError, AttributeError on bytes, TypeError on None)."""
    make(tmp_path / name)
    line = one_line_error(run("convert", MLP / "model.onnx", "--calib", tmp_path / spec, "-o", tmp_path / "o.snn.h5"))
    assert name in line and expect in line, line
