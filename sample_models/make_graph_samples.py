"""Make the sample models with residual adds, concatenations, 1-D, grouped and NHWC graphs.

Uses the data, split, standardization, seeds and training loop of make_samples.py
(scikit-learn's digits, 1200 training samples, Adam) and writes, for every NAME
below, the same four files:

    NAME/model.onnx   the trained network (input "input", output "output",
                      dynamic batch dimension "batch")
    NAME/calib.npy    256 training samples, float32, in the model's input layout
    NAME/test.npy     the held-out test samples, float32, in the model's input layout
    NAME/labels.npy   labels of test.npy, int64

resnet        input (N, 1, 8, 8). Stem conv3x3(1->8)-BN-ReLU; two identity blocks
              (conv3x3-BN-ReLU-conv3x3-BN, + input, ReLU) at 8 channels; one projection
              block (conv3x3 stride 2 8->16 -BN-ReLU-conv3x3-BN, shortcut conv1x1
              stride 2 + BN, Add, ReLU); GlobalAveragePool; Flatten; Linear(16,10).
              BatchNormalization nodes are kept in the graph. The two batch norms
              whose outputs the projection block adds get equal gradients for their
              biases, so those biases stay equal and the exporter stores one, with an
              Identity node giving the other.
cnn1d         input (N, 1, 64): each digit as a one-channel signal of length 64.
              Conv1d(1,8,5,pad 2)-ReLU-AvgPool(2)-Conv1d(8,16,3,pad 1)-BN-ReLU-
              MaxPool(2)-Conv1d(16,16,3,pad 1)-ReLU-AvgPool(2)-Flatten-Linear(128,10).
              BatchNormalization nodes are kept in the graph.
dwsep         input (N, 1, 8, 8). conv3x3(1->16)-BN-ReLU; depthwise conv3x3 (group 16)
              -BN-ReLU; pointwise conv1x1(16->32)-BN-ReLU; MaxPool(2); depthwise conv3x3
              (group 32)-ReLU; pointwise conv1x1(32->32)-ReLU; GlobalAveragePool;
              Flatten; Linear(32,10). Exported with constant folding, as exports
              usually are, so the batch norms are folded into the convolutions.
concat        input (N, 1, 8, 8). Stem conv3x3(1->8)-ReLU; branch A conv3x3(8->8)-ReLU;
              branch B conv1x1(8->8)-ReLU-conv3x3(8->8)-ReLU (one layer deeper than A);
              Concat of A and B on channels; MaxPool(2); conv1x1(16->16)-ReLU; Flatten;
              Linear(256,10).
concat_dense  input (N, 64). Linear(64,32)-ReLU, then branch A Linear(32,16)-ReLU and
              branch B Linear(32,16)-ReLU-Linear(16,16)-ReLU, Concat, Linear(32,10).
mobilenet     input (N, 1, 8, 8). MobileNetV2-style: stem conv3x3(1->8)-BN-ReLU6; three inverted
              residual blocks (expand conv1x1 x2 -BN-ReLU6, depthwise conv3x3 -BN-ReLU6,
              project conv1x1 -BN, no activation: the linear bottleneck): 8->8 with the
              identity shortcut, 8->16 stride 2, 16->16 with the shortcut; conv1x1(16->32)
              -BN-ReLU6; GlobalAveragePool; Flatten; Linear(32,10). ReLU6 is exported as
              Clip(0, 6); exported with constant folding, so the batch norms are folded.
leaky         input (N, 1, 8, 8). conv3x3(1->8)-BN-LeakyReLU(0.1)-MaxPool(2)-conv3x3(8->16)
              -BN-LeakyReLU(0.1)-MaxPool(2)-Flatten-Linear(64,10). BatchNormalization nodes
              are kept in the graph.
nhwc          input (N, 8, 8, 1), channels last, opset 13. Written node by node with
              onnx.helper the way tf2onnx writes a Keras model: Transpose to NCHW,
              Conv3x3(1->8, same)-Relu-MaxPool(2)-Conv3x3(8->16, same)-Relu (explicit
              pads), Transpose back to NHWC, Reshape with a shape tensor [-1, 256] (height, width,
              channel order), MatMul+Add(256->32)-Relu, MatMul+Add(32->10), Softmax.
              The weights come from the same network trained in PyTorch (NCHW); the
              rows of the first dense weight are permuted to the channels-last order.

All models except nhwc are exported with the TorchScript exporter (dynamo=False),
opset 17. Every model is checked with onnx.checker and against onnxruntime
(max |onnx - torch| < 1e-4, equal test accuracy). Seeds are fixed, so reruns give
the same files (on the same torch).

Run:
    pip install torch scikit-learn onnx onnxruntime
    python sample_models/make_graph_samples.py [--out DIR]
"""
import argparse
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from make_samples import SEED, load_data, train, write_data

MIN_ACCURACY = 0.93
MAX_DIFF = 1e-4


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups),
            nn.BatchNorm2d(cout)]


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (identity, or conv1x1 stride 2 + BN), ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, stride=stride), nn.ReLU(),
                                  *conv_bn(cout, cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Sequential(*conv_bn(cin, cout, k=1, stride=stride)))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class Net(nn.Module):
    """A network whose forward pass is its logits (train() calls logits)."""

    def logits(self, x):
        return self.forward(x)


class ResNet(Net):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(1, 8), nn.ReLU(), Block(8, 8), Block(8, 8),
                                  Block(8, 16, stride=2), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


class CNN1d(Net):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.AvgPool1d(2),
            nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(), nn.AvgPool1d(2),
            nn.Flatten(), nn.Linear(16 * 8, 10))

    def forward(self, x):
        return self.body(x)


class DWSep(Net):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(1, 16), nn.ReLU(),
            *conv_bn(16, 16, groups=16), nn.ReLU(),
            *conv_bn(16, 32, k=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
            nn.Conv2d(32, 32, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


class Concat(Net):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                               nn.ReLU())
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 1), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x):
        s = self.stem(x)
        return self.head(torch.cat([self.a(s), self.b(s)], dim=1))


class ConcatDense(Net):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.a = nn.Sequential(nn.Linear(32, 16), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        s = self.stem(x)
        return self.head(torch.cat([self.a(s), self.b(s)], dim=1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1-BN-ReLU6, depthwise 3x3-BN-ReLU6, project 1x1-BN (linear), + input."""

    def __init__(self, cin, cout, stride=1, expand=2):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*conv_bn(cin, mid, k=1), nn.ReLU6(),
                                  *conv_bn(mid, mid, stride=stride, groups=mid), nn.ReLU6(),
                                  *conv_bn(mid, cout, k=1))

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(Net):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(1, 8), nn.ReLU6(), InvertedResidual(8, 8),
                                  InvertedResidual(8, 16, stride=2), InvertedResidual(16, 16),
                                  *conv_bn(16, 32, k=1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


class Leaky(Net):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(1, 8), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                                  *conv_bn(8, 16), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(16 * 2 * 2, 10))

    def forward(self, x):
        return self.body(x)


class KerasCNN(nn.Module):
    """The network behind the nhwc sample, trained in NCHW."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.dense1 = nn.Linear(16 * 4 * 4, 32)
        self.dense2 = nn.Linear(32, 10)

    def logits(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x)).flatten(1)
        return self.dense2(torch.relu(self.dense1(x)))

    def forward(self, x):  # the Keras model ends in a softmax activation
        return torch.softmax(self.logits(x), dim=1)


def export_torch(model, sample, path, fold):
    """TorchScript export, opset 17; fold=True lets the exporter fold constants (and BN)."""
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    torch.onnx.export(model, (torch.from_numpy(sample[:1]),), path, dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      do_constant_folding=fold, training=torch.onnx.TrainingMode.EVAL)


def export_nhwc(model, path):
    """Write the trained KerasCNN as tf2onnx writes a channels-last Keras model."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    # Keras flattens (H, W, C); torch flattened (C, H, W). Row h*64 + w*16 + c of the
    # MatMul weight is column c*16 + h*4 + w of the torch weight.
    w_dense1 = sd["dense1.weight"].reshape(32, 16, 4, 4).transpose(2, 3, 1, 0).reshape(256, 32)
    inits = {
        "sequential/conv2d/Conv2D/ReadVariableOp:0": sd["conv1.weight"],
        "sequential/conv2d/BiasAdd/ReadVariableOp:0": sd["conv1.bias"],
        "sequential/conv2d_1/Conv2D/ReadVariableOp:0": sd["conv2.weight"],
        "sequential/conv2d_1/BiasAdd/ReadVariableOp:0": sd["conv2.bias"],
        "const_fold_opt__12": np.array([-1, 256], dtype=np.int64),
        "sequential/dense/MatMul/ReadVariableOp:0": np.ascontiguousarray(w_dense1),
        "sequential/dense/BiasAdd/ReadVariableOp:0": sd["dense1.bias"],
        "sequential/dense_1/MatMul/ReadVariableOp:0": np.ascontiguousarray(sd["dense2.weight"].T),
        "sequential/dense_1/BiasAdd/ReadVariableOp:0": sd["dense2.bias"],
    }
    n = helper.make_node
    nodes = [
        n("Transpose", ["input"], ["sequential/conv2d/BiasAdd__6:0"],
          name="sequential/conv2d/BiasAdd__6", perm=[0, 3, 1, 2]),
        n("Conv", ["sequential/conv2d/BiasAdd__6:0", "sequential/conv2d/Conv2D/ReadVariableOp:0",
                   "sequential/conv2d/BiasAdd/ReadVariableOp:0"], ["sequential/conv2d/BiasAdd:0"],
          name="sequential/conv2d/BiasAdd", dilations=[1, 1], kernel_shape=[3, 3],
          pads=[1, 1, 1, 1], strides=[1, 1], group=1),
        n("Relu", ["sequential/conv2d/BiasAdd:0"], ["sequential/conv2d/Relu:0"],
          name="sequential/conv2d/Relu"),
        n("MaxPool", ["sequential/conv2d/Relu:0"], ["sequential/max_pooling2d/MaxPool:0"],
          name="sequential/max_pooling2d/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["sequential/max_pooling2d/MaxPool:0",
                   "sequential/conv2d_1/Conv2D/ReadVariableOp:0",
                   "sequential/conv2d_1/BiasAdd/ReadVariableOp:0"],
          ["sequential/conv2d_1/BiasAdd:0"], name="sequential/conv2d_1/BiasAdd",
          dilations=[1, 1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], group=1),
        n("Relu", ["sequential/conv2d_1/BiasAdd:0"], ["sequential/conv2d_1/Relu:0"],
          name="sequential/conv2d_1/Relu"),
        n("Transpose", ["sequential/conv2d_1/Relu:0"], ["sequential/conv2d_1/Relu__10:0"],
          name="sequential/conv2d_1/Relu__10", perm=[0, 2, 3, 1]),
        n("Reshape", ["sequential/conv2d_1/Relu__10:0", "const_fold_opt__12"],
          ["sequential/flatten/Reshape:0"], name="sequential/flatten/Reshape"),
        n("MatMul", ["sequential/flatten/Reshape:0", "sequential/dense/MatMul/ReadVariableOp:0"],
          ["sequential/dense/MatMul:0"], name="sequential/dense/MatMul"),
        n("Add", ["sequential/dense/MatMul:0", "sequential/dense/BiasAdd/ReadVariableOp:0"],
          ["sequential/dense/BiasAdd:0"], name="sequential/dense/BiasAdd"),
        n("Relu", ["sequential/dense/BiasAdd:0"], ["sequential/dense/Relu:0"],
          name="sequential/dense/Relu"),
        n("MatMul", ["sequential/dense/Relu:0", "sequential/dense_1/MatMul/ReadVariableOp:0"],
          ["sequential/dense_1/MatMul:0"], name="sequential/dense_1/MatMul"),
        n("Add", ["sequential/dense_1/MatMul:0", "sequential/dense_1/BiasAdd/ReadVariableOp:0"],
          ["sequential/dense_1/BiasAdd:0"], name="sequential/dense_1/BiasAdd"),
        n("Softmax", ["sequential/dense_1/BiasAdd:0"], ["output"],
          name="sequential/dense_1/Softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "sequential",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 8, 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="make_graph_samples.py")
    m.ir_version = 8
    onnx.save(m, path)


def accuracy(y, labels):
    return float((y.argmax(1) == labels).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output directory (default: this script's directory)")
    ap.add_argument("--only", nargs="*", help="make only these models")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)  # keeps reruns bit-identical
    xtr, ytr, calib, xte, yte = load_data()

    # name, model, input layout, epochs, exporter (fold: constant folding in the TorchScript
    # exporter; "nhwc": written with onnx.helper)
    specs = [
        ("resnet", ResNet, (-1, 1, 8, 8), 30, False),
        ("cnn1d", CNN1d, (-1, 1, 64), 30, False),
        ("dwsep", DWSep, (-1, 1, 8, 8), 30, True),
        ("concat", Concat, (-1, 1, 8, 8), 30, False),
        ("concat_dense", ConcatDense, (-1, 64), 30, False),
        ("nhwc", KerasCNN, (-1, 1, 8, 8), 30, "nhwc"),
        ("mobilenet", MobileNet, (-1, 1, 8, 8), 30, True),
        ("leaky", Leaky, (-1, 1, 8, 8), 30, False),
    ]
    for name, make, shape, epochs, exporter in specs:
        if args.only and name not in args.only:
            continue
        torch.manual_seed(SEED)
        model = make()
        tr, cal, te = (a.reshape(shape) for a in (xtr, calib, xte))
        acc = train(model, tr, ytr, te, yte, epochs)
        print(f"{name}: torch test accuracy {acc:.4f}")
        assert acc >= MIN_ACCURACY, f"{name} accuracy too low"
        with torch.no_grad():
            y_torch = model(torch.from_numpy(te)).numpy()

        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.onnx")
        if exporter == "nhwc":
            export_nhwc(model, path)
            cal, te = (a.transpose(0, 2, 3, 1).copy() for a in (cal, te))  # (N, 8, 8, 1)
        else:
            export_torch(model, cal, path, fold=exporter)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        ops = [nd.op_type for nd in m.graph.node]
        print(f"{name}: opset {m.opset_import[0].version}, ops {sorted(set(ops))}, "
              f"BatchNormalization nodes {ops.count('BatchNormalization')}")

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        y_ort = sess.run(["output"], {"input": te})[0]
        diff = float(np.abs(y_ort - y_torch).max())
        print(f"{name}: onnx test accuracy {accuracy(y_ort, yte):.4f}, "
              f"max |onnx - torch| {diff:.3g}")
        assert diff < MAX_DIFF and accuracy(y_ort, yte) == acc

        write_data(d, cal, te, yte)


if __name__ == "__main__":
    main()
