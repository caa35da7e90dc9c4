"""The ``relu2snn`` command line: parse, call the library, print text or ``--json``.

Exit status: 0 success; 1 a failed verification, bench regression check or crosscheck agreement; 2 bad usage or bad
input; 3 an internal error; 130 interrupted by SIGINT (Ctrl-C); 143 terminated by SIGTERM;
141 (silently) when the reader of stdout has gone away. An interrupted run leaves no output
behind: outputs are written to a temporary file that is deleted on any exception, and SIGTERM
is turned into one (``Interrupted``) so that this cleanup runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import click

from . import __version__
from .errors import Relu2SnnError, VerificationFailed

EXAMPLES = """
\b
Examples:
  relu2snn convert model.onnx --calib calib.npy -o model.snn.h5
  relu2snn verify model.snn.h5 --onnx model.onnx --data test.npy --labels labels.npy
  relu2snn simulate model.snn.h5 --data test.npy -o out.npz
  relu2snn bench model.snn.h5 --data test.npy --onnx model.onnx
  relu2snn inspect model.snn.h5
  relu2snn export model.snn.h5 --format nir -o model.nir
  relu2snn crosscheck model.snn.h5 --data test.npy --simulator brian2 --dt 0.01 --samples 8
  relu2snn robustness model.snn.h5 --data test.npy --labels labels.npy --time-noise 0,0.01,0.1 --trials 3
  relu2snn plot model.snn.h5 --data test.npy --sample 0 -o raster.png
"""


class Progress:
    """A click progress bar on stderr that appears only once a run has lasted a second.

    The library calls it as ``progress(samples_done_now, total_samples)``.
    """

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled
        self.start, self.done, self.bar = time.monotonic(), 0, None

    def __call__(self, n: int, total: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.start > 1.0:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
            self.bar.update(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _run(fn, label: str, quiet: bool, **kwargs):
    progress = Progress(label, not quiet)
    try:
        return fn(progress=progress, **kwargs)
    finally:
        progress.close()


def _sharding(fn):
    """--workers and --scheduler: the batches on Dask (docs/cli.md, Sharded runs)."""
    fn = click.option("--scheduler", metavar="ADDRESS",
                      help="Run the batches on a running Dask scheduler, e.g. tcp://host:8786 (relu2snn[dask]).")(fn)
    return click.option("--workers", type=click.IntRange(1), metavar="N",
                        help="Run the batches on a local Dask cluster of N processes (relu2snn[dask]).")(fn)


def _client(workers, scheduler):
    from .shard import client
    if workers and scheduler:
        raise click.UsageError("give --workers or --scheduler, not both")
    return client(workers, scheduler)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):   # sentences (verify's failures) are separated by semicolons
        return "[" + ("; " if any(isinstance(v, str) for v in value) else ", ").join(_fmt(v) for v in value) + "]"
    return "n/a" if value is None else str(value)


def _json(value) -> str:
    """JSON text; NaN and ±inf, which are not JSON, are refused (ValueError: a report holding them is a bug)."""
    return json.dumps(value, indent=2, default=float, allow_nan=False)


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        click.echo(_json(report))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            click.echo(f"{key:<{width}}  {_fmt(value)}")


def _check_output(path: Path, force: bool, *inputs) -> None:
    """Before any work: the output's directory must exist and be writable, an existing output needs
    --force, and the output must not be one of the input files."""
    from .data import spec_path
    from .errors import DataError
    parent = path.parent
    if not parent.is_dir():
        raise DataError(f"{path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{path}: the directory {parent} is not writable")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; name the output file")
    if path.exists():
        for spec in inputs:
            source = spec_path(spec)
            if source.exists() and os.path.samefile(source, path):
                raise DataError(f"{path}: is also an input; choose another output name")
        if not force:
            raise DataError(f"{path}: exists; pass --force to replace it")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM turned into an exception, so that partial outputs are removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not interrupt the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_raise():
    """While a command runs, the first SIGINT or SIGTERM raises Interrupted; later ones are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is not signal.SIG_IGN:   # once interrupted, stay deaf until the exit
                signal.signal(sig, handler)


class Group(click.Group):
    """Turns our errors into one line on stderr and an exit code; --debug shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with _signals_raise(), warnings.catch_warnings():
                if not ctx.params.get("debug"):  # numpy's overflow notes: the error that follows says what is wrong
                    warnings.simplefilter("ignore", RuntimeWarning)
                return super().invoke(ctx)
        except click.exceptions.UsageError as e:
            if ctx.params.get("debug"):
                raise
            command = f"{ctx.command_path} {e.ctx.info_name}" if e.ctx and e.ctx is not ctx else ctx.command_path
            click.echo(f"relu2snn: error: {e.format_message()} (see '{command} --help')", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as e:
            if ctx.params.get("debug"):
                raise
            signum = getattr(e, "signum", signal.SIGINT)
            click.echo(f"relu2snn: interrupted by {signal.Signals(signum).name}", err=True)
            ctx.exit(128 + signum)
        except Relu2SnnError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"relu2snn: error: {' '.join(str(e).split())}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:  # the reader of our output went away (``relu2snn inspect x | head``)
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except OSError as e:
            if ctx.params.get("debug"):
                raise
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"relu2snn: error: {where}{e.strerror or e}", err=True)
            ctx.exit(2)
        except Exception as e:  # a bug: one line, not a traceback, unless asked for
            if ctx.params.get("debug"):
                raise
            text = " ".join(str(e).split())
            click.echo(f"relu2snn: internal error: {type(e).__name__}: {text} (rerun with --debug for the traceback)",
                       err=True)
            ctx.exit(3)


@click.group(cls=Group, epilog=EXAMPLES)
@click.version_option(__version__, prog_name="relu2snn")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
def cli(debug: bool) -> None:
    """Convert trained ReLU networks (ONNX) into exactly equivalent single-spike (TTFS) spiking networks."""


@cli.command(epilog="""
\b
Example:
  relu2snn convert model.onnx --calib calib.npy -o model.snn.h5 --zeta 0.5
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib", required=True, metavar="DATA",
              help="Calibration inputs: file.npy, file.npz[:NAME] or file.h5:/DATASET, shape (N, *input shape); "
                   "or a quoted glob of .npy shards.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .snn.h5 [default: MODEL with .snn.h5].")
@click.option("--zeta", type=float, default=0.5, show_default=True, help="Window headroom: B = (1 + zeta)·X.")
@click.option("--s-max", type=float, default=0.99, show_default=True, help="Largest allowed incoming weight sum (dense coding; the sparse one needs no scaling).")
@click.option("--s-min", type=float, default=-10.0, show_default=True, help="Smallest allowed incoming weight sum (dense coding).")
@click.option("--coding", type=click.Choice(["dense", "sparse"]), default="dense", show_default=True,
              help="dense: every neuron fires once, a zero activation at its window end; sparse: a zero activation "
                   "sends no spike (docs/math.md §9).")
@click.option("--input-range", type=(float, float), metavar="P Q",
              help="Input range coded in the input window [default: calibration min/max widened by zeta/2 each side].")
@click.option("--onnx-output", metavar="NAME",
              help="The ONNX tensor to convert, for a model with several outputs [default: the model's only output, or "
                   "the only float output that imports].")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_sharding
def convert(model, calib, output, zeta, s_max, s_min, coding, input_range, onnx_output, batch_size, force, as_json, quiet,
            workers, scheduler):
    """Convert MODEL (ONNX) into a spiking network (.snn.h5), calibrating activation bounds on --calib."""
    from .convert import convert as run_convert
    from .mapping import MappingOptions
    out = Path(output) if output else Path(model).with_suffix(".snn.h5")
    _check_output(out, force, model, calib)
    with _client(workers, scheduler) as client:
        report = _run(run_convert, "calibrating", quiet, model_path=model, calib_spec=calib, out_path=out,
                      options=MappingOptions(zeta, s_min, s_max, coding=coding), input_range=input_range,
                      batch_size=batch_size, output=onnx_output, client=client)
    _print(report, as_json)


@cli.command(epilog="""
\b
Example:
  relu2snn verify model.snn.h5 --onnx model.onnx --data test.npy --labels labels.npy --json
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--onnx", "onnx_file", required=True, type=click.Path(dir_okay=False), help="The source ONNX model.")
@click.option("--data", required=True, metavar="DATA",
              help="Test inputs (.npy, .npz[:NAME], .h5:/DATASET, or a quoted glob of .npy shards).")
@click.option("--labels", metavar="DATA", help="Integer labels of the test inputs, for accuracies.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Exit 1 when the share of argmax equal to onnxruntime's is below this.")
@click.option("--max-logit-error", type=click.FloatRange(0), default=1e-9, show_default=True,
              help="Exit 1 when the largest |SNN logit − float64 ReLU logit| exceeds this times the largest |logit| "
                   "and its float64 rounding bound (docs/math.md §1).")
@click.option("--max-early-spikes", type=click.IntRange(0), default=0, show_default=True,
              help="Exit 1 when more (sample, neuron) pairs than this fire before all their inputs are in.")
@click.option("--onnx-output", metavar="NAME",
              help="The ONNX tensor converted [default: the one the artifact records as source_output].")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_sharding
def verify(snn_file, onnx_file, data, labels, min_agreement, max_logit_error, max_early_spikes, onnx_output,
           batch_size, as_json, quiet, workers, scheduler):
    """Check SNN_FILE against onnxruntime and the float64 ReLU forward pass on --data; exit 1 when an exactness
    check fails (the report's failures)."""
    from .verify import verify as run_verify
    with _client(workers, scheduler) as client:
        report = _run(run_verify, "verifying", quiet, snn_path=snn_file, onnx_path=onnx_file, data_spec=data,
                      labels_spec=labels, min_agreement=min_agreement, max_logit_error=max_logit_error,
                      max_early_spikes=max_early_spikes, batch_size=batch_size, output=onnx_output, client=client)
    _print(report, as_json)
    early_failed = report["early_spikes"] > max_early_spikes   # then a failure gives the hints below
    if not as_json and report["early_spikes"] and not early_failed:
        click.echo(f"relu2snn: note: {report['early_spikes']} neurons fired before their inputs were in: the data "
                   "exceeds the calibrated bounds; convert with more calibration data or a larger --zeta", err=True)
    if not as_json and report["out_of_range_inputs"] and not early_failed:
        click.echo(f"relu2snn: note: {report['out_of_range_inputs']} input values lie outside the input range; "
                   "convert with an --input-range that covers the data", err=True)
    if report["failures"]:
        raise VerificationFailed("; ".join(report["failures"]))


@cli.command(epilog="""
\b
Example:
  relu2snn simulate model.snn.h5 --data test.npy -o out.npz --times
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="Inputs (.npy, .npz[:NAME], .h5:/DATASET).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .npz.")
@click.option("--times", is_flag=True, help="Also save every population's spike times (times/<node>).")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def simulate(snn_file, data, output, times, batch_size, force, as_json, quiet):
    """Run SNN_FILE on --data and save the readout potentials (logits) to an .npz."""
    from .simulator import simulate_file
    _check_output(Path(output), force, snn_file, data)
    report = _run(simulate_file, "simulating", quiet, snn_path=snn_file, data_spec=data, out_path=output,
                  keep_times=times, batch_size=batch_size)
    _print(report, as_json)


@cli.command(epilog="""
\b
Example:
  relu2snn bench model.snn.h5 --data test.npy --onnx model.onnx --json > bench.json
  relu2snn bench model.snn.h5 --data test.npy --baseline bench.json --max-regression 0.10
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="Inputs (.npy, .npz[:NAME], .h5:/DATASET).")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False),
              help="The source ONNX model: also time onnxruntime on the same batches.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Timed passes over the data after one warm-up batch; the median counts.")
@click.option("--baseline", type=click.Path(dir_okay=False), help="An earlier `bench --json` report to compare with.")
@click.option("--max-regression", type=click.FloatRange(0), default=0.10, show_default=True,
              help="With --baseline: exit 1 when the SNN time per sample is more than this fraction above it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(snn_file, data, onnx_file, batch_size, repeats, baseline, max_regression, as_json, quiet):
    """Time the spiking simulation of SNN_FILE on --data, and onnxruntime with --onnx; count the work done."""
    from .bench import bench as run_bench, check_regression
    report = _run(run_bench, "benchmarking", quiet, snn_path=snn_file, data_spec=data, onnx_path=onnx_file,
                  batch_size=batch_size, repeats=repeats, baseline=baseline, max_regression=max_regression)
    _print(report, as_json)
    check_regression(report)


@cli.command(epilog="""
\b
Example:
  relu2snn inspect model.snn.h5
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the description as one JSON object.")
def inspect(snn_file, as_json):
    """Describe SNN_FILE: one row per node with its window, X_n, share of statically certified neurons and the
    rows it reads."""
    from . import h5io, snn
    net = h5io.read(snn_file)
    rows = snn.layer_table(net)
    if as_json:
        click.echo(_json({"meta": net.meta, "coding": net.coding, "content_sha256": h5io.content_hash(net),
                          "layers": rows}))
        return
    for key in ("source_model_name", "source_model_sha256", "calibration_samples", "input_range", "zeta",
                "removed_output_ops", "latency"):
        click.echo(f"{key:<20} {_fmt(net.meta.get(key))}")
    click.echo(f"{'coding':<20} {net.coding}")
    click.echo(f"{'content_sha256':<20} {h5io.content_hash(net)}")
    click.echo(f"\n{'#':>3} {'layer':<24} {'kind':<13} {'shape':<14} {'window [T, T+B]':<22} {'X_n':>10} "
               f"{'certified':>9}  {'reads':<8}  from")
    index = {r["name"]: i for i, r in enumerate(rows)}
    for i, r in enumerate(rows):
        window = f"[{r['window'][0]:.4g}, {r['window'][1]:.4g}]"
        x = "" if r["x_max"] is None else f"{r['x_max']:.4g}"
        cert = "" if r["certified"] is None or math.isnan(r["certified"]) else f"{100 * r['certified']:.1f}%"
        reads = ",".join(f"#{index[name]}" for name in r["inputs"])
        origin = f"  {r['origin']}" if r.get("origin") else ""
        click.echo(f"{i:>3} {r['name'][:24]:<24} {r['kind']:<13} {str(tuple(r['shape'])):<14} {window:<22} {x:>10} "
                   f"{cert:>9}  {reads:<8}{origin}".rstrip())


@cli.command(epilog="""
\b
Examples:
  relu2snn export model.snn.h5 --format brian2 -o net.py
  python net.py --data test.npy
  relu2snn export model.snn.h5 --format nir -o model.nir
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", required=True, type=click.Choice(["brian2", "nir"]),
              help="brian2: a stand-alone Python script; nir: a NIR graph (HDF5).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output file (.py or .nir).")
@click.option("--dt", type=click.FloatRange(0, min_open=True), default=0.01, show_default=True,
              help="brian2: the script's default time step, in tau_c.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def export(snn_file, fmt, output, dt, force, as_json):
    """Write SNN_FILE for another simulator: a Brian2 script that prints the logits of the samples it is given,
    or a NIR graph that relu2snn reads back to the same network (docs/exports.md)."""
    from .export import export_file
    _check_output(Path(output), force, snn_file)
    _print(export_file(snn_file, fmt, output, dt), as_json)


@cli.command(epilog="""
\b
Example:
  relu2snn crosscheck model.snn.h5 --data test.npy --simulator brian2 --dt 0.01 --samples 8 --json
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="Inputs (.npy, .npz[:NAME], .h5:/DATASET).")
@click.option("--simulator", type=click.Choice(["brian2"]), default="brian2", show_default=True,
              help="The independent simulator.")
@click.option("--dt", type=click.FloatRange(0, min_open=True), default=0.01, show_default=True,
              help="Its time step, in tau_c.")
@click.option("--samples", type=click.IntRange(1), help="Only the first N samples of --data [default: all].")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Exit 1 when the share of argmax equal to relu2snn's is below this.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Samples simulated side by side in one Brian2 run.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def crosscheck(snn_file, data, simulator, dt, samples, min_agreement, batch_size, as_json, quiet):
    """Run SNN_FILE on --data in an independent simulator and in relu2snn's; report the agreement, the spike-time
    differences per layer against their bounds, the logit difference and both run times; exit 1 when the
    agreement is below --min-agreement."""
    from .crosscheck import crosscheck as run_crosscheck
    report = _run(run_crosscheck, "cross-checking", quiet, snn_path=snn_file, data_spec=data, dt=dt,
                  samples=samples, min_agreement=min_agreement, batch_size=batch_size)
    _print(report, as_json)
    if not report["passed"]:
        raise VerificationFailed(f"agreement {report['agreement']:.6g} with {simulator} is below --min-agreement "
                                 f"{min_agreement:.6g}")


class Levels(click.ParamType):
    """A comma-separated list of numbers, such as ``0,1e-3,0.01``."""

    name = "LIST"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


@cli.command(epilog="""
\b
Examples:
  relu2snn robustness model.snn.h5 --data test.npy --labels labels.npy \\
      --time-noise 0,1e-3,1e-2,1e-1,1 --time-bits 16,8,4 --trials 3 --seed 0
  relu2snn robustness model.snn.h5 --data test.npy --onnx model.onnx --calib calib.npy \\
      --zeta 0.5,0,-0.3 --plot robustness.png --json
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="Inputs (.npy, .npz[:NAME], .h5:/DATASET).")
@click.option("--labels", metavar="DATA", help="Integer labels of the inputs, for accuracies.")
@click.option("--time-noise", type=Levels(), help="Spike-time jitter levels sigma_t, in tau_c.")
@click.option("--alpha-noise", type=Levels(), help="Drive mismatch levels: sigma of alpha_i + eps_i (clipped at 0).")
@click.option("--threshold-noise", type=Levels(), help="Threshold mismatch levels: sigma of theta_i + eps_i.")
@click.option("--time-bits", type=Levels(), help="Spike times on 2^bits levels across each window.")
@click.option("--weight-bits", type=Levels(), help="Weights J on 2^bits - 1 levels symmetric about 0.")
@click.option("--weight-scope", type=click.Choice(["layer", "channel"]), default="layer", show_default=True,
              help="--weight-bits: one quantisation step per layer or per output channel.")
@click.option("--zeta", type=Levels(), help="Window headroom levels, > -1: reconverts (needs --onnx and --calib).")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False), help="The source ONNX model (for --zeta).")
@click.option("--calib", metavar="DATA", help="The calibration inputs (for --zeta).")
@click.option("--trials", type=click.IntRange(1), default=3, show_default=True,
              help="Runs per level of the noise axes, each with its own draws.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False),
              help="Also draw agreement against each axis (.png, .svg or .pdf).")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing --plot file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def robustness(snn_file, data, labels, time_noise, alpha_noise, threshold_noise, time_bits, weight_bits,
               weight_scope, zeta, onnx_file, calib, trials, seed, plot_file, batch_size, force, as_json, quiet):
    """Perturb SNN_FILE as hardware would (spike-time jitter, drive and threshold mismatch, time and weight
    quantisation, shorter windows), run --data through the exact dynamics and report, per level, the agreement
    with the unperturbed network's argmax and the accuracy (mean and std over --trials) (docs/hardware.md)."""
    from .robustness import robustness as run_robustness
    if plot_file:
        from .plot import _pyplot, check_format
        check_format(plot_file)
        _check_output(Path(plot_file), force, snn_file, data)
        _pyplot("robustness --plot")
    axes = {"time_noise": time_noise, "alpha_noise": alpha_noise, "threshold_noise": threshold_noise,
            "time_bits": time_bits, "weight_bits": weight_bits, "zeta": zeta}
    report = _run(run_robustness, "perturbing", quiet, snn_path=snn_file, data_spec=data, labels_spec=labels,
                  axes=axes, trials=trials, seed=seed, onnx_path=onnx_file, calib_spec=calib, batch_size=batch_size,
                  weight_scope=weight_scope)
    if plot_file:
        from .plot import plot_robustness
        plot_robustness(report, plot_file)
        report["plot"] = str(plot_file)
    if as_json:
        click.echo(_json(report))
        return
    for key in ("n_samples", "trials", "seed", "accuracy", "latency"):
        click.echo(f"{key:<10} {_fmt(report[key])}")
    click.echo(f"\n{'axis':<16} {'value':>9} {'trials':>6}  {'agreement':<17} {'accuracy':<17} {'early spikes':>12} "
               f"{'latency':>9}")
    for r in report["levels"]:
        acc = "n/a" if r["accuracy_mean"] is None else f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}"
        click.echo(f"{r['axis']:<16} {r['value']:>9g} {r['trials']:>6}  "
                   f"{r['agreement_mean']:.4f} ± {r['agreement_std']:.4f}   {acc:<17} {r['early_spikes_mean']:>12g} "
                   f"{r['latency']:>9.4g}")
    if plot_file:
        click.echo(f"\nplot       {plot_file}")


@cli.command(epilog="""
\b
Examples:
  relu2snn plot model.snn.h5 --data test.npy --sample 0 -o raster.png
  relu2snn plot model.snn.h5 --data test.npy --sample 3 -o spikes.svg --neurons '#1:0,5' --neurons '#4:2'
""")
@click.argument("snn_file", type=click.Path(dir_okay=False))
@click.option("--data", required=True, metavar="DATA", help="Inputs (.npy, .npz[:NAME], .h5:/DATASET).")
@click.option("--sample", type=click.IntRange(0), default=0, show_default=True, help="The sample to draw.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output picture; the format from the extension: .png, .svg or .pdf.")
@click.option("--neurons", multiple=True, metavar="LAYER:i,j",
              help="Also draw the membrane potential of these neurons (flat indices) of a spiking layer, named or "
                   "given as #row of `relu2snn inspect`; repeatable.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def plot(snn_file, data, sample, output, neurons, force, as_json):
    """Draw one sample's spikes through SNN_FILE: a raster (one band per population, windows shaded, early spikes
    marked), spike-time histograms per population and, with --neurons, membrane potentials V(t) with threshold
    and window lines (docs/hardware.md)."""
    from .plot import check_format, plot_file
    check_format(output)
    _check_output(Path(output), force, snn_file, data)
    report = plot_file(snn_file, data, sample, output, neurons)
    if as_json:
        click.echo(_json(report))
        return
    click.echo(f"output      {report['output']}")
    click.echo(f"sample      {report['sample']}")
    for p in report["populations"]:
        click.echo(f"population  {p['name']}: {p['neurons']} neurons, window [{p['window'][0]:.4g}, "
                   f"{p['window'][1]:.4g}], {p['forced_spikes']} forced, {p['early_spikes']} early")
    for n in report["neurons"]:
        click.echo(f"neuron      {n['layer']}[{n['index']}]: spike at {n['spike_time']:.6g}, theta {n['theta']:.6g}")


def main() -> None:
    cli(prog_name="relu2snn")
