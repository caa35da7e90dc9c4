"""Peak memory of convert (calibration) and verify against the number of samples in a memory-mapped .npy.

    python benchmarks/large_data.py [--model mlp|cnn] [--sizes 5000 50000] [--dir DIR]

For each size N it writes N samples (the sample model's calibration inputs, repeated, with a
little noise) to DIR/N.npy, then runs ``relu2snn convert`` and ``relu2snn verify`` each in a
fresh child process and prints its peak resident set size (ru_maxrss) and wall time. The
pages of the memory-mapped file that have been read count in the resident set while the
kernel keeps them, so the table also gives the file size; what must not grow with N is the
rest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import resource, sys
from relu2snn_cli.cli import cli
try:
    cli(sys.argv[1:], prog_name="relu2snn")
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one command line in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")))
    return kb / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    model = ROOT / "sample_models" / args.model / "model.onnx"
    base = np.load(ROOT / "sample_models" / args.model / "calib.npy")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        d = Path(d)
        print(f"model {args.model}, samples of shape {base.shape[1:]}")
        print(f"{'N':>8} {'data MB':>8} {'convert MB':>11} {'s':>6} {'verify MB':>10} {'s':>6}")
        for n in args.sizes:
            data = d / f"{n}.npy"
            x = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(n,) + base.shape[1:])
            for start in range(0, n, 4096):
                stop = min(n, start + 4096)
                rows = base[np.arange(start, stop) % len(base)]
                x[start:stop] = rows + rng.normal(0, 0.01, rows.shape).astype(np.float32)
            x.flush()
            del x
            out = d / f"{n}.snn.h5"
            conv_mb, conv_s = run(["convert", str(model), "--calib", str(data), "-o", str(out), "--quiet"])
            ver_mb, ver_s = run(["verify", str(out), "--onnx", str(model), "--data", str(data), "--quiet",
                                 "--min-agreement", "0"])
            size = data.stat().st_size / 2**20
            print(f"{n:>8} {size:>8.1f} {conv_mb:>11.1f} {conv_s:>6.1f} {ver_mb:>10.1f} {ver_s:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
