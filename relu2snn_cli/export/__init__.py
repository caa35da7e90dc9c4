"""Exports of a converted network to other simulators and formats (docs/exports.md).

The heavy dependencies are optional extras: ``relu2snn[brian2]`` for ``export.brian2`` and the
cross-check, ``relu2snn[nir]`` for ``export.nir``. The simulator and ``snn`` never import them.
"""

from __future__ import annotations

import importlib.util

from ..errors import MissingExtra


def require(module: str, extra: str, what: str) -> None:
    """Refuse, with the command that installs it, when the optional dependency ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{what} needs the optional extra: pip install 'relu2snn[{extra}]'")


def export_file(snn_path, fmt: str, out_path, dt: float = 0.01) -> dict:
    """Write the network of ``snn_path`` as ``fmt`` ("brian2": a stand-alone script whose default time step
    is dt; "nir": a NIR graph) to ``out_path``, atomically; a short report (docs/cli.md, export)."""
    from .. import h5io
    from ..errors import naming
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
