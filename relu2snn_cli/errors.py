"""The exception hierarchy of relu2snn.

Library code raises these where the problem is known. The CLI (``cli.Group.invoke``) turns
them into one line on stderr and the class's ``exit_code``: 2 for bad input, 1 for a failed
verification or bench regression check. It also turns click's usage errors into one line
and exit 2, an interrupt (SIGINT, or SIGTERM raised as one) into exit 128 + the signal
number, an ``OSError`` into one line naming the file and exit 2, a broken pipe on stdout
into a silent exit 141, and any other exception — a bug — into one line and exit 3
(docs/cli.md, Exit status). ``--debug`` lets every error propagate with its traceback.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


class Relu2SnnError(Exception):
    """Base class of every error relu2snn raises on purpose."""

    exit_code = 2


class ModelError(Relu2SnnError):
    """Raised when an ONNX model cannot be read or is not a supported ReLU network."""


class UnsupportedOperatorError(ModelError):
    """Raised when a graph holds operators or patterns without an exact spiking mapping.

    ``nodes`` lists every offending (node name, op type) so the user sees all of
    them at once.
    """

    def __init__(self, message: str, nodes: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.nodes = nodes


class DataError(Relu2SnnError):
    """Raised when calibration or test data is missing, malformed or does not fit the model."""


class ArtifactError(Relu2SnnError):
    """Raised when a ``.snn.h5`` file is not ours, is from a newer format, truncated or inconsistent."""


class GraphError(Relu2SnnError):
    """Raised when an IR or spiking node is built with inconsistent fields (shapes, windows)."""


class NonFiniteError(Relu2SnnError):
    """Raised when finite parameters and inputs give an infinite or NaN result (a spike time, a logit):
    numbers too large for float64 (or for onnxruntime's float32)."""


class ClusterError(Relu2SnnError):
    """Raised when a sharded run cannot start: Dask is not installed, or its scheduler cannot be reached."""


class VerificationFailed(Relu2SnnError):
    """Raised when ``verify`` finds an exactness check failed: agreement, logit error or early spikes
    (the report's ``failures``)."""

    exit_code = 1


class RegressionFailed(VerificationFailed):
    """Raised when ``bench --baseline`` finds the simulation's time per sample more than
    ``--max-regression`` above the baseline's."""


@contextlib.contextmanager
def naming(path):
    """Prefix ``path:`` to the message of an error raised inside that does not name the file yet."""
    try:
        yield
    except Relu2SnnError as e:
        if e.args and isinstance(e.args[0], str) and Path(str(path)).name not in e.args[0]:
            e.args = (f"{path}: {e.args[0]}",) + e.args[1:]
        raise


@contextlib.contextmanager
def onnxruntime_errors(path, batch_size: int):
    """An error onnxruntime raises while running the model becomes a ModelError naming the file.

    onnxruntime's exceptions are untyped to us (Fail, InvalidArgument, ... from its binary
    module); they are recognised by their module so that nothing else is caught.
    """
    try:
        yield
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        text = " ".join(str(e).split())
        hint = ""
        if "invalid dimensions" in text.lower() and "index: 0" in text.lower():
            hint = (f"; the model's batch dimension is fixed: export it with a dynamic batch axis, or pass "
                    f"--batch-size with the fixed size (now {batch_size})")
        raise ModelError(f"{path}: onnxruntime cannot run the model on the data ({text}){hint}") from None


class ExportError(Relu2SnnError):
    """Raised when a network holds something an export format has no primitive for (docs/exports.md),
    or an exported file cannot be read back into a network."""


class MissingExtra(ExportError):
    """Raised when an export or cross-check needs an optional dependency that is not installed."""
