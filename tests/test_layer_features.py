"""The layer arguments of fast recipes (issue 10): `trainable=false`, `init=dirac`, `init=whiten` and
`batchnorm(scale=false)`: their initial weights against independent computations, what training and
resume do with them, their counts, and the ONNX graph they leave as it was.

The checker's refusals are golden cases in tests/errors/weights.cnn; tests/specs/layer_features.cnn
has golden summaries and IR; test_conformance.py freezes every op with parameters.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import numpy_helper

import cnnc.training.run as run_module
from cnnc.cli import main
from cnnc.compiler import summary
from cnnc.compiler.backends import onnx as onnx_backend
from cnnc.compiler.backends.pytorch import build_module
from cnnc.compiler.backends.weights import initial_weights
from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Program
from cnnc.datasets import load_dataset
from cnnc.dsl.diagnostics import render_all
from cnnc.training.checkpoint import load_checkpoint
from cnnc.training.data import Normalization
from cnnc.training.trainer import SIGNAL_AT_STEP_ENV
from cnnc.training.whiten import whiten

ROOT = Path(__file__).resolve().parents[1]
LAYER_FEATURES = ROOT / "tests" / "specs" / "layer_features.cnn"


def program(text: str) -> Program:
    result = check_file("spec.cnn", text=text)
    assert not result.has_errors, render_all(result.diagnostics, result.sources)
    assert result.program is not None
    return result.program


def model(layers: str, channels: int = 4, size: int = 9) -> Program:
    return program(f"model m {{\n input image({channels}, {size}, {size})\n {layers}\n}}\n")


# --- export: the arguments change weights only ---------------------------------------------------------

# What the spec says without its new arguments: the same layers with default initializers, all trained.
WITHOUT_THEM = [r", init=whiten\([^)]*\)", r", init=whiten", r", init=dirac\(rest=he_normal\)", r", init=dirac",
                r", trainable=false", r"\(trainable=false\)", r"scale=false, ", r"\(scale=false\)"]


def test_the_onnx_graph_is_the_same_with_and_without_the_arguments_but_for_the_initialised_weights() -> None:
    text = LAYER_FEATURES.read_text()
    plain = text
    for pattern in WITHOUT_THEM:
        plain = re.sub(pattern, "", plain)
    assert not re.search(r"init=|trainable=|scale=", plain.split("train {")[0])
    featured, ordinary = (onnx_backend.to_onnx(program(t), seed=5).graph for t in (text, plain))
    assert [n.SerializeToString() for n in featured.node] == [n.SerializeToString() for n in ordinary.node]
    assert featured.input == ordinary.input and featured.output == ordinary.output
    assert [(i.name, tuple(i.dims), i.data_type) for i in featured.initializer] == \
        [(i.name, tuple(i.dims), i.data_type) for i in ordinary.initializer]
    values = {i.name: numpy_helper.to_array(i) for i in ordinary.initializer}
    differ = sorted(i.name for i in featured.initializer
                    if not np.array_equal(numpy_helper.to_array(i), values[i.name]))
    # whiten starts from its rest (the model's init) until training computes it; dirac changes its layers
    assert differ == ["depthwise_conv1.weight", "group1.conv1.weight", "group1.conv2.weight", "group2.conv1.weight",
                      "group2.conv2.weight"]


# --- dirac ---------------------------------------------------------------------------------------------

def _conv_output(built: Program, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return build_module(built.graph, seed=1).eval()(x)


def test_dirac_passes_the_input_through_and_the_other_filters_keep_the_rest_initializer() -> None:
    x = torch.randn(2, 4, 9, 9)
    output = _conv_output(model("conv(6, 3, padding=same, init=dirac)"), x)
    assert torch.equal(output[:, :4], x)  # zero bias, identity filters: exactly the input
    dirac = initial_weights(model("conv(6, 3, padding=same, init=dirac)").graph, seed=1)["conv1.weight"]
    plain = initial_weights(model("conv(6, 3, padding=same)").graph, seed=1)["conv1.weight"]
    assert np.array_equal(dirac[4:], plain[4:]) and not np.array_equal(dirac[:4], plain[:4])
    expected = torch.zeros(4, 4, 3, 3)
    torch.nn.init.dirac_(expected)
    assert torch.equal(torch.from_numpy(dirac[:4]), expected)


def test_dirac_is_per_group_for_grouped_and_depthwise_convolutions() -> None:
    x = torch.randn(2, 4, 9, 9)
    grouped = _conv_output(model("conv(6, 5, groups=2, padding=same, init=dirac(rest=zeros))"), x)
    # group g's filters 3g and 3g + 1 pass its input channels 2g and 2g + 1 through; filter 3g + 2 is rest (zeros)
    assert torch.equal(grouped[:, [0, 1, 3, 4]], x) and not grouped[:, [2, 5]].any()
    depthwise = _conv_output(model("depthwise_conv(3, multiplier=2, padding=same, init=dirac)"), x)
    assert torch.equal(depthwise[:, 0::2], x) and not torch.equal(depthwise[:, 1::2], x)
    weights = initial_weights(model("conv(6, 5, groups=2, init=dirac(rest=zeros))").graph)["conv1.weight"]
    expected = torch.zeros(6, 2, 5, 5)
    torch.nn.init.dirac_(expected, groups=2)
    assert torch.equal(torch.from_numpy(weights), expected)  # torch's dirac_ zeroes the rest too


# --- whiten --------------------------------------------------------------------------------------------

def smooth_images(count: int, channels: int = 3, size: int = 12, seed: int = 0) -> np.ndarray:
    """uint8 images whose neighbouring pixels and channels are correlated, as photographs' are."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((count, channels, size + 2, size + 2))
    smooth = (noise[:, :, :-2, :-2] + noise[:, :, 1:-1, 1:-1] + noise[:, :, 2:, 2:]) / 3 + noise.mean(1, keepdims=True)[
        :, :, 1:-1, 1:-1]
    return np.clip(128 + 50 * smooth, 0, 255).astype(np.uint8)


def numpy_patches(images: np.ndarray, kernel: int, mean: float, std: float) -> np.ndarray:
    """Every kernel x kernel patch (stride 1, no padding) of the scaled, normalised images, flattened as
    the weight's (C, kh, kw), in float64."""
    x = (images.astype(np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(std)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))  # N, C, H', W', kh, kw
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kernel * kernel).astype(np.float64)


def expected_whitening(patches: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(filters, eigenvalues), largest first, from eigh of the patch covariance, each filter's sign free."""
    values, vectors = np.linalg.eigh(np.cov(patches, rowvar=False, bias=True))
    values, vectors = values[::-1], vectors[:, ::-1].T
    return vectors / np.sqrt(values + eps)[:, None], values


def assert_equal_up_to_sign(actual: np.ndarray, expected: np.ndarray) -> None:
    signs = np.sign((actual * expected).sum(axis=1))
    np.testing.assert_allclose(actual, expected * signs[:, None], rtol=2e-4, atol=1e-6)


def test_whitening_weights_are_the_scaled_eigenvectors_of_the_patch_covariance_and_whiten() -> None:
    images = smooth_images(80)
    normalization = Normalization((0.3,), (0.25,))  # patches far from a zero mean: the covariance is centred
    built = model("pairs = conv(24, 2, init=whiten(eps=1e-9, images=50), bias=false)\n"
                  " single = image -> conv(12, 2, init=whiten(images=50), padding=same, stride=2, bias=false)\n"
                  " pairs -> maxpool(2, padding=same) -> concat(single)", channels=3, size=12)
    module = build_module(built.graph, seed=0)
    notes = whiten(module, images, normalization, torch.device("cpu"))
    assert notes == [f"init=whiten: {name} from the 2x2 patches of 50 training images" for name in ("pairs", "single")]
    pairs, single = (module.state_dict()[f"{name}.weight"].numpy().reshape(-1, 12) for name in ("pairs", "single"))
    patches = numpy_patches(images[:50], 2, 0.3, 0.25)
    tiny_eps, values = expected_whitening(patches, 1e-9)
    assert_equal_up_to_sign(pairs[:12], tiny_eps)
    assert np.array_equal(pairs[12:], -pairs[:12])  # airbench's negated copies
    # the eigenvector half whitens: the covariance of its outputs on those patches is the identity
    np.testing.assert_allclose(np.cov(patches @ pairs[:12].T, rowvar=False, bias=True), np.eye(12), atol=2e-4)
    default_eps, _ = expected_whitening(patches, 5e-4)
    assert_equal_up_to_sign(single, default_eps)
    np.testing.assert_allclose(np.cov(patches @ single.T, rowvar=False, bias=True), np.diag(values / (values + 5e-4)),
                               rtol=1e-3, atol=1e-6)
    largest = np.abs(single).argmax(axis=1)
    assert (single[np.arange(12), largest] > 0).all()  # the documented sign: each filter's largest entry positive
    all_images, _ = expected_whitening(numpy_patches(images, 2, 0.3, 0.25), 5e-4)
    assert not np.allclose(np.abs(single), np.abs(all_images), rtol=1e-3)  # only the first 50 images count


# --- scale=false and the summary -----------------------------------------------------------------------

def test_a_frozen_batch_norm_scale_is_counted_as_non_trainable() -> None:
    graph = model("conv(8, 3, bias=false) -> batchnorm(scale=false)").graph
    node = graph.node("batchnorm1")
    assert (node.params, node.non_trainable) == (8, 24)  # the shift; the scale and the running statistics
    text = summary.to_text(graph)
    assert "non-trainable values                          24  (batch-norm running mean and variance, frozen " \
           "parameters)" in text
    module = build_module(graph)
    assert not module.batchnorm1.weight.requires_grad and module.batchnorm1.bias.requires_grad
    assert torch.equal(module.batchnorm1.weight, torch.ones(8))
    assert summary.to_json(graph)["non_trainable_params"] == 24


# --- training and resume -----------------------------------------------------------------------------

TRAINED = """
model m {
    input glyph(1, 28, 28)
    side = glyph -> conv(4, 2, init=whiten(images=150), bias=false) -> global_avgpool   # whitened, trained
    glyph -> conv(8, 2, init=whiten(images=150), trainable=false) -> gelu               # whitened, frozen
    conv(8, 3, padding=same, init=dirac, bias=false) -> maxpool(2) -> batchnorm(scale=false) -> gelu
    conv(8, 3, padding=same, trainable=false) -> batchnorm -> gelu
    global_maxpool -> concat(side)
    dense(2, bias=false)
}
train {
    dataset xo
    optimizer sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.01)
    batch 32
    epochs 2
    normalize(mean=0.2, std=0.3)
    seed 3
}
"""
FLAGS = ["--limit-train", "192", "--limit-test", "64", "--quiet"]  # 6 steps per epoch
FROZEN = ("conv2.weight", "conv2.bias", "conv4.weight", "conv4.bias", "batchnorm1.weight")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the spec, a run of it from start to end)."""
    directory = tmp_path_factory.mktemp("trained")
    spec = directory / "m.cnn"
    spec.write_text(TRAINED)
    assert main(["train", str(spec), *FLAGS, "--out", str(directory / "run")]) == 0
    return spec, directory / "run"


def test_frozen_parameters_stay_bit_identical_and_are_not_given_to_the_optimizer(trained) -> None:
    spec, run = trained
    checkpoint = load_checkpoint(run)
    final = {name: tensor.numpy() for name, tensor in checkpoint.model_state.items()}
    start = initial_weights(checkpoint.program().graph, seed=3)
    for name in FROZEN[1:]:  # conv2's weight starts from the data (see the next test)
        assert np.array_equal(final[name], start[name]), name
    assert np.array_equal(final["batchnorm1.weight"], np.ones(8, np.float32))
    assert not final["conv2.bias"].any()  # a whitened conv's bias starts at zero
    assert not np.array_equal(final["batchnorm1.bias"], start["batchnorm1.bias"])  # the others trained
    assert not np.array_equal(final["conv3.weight"], start["conv3.weight"])
    trainable = [name for name in start if name not in FROZEN and "running" not in name]
    optimizer = checkpoint.training["optimizer"]
    assert sum(len(group["params"]) for group in optimizer["param_groups"]) == len(trainable)
    assert len(optimizer["state"]) == len(trainable)  # a momentum buffer for each trained tensor only


def test_the_whitening_is_computed_from_the_first_training_images_as_the_model_sees_them(trained) -> None:
    _, run = trained
    weights = load_checkpoint(run).model_state
    images = load_dataset("xo", "train").images[:150]
    expected, _ = expected_whitening(numpy_patches(images, 2, 0.2, 0.3), 5e-4)
    frozen = weights["conv2.weight"].numpy().reshape(8, 4)
    assert_equal_up_to_sign(frozen[:4], expected)
    assert np.array_equal(frozen[4:], -frozen[:4])
    trained_side = weights["conv1.weight"].numpy().reshape(4, 4)
    assert not np.allclose(np.abs(trained_side), np.abs(expected), rtol=1e-3)  # trainable: it moved


def test_resume_continues_exactly_without_computing_the_whitening_again(trained, tmp_path, monkeypatch) -> None:
    spec, reference = trained
    run = tmp_path / "run"
    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, "INT:8")  # in epoch 2
    assert main(["train", str(spec), *FLAGS, "--out", str(run)]) == 130
    monkeypatch.delenv(SIGNAL_AT_STEP_ENV)

    def computed_again(*args, **kwargs):
        raise AssertionError("a resumed run computed the whitening again")

    monkeypatch.setattr(run_module, "whiten", computed_again)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    first, second = load_checkpoint(reference).model_state, load_checkpoint(run).model_state
    assert [name for name in first if not torch.equal(first[name], second[name])] == []
