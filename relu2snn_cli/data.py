"""Sample data from disk: ``.npy`` and HDF5 datasets (``file.h5:/dataset``) are read batch by
batch, so memory does not grow with the number of samples; an ``.npz`` member (``file.npz`` or
``file.npz:name``) is read whole. Nothing is unpickled.

Inputs may be floating point or integers (e.g. uint8 images): integers are converted to
float64 batch by batch, exactly for magnitudes up to 2**53. Booleans, complex numbers,
strings and records are refused. Labels must be integers.
"""

from __future__ import annotations

import tokenize
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataError


def spec_path(spec: str) -> Path:
    """The file of a data spec (``file.npz:NAME`` → ``file.npz``)."""
    return _split(spec)[0]


def _split(spec: str) -> tuple[Path, str | None]:
    text = str(spec)
    for ext in (".npz:", ".h5:", ".hdf5:"):
        if ext in text:
            head, _, name = text.partition(ext)
            return Path(head + ext[:-1]), name
    return Path(text), None


def load_array(spec: str):
    """An array-like (supports len, shape, dtype and slicing) for a data file spec."""
    path, name = _split(spec)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        with warnings.catch_warnings():  # numpy parses .npy headers with ast: an invalid escape in one warns
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)
            if suffix == ".npy":
                return _npy(path)
            if suffix == ".npz":
                return _npz_member(path, name)
            if suffix in (".h5", ".hdf5"):
                return _h5_dataset(path, name)
    except ValueError as e:
        text = str(e).lower()
        if "pickle" in text or "python objects" in text:
            raise DataError(f"{path}: not a numeric array (Python objects or not a NumPy file); relu2snn never "
                            "loads pickles — save a numeric array with np.save") from None
        raise DataError(f"{path}: cannot read ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, SyntaxError, tokenize.TokenError) as e:
        # numpy parses the .npy header with tokenize and ast: a damaged one raises their errors
        raise DataError(f"{path}: cannot read, truncated or not a {suffix} file ({' '.join(str(e).split())})") from None
    raise DataError(f"{path}: unknown data format {suffix!r}; use .npy, .npz or .h5:/dataset")


def _npy_header(f) -> tuple | None:
    """(shape, dtype, data offset) of the .npy file open at its start in ``f``, read by numpy's header parser
    (version 3 headers are version 2 headers in UTF-8); None without the magic string or for a version numpy
    does not know, which np.load then refuses in its own words."""
    magic = f.read(len(np.lib.format.MAGIC_PREFIX) + 2)
    if len(magic) < len(np.lib.format.MAGIC_PREFIX) + 2 or not magic.startswith(np.lib.format.MAGIC_PREFIX):
        return None
    version = tuple(magic[-2:])
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    return shape, dtype, f.tell()


def _check_npy_header(where: str, f, total: int) -> None:
    """Refuse a header (of a .npy of ``total`` bytes open in ``f``) whose shape has a negative size or whose data
    would not fit: numpy would fail with an OverflowError when its byte count overflows 64 bits, or try to
    allocate it whole for an .npz member."""
    header = _npy_header(f)
    if header is None:
        return
    shape, dtype, offset = header
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: its .npy header gives the shape {shape}, with a negative size")
    size = dtype.itemsize
    for d in shape:
        size *= int(d)
    if not dtype.hasobject and size > total - offset:
        raise DataError(f"{where}: its .npy header gives the shape {shape} of {dtype}, {size} bytes, but the file "
                        f"holds {total - offset}: truncated or damaged")


class Rows:
    """An array-like of samples read a contiguous range of rows at a time (``rows``): len, shape, dtype,
    slices with step 1 (any other index reads everything first), and np.asarray."""

    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not (isinstance(key, slice) and key.step in (None, 1)):
            return self[:][key]
        start, stop, _ = key.indices(len(self))
        return self.rows(start, max(start, stop))

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr if dtype is None else arr.astype(dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


class NpyRows(Rows):
    """A C-ordered ``.npy`` file as an array-like whose slices are read from the file when asked for.

    A memory map would do the same, but every page it has read stays in the resident set
    until the kernel needs it back: a pass over a large file would seem to take its size.
    """

    def __init__(self, path: Path, mapped: np.memmap):
        self.path, self.shape, self.dtype, self.offset = path, mapped.shape, mapped.dtype, mapped.offset
        self.ndim = len(self.shape)
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))

    def rows(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        offset = self.offset + start * self.row * self.dtype.itemsize
        flat = np.fromfile(self.path, dtype=self.dtype, count=n * self.row, offset=offset)
        if flat.size != n * self.row:
            raise DataError(f"{self.path}: truncated while being read")
        return flat.reshape((n,) + self.shape[1:])


def _npy(path: Path):
    """The header is parsed (and pickles refused) by np.load; C-ordered data is then read by NpyRows."""
    with open(path, "rb") as f:
        _check_npy_header(str(path), f, path.stat().st_size)
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    if mapped.ndim == 0 or not mapped.flags.c_contiguous or mapped.dtype.itemsize == 0:
        return mapped
    rows = NpyRows(path, mapped)
    del mapped
    return rows


def _npz_member(path: Path, name: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if name is None and len(keys) != 1:
            raise DataError(f"{path}: holds arrays {keys}; name one as {path}:NAME")
        key = name or keys[0]
        if key not in keys:
            raise DataError(f"{path}: no array {key!r} (it holds {keys})")
        member = key if key in archive.zip.namelist() else key + ".npy"   # as NpzFile looks it up
        with archive.zip.open(member) as f:
            _check_npy_header(f"{path}:{key}", f, archive.zip.getinfo(member).file_size)
        value = archive[key]
        if not isinstance(value, np.ndarray):  # numpy returns the raw bytes of a member without the .npy magic
            raise DataError(f"{path}: member {key!r} is not a .npy array")
        return value


def _h5_dataset(path: Path, name: str | None):
    import h5py
    f = h5py.File(path, "r")
    if not name or name not in f or not isinstance(f[name], h5py.Dataset):
        f.close()
        raise DataError(f"{path}: name a dataset as {path}:/DATASET")
    if f[name].shape is None:  # h5py.Empty: a dataspace without values
        f.close()
        raise DataError(f"{path}:{name}: the dataset has an empty dataspace (no values)")
    return f[name]


def check_inputs(data, shape: tuple[int, ...], spec: str) -> None:
    """Real-number data (float or integer) of shape (N, *shape) with N ≥ 1, or a DataError saying what was expected."""
    if np.dtype(data.dtype).kind not in "fiu":
        raise DataError(f"{spec}: has dtype {data.dtype}; the model needs real-number inputs, floating point or "
                        "integer (convert with .astype(np.float32))")
    if len(data.shape) == 0 or data.shape[0] == 0:
        raise DataError(f"{spec}: holds no samples")
    if tuple(data.shape[1:]) != tuple(shape):
        raise DataError(f"{spec}: samples have shape {tuple(data.shape[1:])}, the model expects {tuple(shape)} "
                        f"(array shape (N, {', '.join(map(str, shape))}))")


def batches(data, batch_size: int, spec: str):
    """(start index, batch) over an array-like, read one batch at a time; NaN/Inf are refused.

    Integer batches are converted to float64 (exact up to 2**53).
    """
    for start in range(0, len(data), batch_size):
        try:
            batch = np.asarray(data[start:start + batch_size])
        except OSError as e:  # a damaged or vanished file: h5py and np.fromfile report it so
            raise DataError(f"{spec}: cannot read samples from {start} on ({' '.join(str(e).split())})") from None
        if batch.dtype.kind in "iu":
            batch = batch.astype(np.float64)
        check_finite(batch, start, spec)
        yield start, batch


def check_finite(batch: np.ndarray, start: int, spec: str) -> None:
    """Reject NaN or infinite values, naming the first bad sample."""
    bad = ~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{spec}: sample {start + int(np.argmax(bad))} holds NaN or infinite values")


def load_labels(spec: str, n: int, classes: int | None = None):
    """Integer class labels, one per sample, each in [0, classes) when ``classes`` is given."""
    labels = np.asarray(load_array(spec))
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise DataError(f"{spec}: labels must be {n} integers, got dtype {labels.dtype} and shape {labels.shape}")
    if classes is not None and n and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{spec}: labels must lie in 0..{classes - 1} (the model has {classes} outputs), "
                        f"got values from {labels.min()} to {labels.max()}")
    return labels
