"""Sample data from disk (``relu2snn_cli.data``): the file formats, what is refused, and the checks.

Every error test checks that a DataError is raised, that its message names the file
(or the spec given to the check) and that it is one line.
"""

from __future__ import annotations


import h5py
import numpy as np
import pytest

from relu2snn_cli import data
from relu2snn_cli.errors import DataError


def data_error(call, *args, name) -> str:
    with pytest.raises(DataError) as excinfo:
        call(*args)
    msg = str(excinfo.value)
    assert str(name) in msg, msg
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)


# ----------------------------------------------------------------------------- load_array

def test_npy_is_read_by_slices(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, x)
    arr = data.load_array(str(path))
    assert isinstance(arr, data.NpyRows) and len(arr) == 5
    assert arr.dtype == np.float32 and arr.shape == x.shape
    assert np.array_equal(arr[1:3], x[1:3]) and np.array_equal(arr[3:99], x[3:]) and arr[7:9].shape == (0, 3, 4)
    assert np.array_equal(np.asarray(arr), x) and np.array_equal(arr[[0, 4]], x[[0, 4]])
    np.save(path, x.astype(">f8"))
    assert np.array_equal(data.load_array(str(path))[2:4], x[2:4])


def test_fortran_ordered_and_scalar_npy_are_memory_mapped(tmp_path, x):
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    arr = data.load_array(str(tmp_path / "f.npy"))
    assert isinstance(arr, np.memmap) and np.array_equal(arr[1:3], x[1:3])
    np.save(tmp_path / "s.npy", np.float32(2))
    assert data.load_array(str(tmp_path / "s.npy")).shape == ()


def test_npy_truncated_after_opening(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, x)
    arr = data.load_array(str(path))
    path.write_bytes(path.read_bytes()[:-20])
    data_error(lambda: arr[0:5], name=path)


def test_npz_single_array(tmp_path, x):
    path = tmp_path / "one.npz"
    np.savez(path, anything=x)
    assert np.array_equal(data.load_array(str(path)), x)
    assert np.array_equal(data.load_array(f"{path}:anything"), x)


def test_npz_named_array(tmp_path, x):
    path = tmp_path / "two.npz"
    np.savez(path, inputs=x, labels=np.arange(5))
    assert np.array_equal(data.load_array(f"{path}:inputs"), x)
    assert np.array_equal(data.load_array(f"{path}:labels"), np.arange(5))


def test_npz_two_arrays_without_name(tmp_path, x):
    path = tmp_path / "two.npz"
    np.savez(path, inputs=x, labels=np.arange(5))
    msg = data_error(data.load_array, str(path), name=path)
    assert "inputs" in msg and "labels" in msg


def test_npz_missing_name(tmp_path, x):
    path = tmp_path / "two.npz"
    np.savez(path, inputs=x, labels=np.arange(5))
    msg = data_error(data.load_array, f"{path}:images", name=path)
    assert "images" in msg and "inputs" in msg and "labels" in msg


@pytest.mark.parametrize("suffix", [".h5", ".hdf5"])
def test_h5_dataset(tmp_path, x, suffix):
    path = tmp_path / f"d{suffix}"
    with h5py.File(path, "w") as f:
        f["x"] = x
        f.create_group("grp")["y"] = x[:2]
    ds = data.load_array(f"{path}:/x")
    try:
        assert ds.shape == x.shape and ds.dtype == np.float32 and len(ds) == 5
        assert np.array_equal(ds[2:4], x[2:4])
    finally:
        ds.file.close()
    nested = data.load_array(f"{path}:/grp/y")
    try:
        assert np.array_equal(nested[()], x[:2])
    finally:
        nested.file.close()


@pytest.mark.parametrize("spec", ["{p}", "{p}:/nothing", "{p}:/grp"])
def test_h5_without_a_dataset(tmp_path, x, spec):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = x
        f.create_group("grp")
    data_error(data.load_array, spec.format(p=path), name=path)


def test_npy_of_python_objects_mentions_pickles(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    msg = data_error(data.load_array, str(path), name=path)
    assert "pickle" in msg.lower(), msg


def test_npz_of_python_objects_mentions_pickles(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.array([{"a": 1}, None], dtype=object))
    msg = data_error(data.load_array, str(path), name=path)
    assert "pickle" in msg.lower()


def test_unknown_extension(tmp_path, x):
    path = tmp_path / "x.csv"
    np.savetxt(path, x.reshape(5, -1), delimiter=",")
    msg = data_error(data.load_array, str(path), name=path)
    assert ".csv" in msg


@pytest.mark.parametrize("spec", ["gone.npy", "gone.npz:x", "gone.h5:/x"])
def test_missing_file(tmp_path, spec):
    path = tmp_path / spec.split(":")[0]
    data_error(data.load_array, str(tmp_path / spec), name=path)


def test_truncated_npy(tmp_path, x):
    path = tmp_path / "cut.npy"
    np.save(path, x)
    path.write_bytes(path.read_bytes()[:100])
    data_error(data.load_array, str(path), name=path)


def test_truncated_npz(tmp_path, x):
    path = tmp_path / "cut.npz"
    np.savez(path, a=x, b=x)
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[:len(data_bytes) // 2])
    data_error(data.load_array, f"{path}:a", name=path)


def test_truncated_h5(tmp_path, x):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f["x"] = x
    path.write_bytes(path.read_bytes()[:300])
    data_error(data.load_array, f"{path}:/x", name=path)


# ----------------------------------------------------------------------------- check_inputs

def test_check_inputs_accepts(x):
    data.check_inputs(x, (3, 4), "x.npy")
    data.check_inputs(x.astype(np.float64), (3, 4), "x.npy")


@pytest.mark.parametrize("shape, want, got", [((4, 3), "(4, 3)", "(3, 4)"), ((12,), "(12,)", "(3, 4)"),
                                              ((3, 4, 1), "(3, 4, 1)", "(3, 4)")])
def test_check_inputs_wrong_shape(x, shape, want, got):
    msg = data_error(data.check_inputs, x, shape, "calib.npy", name="calib.npy")
    assert want in msg and got in msg


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
def test_check_inputs_accepts_integers_and_batches_are_float64(x, dtype):
    ints = np.rint(x * 10).astype(dtype)
    data.check_inputs(ints, (3, 4), "calib.npy")
    for start, batch in data.batches(ints, 3, "calib.npy"):
        assert batch.dtype == np.float64 and np.array_equal(batch, ints[start:start + 3])


@pytest.mark.parametrize("dtype", [bool, np.complex64, "U3", [("a", "f4")]])
def test_check_inputs_refuses_non_real_dtypes(x, dtype):
    arr = np.zeros((5, 3, 4), dtype=dtype)
    msg = data_error(data.check_inputs, arr, (3, 4), "calib.npy", name="calib.npy")
    assert str(arr.dtype) in msg and "real-number" in msg


def test_load_labels_in_class_range(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array([0, 3, 9]))
    assert np.array_equal(data.load_labels(str(path), 3, classes=10), [0, 3, 9])
    msg = data_error(data.load_labels, str(path), 3, 9, name=path)
    assert "0..8" in msg and "9" in msg


@pytest.mark.parametrize("arr", [np.zeros((0, 3, 4), np.float32), np.zeros((), np.float32)], ids=["N0", "scalar"])
def test_check_inputs_no_samples(arr):
    msg = data_error(data.check_inputs, arr, (3, 4), "calib.npy", name="calib.npy")
    assert "no samples" in msg


# ----------------------------------------------------------------------------- check_finite

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_first_bad_sample(x, bad):
    batch = x.copy()
    batch[3, 2, 1] = bad
    batch[4, 0, 0] = np.nan
    msg = data_error(data.check_finite, batch, 0, "calib.npy", name="calib.npy")
    assert "sample 3 " in msg
    msg = data_error(data.check_finite, batch, 250, "calib.npy", name="calib.npy")
    assert "sample 253 " in msg


def test_check_finite_accepts(x):
    data.check_finite(x, 0, "calib.npy")


# ----------------------------------------------------------------------------- load_labels

def test_load_labels(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array([0, 3, 1], dtype=np.int64))
    assert np.array_equal(data.load_labels(str(path), 3), [0, 3, 1])
    np.save(path, np.array([0, 3, 1], dtype=np.uint8))
    assert np.array_equal(data.load_labels(str(path), 3), [0, 3, 1])


def test_load_labels_wrong_length(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.arange(4))
    msg = data_error(data.load_labels, str(path), 5, name=path)
    assert "5" in msg and "(4,)" in msg


def test_load_labels_float(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array([0.0, 1.0, 2.0]))
    msg = data_error(data.load_labels, str(path), 3, name=path)
    assert "float64" in msg


def test_load_labels_two_dimensional(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.arange(3).reshape(3, 1))
    data_error(data.load_labels, str(path), 3, name=path)


def test_npy_with_a_damaged_header(tmp_path, x):
    """Found by fuzzing: numpy's header parser raises tokenize/syntax errors for some damaged headers."""
    path = tmp_path / "x.npy"
    np.save(path, x)
    raw = path.read_bytes()
    path.write_bytes(raw[:63] + raw[67:])
    data_error(data.load_array, str(path), name=path)


def test_h5_dataset_damaged_after_opening(tmp_path, x):
    """A read error in the middle of a pass names the data and the first sample of the batch."""
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.repeat(x, 200, axis=0), chunks=(10, 3, 4), compression="gzip")
    arr = data.load_array(f"{path}:/x")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as excinfo:
        for _ in data.batches(arr, 100, f"{path}:/x"):
            pass
    assert "x.h5:/x" in str(excinfo.value) and "cannot read samples" in str(excinfo.value)


def _npy_bytes(array, shape=None) -> bytes:
    """``array`` as .npy bytes, its header declaring ``shape`` instead if given (the data left as it is)."""
    import io
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
              "shape": array.shape if shape is None else shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize("shape", [(-5, 3, 4), (5, -3, 4), (-5, -3, 4), (-1,)])
def test_npy_header_with_a_negative_size(tmp_path, x, shape):
    """Found by fuzzing: a header shape with a negative size ended in OverflowError from numpy's memory map."""
    path = tmp_path / "x.npy"
    path.write_bytes(_npy_bytes(x, shape))
    msg = data_error(data.load_array, str(path), name=path)
    assert "negative" in msg and str(shape) in msg, msg


@pytest.mark.parametrize("member", [b"not a .npy file", b""])
def test_npz_member_that_is_not_npy(tmp_path, member):
    """Found by fuzzing: numpy returns the raw bytes of a member without the .npy magic; they reached the checks."""
    import zipfile
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", member)
    for spec in (str(path), f"{path}:x"):
        msg = data_error(data.load_array, spec, name=path)
        assert "'x'" in msg and "not a .npy array" in msg, msg


@pytest.mark.parametrize("shape, expect", [((5, -3, 4), "negative size"), ((2**46,), "truncated or damaged")])
def test_npz_member_with_a_bad_shape(tmp_path, x, shape, expect):
    """Found by fuzzing: numpy reads an .npz member whole, allocating what its header declares (256 TiB for a
    float32 shape (2**46,)) before reading it."""
    import zipfile
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npy_bytes(x, shape))
    msg = data_error(data.load_array, f"{path}:x", name=f"{path}:x")
    assert expect in msg, msg


def test_h5_dataset_with_an_empty_dataspace(tmp_path):
    """Found by fuzzing: h5py gives an empty dataspace the shape None, which len() then failed on."""
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=h5py.Empty("f4"))
    msg = data_error(data.load_array, f"{path}:/x", name=f"{path}:/x")
    assert "empty dataspace" in msg, msg


def test_npy_header_is_parsed_without_warnings(tmp_path, x):
    """Found by fuzzing: numpy parses the header with ast, and an invalid escape in it warns (DeprecationWarning,
    from Python 3.12 on a SyntaxWarning printed by default: a second line on stderr). Refused without one."""
    import warnings
    path = tmp_path / "x.npy"
    np.save(path, x)
    path.write_bytes(path.read_bytes().replace(b"'descr': '<f4'", b"'descr': '\\ 4'"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data_error(data.load_array, str(path), name=path)
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, SyntaxWarning))], caught


@pytest.mark.parametrize("shape", [(2**62, 3), (3, 2**62), (2**31, 2**31, 4), (61, 4)])
def test_npy_header_larger_than_the_file(tmp_path, shape):
    """Found by fuzzing: a uint8 header of shape (2**62, 3), whose byte count overflows 64 bits, ended in
    OverflowError from numpy's memory map. The byte count is computed exactly and compared with the file."""
    u8 = np.zeros((60, 4), np.uint8)
    path = tmp_path / "x.npy"
    path.write_bytes(_npy_bytes(u8, shape))
    msg = data_error(data.load_array, str(path), name=path)
    assert str(shape) in msg and "truncated or damaged" in msg and "holds 240" in msg, msg
