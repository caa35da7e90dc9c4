"""Bare float64 and float32 matrix products of VGG-16's layers at CIFAR size, batch 64: the rate NumPy's BLAS
reaches on this machine, and what it implies for a simulator whose drive Σ J·a must be float64.

Each conv layer of the CIFAR VGG-16 (docs/performance.md) is one product of its im2col matrix
(64·Ho·Wo, C·9) with its weights (C·9, O); the products are timed alone (no im2col copy), best of
three, with the BLAS's default threads. The floor of a float64 pass is the sum of the float64 times of all
layers, per sample.

    python benchmarks/gemm.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from vgg import VGG16

BATCH = 64


def layers(side: int = 32) -> list[tuple[int, int, int]]:
    """(M, K, N) of each conv layer's product at batch BATCH, and of the 512→512 dense layer."""
    shapes, channels = [], 3
    for item in VGG16:
        if item == "M":
            side //= 2
            continue
        shapes.append((BATCH * side * side, channels * 9, item))
        channels = item
    return shapes + [(BATCH, 512, 512)]


def seconds(m: int, k: int, n: int, dtype, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    a @ b
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rows, total = [], {"float64": 0.0, "float32": 0.0}
    for m, k, n in layers():
        row = {"m": m, "k": k, "n": n}
        for dtype in (np.float64, np.float32):
            s = seconds(m, k, n, dtype)
            total[dtype.__name__] += s
            row[f"{dtype.__name__}_gflops"] = round(2 * m * k * n / s / 1e9, 1)
        rows.append(row)
    print(json.dumps({"layers": rows, "ms_per_sample_all_layers": {k: round(1e3 * v / BATCH, 2)
                                                                   for k, v in total.items()}}, indent=1))


if __name__ == "__main__":
    main()
