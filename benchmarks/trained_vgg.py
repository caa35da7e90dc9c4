"""A trained VGG-16 with batch norm, CIFAR size, for the benchmarks: scikit-learn's digits upsampled to 3×32×32.

The 8×8 digits (1,797 images, bundled with scikit-learn, no download) are upsampled
bilinearly to 32×32 and repeated on three channels, standardized with one scalar mean and
std of the training pixels. The network is ``vgg.VGG16`` (13 × Conv 3×3 pad 1 → BatchNorm →
ReLU, 5 max pools, then Linear 512→512, ReLU, Linear 512→10), trained with PyTorch on CPU
(Adam, a few epochs, two threads, fixed seeds) and exported to ONNX with its BatchNormalization
nodes. Needs the ``samples`` extra (torch, scikit-learn).

    python benchmarks/trained_vgg.py build/bench/trained --calib 256 --test 64
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from vgg import VGG16

SEED = 0
N_TRAIN = 1400
EPOCHS = 10   # at most: training stops after the first epoch whose held-out accuracy reaches TARGET
BATCH = 16
TARGET = 0.95
THREADS = 2


def digits_32() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (N, 3, 32, 32) float32 standardized on the first N_TRAIN images, and their labels, shuffled."""
    import torch
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.RandomState(SEED).permutation(len(digits.target))
    x = torch.from_numpy(digits.images[order].astype(np.float32))[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = x.numpy()
    mean, std = x[:N_TRAIN].mean(), x[:N_TRAIN].std()
    return ((x - mean) / std).astype(np.float32), digits.target[order].astype(np.int64)


def network():
    """VGG-16-BN for 3×32×32 inputs and 10 classes, as ``vgg.vgg16("cifar")`` but in torch."""
    from torch import nn
    layers, channels = [], 3
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
    layers += [nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(model, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Adam, mini-batches of BATCH, until the held-out accuracy reaches TARGET or EPOCHS epochs are done; the
    accuracy after each epoch on stdout."""
    import torch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(xt), generator=generator).split(BATCH):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        held_out = accuracy(model, x_test, y_test)
        print(f"epoch {epoch + 1}: held-out accuracy {held_out:.3f}", flush=True)
        if held_out >= TARGET:
            break
    model.eval()


def write(out_dir: Path, n_calib: int, n_test: int) -> dict:
    """Train, export model.onnx, write calib.npy (training images), test.npy and labels.npy (held out)."""
    import onnx
    import torch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)  # reruns with the same torch and thread count give the same weights
    x, y = digits_32()
    model = network()
    train(model, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])
    test, labels = x[N_TRAIN:N_TRAIN + n_test], y[N_TRAIN:N_TRAIN + n_test]
    paths = {"model": out_dir / "model.onnx", "calib": out_dir / "calib.npy", "test": out_dir / "test.npy",
             "labels": out_dir / "labels.npy"}
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(paths["model"]), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    onnx.checker.check_model(onnx.load(str(paths["model"])))
    np.save(paths["calib"], x[:n_calib])
    np.save(paths["test"], test)
    np.save(paths["labels"], labels)
    return {"test_accuracy": accuracy(model, x[N_TRAIN:], y[N_TRAIN:]), **{k: str(v) for k, v in paths.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--calib", type=int, default=256, help="calibration samples (from the training images)")
    parser.add_argument("--test", type=int, default=64, help="test samples (held out)")
    args = parser.parse_args()
    print(write(args.out_dir, args.calib, args.test))


if __name__ == "__main__":
    main()
