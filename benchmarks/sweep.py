"""Build, export and convert models nobody on this project wrote, and tabulate what happens (docs/sweep.md).

Cases: torchvision's classification architectures at 3×32×32 with seeded random weights (TorchScript exporter at
opsets 11, 13, 17 and the dynamo exporter), Keras models through tf2onnx, scikit-learn's MLPClassifier through
skl2onnx with its default options, and the graphs of ../shared/realworld-onnx (made runnable by
benchmarks/realworld_onnx.py, used from there). Each case is built and exported in a child process, then converted
and verified by the relu2snn CLI in child processes, each under a time limit. A row's result is

- ``exact``: converted, and verify passed (agreement 1, no early spike, logit error ≤ 1e-9 of max |logit| or, where
  above, within the float64 rounding bound verify reports, docs/math.md §1 "How exact is exact"; the row gives both);
- ``refused``: convert exited 2 with its one-line message;
- ``DEFECT``: exit 3, any other exit or a traceback (a crash), a time limit reached (a hang), or verify exit 1 on
  the calibration samples themselves (an inexact conversion);
- ``export failed``: the exporter could not write the model (not relu2snn's doing).

Test data are the first samples of the calibration data, so no early spike is expected from out-of-range data.

    python benchmarks/sweep.py [--only SUBSTRING ...] [--timeout 240] [--work /tmp/relu2snn-sweep] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "realworld-onnx"
TORCH_MODELS = ("resnet18", "vgg11_bn", "squeezenet1_1", "densenet121", "googlenet", "mobilenet_v2", "mnasnet0_5",
                "shufflenet_v2_x0_5", "efficientnet_b0", "mobilenet_v3_small")
TORCH_EXPORTERS = (("torchscript", 11), ("torchscript", 13), ("torchscript", 17), ("dynamo", None))
KERAS_MODELS = ("sequential_cnn_bn", "functional_add_concat", "depthwise_conv", "separable_conv", "relu6",
                "leaky_relu")
CALIB, TEST = 32, 16
SIZE = 32
MESSAGE = 240


def cases() -> list[dict]:
    """Every case of the sweep: model, exporter, opset (None: the exporter's default)."""
    found = [dict(model=m, exporter=e, opset=o) for m in TORCH_MODELS for e, o in TORCH_EXPORTERS]
    found += [dict(model=m, exporter="tf2onnx", opset=13) for m in KERAS_MODELS]
    found.append(dict(model="mlp_classifier_digits", exporter="skl2onnx", opset=None))
    if SHARED.is_dir():
        found += [dict(model=p.stem, exporter="as published", opset=None) for p in sorted(SHARED.glob("*.onnx"))]
    return found


def case_id(case: dict) -> str:
    exporter = case["exporter"].split(",")[0].replace(" ", "_")
    return f"{case['model']}-{exporter}{case['opset'] or ''}" + ("-" + case["output"] if case.get("output") else "")


# ---- builders: each runs in a child process and writes model.onnx, calib.npy, test.npy into a folder ----

def _save_data(folder: Path, calib: np.ndarray) -> None:
    np.save(folder / "calib.npy", calib.astype(np.float32))
    np.save(folder / "test.npy", calib[:TEST].astype(np.float32))


def _torchvision_models():
    """torchvision.models without torchvision's C operators: the PyPI wheel may not load them with a CPU build
    of torch, and only detection ops need them; their fake-tensor registrations are skipped."""
    import types
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    from torchvision import models
    return models


def build_torch(case: dict, folder: Path) -> None:
    """A torchvision architecture with seeded random weights, 10 classes, input 3×32×32. BatchNorm scales and
    shifts are random (scale in [0.5, 1.5], shift 0.1·N(0, 1)); its running mean and variance are the statistics
    of one pass over the calibration data, so each ReLU sees a live, centred input. VGG's 7×7 adaptive pooling
    and 25088-wide head cannot take a 1×1 feature map: they are replaced by a flatten and a 512-512-10 head of
    the same form."""
    import torch
    models = _torchvision_models()
    torch.manual_seed(0)
    name = case["model"]
    if name == "googlenet":
        net = models.googlenet(weights=None, num_classes=10, aux_logits=False, init_weights=True)
    else:
        net = getattr(models, name)(weights=None, num_classes=10)
    if name == "vgg11_bn":
        net.avgpool = torch.nn.Identity()
        net.classifier = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(True), torch.nn.Dropout(),
                                             torch.nn.Linear(512, 512), torch.nn.ReLU(True), torch.nn.Dropout(),
                                             torch.nn.Linear(512, 10))
    calib = np.random.default_rng(1).standard_normal((CALIB, 3, SIZE, SIZE)).astype(np.float32)
    x = torch.from_numpy(calib)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative: after one pass, the statistics of that pass
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        net(x)
    net.eval()
    path = folder / "model.onnx"
    if case["exporter"] == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(net, (x[:2],), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), report=False, verbose=False)
    else:
        torch.onnx.export(net, (x[:2],), str(path), dynamo=False, opset_version=case["opset"],
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    _save_data(folder, calib)


def _keras_model(name: str):
    """The Keras models of the sweep, on 16×16×3 (NHWC) inputs, 10 outputs."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="input")
    if name == "sequential_cnn_bn":
        return keras.Sequential([inp, layers.Conv2D(8, 3), layers.BatchNormalization(), layers.ReLU(),
                                 layers.MaxPooling2D(), layers.Conv2D(16, 3), layers.BatchNormalization(),
                                 layers.Activation("relu"), layers.GlobalAveragePooling2D(), layers.Dense(10)])
    if name == "functional_add_concat":
        a = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        b = layers.Conv2D(8, 3, padding="same", activation="relu")(a)
        s = layers.Add()([a, b])
        c = layers.Conv2D(8, 1, activation="relu")(s)
        x = layers.Concatenate()([s, c])
        x = layers.MaxPooling2D()(x)
        x = layers.Dense(10)(layers.Flatten()(x))
        return keras.Model(inp, x)
    if name == "depthwise_conv":
        x = layers.Conv2D(8, 3, activation="relu")(inp)
        x = layers.DepthwiseConv2D(3, activation="relu")(x)
        x = layers.Conv2D(16, 1, activation="relu")(x)
        x = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
        return keras.Model(inp, x)
    if name == "separable_conv":
        x = layers.Conv2D(8, 3, activation="relu")(inp)
        x = layers.SeparableConv2D(16, 3, activation="relu")(x)
        x = layers.Dense(10)(layers.Flatten()(layers.MaxPooling2D()(x)))
        return keras.Model(inp, x)
    if name == "relu6":
        x = layers.ReLU(6.0)(layers.Conv2D(8, 3)(inp))
        x = layers.ReLU(6.0)(layers.Conv2D(16, 3, strides=2)(x))
        x = layers.Dense(10)(layers.Flatten()(x))
        return keras.Model(inp, x)
    if name == "leaky_relu":
        x = layers.LeakyReLU(0.1)(layers.Conv2D(8, 3)(inp))
        x = layers.MaxPooling2D()(x)
        x = layers.LeakyReLU(0.1)(layers.Dense(32)(layers.Flatten()(x)))
        return keras.Model(inp, layers.Dense(10)(x))
    raise ValueError(name)


def build_keras(case: dict, folder: Path) -> None:
    """A Keras model with seeded random weights (BatchNormalization: random scale, shift and moving statistics),
    exported by tf2onnx from a tf.function of the model in inference mode."""
    import tensorflow as tf
    import tf2onnx
    net = _keras_model(case["model"])
    rng = np.random.default_rng(2)
    for layer in net.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), 0.1 * rng.standard_normal(beta.shape),
                               0.1 * rng.standard_normal(mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="input"),)
    function = tf.function(lambda x: net(x, training=False), input_signature=spec)
    tf2onnx.convert.from_function(function, input_signature=spec, opset=case["opset"],
                                  output_path=str(folder / "model.onnx"))
    _save_data(folder, np.random.default_rng(1).standard_normal((CALIB, 16, 16, 3)))


def build_sklearn(case: dict, folder: Path) -> None:
    """MLPClassifier(64, 32) trained on sklearn's digits, exported by skl2onnx with its default options (a label
    and a ZipMap of probabilities); calibration data: digits samples."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = MLPClassifier((64, 32), max_iter=300, random_state=0).fit(x, y)
    model = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))])
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    _save_data(folder, x[np.random.default_rng(1).permutation(len(x))[:CALIB]])


def build_realworld(case: dict, folder: Path) -> None:
    """A graph of ../shared/realworld-onnx, given seeded random weights by benchmarks/realworld_onnx.py when it
    is a light_* graph (written to the work folder, never into the repository); 8 normal samples."""
    sys.path.insert(0, str(HERE))
    import realworld_onnx
    source = SHARED / f"{case['model']}.onnx"
    if case["model"].startswith("light_"):
        realworld_onnx.materialize(source, folder / "model.onnx")
    else:
        (folder / "model.onnx").write_bytes(source.read_bytes())
    shape = realworld_onnx.input_shape(folder / "model.onnx")
    x = np.random.default_rng(1).standard_normal((8, *shape)).astype(np.float32)
    np.save(folder / "calib.npy", x)
    np.save(folder / "test.npy", x[:4])


def build(case: dict, folder: Path) -> None:
    builder = {"torchscript": build_torch, "dynamo": build_torch, "tf2onnx": build_keras,
               "skl2onnx": build_sklearn}.get(case["exporter"].split(",")[0], build_realworld)
    builder(case, folder)


# ---- the sweep: children for building, converting and verifying ----

def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _child(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Run a child process; exit code None when it reached the time limit."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, "", ""
    return done.returncode, done.stdout, done.stderr


def neurons(artifact: Path, timeout: float) -> int | None:
    """The spiking neurons of an artifact (hidden layers and readout), from ``relu2snn inspect --json``."""
    code, out, _ = _child([sys.executable, "-m", "relu2snn_cli", "inspect", str(artifact), "--json"], timeout)
    if code != 0:
        return None
    return sum(int(np.prod(layer["shape"])) for layer in json.loads(out)["layers"]
               if layer["kind"] in ("SpikingLayer", "Readout"))


HINT = "pass --onnx-output NAME to choose the tensor to convert (e.g. '"


def run_case(case: dict, work: Path, timeout: float) -> list[dict]:
    """The row of one case; and when convert names the tensor to convert (a model with several outputs), a
    second row converting that one with --onnx-output."""
    row = convert_case(case, work, timeout)
    if row["result"] == "refused" and HINT in row["message"]:
        name = row["message"].split(HINT, 1)[1].split("'", 1)[0]
        return [row, convert_case(dict(case, exporter=f"{case['exporter']}, --onnx-output {name}", output=name),
                                  work, timeout)]
    return [row]


def convert_case(case: dict, work: Path, timeout: float) -> dict:
    """Build, export, convert and verify one case; the row of the table."""
    folder = work / case_id(case)
    folder.mkdir(parents=True, exist_ok=True)
    row = dict(case)
    clock = time.perf_counter()
    code, _, err = _child([sys.executable, __file__, "--build", json.dumps(case), str(folder)], timeout)
    if code != 0:
        row.update(result="export failed", message="time limit" if code is None else _last_line(err))
        row["seconds"] = round(time.perf_counter() - clock, 1)
        return row
    cli = [sys.executable, "-m", "relu2snn_cli"]
    options = ["--batch-size", "8" if case["exporter"].startswith("as published") else "32"]
    options += ["--onnx-output", case["output"]] if case.get("output") else []
    model, artifact = folder / "model.onnx", folder / "model.snn.h5"
    code, out, err = _child(cli + ["convert", str(model), "--calib", str(folder / "calib.npy"), "-o", str(artifact),
                                   "--force", "--json", "--quiet", *options], timeout)
    if code == 0:
        row["latency"] = json.loads(out)["latency"]
        row["neurons"] = neurons(artifact, timeout)
        code, out, err = _child(cli + ["verify", str(artifact), "--onnx", str(model), "--data",
                                       str(folder / "test.npy"), "--json", "--quiet", *options], timeout)
        if code in (0, 1) and out.strip():
            check = json.loads(out)
            largest = max(check["max_abs_logit"], 1e-300)
            bound = check.get("logit_rounding_bound")
            row.update(agreement=check["agreement"], early_spikes=check["early_spikes"],
                       relative_logit_error=check["max_abs_logit_error_ref"] / largest,
                       relative_rounding_bound=bound / largest if bound is not None else None)
            if code == 0:
                row["result"] = "exact"
            else:
                row.update(result="DEFECT", message="inexact: " + "; ".join(check["failures"]))
    if "result" not in row:
        message = _last_line(err).replace(f"{folder}/", "")
        if code == 2 and "Traceback" not in err:
            row.update(result="refused", message=message)
        else:
            what = "time limit reached" if code is None else f"exit {code}"
            row.update(result="DEFECT", message=f"{what}: {message}")
    row["seconds"] = round(time.perf_counter() - clock, 1)
    return row


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table; messages without the ``relu2snn: error:`` prefix and cut to MESSAGE
    characters (the JSON rows keep them whole)."""
    lines = ["| model | exporter | opset | result | agreement | logit error / max logit | rounding bound / max logit "
             "| early spikes | neurons | latency | seconds | message |", "|" + "---|" * 12]
    for r in rows:
        def fmt(key, spec):
            return format(r[key], spec) if r.get(key) is not None else ""
        message = (r.get("message") or "").removeprefix("relu2snn: error: ")
        message = (message[:MESSAGE - 1] + "…" if len(message) > MESSAGE else message).replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['exporter']} | {r['opset'] or 'default'} | {r['result']} | "
                     f"{fmt('agreement', 'g')} | {fmt('relative_logit_error', '.1e')} | "
                     f"{fmt('relative_rounding_bound', '.1e')} | {fmt('early_spikes', 'd')} | "
                     f"{fmt('neurons', ',d')} | {fmt('latency', '.4g')} | {r['seconds']} | {message} |")
    counts = {}
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    lines.append("")
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(rows)} cases")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build"]:
        build(json.loads(argv[1]), Path(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="run the cases whose id contains one of these")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per child process")
    parser.add_argument("--work", type=Path, default=Path("/tmp/relu2snn-sweep"))
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--list", action="store_true", help="list the case ids and stop")
    args = parser.parse_args(argv)
    todo = [c for c in cases() if not args.only or any(s in case_id(c) for s in args.only)]
    if args.list:
        print("\n".join(case_id(c) for c in todo))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in todo:
        for row in run_case(case, args.work, args.timeout):
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
