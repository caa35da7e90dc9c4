"""Make the sample models used by relu2snn's tests and examples.

Trains two small ReLU networks on scikit-learn's bundled digits data set
(8x8 images, no download) with PyTorch on CPU, exports them to ONNX and
writes, for NAME in {mlp, cnn}:

    NAME/model.onnx   the trained network (opset 17, input "input", output
                      "output", dynamic batch dimension "batch")
    NAME/calib.npy    256 training samples, float32, for calibration
    NAME/test.npy     the held-out test samples, float32
    NAME/labels.npy   labels of test.npy, int64

mlp: Linear(64,64)-ReLU-Linear(64,32)-ReLU-Linear(32,10)-Softmax, input (N, 64).
cnn: conv-BN-ReLU-BN-conv-ReLU-pool-conv-BN-ReLU-pool-flatten-Linear-ReLU-Linear
     (logits), input (N, 1, 8, 8). BatchNormalization nodes are kept in the graph.

Pixels are standardized with one scalar mean and std of the training pixels.
Seeds are fixed, so reruns give the same data and (on the same torch) weights.

Run:
    pip install torch scikit-learn onnx onnxruntime
    python sample_models/make_samples.py [--out DIR]
"""
import argparse
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

SEED = 0
N_TRAIN = 1200
N_CALIB = 256
ALLOWED_OPS = {"Gemm", "MatMul", "Add", "Conv", "BatchNormalization", "Relu", "MaxPool",
               "Flatten", "Reshape", "Softmax", "Identity", "Constant"}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                  nn.Linear(32, 10))

    def logits(self, x):
        return self.body(x)

    def forward(self, x):  # the exported graph ends in a Softmax
        return torch.softmax(self.body(x), dim=1)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.BatchNorm2d(8),  # a BN after a ReLU, right before the next conv
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def logits(self, x):
        return self.body(x)

    def forward(self, x):
        return self.body(x)


def load_data():
    digits = load_digits()
    x, y = digits.data.astype(np.float64), digits.target.astype(np.int64)
    order = np.random.RandomState(SEED).permutation(len(x))
    x, y = x[order], y[order]
    mean, std = x[:N_TRAIN].mean(), x[:N_TRAIN].std()
    x = ((x - mean) / std).astype(np.float32)
    xtr, ytr, xte, yte = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    calib = xtr[:N_CALIB]
    lo, hi = np.float32((0 - mean) / std), np.float32((16 - mean) / std)
    for part in (xtr, xte, calib):  # pixel values 0 and 16 occur in every split
        assert np.isclose(part.min(), lo) and np.isclose(part.max(), hi)
    print(f"data: train {xtr.shape}, test {xte.shape}, mean {mean:.4f}, std {std:.4f}, "
          f"range [{lo:.4f}, {hi:.4f}]")
    return xtr, ytr, calib, xte, yte


def train(model, xtr, ytr, xte, yte, epochs):
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model.logits(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
    return acc


def export(model, sample, path):
    # The TorchScript exporter (dynamo=False) keeps BatchNormalization nodes unfused.
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    torch.onnx.export(model, (torch.from_numpy(sample[:1]),), path, dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert set(ops) <= ALLOWED_OPS, f"unexpected ops: {set(ops) - ALLOWED_OPS}"
    return ops


def write_data(d, cal, te, yte):
    """calib.npy, test.npy and labels.npy beside the model in directory d; report the four files."""
    for fname, arr in [("calib.npy", cal), ("test.npy", te), ("labels.npy", yte)]:
        np.save(os.path.join(d, fname), arr, allow_pickle=False)
    for fname in ("model.onnx", "calib.npy", "test.npy", "labels.npy"):
        p = os.path.join(d, fname)
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output directory (default: this script's directory)")
    out = ap.parse_args().out
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)  # keeps reruns bit-identical
    xtr, ytr, calib, xte, yte = load_data()

    for name, make, shape, epochs in [("mlp", MLP, (-1, 64), 40), ("cnn", CNN, (-1, 1, 8, 8), 40)]:
        torch.manual_seed(SEED)
        model = make()
        tr, cal, te = (a.reshape(shape) for a in (xtr, calib, xte))
        acc = train(model, tr, ytr, te, yte, epochs)
        print(f"{name}: torch test accuracy {acc:.4f}")
        assert acc >= 0.95, f"{name} accuracy too low"

        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.onnx")
        ops = export(model, cal, path)
        print(f"{name}: ops {ops}")

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        y_ort = sess.run(["output"], {"input": te})[0]
        with torch.no_grad():
            y_torch = model(torch.from_numpy(te)).numpy()
        print(f"{name}: onnx test accuracy {(y_ort.argmax(1) == yte).mean():.4f}, "
              f"max |onnx - torch| {np.abs(y_ort - y_torch).max():.3g}")

        write_data(d, cal, te, yte)


if __name__ == "__main__":
    main()
