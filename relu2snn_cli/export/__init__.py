"""Exports of a converted network to other simulators and formats (docs/exports.md).

The heavy dependencies are optional extras: ``relu2snn[brian2]`` for ``export.brian2`` and the
cross-check, ``relu2snn[nir]`` for ``export.nir``. The simulator and ``snn`` never import them.
"""

from __future__ import annotations

import importlib

from ..errors import ExportError, MissingExtra


def require(module: str, extra: str, what: str) -> None:
    """Import the optional dependency ``module``; refuse, with the command that installs it, when it is missing,
    and name the error when it is installed but does not import (brian2 ≤ 2.9.0 under numpy ≥ 2.4)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise ExportError(f"{what}: {module} is installed but does not import ({e})") from None
        raise MissingExtra(f"{what} needs the optional extra: pip install 'relu2snn[{extra}]'") from None
    except Exception as e:   # noqa: BLE001 - any failure inside the package's import
        raise ExportError(f"{what}: {module} is installed but does not import ({type(e).__name__}: {e}); "
                          f"reinstall it with pip install 'relu2snn[{extra}]'") from None


def dense_only(net, what: str) -> None:
    """Refuse a network of the sparse coding (docs/math.md §9): the exported neuron models integrate their input
    currents after the input window and fire every neuron once, which is the dense coding's dynamics only."""
    if net.coding != "dense":
        raise ExportError(f"{what}: the network uses the {net.coding} coding; {what.split()[0]} supports the dense "
                          "coding only (convert with --coding dense)")


def export_file(snn_path, fmt: str, out_path, dt: float = 0.01) -> dict:
    """Write the network of ``snn_path`` as ``fmt`` ("brian2": a stand-alone script whose default time step
    is dt; "nir": a NIR graph) to ``out_path``, atomically; a short report (docs/cli.md, export)."""
    from .. import h5io
    from ..errors import naming
    with naming(snn_path):
        dense_only(h5io.read(snn_path), f"export --format {fmt}")
    if fmt == "nir":
        require("nir", "nir", "export --format nir")
        from . import nir
        with naming(snn_path):
            return nir.write(h5io.read(snn_path), out_path)
    require("brian2", "brian2", "export --format brian2")
    from . import brian2
    net = h5io.read(snn_path)
    text = brian2.script(net, dt)
    with h5io.atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return {"output": str(out_path), "format": "brian2", "dt": dt, "bytes": len(text.encode("utf-8")),
            "content_sha256": h5io.content_hash(net)}
