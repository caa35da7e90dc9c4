"""Convert, verify and bench the sample models and the VGG-16 benchmarks; write the table into docs/performance.md.

Each step runs the ``relu2snn`` command line in a child process under ``/usr/bin/time -v``,
which gives its wall time and peak resident memory. Results go to BUILD/results.json
(merged with earlier runs, so cases can be run one at a time) and the table between the
markers of docs/performance.md is rewritten from them.

    python benchmarks/run.py                       # mlp cnn cifar trained
    python benchmarks/run.py imagenet              # the ImageNet-size VGG-16 (several GB, about 1.5 h)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import split  # noqa: E402
import trained_vgg  # noqa: E402
import vgg  # noqa: E402

BEGIN, END = "<!-- measured: begin -->", "<!-- measured: end -->"

# name: (model source, calibration samples, test samples, convert batch size, bench batch size, bench repeats,
#        sharded runs on 1 and 2 Dask workers)
CASES = {
    "mlp": ("sample", 256, None, 256, 64, 5, False),
    "cnn": ("sample", 256, None, 256, 64, 5, False),
    "cifar": ("cifar", 256, 64, 64, 64, 1, True),
    "trained": ("trained", 256, 64, 64, 64, 1, True),
    "imagenet": ("imagenet", 64, 8, 8, 8, 1, False),
}
DASK_BATCH = 32   # verify on the calibration samples in batches of 32: 8 tasks for the workers


def timed(args: list[str]) -> dict:
    """Run a relu2snn command under /usr/bin/time -v; its --json report, wall seconds, peak RSS in MiB."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "relu2snn_cli", *map(str, args), "--json", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.group(1).split(":"))))
    return {"report": json.loads(proc.stdout), "seconds": seconds, "peak_rss_mb": int(rss.group(1)) / 1024}


def ort_seconds(model: Path, data: Path, batch_size: int, repeats: int = 3) -> float:
    """Median seconds onnxruntime takes to infer all of data in batches (after a warm-up batch)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = np.load(data)
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch_size]})
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for lo in range(0, len(x), batch_size):
            sess.run(None, {name: x[lo:lo + batch_size]})
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def run_case(name: str, build: Path) -> dict:
    """Make the files of one case, then convert it and run its other steps."""
    source, n_calib, n_test, convert_batch, bench_batch, repeats, sharded = CASES[name]
    out = build / name
    out.mkdir(parents=True, exist_ok=True)
    if source == "sample":
        files = {k: ROOT / "sample_models" / name / f for k, f in
                 (("model", "model.onnx"), ("calib", "calib.npy"), ("test", "test.npy"), ("labels", "labels.npy"))}
    elif source == "trained":   # trained once (a few minutes), then reused
        names = ("model", "calib", "test", "labels")
        files = {k: out / f"{'model.onnx' if k == 'model' else k + '.npy'}" for k in names}
        if not all(f.is_file() for f in files.values()):
            print(trained_vgg.write(out, n_calib, n_test), flush=True)
    else:
        files = {k: Path(v) for k, v in vgg.write(source, out, n_calib, n_test).items() if k != "parameters"}
    snn = out / "model.snn.h5"
    result = {"batch_size": bench_batch, "calibration_samples": n_calib}
    result["convert"] = timed(["convert", files["model"], "--calib", files["calib"], "-o", snn, "--force",
                               "--batch-size", convert_batch])
    result["ort_calibration_seconds"] = ort_seconds(files["model"], files["calib"], convert_batch)
    labels = ["--labels", files["labels"]] if "labels" in files else []
    result["verify"] = timed(["verify", snn, "--onnx", files["model"], "--data", files["test"],
                              "--batch-size", bench_batch, *labels])
    result["bench"] = timed(["bench", snn, "--onnx", files["model"], "--data", files["test"],
                             "--batch-size", bench_batch, "--repeats", repeats])
    if sharded:
        result["split"] = split.split(str(snn), str(files["test"]), bench_batch)
    if sharded:   # convert on 2 workers: the same bytes; verify on 1 and 2 workers (wall times include the cluster's start)
        dask_snn = out / "model.dask.snn.h5"
        result["convert_dask2"] = timed(["convert", files["model"], "--calib", files["calib"], "-o", dask_snn,
                                         "--force", "--batch-size", convert_batch, "--workers", 2])
        result["dask_artifact_identical"] = dask_snn.read_bytes() == snn.read_bytes()
        for workers in (1, 2):
            result[f"verify_dask{workers}"] = timed(["verify", snn, "--onnx", files["model"], "--data", files["calib"],
                                                     "--batch-size", DASK_BATCH, "--workers", workers])
        result["dask_reports_equal"] = result["verify_dask1"]["report"] == result["verify_dask2"]["report"]
    return result


def table(results: dict) -> str:
    """The measured figures as a Markdown table, one column per case."""
    names = [n for n in CASES if n in results]
    rows = [
        ("calibration samples / bench batch", lambda r: f"{r['calibration_samples']} / {r['batch_size']}"),
        ("ANN multiply-adds per sample", lambda r: f"{r['bench']['report']['ann_macs_per_sample']:.4g}"),
        ("synaptic events per sample", lambda r: f"{r['bench']['report']['synaptic_events_per_sample']:.4g}"),
        ("spikes per neuron", lambda r: f"{r['bench']['report']['spikes_per_neuron']:.4g}"),
        ("latency T_out (τ_c)", lambda r: f"{r['bench']['report']['latency']:.4g}"),
        ("SNN ms per sample", lambda r: f"{1e3 * r['bench']['report']['snn_seconds_per_sample']:.4g}"),
        ("onnxruntime ms per sample", lambda r: f"{1e3 * r['bench']['report']['ann_seconds_per_sample']:.4g}"),
        ("**snn_over_ann**", lambda r: f"**{r['bench']['report']['snn_over_ann']:.3g}**"),
        ("checked / event-scanned pairs per sample",
         lambda r: f"{r['bench']['report']['checked_pairs_per_sample']:.4g} / "
                   f"{r['bench']['report']['event_scan_pairs_per_sample']:.4g}"),
        ("bench peak RSS (MiB)", lambda r: f"{r['bench']['peak_rss_mb']:.0f}"),
        ("verify agreement", lambda r: f"{r['verify']['report']['agreement']:.4g}"),
        ("test accuracy ANN / SNN", lambda r: f"{r['verify']['report']['accuracy_ann']:.3g} / "
                                              f"{r['verify']['report']['accuracy_snn']:.3g}"),
        ("verify early spikes", lambda r: f"{r['verify']['report']['early_spikes']}"),
        ("verify max abs logit error vs float64", lambda r: f"{r['verify']['report']['max_abs_logit_error_ref']:.2g}"),
        ("convert wall s", lambda r: f"{r['convert']['seconds']:.1f}"),
        ("convert split: import / calibration / mapping / write s",
         lambda r: " / ".join(f"{v:.1f}" for v in r["convert"]["report"]["seconds"].values())),
        ("onnxruntime s on the calibration samples", lambda r: f"{r['ort_calibration_seconds']:.3g}"),
        ("convert target 3·ort + 10 s", lambda r: f"{3 * r['ort_calibration_seconds'] + 10:.1f}"),
        ("convert peak RSS (MiB)", lambda r: f"{r['convert']['peak_rss_mb']:.0f}"),
        ("verify wall s / peak RSS (MiB)", lambda r: f"{r['verify']['seconds']:.1f} / {r['verify']['peak_rss_mb']:.0f}"),
        ("simulation split, ms per sample: products / bound from sums / grid bound / closed form and exact check / "
         "outside the spiking layers", lambda r: " / ".join(f"{v:.3g}" for v in r["split"]["ms_per_sample"].values())),
        ("convert on 2 Dask workers wall s / same bytes",
         lambda r: f"{r['convert_dask2']['seconds']:.1f} / {'yes' if r['dask_artifact_identical'] else 'NO'}"),
        (f"verify of the calibration samples (batch {DASK_BATCH}) on 1 / 2 Dask workers wall s",
         lambda r: f"{r['verify_dask1']['seconds']:.1f} / {r['verify_dask2']['seconds']:.1f}"),
        ("speed-up on 2 workers / reports equal",
         lambda r: f"{r['verify_dask1']['seconds'] / r['verify_dask2']['seconds']:.2f} / "
                   f"{'yes' if r['dask_reports_equal'] else 'NO'}"),
    ]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(_cell(fmt, results[n]) for n in names) + " |" for label, fmt in rows]
    return "\n".join(lines)


def _cell(fmt, result: dict) -> str:
    """A formatted figure, or a dash for a step the case does not run."""
    try:
        return fmt(result)
    except (KeyError, TypeError):   # TypeError: a figure the case has not (no labels)
        return "–"


def write_doc(doc: Path, results: dict) -> None:
    """Replace the text between the markers of ``doc`` with the table."""
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    args = parser.parse_args()
    cases = args.cases or ["mlp", "cnn", "cifar", "trained"]
    if not set(cases) <= set(CASES):
        parser.error(f"unknown case in {cases}; choose from {', '.join(CASES)}")
    store = args.build / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    for name in cases:
        print(f"{name} ...", flush=True)
        results[name] = run_case(name, args.build)
        store.write_text(json.dumps(results, indent=2))
        print(json.dumps({step: results[name][step]["report"] for step in ("convert", "verify", "bench")
                          if step in results[name]}, indent=2), flush=True)
    write_doc(args.doc, results)


if __name__ == "__main__":
    main()
