"""Random-weight, batch-norm VGG-16 models in ONNX (onnx.helper only) and Gaussian data for the benchmarks.

Two sizes:

- ``cifar``: input (N, 3, 32, 32); 13 × (Conv 3×3 pad 1 → BatchNormalization → Relu) in the
  VGG-16 pattern 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M, then Flatten,
  Gemm 512→512, Relu, Gemm 512→10: about 15 M parameters.
- ``imagenet``: input (N, 3, 224, 224); the same convolutions, then Flatten,
  Gemm 25088→4096, Relu, Gemm 4096→4096, Relu, Gemm 4096→1000: about 138 M parameters.

Weights are He-normal (std √(2/fan_in)), so the variance of a ReLU layer's output stays of
the order of its input's; batch norm has γ ∈ [0.8, 1.2], β ~ N(0, 0.1²), running mean
~ N(0, 0.1²) and running variance ∈ [0.8, 1.2]. Data are standard normal. Every draw has
a fixed seed, so the files are the same on every run.

    python benchmarks/vgg.py cifar build/bench/cifar --calib 256 --test 256
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
SIZES = {  # input side, hidden widths of the classifier, classes
    "cifar": (32, (512,), 10),
    "imagenet": (224, (4096, 4096), 1000),
}


def vgg16(size: str, seed: int = 0) -> onnx.ModelProto:
    """A VGG-16 with batch norm and random weights; input ``input`` (N, 3, S, S), output ``logits``."""
    side, hidden, classes = SIZES[size]
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    x, channels = "input", 3
    for i, item in enumerate(VGG16):
        if item == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], name=f"pool{i}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x, side = f"pool{i}", side // 2
            continue
        w = rng.normal(0.0, np.sqrt(2.0 / (channels * 9)), (item, channels, 3, 3))
        nodes.append(helper.make_node("Conv", [x, const(f"conv{i}.w", w), const(f"conv{i}.b", np.zeros(item))],
                                      [f"conv{i}"], name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        bn = [const(f"bn{i}.gamma", rng.uniform(0.8, 1.2, item)), const(f"bn{i}.beta", rng.normal(0, 0.1, item)),
              const(f"bn{i}.mean", rng.normal(0, 0.1, item)), const(f"bn{i}.var", rng.uniform(0.8, 1.2, item))]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *bn], [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        x, channels = f"relu{i}", item
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x, width = "flat", channels * side * side
    for k, out in enumerate(hidden + (classes,)):
        w = rng.normal(0.0, np.sqrt(2.0 / width), (out, width))
        y = "logits" if out == classes and k == len(hidden) else f"fc{k}"
        nodes.append(helper.make_node("Gemm", [x, const(f"fc{k}.w", w), const(f"fc{k}.b", np.zeros(out))], [y],
                                      name=f"fc{k}", transB=1))
        if y != "logits":
            nodes.append(helper.make_node("Relu", [y], [f"fc{k}.relu"], name=f"fc{k}.relu"))
            x = f"fc{k}.relu"
        width = out
    s = SIZES[size][0]
    graph = helper.make_graph(nodes, f"vgg16_{size}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, s, s])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def parameters(model: onnx.ModelProto) -> int:
    """Number of weights and biases of the Conv and Gemm nodes (batch-norm statistics not counted)."""
    names = {i for n in model.graph.node if n.op_type in ("Conv", "Gemm") for i in n.input[1:]}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name in names)


def gaussian(n: int, size: str, seed: int) -> np.ndarray:
    """n standard-normal inputs (n, 3, S, S), float32."""
    side = SIZES[size][0]
    return np.random.default_rng(seed).standard_normal((n, 3, side, side), dtype=np.float32)


def write(size: str, out_dir: Path, n_calib: int, n_test: int) -> dict:
    """Write model.onnx, calib.npy (seed 1) and test.npy (seed 2) into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = vgg16(size)
    onnx.checker.check_model(model)
    paths = {"model": out_dir / "model.onnx", "calib": out_dir / "calib.npy", "test": out_dir / "test.npy"}
    onnx.save(model, str(paths["model"]))
    np.save(paths["calib"], gaussian(n_calib, size, 1))
    np.save(paths["test"], gaussian(n_test, size, 2))
    return {"parameters": parameters(model), **{k: str(v) for k, v in paths.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--calib", type=int, default=256, help="calibration samples")
    parser.add_argument("--test", type=int, default=256, help="test samples")
    args = parser.parse_args()
    print(write(args.size, args.out_dir, args.calib, args.test))


if __name__ == "__main__":
    main()
