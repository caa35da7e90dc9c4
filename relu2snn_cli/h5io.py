"""The ``.snn.h5`` artifact (docs/artifact.md): one generic dataclass ↔ HDF5 writer and reader.

Layout (documented in docs/artifact.md):
- root attributes: ``format`` = "relu2snn.ttfs", ``format_version``, and the network's
  ``meta`` (tool version, neuron model, source model, calibration, ζ, s_min, s_max, input
  range, latency, removed output ops, ...);
- group ``/nodes`` with one subgroup per node in topological order, named ``000``, ``001``, …;
  each has attribute ``kind`` (the dataclass name) and one attribute per scalar, string or
  tuple field, one dataset per array field, and for a tuple of dataclasses (a layer's
  ``synapses``) a group of the same name with one subgroup per element, ``0``, ``1``, …
  written the same way.

Writes go to a temporary file in the target directory, renamed on success; no object
carries a timestamp, so the same network gives the same bytes. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
import typing
from pathlib import Path

import h5py
import numpy as np

from . import snn, validate
from .errors import ArtifactError, GraphError

FORMAT = "relu2snn.ttfs"
FORMAT_VERSION = 3  # 2: DAGs — synapse sets with delays, Reshape/Transpose/Concat, 1-D and grouped conv;
# 3: text as fixed-length UTF-8. Variable-length strings live in HDF5's global heap, and libhdf5 can
# loop without end inside C code (no signal stops it) on a damaged heap, so the reader refuses them.


def _text(values) -> np.ndarray:
    """Text (a str or a list of str) as fixed-length UTF-8, which HDF5 stores in the attribute itself."""
    encoded = np.array([v.encode("utf-8") for v in values] if isinstance(values, list) else values.encode("utf-8"),
                       dtype=bytes)
    return encoded.astype(h5py.string_dtype("utf-8", max(1, encoded.dtype.itemsize)))


def _to_attr(value):
    if isinstance(value, (tuple, list)):
        if value and all(isinstance(v, str) for v in value):
            return _text(list(value))
        return np.asarray(value, dtype=np.float64 if any(isinstance(v, float) for v in value) else np.int64)
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, str):
        return _text(value)
    return value


def _from_attr(value, hint):
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        cast = args[0] if args else float
        values = np.atleast_1d(value)
        if typing.get_origin(cast) is tuple:   # a tuple of tuples: one row each
            return tuple(_from_attr(v, cast) for v in values)
        if cast is str:
            return tuple(_decode(v) for v in values)
        if cast is int and not np.all(np.mod(values, 1) == 0):
            raise ArtifactError(f"expected integers, got {values.tolist()}")
        return tuple(cast(v) for v in values)
    if hint is bool:
        return bool(value)
    if hint in (int, float):
        return hint(value)
    if hint is str:
        return _decode(value)
    return value


def _decode(value) -> str:
    """Stored text (UTF-8 bytes) as str."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"text {value[:40]!r} is not valid UTF-8") from None


def _plain(value):
    """An HDF5 attribute value as plain Python data."""
    if isinstance(value, bytes):
        return _decode(value)
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path in the target's directory; rename it to ``path`` on success, delete it on failure."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"{path}: the directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the output gets a new file's usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write(path, net: snn.Network) -> None:
    """Check the network (``validate.check``), then write it atomically: a temporary file in the target
    directory, then a rename."""
    validate.check(net)
    with atomic_output(path) as tmp, h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
        f.attrs["format"] = _text(FORMAT)
        f.attrs["format_version"] = FORMAT_VERSION
        for key in sorted(net.meta):
            f.attrs[key] = _to_attr(net.meta[key])
        nodes = f.create_group("nodes")
        for i, node in enumerate(net.nodes):
            g = nodes.create_group(f"{i:03d}")
            g.attrs["kind"] = _text(type(node).__name__)
            _write_fields(g, node)


def _write_fields(g: h5py.Group, obj) -> None:
    """One attribute per plain field, one dataset per array, one group per tuple of dataclasses."""
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        if isinstance(value, np.ndarray):
            g.create_dataset(fld.name, data=value, track_times=False)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            sub = g.create_group(fld.name, track_order=True)
            for i, item in enumerate(value):
                _write_fields(sub.create_group(str(i)), item)
        else:
            g.attrs[fld.name] = _to_attr(value)


def read(path) -> snn.Network:
    """Read and validate a ``.snn.h5`` file; any problem is an ArtifactError naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ArtifactError(f"{path}: not an HDF5 file, or truncated") from None
    try:
        with f:
            net = _read(f, path.stat().st_size)
        validate.check(net)
        return net
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    except (GraphError, KeyError, IndexError, ValueError, TypeError, OSError) as e:
        # the node constructors meet damaged fields (a pool's in_shape of the wrong length, ...)
        raise ArtifactError(f"{path}: corrupt or inconsistent artifact ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


def _raw(what: str, read):
    """Run an h5py read; HDF5 reports a damaged object with several exception types, all made ArtifactError."""
    try:
        return read()
    except ArtifactError:
        raise
    except Exception as e:  # h5py raises OSError, RuntimeError, KeyError, ValueError, TypeError… for damaged files
        raise ArtifactError(f"{what}: cannot be read, the file is damaged ({type(e).__name__}: {_one_line(e)})") from None


def _attrs(what: str, obj) -> dict:
    """The attributes of a group; one of a type relu2snn does not write (variable-length text or arrays,
    references, compounds) is refused from its type alone, before its value is read."""
    def read():
        for k in obj.attrs:
            dtype = obj.attrs.get_id(k).dtype
            if dtype.kind in "OV":
                raise ArtifactError(f"attribute {k!r} of {what} has a variable-length or compound type, which relu2snn "
                                    f"(format {FORMAT_VERSION}) does not write: damaged, or from an older relu2snn "
                                    "(convert the model again)")
        return {k: obj.attrs[k] for k in obj.attrs}
    return _raw(f"attributes of {what}", read)


def _read(f: h5py.File, file_size: int) -> snn.Network:
    attrs = _attrs("the root", f)
    fmt = _plain(attrs.get("format", ""))
    if fmt != FORMAT:
        raise ArtifactError(f"not a relu2snn artifact (format {fmt!r}, expected {FORMAT!r})")
    version = attrs.get("format_version", None)
    if version is None:
        raise ArtifactError("missing attribute 'format_version'")
    version = _plain(version)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"format version {version} is newer than this relu2snn reads ({FORMAT_VERSION}); upgrade relu2snn")
    if version < FORMAT_VERSION:
        raise ArtifactError(f"format version {version} is older than this relu2snn reads ({FORMAT_VERSION}); "
                            "convert the model again")
    meta = {k: _plain(v) for k, v in attrs.items() if k not in ("format", "format_version")}
    names = [k for k in meta if not isinstance(k, str)]
    if names:
        raise ArtifactError(f"root attribute name {names[0]!r} is not text")
    nodes = _raw("group /nodes", lambda: f["nodes"] if "nodes" in f else None)
    if not isinstance(nodes, h5py.Group):
        raise ArtifactError("missing group /nodes")
    keys = _raw("group /nodes", lambda: sorted(nodes))
    if keys != [f"{i:03d}" for i in range(len(keys))]:
        raise ArtifactError(f"/nodes holds {keys[:8]}…; expected 000, 001, … in order")
    return snn.Network(tuple(_read_node(key, nodes, file_size) for key in keys), meta)


def _read_node(key: str, nodes: h5py.Group, file_size: int):
    g = _raw(f"node {key}", lambda: nodes[key])
    if not isinstance(g, h5py.Group):
        raise ArtifactError(f"node {key}: not a group")
    attrs = _attrs(f"node {key}", g)
    kind = _plain(attrs.get("kind", ""))
    cls = snn.KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ArtifactError(f"node {key}: unknown kind {kind!r}")
    return _read_fields(f"node {key} ({kind})", g, cls, file_size)


def _read_fields(where: str, g: h5py.Group, cls, file_size: int):
    """A dataclass from a group: datasets for arrays, subgroups for tuples of dataclasses, attributes else."""
    attrs = _attrs(where, g)
    hints = typing.get_type_hints(cls)
    kwargs, stored = {}, {}
    for fld in dataclasses.fields(cls):
        hint = hints[fld.name]
        args = typing.get_args(hint)
        at = f"{where}: {fld.name}"
        if hint is np.ndarray:
            ds = _raw(at, lambda: g[fld.name] if fld.name in g else None)
            if ds is None:
                raise ArtifactError(f"{where}: missing dataset {fld.name!r}")
            kwargs[fld.name] = stored[fld.name] = _dataset(at, ds, file_size)
        elif typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            sub = _raw(at, lambda: g[fld.name] if fld.name in g else None)
            if not isinstance(sub, h5py.Group):
                raise ArtifactError(f"{where}: missing group {fld.name!r}")
            keys = _raw(at, lambda: sorted(sub, key=lambda k: int(k) if k.isdigit() else -1))
            if keys != [str(i) for i in range(len(keys))]:
                raise ArtifactError(f"{where}: {fld.name} holds {keys[:8]}, expected 0, 1, … in order")
            items = [_raw(at, lambda k=k: sub[k]) for k in keys]
            if not all(isinstance(item, h5py.Group) for item in items):
                raise ArtifactError(f"{at}: every element must be a group")
            kwargs[fld.name] = tuple(_read_fields(f"{where} {fld.name}/{k}", item, args[0], file_size)
                                     for k, item in zip(keys, items))
        elif fld.name in attrs:
            kwargs[fld.name] = _from_attr(attrs[fld.name], hint)
        elif fld.default is dataclasses.MISSING:
            raise ArtifactError(f"{where}: missing attribute {fld.name!r}")
    node = cls(**kwargs)
    for name, arr in stored.items():
        if getattr(node, name).dtype != arr.dtype:
            raise ArtifactError(f"{where}: dataset {name!r} has dtype {arr.dtype}, expected {getattr(node, name).dtype}")
    return node


def _dataset(where: str, ds, file_size: int) -> np.ndarray:
    """A dataset's array; only plain numeric datasets no larger than the file itself are read."""
    if not isinstance(ds, h5py.Dataset):
        raise ArtifactError(f"{where}: not a dataset")
    dtype, shape = ds.dtype, ds.shape
    if dtype.kind not in "fb" or shape is None:
        raise ArtifactError(f"{where}: dataset of dtype {dtype}, expected float64 or bool")
    if ds.compression is not None or ds.chunks is not None:
        raise ArtifactError(f"{where}: compressed or chunked dataset; relu2snn writes contiguous ones")
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > file_size:
        raise ArtifactError(f"{where}: dataset of shape {shape} is larger than the file")
    return _raw(where, lambda: ds[()])


def content_hash(net: snn.Network) -> str:
    """sha256 of the parameters: every node's kind and fields (arrays as dtype, shape and bytes), in order."""
    digest = hashlib.sha256()
    for node in net.nodes:
        digest.update(type(node).__name__.encode())
        _hash_fields(digest, node)
    return digest.hexdigest()


def _hash_fields(digest, obj) -> None:
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            digest.update(f"{fld.name}:{arr.dtype.str}:{arr.shape}".encode())
            digest.update(arr.tobytes())
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                digest.update(f"{fld.name}[{i}]".encode())
                _hash_fields(digest, item)
        else:
            digest.update(f"{fld.name}={value!r}".encode())
