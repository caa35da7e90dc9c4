"""Sharded data and sharded runs (``relu2snn_cli.shard``): a glob of .npy shards reads as their concatenation;
on a Dask cluster (a LocalCluster on loopback, in this process or as two worker processes) ``convert`` writes
a byte-identical .snn.h5 and ``verify`` gives the same report as the single process."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from builders import GraphBuilder, save
from relu2snn_cli import h5io, shard, snn, verify
from relu2snn_cli.cli import cli
from relu2snn_cli.errors import DataError

distributed = pytest.importorskip("dask.distributed")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_shards(tmp_path, x, cuts) -> str:
    """x cut at ``cuts`` into .npy files in name order; the quoted glob naming them."""
    for k, part in enumerate(np.split(x, cuts)):
        np.save(tmp_path / f"part{k:02d}.npy", part)
    return str(tmp_path / "part*.npy")


def test_shards_read_as_their_concatenation(tmp_path):
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    data = shard.load_data(write_shards(tmp_path, x, [4, 4, 7]))   # an empty shard in the middle
    assert len(data) == 10 and data.shape == (10, 3) and data.dtype == np.float32
    for lo, hi in [(0, 10), (2, 9), (3, 5), (4, 7), (9, 20), (7, 7)]:
        np.testing.assert_array_equal(data[lo:hi], x[lo:hi])
    np.testing.assert_array_equal(np.asarray(data), x)


def test_shards_that_do_not_fit_together_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match="shard"):
        shard.load_data(str(tmp_path / "*.npy"))
    with pytest.raises(DataError, match="no file matches"):
        shard.load_data(str(tmp_path / "none*.npy"))


def dense_with_requirement(tmp_path) -> tuple[str, np.ndarray]:
    """A random dense stack whose second layer's window, at ζ = 0, is set by the exact requirement R*."""
    rng = np.random.default_rng(0)
    b = GraphBuilder((6,))
    h = b.op("Relu", [b.op("Gemm", ["x", b.const(rng.normal(0, 1, (16, 6))), b.const(np.zeros(16))], transB=1)])
    h = b.op("Relu", [b.op("Gemm", [h, b.const(rng.normal(0, 1, (16, 16))), b.const(np.zeros(16))], transB=1)])
    model = b.build(b.op("Gemm", [h, b.const(rng.normal(0, 1, (3, 16))), b.const(np.zeros(3))], transB=1))
    return save(model, tmp_path / "m.onnx"), rng.normal(size=(200, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def cluster():
    """Two workers of one thread in this process, on loopback."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as c:
        yield c


@pytest.mark.parametrize("case", ["cnn", "dense"])
def test_sharded_convert_writes_the_same_bytes(tmp_path, cluster, case):
    if case == "cnn":
        model, x = SAMPLES / "cnn" / "model.onnx", np.load(SAMPLES / "cnn" / "calib.npy")
        zeta = 0.5
    else:
        model, x = dense_with_requirement(tmp_path)
        zeta = 0.0
    np.save(tmp_path / "calib.npy", x)
    shards = write_shards(tmp_path, x, [70, 130])    # shard ends off the batch boundaries
    reports = {}
    for name, calib, extra in [("one", tmp_path / "calib.npy", []), ("glob", shards, []),
                               ("dask", shards, ["--scheduler", cluster.scheduler_address])]:
        result = run("convert", model, "--calib", calib, "-o", tmp_path / f"{name}.snn.h5", "--batch-size", 48,
                     "--zeta", zeta, "--json", "--quiet", *extra)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.stdout)
    one = (tmp_path / "one.snn.h5").read_bytes()
    assert (tmp_path / "glob.snn.h5").read_bytes() == one
    assert (tmp_path / "dask.snn.h5").read_bytes() == one
    if case == "dense":   # the merge of per-batch requirements is exercised: R* sets a window
        layers = [n for n in h5io.read(tmp_path / "one.snn.h5").nodes if isinstance(n, snn.SpikingLayer)]
        assert reports["one"]["requirement_pairs"] > 0
        assert any(n.x_n > (1 + 1e-6) * np.max(n.scale * n.x_max) for n in layers)
    assert reports["dask"]["forward_max_abs_error_vs_onnxruntime"] == reports["one"]["forward_max_abs_error_vs_onnxruntime"]


def test_sharded_verify_gives_the_same_report(tmp_path, cluster):
    snn = tmp_path / "cnn.snn.h5"
    assert run("convert", SAMPLES / "cnn" / "model.onnx", "--calib", SAMPLES / "cnn" / "calib.npy", "-o", snn,
               "--quiet").exit_code == 0
    shards = write_shards(tmp_path, np.load(SAMPLES / "cnn" / "test.npy"), [100, 333])
    common = ["verify", snn, "--onnx", SAMPLES / "cnn" / "model.onnx", "--labels", SAMPLES / "cnn" / "labels.npy",
              "--batch-size", 64, "--json", "--quiet"]
    np.savez(tmp_path / "test.npz", x=np.load(SAMPLES / "cnn" / "test.npy"))
    one = run(*common, "--data", SAMPLES / "cnn" / "test.npy")
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["n_samples"] == 597
    for data in (shards, f"{tmp_path / 'test.npz'}:x"):   # shards, and a file spec naming an .npz member
        dask = run(*common, "--data", data, "--scheduler", cluster.scheduler_address)
        assert dask.exit_code == 0, dask.output
        assert json.loads(dask.stdout) == json.loads(one.stdout)


def test_an_error_of_the_run_is_not_taken_for_an_unreachable_scheduler(tmp_path, cluster, monkeypatch):
    """An OSError inside the run (here: a file that cannot be read) under --scheduler is reported as itself,
    not as a failed connection to the scheduler."""
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "model.snn.h5")

    monkeypatch.setattr(verify.Checker, "__init__", unreadable)
    result = run("verify", tmp_path / "model.snn.h5", "--onnx", SAMPLES / "mlp" / "model.onnx", "--data",
                 SAMPLES / "mlp" / "test.npy", "--quiet", "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 2
    assert result.stderr.strip() == "relu2snn: error: model.snn.h5: Permission denied"


def test_verify_on_local_worker_processes(tmp_path):
    """--workers 2: a LocalCluster of two processes; the report equals the single-process one."""
    snn = tmp_path / "mlp.snn.h5"
    assert run("convert", SAMPLES / "mlp" / "model.onnx", "--calib", SAMPLES / "mlp" / "calib.npy", "-o", snn,
               "--quiet").exit_code == 0
    common = ["verify", snn, "--onnx", SAMPLES / "mlp" / "model.onnx", "--data", SAMPLES / "mlp" / "test.npy",
              "--batch-size", 128, "--json", "--quiet"]
    one, two = run(*common), run(*common, "--workers", 2)
    assert one.exit_code == two.exit_code == 0, two.output
    assert json.loads(two.stdout) == json.loads(one.stdout)


def test_unreachable_scheduler_and_missing_dask_are_one_line_errors(tmp_path, monkeypatch):
    snn = tmp_path / "mlp.snn.h5"
    assert run("convert", SAMPLES / "mlp" / "model.onnx", "--calib", SAMPLES / "mlp" / "calib.npy", "-o", snn,
               "--quiet").exit_code == 0
    common = ["verify", snn, "--onnx", SAMPLES / "mlp" / "model.onnx", "--data", SAMPLES / "mlp" / "test.npy",
              "--quiet"]
    with socket.socket() as s:   # a loopback port that nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(shard, "CONNECT_TIMEOUT", "1s")   # refused at once; the timeout only ends the retries
    result = run(*common, "--scheduler", address)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr
    result = run(*common, "--workers", 2, "--scheduler", address)
    assert result.exit_code == 2 and "not both" in result.stderr
    monkeypatch.setitem(sys.modules, "dask.distributed", None)   # as if the extra were not installed
    result = run(*common, "--workers", 2)
    assert result.exit_code == 2 and "relu2snn[dask]" in result.stderr
