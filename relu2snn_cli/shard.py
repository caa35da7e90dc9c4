"""Sharded data and sharded runs of calibration and verification on Dask (docs/cli.md, Sharded runs).

Data given as a glob (``'shards/*.npy'``) is the concatenation of the matching ``.npy`` files in
name order, each read a batch at a time (``data.load_array``). With a Dask client (the optional
extra ``relu2snn[dask]``: ``--workers N`` starts a local cluster, ``--scheduler ADDRESS`` joins a
running one) each batch is a task: the worker reads its rows from the shards itself and keeps one
model, simulator and onnxruntime session (one intra-op thread) per process. The batches are those
of the single-process run (the same starts and sizes, so the same float64 products), and the
per-batch figures are merged in batch order by maxima and sums: the ``.snn.h5`` is byte-identical
and the verify report equal.
"""

from __future__ import annotations

import contextlib
import glob
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .data import Rows, check_finite, load_array, spec_path
from .errors import ClusterError, DataError

PATTERN = set("*?[")
CONNECT_TIMEOUT = "10s"   # to reach a --scheduler


def load_data(spec: str):
    """``data.load_array`` of a spec, or for a glob the ``Shards`` of the ``.npy`` files it matches."""
    if not PATTERN & set(str(spec)):
        return load_array(spec)
    paths = sorted(glob.glob(str(spec)))
    if not paths:
        raise DataError(f"{spec}: no file matches")
    if not all(p.lower().endswith(".npy") for p in paths):
        raise DataError(f"{spec}: shards must be .npy files, the pattern matches {paths[0]}")
    return Shards([load_array(p) for p in paths], paths, spec)


class Shards(Rows):
    """Several arrays of samples as one array-like (len, shape, dtype, contiguous slices), in the order given."""

    def __init__(self, parts: list, paths: list[str], spec: str):
        first = parts[0]
        for part, path in zip(parts, paths):
            if len(part.shape) < 1 or tuple(part.shape[1:]) != tuple(first.shape[1:]) or part.dtype != first.dtype:
                raise DataError(f"{spec}: shard {path} holds {part.dtype} samples of shape {tuple(part.shape[1:])}, "
                                f"shard {paths[0]} {first.dtype} of shape {tuple(first.shape[1:])}")
        self.parts, self.dtype = parts, first.dtype
        self.bounds = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.bounds[-1]),) + tuple(first.shape[1:])
        self.ndim = len(self.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        pieces = [np.asarray(part[max(start - lo, 0):max(min(stop, hi) - lo, 0)])
                  for part, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:]) if lo < stop and hi > start]
        return np.concatenate(pieces) if pieces else np.empty((0,) + self.shape[1:], self.dtype)


def read_batch(data, start: int, batch_size: int, spec: str) -> np.ndarray:
    """The batch of ``data.batches`` that starts at ``start``: integers as float64, NaN/Inf refused."""
    try:
        batch = np.asarray(data[start:start + batch_size])
    except OSError as e:
        raise DataError(f"{spec}: cannot read samples from {start} on ({' '.join(str(e).split())})") from None
    if batch.dtype.kind in "iu":
        batch = batch.astype(np.float64)
    check_finite(batch, start, spec)
    return batch


@contextlib.contextmanager
def client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client for ``--workers N`` (a local cluster of N processes, one thread each, on the loopback)
    or ``--scheduler ADDRESS`` (a running ``dask scheduler``); None when neither is given."""
    if not workers and not scheduler:
        yield None
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--workers and --scheduler need Dask: pip install 'relu2snn[dask]'") from None
    if scheduler:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} ({' '.join(str(e).split())})") from None
        with c:   # errors of the run itself pass through unchanged
            yield c
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def gather(client, futures: list, sizes: list[int], total: int, progress=None) -> list:
    """The results of one future per batch, in batch order; progress as they complete; the first failed
    task's exception is raised."""
    from dask.distributed import as_completed
    size = {f.key: n for f, n in zip(futures, sizes)}
    for future in as_completed(futures):
        if future.status == "error":
            future.result()   # raises the task's exception here
        if progress is not None:
            progress(size[future.key], total)
    return client.gather(futures)


def _stamp(path) -> tuple:
    """A file's identity for the per-process caches: path, size and modification time."""
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------- calibration

@lru_cache(maxsize=4)
def _data(spec: str, stamp: tuple):
    return load_data(spec)


@lru_cache(maxsize=2)
def _session(model_path: str, output: str, stamp: tuple):
    from .calibrate import session
    return session(model_path, [output], threads=1)


def _stamp_spec(spec: str) -> tuple:
    """The identities of the files a data spec reads (``_stamp``): the shards of a glob, else its one file."""
    paths = sorted(glob.glob(spec)) if PATTERN & set(spec) else [spec_path(spec)]
    return tuple(_stamp(p) for p in paths)


def _calibrate_task(start, model_path, graph, scaled, spec, input_range, batch_size, zeta, coding="dense"):
    from .calibrate import batch_bounds, forward_check, new_bounds
    batch = read_batch(_data(spec, _stamp_spec(spec)), start, batch_size, spec)
    x_max, required = new_bounds(scaled)
    pairs, logits = batch_bounds(scaled, batch, input_range, zeta, x_max, required, coding)
    check = None
    if start == 0:
        sess = _session(str(model_path), graph.output_name, _stamp(model_path))
        check = forward_check(model_path, sess, batch, logits)
    return x_max, required, pairs, check


def calibrate(client, model_path, graph, scaled, spec: str, n: int, input_range, batch_size: int, progress, zeta,
              coding: str = "dense"):
    """``calibrate.calibrate`` with one task per batch; per-layer maxima merged in batch order."""
    from .calibrate import Calibration, new_bounds
    starts = list(range(0, n, batch_size))
    graph_f, scaled_f = client.scatter([graph, scaled], broadcast=True)
    futures = [client.submit(_calibrate_task, s, str(model_path), graph_f, scaled_f, str(spec), tuple(input_range),
                             batch_size, zeta, coding, pure=False) for s in starts]
    parts = gather(client, futures, [min(batch_size, n - s) for s in starts], n, progress)
    x_max, required = new_bounds(scaled)
    pairs = 0
    forward_error = max_logit = 0.0
    for part_max, part_required, part_pairs, check in parts:
        for name in x_max:
            x_max[name] = np.maximum(x_max[name], part_max[name])
            required[name] = max(required[name], part_required[name])
        pairs += part_pairs
        if check is not None:
            forward_error, max_logit = check
    return Calibration(x_max, required, forward_error, max_logit, pairs)


# ----------------------------------------------------------------------------- verification

@lru_cache(maxsize=2)
def _checker(snn_path: str, onnx_path: str, batch_size: int, output: str | None, above: float, stamps: tuple):
    from .verify import Checker
    return Checker(snn_path, onnx_path, batch_size, threads=1, output=output, above=above)


def _verify_task(start, snn_path, onnx_path, spec, labels, batch_size, output, above):
    checker = _checker(snn_path, onnx_path, batch_size, output, above, (_stamp(snn_path), _stamp(onnx_path)))
    x = read_batch(_data(spec, _stamp_spec(spec)), start, batch_size, spec)
    return checker.batch(x, labels, spec)


def verify(client, snn_path, onnx_path, spec: str, n: int, labels, batch_size: int, progress,
           output: str | None, above: float) -> list[dict]:
    """``verify.Checker.batch`` of every batch on the client's workers, in batch order; ``above``, where a batch
    gets the rounding bound, as in the single process (``verify.bound_above``)."""
    starts = list(range(0, n, batch_size))
    futures = [client.submit(_verify_task, s, str(snn_path), str(onnx_path), str(spec),
                             labels[s:s + batch_size] if labels is not None else None, batch_size, output,
                             above, pure=False)
               for s in starts]
    return gather(client, futures, [min(batch_size, n - s) for s in starts], n, progress)
