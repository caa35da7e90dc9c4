"""Every sample model in the sparse coding (docs/math.md §9), end to end through the command line: it converts with
``--coding sparse`` and verifies exactly on its test data, its spikes per hidden neuron are the share of positive
hidden activations, and it sends fewer synaptic events than the dense coding.

The share is checked twice: equal, exactly, to the share of positive activations of the float64 forward pass
(the network the simulator runs), and within ORT_TOLERANCE of onnxruntime's float32 hidden outputs. Each spiking
layer is mapped to its ONNX tensor by its ``source`` (the ReLU output); a population with no ONNX tensor of its
own (one term of a Clip or a LeakyRelu: relu(z − 6), relu(−z)) gets its activation from the pre-activation z of
the ONNX node its ``origin`` names (the node's first input), with the term its ``origin`` states. On these sample
models every population is one of the two, so onnxruntime covers all of them (``test_every_population_is_mapped``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from relu2snn_cli import h5io, ir, snn
from relu2snn_cli.cli import cli
from relu2snn_cli.onnx_import import import_model
from relu2snn_cli.simulator import Simulator

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
NAMES = ["mlp", "cnn", "resnet", "dwsep", "cnn1d", "concat", "concat_dense", "nhwc", "mobilenet", "leaky"]
ORT_TOLERANCE = 1e-3   # absolute, on the share: float32 activations within a rounding of 0 may fall either way
ROUNDING_TIES = 2      # (sample, neuron) pairs whose float64 activation lies within rounding of 0 (none on these samples)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module", params=NAMES)
def sample(request, tmp_path_factory):
    """A sample converted in both codings through the CLI, and the sparse one verified through the CLI."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    model, calib = SAMPLES / name / "model.onnx", SAMPLES / name / "calib.npy"
    for coding in ("sparse", "dense"):
        result = run("convert", model, "--calib", calib, "-o", tmp / f"{coding}.snn.h5", "--coding", coding,
                     "--json", "--quiet")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["coding"] == coding
    result = run("verify", tmp / "sparse.snn.h5", "--onnx", model, "--data", SAMPLES / name / "test.npy",
                 "--labels", SAMPLES / name / "labels.npy", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return name, tmp, json.loads(result.stdout)


def test_sparse_sample_verifies_exactly(sample):
    _, _, report = sample
    assert report["coding"] == "sparse" and report["passed"] is True and report["failures"] == []
    assert report["agreement"] == 1.0
    assert report["accuracy_snn"] == report["accuracy_ann"]
    assert report["max_abs_logit_error_ref"] <= 1e-9 * report["max_abs_logit"]
    assert report["early_spikes"] == 0 and report["forced_spike_share"] == 0.0
    assert report["spikes_per_neuron"] < 1.0


def population_activations(name: str, layers: list, x: np.ndarray) -> dict:
    """Each spiking layer's activation as onnxruntime computes it (float64 of its float32 outputs): its ``source``
    tensor, or the term of its ``origin`` applied to the first input of the ONNX node that ``origin`` names."""
    model = onnx.load(str(SAMPLES / name / "model.onnx"))
    nodes = {n.name: n for n in model.graph.node}
    wanted = {}
    for layer in layers:
        if layer.source:
            wanted[layer.name] = (layer.source, "z")
        else:
            match = re.fullmatch(r"\w+ '([^']+)' of .*: relu\((.+)\)", layer.origin)
            assert match, layer.origin
            wanted[layer.name] = (nodes[match.group(1)].input[0], match.group(2))
    tensors = sorted({t for t, _ in wanted.values()})
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip(tensors, sess.run(tensors, {sess.get_inputs()[0].name: x.astype(np.float32)})))
    out = {}
    for layer_name, (tensor, term) in wanted.items():
        z = outs[tensor].astype(np.float64)
        expr = term.replace("−", "-").replace("·", "*")
        assert re.fullmatch(r"[-+*z0-9.e ]+", expr), term
        out[layer_name] = np.maximum(eval(expr, {"z": z}), 0.0)   # noqa: S307 - our own origin text, checked above
    return out


def test_spikes_per_hidden_neuron_is_the_share_of_positive_activations(sample):
    name, tmp, report = sample
    net = h5io.read(tmp / "sparse.snn.h5")
    layers = [n for n in net.nodes if isinstance(n, snn.SpikingLayer)]
    x = np.load(SAMPLES / name / "test.npy")
    hidden = sum(int(np.prod(n.shape)) for n in layers)
    ref = ir.forward(import_model(SAMPLES / name / "model.onnx").graph, x, keep=True)
    positive = sum(int(np.count_nonzero(ref[n.name] > 0)) for n in layers)
    # the same float64 network, computed two ways (spike times against the forward pass's BLAS products): an
    # activation within rounding (~1e-14) of 0 could fall either way, so up to ROUNDING_TIES pairs may differ
    fired = round(report["spikes_per_hidden_neuron"] * len(x) * hidden)
    assert abs(fired - positive) <= ROUNDING_TIES
    onnx_acts = population_activations(name, layers, x)
    onnx_positive = sum(int(np.count_nonzero(onnx_acts[n.name] > 0)) for n in layers)
    assert abs(report["spikes_per_hidden_neuron"] - onnx_positive / (len(x) * hidden)) <= ORT_TOLERANCE
    for layer in layers:   # and layer by layer, each population's own share
        share = np.count_nonzero(ref[layer.name] > 0) / ref[layer.name].size
        assert abs(share - np.count_nonzero(onnx_acts[layer.name] > 0) / onnx_acts[layer.name].size) <= ORT_TOLERANCE


def test_sparse_coding_sends_fewer_synaptic_events(sample):
    name, tmp, _ = sample
    x = np.load(SAMPLES / name / "test.npy")
    counts = {coding: Simulator(h5io.read(tmp / f"{coding}.snn.h5")).run(x, count_events=True).counts
              for coding in ("sparse", "dense")}
    assert 0 < counts["sparse"].synaptic_events < counts["dense"].synaptic_events
    assert counts["sparse"].spikes < counts["dense"].spikes
    # the sparse coding's spikes are the dense coding's threshold spikes and the inputs above the range's low end
    assert abs(counts["sparse"].threshold_spikes - counts["dense"].threshold_spikes) <= ROUNDING_TIES


def test_every_population_is_mapped(sample):
    """On these samples each population has a source or a ReLU term of a named node: onnxruntime checks them all."""
    name, tmp, _ = sample
    for layer in (n for n in h5io.read(tmp / "sparse.snn.h5").nodes if isinstance(n, snn.SpikingLayer)):
        assert layer.source or re.fullmatch(r"\w+ '[^']+' of .*: relu\(.+\)", layer.origin), layer.origin
