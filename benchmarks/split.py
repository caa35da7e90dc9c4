"""Where the simulator's time goes: one pass over a data file, timed by parts of ``simulator.CompiledLayer.fire``.

Parts: the products of the drive and the certificate sums (``_drives``), the bound from sums
(``_uncertified``), the grid bound with its products (``_grid_screen``), the rest of ``fire`` (the
closed form, the exact check of the pairs left and any event-by-event scan), and everything outside
the spiking layers (encoding, pooling and moving spikes, the readout). Milliseconds per sample.

    python benchmarks/split.py build/bench/cifar/model.snn.h5 build/bench/cifar/test.npy --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from relu2snn_cli import simulator

PARTS = {"_drives": "products", "_uncertified": "bound from sums", "_grid_screen": "grid bound"}


def split(snn_path: str, data_path: str, batch_size: int) -> dict:
    seconds = dict.fromkeys(["products", "bound from sums", "grid bound", "closed form and exact check",
                             "outside the spiking layers"], 0.0)

    def timed(method, part):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds[part] += time.perf_counter() - start
        return wrapper

    layer = simulator.CompiledLayer
    originals = {name: getattr(layer, name) for name in [*PARTS, "fire"]}
    for name, part in PARTS.items():
        setattr(layer, name, timed(originals[name], part))
    fire_seconds = [0.0]

    def fire(self, t_in):
        start = time.perf_counter()
        try:
            return originals["fire"](self, t_in)
        finally:
            fire_seconds[0] += time.perf_counter() - start

    layer.fire = fire
    try:
        sim = simulator.load(snn_path)
        x = np.load(data_path)
        start = time.perf_counter()
        checked = 0
        for result in sim.stream(x, batch_size):
            checked += result.counts.checked
        total = time.perf_counter() - start
    finally:
        for name, method in originals.items():
            setattr(layer, name, method)
    seconds["closed form and exact check"] = fire_seconds[0] - sum(seconds[p] for p in PARTS.values())
    seconds["outside the spiking layers"] = total - fire_seconds[0]
    per_sample = {k: 1e3 * v / len(x) for k, v in seconds.items()}
    return {"ms_per_sample": per_sample, "total_ms_per_sample": 1e3 * total / len(x),
            "checked_pairs_per_sample": checked / len(x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snn")
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(split(args.snn, args.data, args.batch_size), indent=2))


if __name__ == "__main__":
    main()
