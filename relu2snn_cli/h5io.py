"""The ``.snn.h5`` artifact (docs/artifact.md): one generic dataclass ↔ HDF5 writer and reader.

Layout (documented in docs/artifact.md):
- root attributes: ``format`` = "relu2snn.ttfs", ``format_version``, the network's ``coding`` (dense or
  sparse, docs/math.md §9; not in format 5, whose files are read as dense) and the network's
  ``meta`` (tool version, neuron model, source model, calibration, ζ, s_min, s_max, input
  range, latency, removed output ops, ...);
- group ``/nodes`` with one subgroup per node in topological order, named ``000``, ``001``, …;
  each has attribute ``kind`` (the dataclass name) and one attribute per scalar, string or
  tuple field, one dataset per array field, and for a tuple of dataclasses (a layer's
  ``synapses``) a group of the same name with one subgroup per element, ``0``, ``1``, …
  written the same way.

The root attribute ``content_sha256`` is the sha256 of everything else (``content_hash``): ``read``
refuses a file whose contents it does not match, or that holds anything ``write`` would not write
for the network read from it, exactly so (same dtypes and shapes).

Writes go to a temporary file in the target directory, renamed on success; no object
carries a timestamp, so the same network gives the same bytes. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import tempfile
import typing
from pathlib import Path

import h5py
import numpy as np

from . import snn, validate
from .errors import ArtifactError, GraphError

FORMAT = "relu2snn.ttfs"
# 2: DAGs — synapse sets with delays, Reshape/Transpose/Concat, 1-D and grouped conv;
# 3: text as fixed-length UTF-8. Variable-length strings live in HDF5's global heap, and libhdf5 can
# loop without end inside C code (no signal stops it) on a damaged heap, so the reader refuses them.
# 4: the root attribute content_sha256 (``content_hash``) over everything else the file holds; the reader
# refuses a file it does not match, and any value not stored exactly as the writer stores it.
# 5: the node kind Take (Slice, Split, Gather as data movement),
#    and the text field ``origin`` of spiking layers and the readout: the ONNX node a population comes from and
#    which term of it (e.g. "Clip 'c' of Conv 'conv1': relu(z − 6)"), for ``inspect``.
# 6: the root attribute ``coding``, dense or sparse (docs/math.md §9). A format-5 file has none and is read as
#    dense: its contents are checked, and its hash recomputed, as format 5 wrote them.
FORMAT_VERSION = 6
OLDEST_VERSION = 5  # the oldest format this relu2snn reads
RESERVED = ("format", "format_version", "content_sha256", "coding")  # the root attributes that are not the network's meta
NAME = re.compile(r"[A-Za-z0-9_]+")  # the names of the groups and datasets relu2snn writes
MAX_DEPTH = 5  # members nest no deeper than /nodes/000/synapses/0/J


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


def _canonical(value, hint=None):
    """A value as the plain Python data the file stores: by the field's type ``hint`` (int, float, bool, str or
    a tuple of them), or for a root attribute (no hint) numpy scalars as Python ones, sequences as tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(_canonical(v, k) for v, k in zip(value, kinds))
    if hint in (int, float, bool):
        return hint(value)
    if isinstance(value, (tuple, list)):
        return tuple(_canonical(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def _encode(value, hint=None) -> np.ndarray:
    """The array the file stores for a field value of type ``hint`` (or a root attribute): int → int64,
    float → float64, bool → bool, text → fixed-length UTF-8, tuples → arrays (float64 when a float is in them)."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(_to_attr(_canonical(value, hint)))


def _from_attr(value, hint):
    """A stored attribute as a field value of type ``hint``; an integer field must be stored as an integer
    (1.5 or 1.0 is refused, never read as 1)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        cast = args[0] if args else float
        values = np.atleast_1d(value)
        if len(args) >= 2 and args[1] is not Ellipsis and len(values) != len(args):
            raise ArtifactError(f"expected {len(args)} values, got {values.tolist()}")
        if typing.get_origin(cast) is tuple:   # a tuple of tuples: one row each
            return tuple(_from_attr(v, cast) for v in values)
        if cast is str:
            return tuple(_decode(v) for v in values)
        if cast is int and not (values.dtype.kind in "iu" or values.size == 0):
            raise ArtifactError(f"expected integers, got {values.tolist()}")
        return tuple(cast(v) for v in values)
    if hint in (int, float, bool):
        kind = np.asarray(value).dtype.kind
        if np.ndim(value) != 0 or kind not in {int: "iu", float: "f", bool: "b"}[hint]:
            raise ArtifactError(f"expected {'an integer' if hint is int else 'a ' + hint.__name__}, got {value!r}")
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
    directory, then a rename. The root attribute ``content_sha256`` is ``content_hash(net)``."""
    validate.check(net)
    tree = _tree(net)
    tree.attrs["content_sha256"] = _encode(_digest(_entries(tree)))
    with atomic_output(path) as tmp, h5py.File(tmp, "w", libver=("earliest", "v110")) as f:
        _write_group(f, tree)


@dataclasses.dataclass
class _Group:
    """A group as written or read: its attributes and its members (datasets as arrays, groups as _Group)."""

    attrs: dict
    members: dict


def _tree(net: snn.Network, version: int = FORMAT_VERSION) -> _Group:
    """What the file of ``net`` holds (docs/artifact.md), but ``content_sha256``: every attribute and dataset
    as the array written; with ``version`` 5, as format 5 wrote a dense network (no ``coding``)."""
    reserved = [k for k in net.meta if k in RESERVED]
    if reserved:
        raise ArtifactError(f"root attribute {reserved[0]!r} is written by relu2snn itself; it cannot come from meta")
    attrs = {"format": _encode(FORMAT), "format_version": _encode(version)}
    if version >= 6:
        attrs["coding"] = _encode(net.coding)
    attrs.update({k: _encode(v) for k, v in net.meta.items()})
    nodes = {f"{i:03d}": _fields_tree(node, {"kind": _encode(type(node).__name__)}) for i, node in enumerate(net.nodes)}
    return _Group(attrs, {"nodes": _Group({}, nodes)})


def _fields_tree(obj, attrs: dict) -> _Group:
    """One attribute per plain field, one dataset per array, one group per tuple of dataclasses."""
    hints = typing.get_type_hints(type(obj))
    members = {}
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        if isinstance(value, np.ndarray):
            members[fld.name] = value
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            members[fld.name] = _Group({}, {str(i): _fields_tree(item, {}) for i, item in enumerate(value)})
        else:
            attrs[fld.name] = _encode(value, hints[fld.name])
    return _Group(attrs, members)


def _write_group(g: h5py.Group, tree: _Group) -> None:
    for key in sorted(tree.attrs):
        g.attrs[key] = tree.attrs[key]
    for name in sorted(tree.members):
        member = tree.members[name]
        if isinstance(member, _Group):
            _write_group(g.create_group(name), member)
        else:
            g.create_dataset(name, data=member, track_times=False)


def _entries(tree: _Group, path: str = "") -> dict:
    """Every attribute, group and dataset by path: ``/nodes/001@kind``, ``/nodes/001`` (a group: None),
    ``/nodes/001/theta``; values as arrays."""
    out = {f"{path}@{key}": np.asarray(value) for key, value in tree.attrs.items()}
    for name, member in tree.members.items():
        if isinstance(member, _Group):
            out[f"{path}/{name}"] = None
            out.update(_entries(member, f"{path}/{name}"))
        else:
            out[f"{path}/{name}"] = np.asarray(member)
    return out


def _digest(entries: dict) -> str:
    """sha256 over the entries in path order: the path, then the dtype, shape and bytes of the value (of a
    group the word ``group``), each part preceded by its length in 8 bytes."""
    digest = hashlib.sha256()
    for path in sorted(entries):
        value = entries[path]
        parts = [path.encode("utf-8", "surrogateescape")]
        parts += [b"group"] if value is None else [value.dtype.str.encode(), repr(value.shape).encode(), value.tobytes()]
        for part in parts:
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()


def content_hash(net: snn.Network) -> str:
    """sha256 of everything the file of ``net`` holds but this hash itself: the root attributes (format, version,
    meta) and every node's kind and fields, each value with its dtype and shape (docs/artifact.md). ``write``
    stores it as ``content_sha256``; ``read`` refuses a file it does not match."""
    return _digest(_entries(_tree(net)))


def read(path) -> snn.Network:
    """Read and validate a ``.snn.h5`` file; any problem is an ArtifactError naming the file and the reason.

    Every value must be stored as ``write`` stores it, ``validate.check`` must pass, and the stored
    ``content_sha256`` must be the hash of the contents: an edited or damaged file is refused."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ArtifactError(f"{path}: not an HDF5 file, or truncated") from None
    try:
        with f:
            tree = _load(f, path.stat().st_size)
        net = _network(tree)
        stored, written = _entries(tree), _entries(_tree(net, _plain(tree.attrs["format_version"])))
        _check_encoding(stored, written)
        validate.check(net)
        _check_hash(stored, written)
        return net
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    except (GraphError, KeyError, IndexError, ValueError, TypeError, OSError, OverflowError) as e:
        # the node constructors meet damaged fields (a pool's in_shape of the wrong length, ...)
        raise ArtifactError(f"{path}: corrupt or inconsistent artifact ({_one_line(e)})") from None


def _describe(value) -> str:
    if value is None:
        return "a group"
    return f"{value.dtype} of shape {value.shape}" + (f" ({value.tolist()!r})" if value.size <= 4 else "")


def _check_encoding(stored: dict, written: dict) -> None:
    """The file holds exactly what writing the network read from it gives: nothing more, and every value of
    the dtype and shape ``write`` gives it (an integer field stored as 1.0, a float32 array, … are refused)."""
    extra = sorted(stored.keys() - written.keys() - {"@content_sha256"})
    if extra:
        raise ArtifactError(f"{extra[0]} is not part of a relu2snn artifact")
    for path in sorted(written):
        a, b = stored.get(path), written[path]
        if (a is None) != (b is None) or (a is not None and (a.dtype.str != b.dtype.str or a.shape != b.shape
                                                             or a.tobytes() != b.tobytes())):
            raise ArtifactError(f"{path} is stored as {_describe(a)}; relu2snn writes {_describe(b)}")


def _check_hash(stored: dict, written: dict) -> None:
    digest = stored.get("@content_sha256")
    if digest is None:
        raise ArtifactError("missing attribute 'content_sha256'")
    if digest.dtype.kind != "S" or digest.shape != () or _decode(digest.item()) != _digest(written):
        raise ArtifactError("content_sha256 does not match the contents: the file was modified or damaged after "
                            "it was written (convert the model again)")


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


def _load(f: h5py.File, file_size: int) -> _Group:
    """The whole file as a tree, once the root's format and version are known; only groups and plain datasets
    named as relu2snn names them, no deeper than it nests them, are read."""
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
    if version < OLDEST_VERSION:
        raise ArtifactError(f"format version {version} is older than this relu2snn reads ({OLDEST_VERSION}–"
                            f"{FORMAT_VERSION}); convert the model again")
    return _Group(attrs, _members(f, "", file_size, 1))


def _members(g: h5py.Group, path: str, file_size: int, depth: int) -> dict:
    out = {}
    for name in _raw(f"group {path or '/'}", lambda: sorted(g)):
        where = f"{path}/{name}"
        if depth > MAX_DEPTH or not (isinstance(name, str) and NAME.fullmatch(name)):
            raise ArtifactError(f"{where!r} is not part of a relu2snn artifact")
        link = _raw(where, lambda: g.get(name, getlink=True))
        if not isinstance(link, h5py.HardLink):
            raise ArtifactError(f"{where}: a link ({type(link).__name__}), which relu2snn does not write")
        obj = _raw(where, lambda: g[name])
        if isinstance(obj, h5py.Group):
            out[name] = _Group(_attrs(where, obj), _members(obj, where, file_size, depth + 1))
        else:
            out[name] = _dataset(where, obj, file_size)
    return out


def _network(tree: _Group) -> snn.Network:
    meta = {k: _plain(v) for k, v in tree.attrs.items() if k not in RESERVED}
    names = [k for k in meta if not isinstance(k, str)]
    if names:
        raise ArtifactError(f"root attribute name {names[0]!r} is not text")
    nodes = tree.members.get("nodes")
    if not isinstance(nodes, _Group):
        raise ArtifactError("missing group /nodes")
    keys = sorted(nodes.members)
    if keys != [f"{i:03d}" for i in range(len(keys))]:
        raise ArtifactError(f"/nodes holds {keys[:8]}…; expected 000, 001, … in order")
    coding = "dense"   # format 5 knew only the dense coding
    if _plain(tree.attrs["format_version"]) >= 6:
        if "coding" not in tree.attrs:
            raise ArtifactError("missing attribute 'coding'")
        coding = _plain(tree.attrs["coding"])
        if coding not in snn.CODINGS:
            raise ArtifactError(f"attribute 'coding' = {coding!r} is not one of {', '.join(snn.CODINGS)}")
    return snn.Network(tuple(_node(key, nodes.members[key]) for key in keys), meta, coding)


def _node(key: str, g):
    if not isinstance(g, _Group):
        raise ArtifactError(f"node {key}: not a group")
    kind = _plain(g.attrs.get("kind", ""))
    cls = snn.KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ArtifactError(f"node {key}: unknown kind {kind!r}")
    return _fields(f"node {key} ({kind})", g, cls)


def _fields(where: str, g: _Group, cls):
    """A dataclass from a group: datasets for arrays, subgroups for tuples of dataclasses, attributes else;
    every field must be there (the writer writes them all)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for fld in dataclasses.fields(cls):
        hint = hints[fld.name]
        args = typing.get_args(hint)
        at = f"{where}: {fld.name}"
        member = g.members.get(fld.name)
        if hint is np.ndarray:
            if member is None:
                raise ArtifactError(f"{where}: missing dataset {fld.name!r}")
            if isinstance(member, _Group):
                raise ArtifactError(f"{at}: not a dataset")
            kwargs[fld.name] = member
        elif typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(member, _Group):
                raise ArtifactError(f"{where}: missing group {fld.name!r}")
            keys = sorted(member.members, key=lambda k: int(k) if k.isdigit() else -1)
            if keys != [str(i) for i in range(len(keys))]:
                raise ArtifactError(f"{where}: {fld.name} holds {keys[:8]}, expected 0, 1, … in order")
            items = [member.members[k] for k in keys]
            if not all(isinstance(item, _Group) for item in items):
                raise ArtifactError(f"{at}: every element must be a group")
            kwargs[fld.name] = tuple(_fields(f"{where} {fld.name}/{k}", item, args[0]) for k, item in zip(keys, items))
        elif fld.name in g.attrs:
            try:
                kwargs[fld.name] = _from_attr(g.attrs[fld.name], hint)
            except ArtifactError as e:
                raise ArtifactError(f"{at}: {e}") from None
        else:
            raise ArtifactError(f"{where}: missing attribute {fld.name!r}")
    node = cls(**kwargs)
    for name, value in kwargs.items():
        if isinstance(value, np.ndarray) and getattr(node, name).dtype != value.dtype:
            raise ArtifactError(f"{where}: dataset {name!r} has dtype {value.dtype}, expected {getattr(node, name).dtype}")
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
