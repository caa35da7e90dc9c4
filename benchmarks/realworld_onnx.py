"""Convert and verify the ONNX graphs of ../shared/realworld-onnx (read its README): graphs written by other
people's exporters, used from there and never copied into the repository.

The ``light_*`` graphs carry every weight as a ConstantOfShape; they are given seeded random weights first,
by the role of the tensor's reader (He-normal Conv and Gemm weights, small biases, BatchNorm scales in
[0.5, 1.5] with mean 0 and variance 1, Mul/Add of a BatchNorm written out in [0.5, 1.5] and small), and
written to the work directory. Calibration and test data are the same normal samples of the input shape.
Prints one row per model: converted exactly (agreement, logit error relative to max |logit|, early spikes,
spiking neurons of the hidden layers and readout, latency T_out in τ_c) or refused, with the one-line message;
and the process's peak resident memory so far (run one model per process for its own).

    python benchmarks/realworld_onnx.py [--samples 16] [--batch-size 8] [--work /tmp/realworld] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from relu2snn_cli import h5io, snn
from relu2snn_cli.convert import convert
from relu2snn_cli.errors import Relu2SnnError
from relu2snn_cli.verify import verify

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "realworld-onnx"
PASS_THROUGH = ("Unsqueeze", "Reshape", "Identity", "Cast")


def _reader(model: onnx.ModelProto, tensor: str) -> tuple[str, int]:
    """The op type and input position of the node that reads ``tensor`` (through Unsqueeze/Reshape)."""
    for node in model.graph.node:
        if tensor in node.input:
            if node.op_type in PASS_THROUGH and node.input[0] == tensor:
                return _reader(model, node.output[0])
            return node.op_type, list(node.input).index(tensor)
    return "", -1


def random_value(op: str, index: int, shape: tuple[int, ...], rng) -> np.ndarray:
    """A weight for the ``index``-th input of an ``op`` node: He-normal kernels, small biases, BatchNorm
    scales in [0.5, 1.5] with mean 0 and variance 1."""
    if op in ("Conv", "Gemm", "MatMul") and index == 1 and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else min(shape)
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if op == "BatchNormalization":
        return {1: rng.uniform(0.5, 1.5, shape), 2: 0.1 * rng.standard_normal(shape),
                3: np.zeros(shape), 4: np.ones(shape)}[index]
    if op == "Mul":
        return rng.uniform(0.5, 1.5, shape)
    return 0.1 * rng.standard_normal(shape)


def materialize(path: Path, out: Path, seed: int = 0) -> Path:
    """The model with each ConstantOfShape of a constant shape replaced by an initializer of random values."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    keep = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            op, index = _reader(model, node.output[0])
            value = random_value(op, index, shape, rng).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            # IR version 3 lists every initializer among the graph inputs
            model.graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {name for node in model.graph.node for name in node.input}
    live = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)
    names = {t.name for t in live}
    inputs = [i for i in model.graph.input if i.name in used and (i.name in names or i.name not in inits)]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, str(out))
    return out


def input_shape(path: Path) -> tuple[int, ...]:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    return tuple(d.dim_value for d in inp.type.tensor_type.shape.dim[1:])


def run(name: str, work: Path, samples: int, batch_size: int) -> dict:
    source = SHARED / f"{name}.onnx"
    path = materialize(source, work / f"{name}.onnx") if name.startswith("light_") else source
    x = np.random.default_rng(1).standard_normal((samples, *input_shape(path))).astype(np.float32)
    np.save(work / f"{name}.npy", x)
    row = {"model": name}
    clock = time.perf_counter()
    try:
        report = convert(path, str(work / f"{name}.npy"), work / f"{name}.snn.h5", batch_size=batch_size)
        check = verify(work / f"{name}.snn.h5", path, str(work / f"{name}.npy"), batch_size=batch_size)
    except Relu2SnnError as e:
        row.update(result="refused", message=str(e).replace(str(path.parent) + "/", ""))
    else:
        net = h5io.read(work / f"{name}.snn.h5")
        row.update(result="exact" if check["passed"] else "FAILED", layers=report["layers"],
                   neurons=sum(int(np.prod(n.shape)) for n in net.nodes if isinstance(n, (snn.SpikingLayer, snn.Readout))),
                   latency=report["latency"], agreement=check["agreement"], early_spikes=check["early_spikes"],
                   relative_logit_error=check["max_abs_logit_error_ref"] / max(check["max_abs_logit"], 1e-300),
                   failures=check["failures"])
    row["seconds"] = round(time.perf_counter() - clock, 1)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/relu2snn-realworld"))
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: nothing to do")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    names = args.names or sorted(p.stem for p in SHARED.glob("*.onnx"))
    for name in names:
        print(json.dumps(run(name, args.work, args.samples, args.batch_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
