"""The ``.snn.h5`` artifact: round trips, determinism, atomic writes and rejection of bad files.

The networks come from converting the sample MLP and CNN (``convert.convert``); the
in-memory ``snn.Network`` that convert writes is captured by wrapping ``h5io.write``.
Arrays must come back bit-identical (same dtype, shape and values); scalars, strings
and tuples equal and of the same type. Every error test checks the exception type, that
the message names the file and that it is one line.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from relu2snn_cli import convert, h5io, snn, validate
from relu2snn_cli.errors import ArtifactError, GraphError
from relu2snn_cli.mapping import MappingOptions, static_certificate

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
MODELS = ("mlp", "cnn")


# ----------------------------------------------------------------------------- helpers

def run_convert(model: str, out: Path) -> snn.Network:
    """Convert a sample model to ``out`` and return the network convert wrote (captured in memory)."""
    captured = {}
    real_write = h5io.write

    def capture(path, net):
        captured["net"] = net
        real_write(path, net)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convert.h5io, "write", capture)
        convert.convert(SAMPLES / model / "model.onnx", str(SAMPLES / model / "calib.npy"), out)
    return captured["net"]


def plain(value):
    """Meta values as plain data: HDF5 attributes know no tuple/list difference, so tuples read back as lists."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def assert_same_node(a, b, owner=None):
    owner = owner or a.name
    assert type(a) is type(b), (owner, type(a), type(b))
    for fld in dataclasses.fields(a):
        x, y = getattr(a, fld.name), getattr(b, fld.name)
        where = f"{owner}.{fld.name}"
        if isinstance(x, tuple) and x and dataclasses.is_dataclass(x[0]):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                assert_same_node(u, v, f"{where}[{i}]")
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), where
            assert x.dtype == y.dtype, (where, x.dtype, y.dtype)
            assert x.shape == y.shape, (where, x.shape, y.shape)
            assert np.array_equal(x, y), where
        else:
            assert type(x) is type(y), (where, type(x), type(y))
            assert x == y, (where, x, y)
            if isinstance(x, tuple):
                assert [type(v) for v in x] == [type(v) for v in y], (where, x, y)


def assert_same_network(a: snn.Network, b: snn.Network):
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes):
        assert_same_node(x, y)


def assert_artifact_error(path, excinfo):
    msg = str(excinfo.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{model: (in-memory network, path of its .snn.h5)} for the MLP and the CNN."""
    out = {}
    for model in MODELS:
        path = tmp_path_factory.mktemp(model) / "m.snn.h5"
        out[model] = (run_convert(model, path), path)
    return out


@pytest.fixture
def cnn_copy(converted, tmp_path):
    """A fresh copy of the converted CNN to corrupt."""
    path = tmp_path / "bad.snn.h5"
    shutil.copy(converted["cnn"][1], path)
    return path


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("model", MODELS)
def test_round_trip(converted, model):
    net, path = converted[model]
    back = h5io.read(path)
    assert_same_network(net, back)
    assert {k: plain(v) for k, v in net.meta.items()} == back.meta
    assert h5io.content_hash(net) == h5io.content_hash(back)


def test_cnn_holds_conv_and_dense_layers(converted):
    net, _ = converted["cnn"]
    layers = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    assert any(n.synapses[0].is_conv for n in layers) and any(not n.synapses[0].is_conv for n in layers)


def with_meta(nodes, **extra) -> snn.Network:
    """A network with the root attributes convert writes (validation requires them), and ``extra`` ones."""
    net = snn.Network(tuple(nodes))
    enc = net.nodes[0]
    net.meta.update({"tool": "relu2snn", "tool_version": "0.1.0", "neuron_model": "test", "source_model_name": "m.onnx",
                     "source_model_sha256": "0" * 64, "source_opset": 17, "source_input": "x", "source_logits": "y",
                     "calibration_samples": 1, "calibration_sha256": "f" * 64, "zeta": 0.5, "s_min": -10.0,
                     "s_max": 0.99, "input_range": (enc.low, enc.high), "input_shape": enc.shape,
                     "input_layout": {1: "NC", 2: "NCL", 3: "NCHW"}[len(enc.shape)], "removed_output_ops": (),
                     "latency": net.latency, **extra})
    return net


def hand_built(rng) -> snn.Network:
    """Every node kind: a layer reading two populations (grouped conv with a delay, 1×1 conv), pooling with a
    latest-spike channel, transpose, a take of positions (one repeated), reshape, and a concatenation of populations from different windows."""
    enc = snn.Encoder("in", (2, 5, 5), -1.0, 2.0)
    syn1 = snn.Synapses("in", (2, 5, 5), 0.05 * rng.normal(size=(3, 2, 3, 3)), 0.0, (2, 1), (1, 0, 1, 2), (1, 2))
    theta1 = rng.normal(size=(3, 3, 3)) + 4
    c1 = snn.SpikingLayer("c1", (syn1,), np.ones(3), (1.0, 2.5), theta=theta1,
                          certified=static_certificate([(syn1.J, 1.0)], theta1, np.ones(3), 1.0),
                          scale=np.full(3, 0.5), x_max=rng.random(3), x_n=2.5 / 1.5, source="")
    syns = (snn.Synapses("in", (2, 5, 5), 0.05 * rng.normal(size=(4, 1, 3, 3)), 2.5, (2, 2), (1, 1, 1, 1), (1, 1), 2),
            snn.Synapses("c1", (3, 3, 3), 0.05 * rng.normal(size=(4, 3, 1, 1)), 0.0, (1, 1), (0, 0, 0, 0), (1, 1)))
    theta2 = rng.normal(size=4) + 5
    c2 = snn.SpikingLayer("c2", syns, np.ones(4), (3.5, 1.5), theta=theta2,
                          certified=static_certificate([(syns[0].J, 1.0), (syns[1].J, 2.5)], theta2, np.ones(4), 2.5),
                          scale=np.ones(4), x_max=rng.random(4), x_n=1.0, source="add")
    pool = snn.SpikePool("p", "c2", c2.shape, (2, 2), (2, 2), (0, 0, 1, 1), (1, 1), True, (1,), window=c2.window)
    tr = snn.Transpose("t", "p", pool.shape, (1, 2, 0), window=pool.window)
    take = snn.Take("k", "t", tr.shape, 2, (3, 0, 0), window=tr.window)
    flat = snn.Reshape("f", "k", take.shape, (12,), window=take.window)
    raw = snn.Reshape("e", "in", enc.shape, (50,), window=enc.window)
    cat = snn.Concat("cat", ("f", "e"), ((12,), (50,)), 0, window=(3.5, 1.5), delays=(0.0, 4.0))
    readout = snn.Readout("r", (snn.Synapses("cat", (62,), rng.normal(size=(4, 62))),), rng.normal(size=4), cat.window)
    return with_meta((enc, c1, c2, pool, tr, take, flat, raw, cat, readout),
                     note="ünïcode", flag=True, n=3, x=0.1, names=("a", "b"), empty=())


def test_round_trip_hand_built(tmp_path):
    """Every node kind, non-default geometry, delays, a per-position theta map, ceil_mode, an empty source
    and odd meta values."""
    net = hand_built(np.random.default_rng(1))
    assert {type(n).__name__ for n in net.nodes} == set(snn.KINDS)
    path = tmp_path / "h.snn.h5"
    h5io.write(path, net)
    back = h5io.read(path)
    assert_same_network(net, back)
    assert {k: plain(v) for k, v in net.meta.items()} == back.meta
    assert {k: back.meta[k] for k in ("note", "flag", "n", "x", "names", "empty")} == {
        "note": "ünïcode", "flag": True, "n": 3, "x": 0.1, "names": ["a", "b"], "empty": []}
    assert type(back.meta["flag"]) is bool and type(back.meta["n"]) is int
    assert h5io.content_hash(net) == h5io.content_hash(back)


@pytest.mark.parametrize("model", MODELS)
def test_rewrite_of_read_network_is_byte_identical(converted, model, tmp_path):
    net, path = converted[model]
    again = tmp_path / "again.snn.h5"
    h5io.write(again, h5io.read(path))
    assert again.read_bytes() == path.read_bytes()


def test_content_hash_sees_a_parameter_change(converted):
    net, _ = converted["mlp"]
    layer = net.nodes[1]
    theta = layer.theta.copy()
    theta[0] = np.nextafter(theta[0], np.inf)
    changed = snn.Network((net.nodes[0], dataclasses.replace(layer, theta=theta)) + net.nodes[2:], net.meta)
    assert h5io.content_hash(changed) != h5io.content_hash(net)


# ----------------------------------------------------------------------------- determinism

def test_no_object_stores_a_timestamp(converted, tmp_path):
    """HDF5 stamps objects with their creation and modification times unless told not to; none of ours has
    one (a file written with the library's default does, which shows the check can fail)."""
    def stamps(path) -> list:
        found = []
        with h5py.File(path, "r") as f:
            for obj in [f] + [f[name] for name in _names(f)]:
                info = h5py.h5o.get_info(obj.id)
                found += [t for t in (info.atime, info.mtime, info.ctime, info.btime) if t]
        return found

    for model in MODELS:
        assert stamps(converted[model][1]) == [], model
    stamped = tmp_path / "stamped.h5"
    with h5py.File(stamped, "w") as f:
        f.create_dataset("x", data=np.zeros(3), track_times=True)
    assert stamps(stamped)


def _names(f: h5py.File) -> list[str]:
    names = []
    f.visit(names.append)
    return names


def test_same_conversion_gives_same_bytes(converted, tmp_path):
    """Converting again gives the same file (no object stores a timestamp, see above)."""
    for model in MODELS:
        first_net, first = converted[model]
        second = tmp_path / f"{model}.snn.h5"
        second_net = run_convert(model, second)
        assert second.read_bytes() == first.read_bytes(), model
        assert h5io.content_hash(second_net) == h5io.content_hash(first_net)
        assert h5io.content_hash(h5io.read(second)) == h5io.content_hash(h5io.read(first))


# ----------------------------------------------------------------------------- atomic write

def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name == name or
                  (p.name.startswith(f".{name}.") and p.name.endswith(".tmp")))


def test_write_into_missing_directory(converted, tmp_path):
    net, _ = converted["mlp"]
    path = tmp_path / "missing" / "m.snn.h5"
    with pytest.raises(ArtifactError) as excinfo:
        h5io.write(path, net)
    assert_artifact_error(path, excinfo)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_nothing(converted, tmp_path, monkeypatch, error):
    """create_dataset fails on its 5th call: the file is half written when the error comes."""
    net, _ = converted["cnn"]
    real = h5py.Group.create_dataset
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise error("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(error):
        h5io.write(tmp_path / "m.snn.h5", net)
    assert len(calls) == 5
    assert list(tmp_path.iterdir()) == []


def test_output_gets_the_usual_mode_of_a_new_file(converted, tmp_path):
    """The temporary file is private while written; the output has the mode a new file gets under the umask."""
    net, _ = converted["mlp"]
    old = os.umask(0o027)
    try:
        h5io.write(tmp_path / "m.snn.h5", net)
    finally:
        os.umask(old)
    assert (tmp_path / "m.snn.h5").stat().st_mode & 0o777 == 0o640


def test_field_of_the_wrong_type_is_refused_before_writing(converted, tmp_path):
    """A field value of another type than declared (the last layer's source) is refused before anything is written."""
    net, _ = converted["mlp"]
    nodes = list(net.nodes)
    nodes[-1] = dataclasses.replace(nodes[-1], source=object())
    bad = snn.Network(tuple(nodes), net.meta)
    with pytest.raises(snn.GraphError, match="source"):
        h5io.write(tmp_path / "m.snn.h5", bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(converted, tmp_path, monkeypatch):
    net, path = converted["mlp"]
    target = tmp_path / "m.snn.h5"
    shutil.copy(path, target)
    before = target.read_bytes()

    def failing(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_group", failing)
    with pytest.raises(OSError):
        h5io.write(target, net)
    assert target.read_bytes() == before
    assert leftovers(tmp_path, target.name) == [target.name]


# ----------------------------------------------------------------------------- bad files

def read_error(path) -> str:
    with pytest.raises(ArtifactError) as excinfo:
        h5io.read(path)
    return assert_artifact_error(path, excinfo)


def test_nonexistent_path(tmp_path):
    read_error(tmp_path / "nothing.snn.h5")


def test_directory_is_not_an_artifact(tmp_path):
    read_error(tmp_path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "random.snn.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    read_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.snn.h5"
    path.write_bytes(b"")
    read_error(path)


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.95])
def test_truncated(converted, tmp_path, fraction):
    data = converted["cnn"][1].read_bytes()
    path = tmp_path / "cut.snn.h5"
    path.write_bytes(data[:int(len(data) * fraction)])
    read_error(path)


def edit(path, change):
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def test_other_format(cnn_copy):
    edit(cnn_copy, lambda f: f.attrs.__setitem__("format", np.bytes_(b"someone.else")))
    assert "someone.else" in read_error(cnn_copy)


def test_plain_hdf5_without_format(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    read_error(path)


def test_newer_format_version(cnn_copy):
    edit(cnn_copy, lambda f: f.attrs.__setitem__("format_version", h5io.FORMAT_VERSION + 1))
    msg = read_error(cnn_copy)
    assert str(h5io.FORMAT_VERSION + 1) in msg and "newer" in msg


@pytest.mark.parametrize("version", [0, -3, "one"])
def test_invalid_format_version(cnn_copy, version):
    edit(cnn_copy, lambda f: f.attrs.__setitem__("format_version", version))
    read_error(cnn_copy)


def test_missing_dataset(cnn_copy):
    edit(cnn_copy, lambda f: f["nodes/001/synapses/0"].__delitem__("J"))
    msg = read_error(cnn_copy)
    assert "001" in msg and "'J'" in msg


def test_missing_synapses(cnn_copy):
    edit(cnn_copy, lambda f: f["nodes/001"].__delitem__("synapses"))
    assert "synapses" in read_error(cnn_copy)


def test_missing_attribute(cnn_copy):
    edit(cnn_copy, lambda f: f["nodes/001/synapses/0"].attrs.__delitem__("in_shape"))
    assert "in_shape" in read_error(cnn_copy)


def test_missing_nodes_group(cnn_copy):
    edit(cnn_copy, lambda f: f.__delitem__("nodes"))
    read_error(cnn_copy)


def test_unknown_node_kind(cnn_copy):
    edit(cnn_copy, lambda f: f["nodes/002"].attrs.__setitem__("kind", np.bytes_(b"Dendrite")))
    assert "Dendrite" in read_error(cnn_copy)


@pytest.mark.parametrize("node, window", [("001", [1.5, 4.0]), ("002", [7.0, 4.0]), ("003", [6.0, 4.0])])
def test_window_that_does_not_follow(cnn_copy, node, window):
    edit(cnn_copy, lambda f: f[f"nodes/{node}"].attrs.__setitem__("window", np.array(window)))
    assert "does not follow" in read_error(cnn_copy)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_theta_not_finite(cnn_copy, value):
    def change(f):
        theta = f["nodes/001/theta"][()]
        theta.flat[3] = value
        del f["nodes/001/theta"]
        f["nodes/001"].create_dataset("theta", data=theta)
    edit(cnn_copy, change)
    assert "theta" in read_error(cnn_copy)


def test_inconsistent_shapes(cnn_copy):
    def change(f):
        del f["nodes/001/synapses/0/J"]
        f["nodes/001/synapses/0"].create_dataset("J", data=np.zeros((8, 2, 3, 3)))
    edit(cnn_copy, change)
    read_error(cnn_copy)


def test_missing_encoder(cnn_copy):
    edit(cnn_copy, lambda f: f["nodes"].__delitem__("000"))
    read_error(cnn_copy)


# A corrupt tuple attribute is an ArtifactError too, never another exception or a silent truncation.
BAD_GEOMETRY = [
    pytest.param("001/synapses/0", "strides", [0, 0], id="conv-stride-0"),
    pytest.param("003", "strides", [0, 0], id="pool-stride-0"),
    pytest.param("001/synapses/0", "strides", [1], id="conv-stride-short"),
    pytest.param("001/synapses/0", "strides", [1.5, 1.0], id="conv-stride-fractional"),
    pytest.param("001/synapses/0", "delay", -1.0, id="negative-delay"),
    pytest.param("001/synapses/0", "groups", 3, id="groups-not-dividing"),
]


@pytest.mark.parametrize("node, attr, value", BAD_GEOMETRY)
def test_corrupt_geometry(cnn_copy, node, attr, value):
    edit(cnn_copy, lambda f: f[f"nodes/{node}"].attrs.__setitem__(attr, np.array(value)))
    read_error(cnn_copy)


def test_unchanged_copy_reads(converted, cnn_copy):
    """The corruption tests start from a copy that is itself valid."""
    assert h5io.content_hash(h5io.read(cnn_copy)) == h5io.content_hash(converted["cnn"][0])


# ----------------------------------------------------------------------------- validation of what the fields say

def dense_weights_times(f, factor):
    """Node 007 (dense) with J scaled and its certificate recomputed, so only the incoming sums are wrong."""
    J = f["nodes/007/synapses/0/J"][()] * factor
    b_in = f["nodes/006"].attrs["window"][1]
    replace_dataset(f, "nodes/007/synapses/0/J", J)
    replace_dataset(f, "nodes/007/certified",
                    static_certificate([(J, b_in)], f["nodes/007/theta"][()], f["nodes/007/alpha"][()], b_in))


def replace_dataset(f, name, value):
    del f[name]
    f.create_dataset(name, data=value)


def scaled(f, name, factor):
    replace_dataset(f, name, f[name][()] * factor)


VALIDATION = [
    pytest.param(lambda f: replace_dataset(f, "nodes/001/synapses/0/J",
                                           f["nodes/001/synapses/0/J"][()].astype(np.float32)), "float32",
                 id="J-float32"),
    pytest.param(lambda f: replace_dataset(f, "nodes/001/certified", f["nodes/001/certified"][()].astype(np.float64)),
                 "dtype", id="certified-float"),
    pytest.param(lambda f: replace_dataset(f, "nodes/001/theta", np.array(["a"] * 8, dtype=h5py.string_dtype())),
                 "dtype", id="theta-strings"),
    pytest.param(lambda f: replace_dataset(f, "nodes/001/certified", ~f["nodes/001/certified"][()]), "certificate",
                 id="certificate-flipped"),
    pytest.param(lambda f: scaled(f, "nodes/001/theta", 0.5), "certificate", id="theta-halved"),
    pytest.param(lambda f: f["nodes/001"].attrs.__setitem__("x_n", f["nodes/001"].attrs["x_n"] * 2), "x_n",
                 id="x_n-doubled"),
    pytest.param(lambda f: scaled(f, "nodes/001/x_max", 10.0), "x_n", id="x_max-times-10"),
    pytest.param(lambda f: scaled(f, "nodes/001/x_max", -1.0), "negative", id="x_max-negative"),
    pytest.param(lambda f: scaled(f, "nodes/001/scale", 3.0), "scales", id="scale-above-1"),
    pytest.param(lambda f: dense_weights_times(f, 50.0), "s_min, s_max", id="J-times-50"),
    pytest.param(lambda f: f.attrs.__setitem__("latency", 1.0), "latency", id="meta-latency"),
    pytest.param(lambda f: f.attrs.__setitem__("input_range", np.array([0.0, 1.0])), "input_range", id="meta-range"),
    pytest.param(lambda f: f.attrs.__setitem__("input_shape", np.array([1, 8])), "input_shape", id="meta-shape"),
    pytest.param(lambda f: f.attrs.__setitem__("zeta", -1.0), "zeta", id="meta-zeta"),
    pytest.param(lambda f: f.attrs.__setitem__("s_max", 1.5), "s_max", id="meta-s_max"),
    pytest.param(lambda f: f.attrs.__setitem__("note", f.ref), "note", id="meta-reference"),
    pytest.param(lambda f: f["nodes/000"].attrs.__setitem__("window", np.array([0.0, 2.0])), "does not follow",
                 id="encoder-window"),
    pytest.param(lambda f: f["nodes/003"].attrs.__setitem__("pads", np.array([2, 0, 0, 0])), "input shape",
                 id="pool-pads"),
    pytest.param(lambda f: f["nodes/001/synapses/0"].attrs.__setitem__("pads", np.array([1, 1, 40, 1])), "fits neither",
                 id="conv-pads"),
    pytest.param(lambda f: f["nodes"].move("008", "010"), "expected 000", id="node-keys-gap"),
    pytest.param(lambda f: (f["nodes/001/synapses/0"].__delitem__("J"), f["nodes/001/synapses/0"].create_group("J")),
                 "not a dataset",
                 id="dataset-is-a-group"),
    pytest.param(lambda f: (replace_dataset(f, "nodes/001/alpha", np.ones(8)),
                            f["nodes/001"].__delitem__("alpha"),
                            f["nodes/001"].create_dataset("alpha", data=np.ones(8), chunks=(4,), compression="gzip")),
                 "compressed", id="compressed"),
    pytest.param(lambda f: f["nodes/001/synapses/0"].attrs.__setitem__("in_shape", np.array([1, 8, 0])), "empty",
                 id="zero-in-shape"),
    pytest.param(lambda f: f["nodes/003"].attrs.__setitem__("in_shape", np.array([3])), "corrupt",
                 id="pool-in-shape-1d"),  # found by fuzzing: an IndexError in SpikePool's own error message
]


@pytest.mark.parametrize("change, expect", VALIDATION)
def test_validation_refuses(cnn_copy, change, expect):
    edit(cnn_copy, change)
    msg = read_error(cnn_copy)
    assert expect in msg, msg


def test_writer_refuses_an_inconsistent_network(converted, tmp_path):
    """The writer runs the same checks: an inconsistent network is never written."""
    net, _ = converted["cnn"]
    nodes = list(net.nodes)
    nodes[1] = dataclasses.replace(nodes[1], certified=~nodes[1].certified)
    with pytest.raises(snn.GraphError) as excinfo:
        h5io.write(tmp_path / "m.snn.h5", snn.Network(tuple(nodes), net.meta))
    assert "certificate" in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_oversized_dataset_shape_is_refused_before_reading(cnn_copy, monkeypatch):
    """A dataset whose header claims more bytes than the file holds is refused without being read."""
    real = h5py.Dataset.shape

    def huge(self):
        return (10**9,) + real.fget(self)[1:] if self.name.endswith("/J") else real.fget(self)

    monkeypatch.setattr(h5py.Dataset, "shape", property(huge))
    assert "larger than the file" in read_error(cnn_copy)


@pytest.mark.parametrize("pad, ok", [(2, True), (5, True), (6, False)])
def test_pads_beyond_input_and_window_are_refused(pad, ok):
    """ONNX allows pads beyond the kernel (an absorbed Pad gives them); pads as large as the input and the window
    together only add positions that see padding alone, so the validator refuses them as damage."""
    from relu2snn_cli import validate
    enc = snn.Encoder("in", (1, 4, 4), 0.0, 1.0)
    pool = snn.SpikePool("p", "in", (1, 4, 4), (2, 2), (1, 1), (0, 0, pad, 0), (1, 1), window=enc.window)
    flat = snn.Reshape("f", "p", pool.shape, (int(np.prod(pool.shape)),), window=pool.window)
    readout = snn.Readout("r", (snn.Synapses("f", flat.shape, np.ones((2, flat.shape[0]))),), np.zeros(2), flat.window)
    net = with_meta((enc, pool, flat, readout))
    if ok:
        validate.check(net)
    else:
        with pytest.raises(snn.GraphError, match="pads"):
            validate.check(net)


def test_attribute_name_that_is_not_text(converted, tmp_path):
    """Found by fuzzing: a damaged root attribute name reads back as bytes and broke inspect --json."""
    _, path = converted["mlp"]
    raw = path.read_bytes()
    at = raw.index(b"calibration_samples")
    bad = tmp_path / "bad.snn.h5"
    bad.write_bytes(raw[:at] + b"\x01" * 7 + b"\x80" + raw[at + 8:])
    assert "not text" in read_error(bad)


def test_text_that_is_not_utf8(converted, tmp_path):
    """Found by fuzzing: h5py reads invalid UTF-8 as surrogates, which inspect could not print."""
    net, path = converted["mlp"]
    raw = path.read_bytes()
    at = raw.index(net.meta["source_model_sha256"].encode())
    bad = tmp_path / "bad.snn.h5"
    bad.write_bytes(raw[:at] + b"\x01\x01\x80" + raw[at + 3:])
    assert "not valid UTF-8" in read_error(bad)


def test_variable_length_text_is_refused_from_its_type(cnn_copy):
    """Text is fixed-length UTF-8 (format 3); a variable-length attribute is refused before its value is read."""
    edit(cnn_copy, lambda f: f["nodes/001"].attrs.__setitem__("note", "variable length"))
    assert "variable-length" in read_error(cnn_copy)
    with h5py.File(cnn_copy) as f:
        assert all(f.attrs.get_id(k).dtype.kind in "biufS" for k in f.attrs)   # what the writer writes


def test_damaged_global_heap_does_not_hang():
    """Found by fuzzing: byte edits in the global heap of a format-2 file (its text was variable-length) made
    libhdf5 loop inside C code (H5HG__cache_heap_deserialize) when the text was read, where no signal
    reaches Python. The file is refused from the attribute's type, in a child process that is killed
    if it takes a minute."""
    path = Path(__file__).parent / "data" / "damaged_global_heap.snn.h5"
    code = ("import sys; from relu2snn_cli import h5io; from relu2snn_cli.errors import ArtifactError\n"
            "try:\n    h5io.read(sys.argv[1])\nexcept ArtifactError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert "variable-length" in out.stdout, out


# ----------------------------------------------------------------------------- spiking layers need α ≥ 0

def tiny_network(alpha: float = 1.0) -> snn.Network:
    """Encoder → one spiking neuron (ϑ = −0.5, J = 0.1) → readout; with α < 0 the static certificate
    α·B_in + J·B_in < ϑ holds although V(T_in) = 0 ≥ ϑ: the neuron fires at once (docs/math.md §5)."""
    enc = snn.Encoder("in", (1,), 0.0, 1.0)
    syn = snn.Synapses("in", (1,), np.array([[0.1]]))
    theta = np.array([-0.5])
    cert = static_certificate([(syn.J, 1.0)], theta, np.array([alpha]), 1.0)
    layer = snn.SpikingLayer("h", (syn,), np.array([alpha]), (1.0, 2.0), theta=theta, certified=cert,
                             scale=np.ones(1), x_max=np.ones(1), x_n=1.0)
    readout = snn.Readout("r", (snn.Synapses("h", (1,), np.array([[1.0]])),), np.zeros(1), (1.0, 2.0))
    return with_meta((enc, layer, readout), zeta=1.0)


def negative_alpha_file(tmp_path) -> Path:
    """A valid file of ``tiny_network`` edited to α = −1, with the certificate that α gives (True)."""
    path = tmp_path / "neg.snn.h5"
    h5io.write(path, tiny_network())

    def change(f):
        replace_dataset(f, "nodes/001/alpha", np.array([-1.0]))
        replace_dataset(f, "nodes/001/certified", np.array([True]))
    return edit(path, change)


def test_negative_alpha_is_refused_by_the_constructor():
    with pytest.raises(snn.GraphError, match="alpha"):
        tiny_network(alpha=-1.0)
    assert tiny_network(alpha=0.0).nodes[1].certified.tolist() == [False]


def test_negative_alpha_file_is_refused(tmp_path):
    """Before: read and validation passed, the simulator put the spike at the window end (t = 3, 0 early
    spikes) while the event-by-event reference fires at t = 0."""
    from click.testing import CliRunner
    from relu2snn_cli.cli import cli
    path = negative_alpha_file(tmp_path)
    assert "alpha" in read_error(path)
    np.save(tmp_path / "x.npy", np.array([[0.5]]))
    result = CliRunner().invoke(cli, ["simulate", str(path), "--data", str(tmp_path / "x.npy"),
                                      "-o", str(tmp_path / "o.npz"), "--quiet"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "alpha" in lines[0], result.output
    assert not (tmp_path / "o.npz").exists()


# ----------------------------------------------------------------------------- the stored content hash

def cli_error(*args) -> str:
    """Run the command line; it must exit 2 with one line on stderr."""
    from click.testing import CliRunner
    from relu2snn_cli.cli import cli
    result = CliRunner().invoke(cli, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("relu2snn: error: "), \
        (result.exit_code, result.output, result.exception)
    return lines[0]


def refused_everywhere(path, tmp_path) -> str:
    """h5io.read, inspect (text and JSON) and simulate all refuse the file; simulate writes nothing."""
    msg = read_error(path)
    np.save(tmp_path / "x.npy", np.load(SAMPLES / "cnn" / "test.npy")[:2])
    for args in (["inspect", path], ["inspect", path, "--json"],
                 ["simulate", path, "--data", tmp_path / "x.npy", "-o", tmp_path / "o.npz", "--quiet"]):
        assert path.name in cli_error(*args)
    assert not (tmp_path / "o.npz").exists()
    return msg


def uncertified(f, node: str) -> int:
    """The flat index of a neuron of ``node`` without a static certificate."""
    return int(np.flatnonzero(~f[f"nodes/{node}/certified"][()].reshape(-1))[0])


def set_entry(f, name, index, value):
    arr = f[name][()]
    arr.flat[index] = value
    replace_dataset(f, name, arr)


def flip_byte(path, dataset: str, index: int) -> None:
    """Change the lowest byte of entry ``index`` of a dataset, in the file's bytes (its last mantissa bits)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset() + 8 * index
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


# Edits that validation cannot see (a consistent file says other numbers); before format 4 each was simulated.
EDITS = [
    pytest.param(lambda p: edit(p, lambda f: set_entry(f, "nodes/004/theta", uncertified(f, "004"), -1.0)),
                 id="theta-minus-1"),
    pytest.param(lambda p: edit(p, lambda f: set_entry(f, "nodes/001/synapses/0/J", 5,
                                                       f["nodes/001/synapses/0/J"][()].flat[5] * 1.001)),
                 id="J-entry"),
    pytest.param(lambda p: flip_byte(p, "nodes/008/synapses/0/J", 7), id="byte-in-readout-J"),
    pytest.param(lambda p: edit(p, lambda f: scaled(f, "nodes/008/synapses/0/J", -1.0)), id="readout-negated"),
    pytest.param(lambda p: edit(p, lambda f: scaled(f, "nodes/008/alpha", 2.0)), id="readout-alpha"),
    pytest.param(lambda p: edit(p, lambda f: f.attrs.__setitem__("source_model_name", h5io._text("other.onnx"))),
                 id="root-attribute"),
]


@pytest.mark.parametrize("change", EDITS)
def test_edited_file_is_refused(cnn_copy, tmp_path, change):
    change(cnn_copy)
    assert "content_sha256" in refused_everywhere(cnn_copy, tmp_path)


def test_inspect_shows_the_stored_hash(converted):
    from click.testing import CliRunner
    from relu2snn_cli.cli import cli
    net, path = converted["cnn"]
    with h5py.File(path) as f:
        stored = f.attrs["content_sha256"].decode()
    assert stored == h5io.content_hash(net)
    out = CliRunner().invoke(cli, ["inspect", str(path)]).stdout
    assert f"content_sha256       {stored}" in out.splitlines()


def test_missing_hash_is_refused(cnn_copy):
    edit(cnn_copy, lambda f: f.attrs.__delitem__("content_sha256"))
    assert "content_sha256" in read_error(cnn_copy)


def test_format_3_is_refused(cnn_copy):
    edit(cnn_copy, lambda f: f.attrs.__setitem__("format_version", 3))
    assert "convert the model again" in read_error(cnn_copy)


# ----------------------------------------------------------------------------- validation even when the hash matches

def rehash(path) -> Path:
    """Store the hash of the file's current contents, as someone editing it on purpose could: what is then
    refused is refused by validation, not by the hash."""
    with h5py.File(path, "r+") as f:
        tree = h5io._load(f, Path(path).stat().st_size)
        entries = h5io._entries(tree)
        entries.pop("@content_sha256", None)
        f.attrs["content_sha256"] = h5io._text(h5io._digest(entries))
    return path


def set_attr(name, key, value):
    return lambda f: (f[name] if name else f).attrs.__setitem__(key, value)


def huge_alpha(f):
    """α = 1e308 in node 001 with the certificate that α gives (no neuron certified)."""
    replace_dataset(f, "nodes/001/alpha", np.full(f["nodes/001/alpha"].shape, 1e308))
    replace_dataset(f, "nodes/001/certified", np.zeros(f["nodes/001/certified"].shape, bool))


STRUCTURED = [
    pytest.param(set_attr("nodes/007/synapses/0", "groups", 0), "groups", id="dense-groups-0"),
    pytest.param(set_attr("nodes/007/synapses/0", "groups", 3), "groups", id="dense-groups-3"),
    pytest.param(set_attr("nodes/007/synapses/0", "groups", 1.5), "integer", id="dense-groups-1.5"),
    pytest.param(set_attr("nodes/001/synapses/0", "groups", 1.5), "integer", id="conv-groups-1.5"),
    pytest.param(set_attr("nodes/001/synapses/0", "groups", 1.0), "integer", id="conv-groups-1.0"),
    pytest.param(set_attr("nodes/001/synapses/0", "groups", np.int32(1)), "int32", id="conv-groups-int32"),
    pytest.param(set_attr("nodes/003", "ceil_mode", 0), "bool", id="ceil_mode-int"),
    pytest.param(set_attr("nodes/001", "x_n", np.float32(1.0)), "float32", id="x_n-float32"),
    pytest.param(set_attr("nodes/001", "window", np.array([1.0, 2.0, 3.0])), "window: expected 2",
                 id="window-3-values"),
    pytest.param(huge_alpha, "1e+100", id="alpha-1e308"),
    pytest.param(lambda f: scaled(f, "nodes/008/alpha", 1e150), "1e+100", id="readout-alpha-1e150"),
    pytest.param(set_attr("nodes/001", "note", 1), "not part of", id="extra-attribute"),
    pytest.param(lambda f: f["nodes/001"].create_dataset("extra", data=np.ones(2)), "not part of", id="extra-dataset"),
    pytest.param(lambda f: f.create_group("more"), "not part of", id="extra-group"),
    pytest.param(set_attr("", "calibration_samples", 256.0), "calibration_samples", id="root-int-as-float"),
    pytest.param(set_attr("", "tool_version", 1), "tool_version", id="root-text-as-int"),
    pytest.param(set_attr("", "input_layout", h5io._text("NWC")), "input_layout", id="root-layout"),
    pytest.param(set_attr("", "source_model_sha256", h5io._text("abc")), "source_model_sha256", id="root-sha256"),
    pytest.param(set_attr("", "input_range", np.array([-1.0, np.float64(1e200)])), "input_range",
                 id="root-range-huge"),
]


@pytest.mark.parametrize("change, expect", STRUCTURED)
def test_structured_mutation_is_refused_with_a_matching_hash(cnn_copy, tmp_path, change, expect):
    rehash(edit(cnn_copy, change))
    msg = refused_everywhere(cnn_copy, tmp_path)
    assert expect in msg and "content_sha256" not in msg, msg


def test_negative_alpha_with_a_matching_hash_is_refused(tmp_path):
    assert "alpha" in read_error(rehash(negative_alpha_file(tmp_path)))


def test_link_is_refused(cnn_copy):
    edit(cnn_copy, lambda f: f["nodes/001"].__setitem__("link", h5py.SoftLink("/nodes/002")))
    assert "link" in read_error(cnn_copy)


@pytest.mark.parametrize("key", sorted(validate.REQUIRED_META))
def test_deleted_root_attribute_is_refused(cnn_copy, tmp_path, key):
    rehash(edit(cnn_copy, lambda f: f.attrs.__delitem__(key)))
    assert f"missing attribute {key!r}" in refused_everywhere(cnn_copy, tmp_path)


def smallest_change(value):
    """The same value with its last bit changed (a number, an array entry, the last byte of text)."""
    arr = np.array(value)
    if arr.dtype.kind == "S":
        return np.array(arr.tobytes()[:-1] + bytes([arr.tobytes()[-1] ^ 1]), dtype=arr.dtype)
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":
        flat[0] = np.nextafter(flat[0], np.inf)
    else:
        flat[0] = not flat[0] if arr.dtype.kind == "b" else flat[0] + 1
    return arr


def stored_digest(path) -> tuple[str, str]:
    """(the stored content_sha256, the hash of every other attribute, group and dataset as the file holds them),
    walking the file with h5py alone, the way ``h5io.content_hash`` enumerates a network's contents."""
    entries = {}
    with h5py.File(path) as f:
        def attrs(prefix, obj):
            entries.update({f"{prefix}@{k}": np.asarray(v) for k, v in obj.attrs.items()})

        def visit(name, obj):
            here = "/" + name
            if isinstance(obj, h5py.Group):
                entries[here] = None
                attrs(here, obj)
            else:
                entries[here] = np.asarray(obj[()])

        attrs("", f)
        f.visititems(visit)
    stored = entries.pop("@content_sha256").item().decode()
    return stored, h5io._digest(entries)


def test_every_stored_value_is_protected(converted, tmp_path):
    """The smallest change of any attribute or dataset of a converted file (one at a time, the hash not
    recomputed) changes the hash of the contents, so the stored one no longer matches — whatever other check
    refuses the edit first — and the file is refused: the hash covers every node field, synapse field and
    root attribute."""
    _, path = converted["mlp"]
    stored, digest = stored_digest(path)
    assert digest == stored   # the walk sees the contents as the writer hashed them
    with h5py.File(path) as f:
        entries = [("/", k, None) for k in f.attrs]
        f.visititems(lambda n, obj: entries.extend((obj.name, k, None) for k in obj.attrs)
                     if isinstance(obj, h5py.Group) else entries.append((obj.parent.name, None, obj.name)))
    entries = [e for e in entries if e[1] != "content_sha256"]
    assert len(entries) > 50
    bad = tmp_path / "bad.snn.h5"
    for group, attr, dataset in entries:
        shutil.copy(path, bad)
        with h5py.File(bad, "r+") as f:
            if attr is not None:
                value = f[group].attrs[attr]
                if np.size(value):
                    f[group].attrs[attr] = smallest_change(value)
                else:
                    f[group].attrs[attr] = np.zeros(1, dtype=np.asarray(value).dtype)
            else:
                replace_dataset(f, dataset, smallest_change(f[dataset][()]))
        stored, digest = stored_digest(bad)
        assert digest != stored, (group, attr, dataset)
        with pytest.raises(ArtifactError):
            h5io.read(bad)


def test_dense_synapses_have_one_group_and_groups_are_integers():
    with pytest.raises(snn.GraphError, match="groups = 1"):
        snn.Synapses("x", (4,), np.ones((2, 4)), groups=2)
    with pytest.raises(snn.GraphError, match="integer"):
        snn.Synapses("x", (2, 3, 3), np.ones((2, 2, 1, 1)), 0.0, (1, 1), (0, 0, 0, 0), (1, 1), groups=1.0)


def test_meta_cannot_set_the_reserved_attributes(converted, tmp_path):
    net, _ = converted["mlp"]
    for key in h5io.RESERVED:
        with pytest.raises(ArtifactError, match=key):
            h5io.write(tmp_path / "m.snn.h5", snn.Network(net.nodes, {**net.meta, key: "x"}))
    assert list(tmp_path.iterdir()) == []


def test_content_hash_sees_types_and_root_attributes(converted):
    """1 and 1.0 are different contents; so is any root attribute."""
    net, _ = converted["mlp"]
    hashes = {h5io.content_hash(snn.Network(net.nodes, {**net.meta, **extra}))
              for extra in ({}, {"n": 1}, {"n": 1.0}, {"n": True}, {"tool_version": "0.1.1"})}
    assert len(hashes) == 5


# ----------------------------------------------------------------------------- the coding (format 6) and format 5

def as_format_5(path) -> Path:
    """The file as format 5 wrote it: no ``coding`` attribute, format_version 5, and the hash of that."""
    with h5py.File(path, "r+") as f:
        del f.attrs["coding"]
        f.attrs["format_version"] = np.int64(5)
    return rehash(path)


def test_coding_is_stored_and_read(converted, tmp_path):
    """Format 6 stores the coding as a root attribute; a sparse network round-trips as sparse, bit for bit."""
    net, path = converted["cnn"]
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 6 and f.attrs["coding"] == b"dense"
    sparse = tmp_path / "sparse.snn.h5"
    convert.convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), sparse,
                    MappingOptions(coding="sparse"))
    back = h5io.read(sparse)
    assert back.coding == "sparse" and h5io.read(path).coding == "dense"
    copy = tmp_path / "again.snn.h5"
    h5io.write(copy, back)
    assert copy.read_bytes() == sparse.read_bytes()
    layers = [n for n in back.nodes if isinstance(n, snn.SpikingLayer)]
    assert all(np.all(n.alpha == 0) and np.all(n.scale == 1) for n in layers)


def test_format_5_reads_as_dense(cnn_copy, converted):
    """A format-5 file (before the coding existed) reads, as the dense coding, with the same network; one that
    holds a ``coding`` attribute is not a format-5 file; format 4 is refused."""
    net, _ = converted["cnn"]
    as_format_5(cnn_copy)
    back = h5io.read(cnn_copy)
    assert back.coding == "dense"
    assert_same_network(net, back)
    edit(cnn_copy, lambda f: f.attrs.__setitem__("coding", h5io._text("dense")))
    assert "coding" in read_error(rehash(cnn_copy))


def test_format_4_is_refused(cnn_copy):
    as_format_5(cnn_copy)
    edit(cnn_copy, lambda f: f.attrs.__setitem__("format_version", np.int64(4)))
    assert "convert the model again" in read_error(cnn_copy)


@pytest.mark.parametrize("value", ["Sparse", "", 1])
def test_unknown_coding_is_refused(cnn_copy, value):
    edit(cnn_copy, lambda f: f.attrs.__setitem__("coding", h5io._text(value) if isinstance(value, str) else value))
    assert "coding" in read_error(rehash(cnn_copy))


def test_missing_coding_is_refused(cnn_copy):
    edit(cnn_copy, lambda f: f.attrs.__delitem__("coding"))
    assert "missing attribute 'coding'" in read_error(rehash(cnn_copy))


def test_sparse_coding_needs_its_mapping(converted, tmp_path):
    """Validation refuses a dense network marked sparse (the sparse mapping writes α = 0) and a sparse layer with a
    scale c ≠ 1."""
    net, _ = converted["mlp"]
    with pytest.raises(GraphError, match="alpha must be 0 in the sparse coding"):
        h5io.write(tmp_path / "x.snn.h5", dataclasses.replace(net, coding="sparse"))
    path = tmp_path / "sparse.snn.h5"
    convert.convert(SAMPLES / "mlp" / "model.onnx", str(SAMPLES / "mlp" / "calib.npy"), path,
                    MappingOptions(coding="sparse"))
    sparse = h5io.read(path)
    nodes = [dataclasses.replace(n, scale=np.full_like(n.scale, 0.5)) if isinstance(n, snn.SpikingLayer) else n
             for n in sparse.nodes]
    validate.check(sparse)
    with pytest.raises(GraphError, match="scales must be 1 in the sparse coding"):
        validate.check(snn.Network(tuple(nodes), sparse.meta, "sparse"))
