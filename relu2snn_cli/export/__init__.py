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
