"""Layer norm, group norm, layer scale, adaptive average pooling, stochastic depth and the hard and smooth
activations against numpy oracles written from their definitions, in PyTorch and in ONNX at every opset
(with random weights, which the conformance suite's ones and zeros would not exercise), and the opsets
at which each ONNX lowering switches to the native op."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnx_support import program_of, run_ort

from cnnc.compiler.backends import onnx as onnx_backend
from cnnc.compiler.backends.pytorch import build_module
from cnnc.compiler.backends.weights import initial_weights
from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Program

OPSETS = range(onnx_backend.MIN_OPSET, onnx_backend.max_opset() + 1)


def program(body: str, input_shape: str = "4, 6, 5") -> Program:
    text = f"model m {{\n input image({input_shape})\n {body}\n}}\n"
    checked = program_of(text)
    assert checked is not None, text
    return checked


def random_weights(checked: Program, seed: int = 0) -> dict[str, np.ndarray]:
    """The initial weights moved away from ones and zeros, so that a misplaced weight or bias shows."""
    rng = np.random.default_rng(seed)
    return {name: (array + rng.uniform(0.5, 1.5, array.shape) * rng.choice([-1, 1], array.shape)).astype(np.float32)
            for name, array in initial_weights(checked.graph).items()}


def images(checked: Program, batch: int = 3, spread: float = 1.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (batch, *checked.graph.input.shape)
    return (spread * rng.standard_normal(shape) + rng.normal(size=shape[:2] + (1,) * (len(shape) - 2))).astype(
        np.float32)


def every_backend(checked: Program, weights: dict[str, np.ndarray], x: np.ndarray):
    """(label, output) of PyTorch in eval mode and of onnxruntime at every opset."""
    module = build_module(checked.graph, weights=weights).eval()
    with torch.no_grad():
        yield "torch", module(torch.from_numpy(x)).numpy()
    for opset in OPSETS:
        yield f"opset {opset}", run_ort(onnx_backend.to_onnx(checked, weights, opset=opset), x)[0]


def onnx_ops(checked: Program, opset: int) -> set[str]:
    return {node.op_type for node in onnx_backend.to_onnx(checked, opset=opset).graph.node}


def assert_everywhere(checked: Program, weights: dict[str, np.ndarray], x: np.ndarray, expected: np.ndarray,
                      atol: float = 2e-5) -> None:
    for label, output in every_backend(checked, weights, x):
        np.testing.assert_allclose(output, expected, rtol=2e-5, atol=atol, err_msg=label)


# --- layer norm ---------------------------------------------------------------------------------------

def np_normalise(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # biased, as PyTorch
    return (x - mean) / np.sqrt(variance + eps)


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_normalises_each_positions_channels_of_a_feature_map(affine: bool) -> None:
    checked = program(f"n = layernorm(eps=0.01, affine={str(affine).lower()})")
    weights = random_weights(checked)
    x = images(checked)
    expected = np_normalise(x, (1,), 0.01)
    if affine:
        expected = expected * weights["n.weight"][:, None, None] + weights["n.bias"][:, None, None]
    assert_everywhere(checked, weights, x, expected)
    # not PyTorch's LayerNorm([C, H, W]), which would pool every position
    assert not np.allclose(np_normalise(x, (1, 2, 3), 0.01), np_normalise(x, (1,), 0.01), atol=1e-2)


def test_layernorm_normalises_the_features_of_a_flat_input() -> None:
    checked = program("n = flatten -> layernorm(eps=0.001)")
    weights = random_weights(checked)
    x = images(checked)
    expected = np_normalise(x.reshape(3, -1), (1,), 0.001) * weights["n.weight"] + weights["n.bias"]
    assert_everywhere(checked, weights, x, expected)


def test_layernorm_is_native_from_opset_17_and_a_formula_below() -> None:
    for body in ("layernorm", "flatten -> layernorm"):
        checked = program(body)
        for opset in OPSETS:
            ops = onnx_ops(checked, opset)
            assert ("LayerNormalization" in ops) == (opset >= 17), (body, opset)
            assert ("ReduceMean" in ops) == (opset < 17), (body, opset)


# --- group norm ---------------------------------------------------------------------------------------

def np_groupnorm(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    grouped = x.reshape(x.shape[0], groups, -1)
    return np_normalise(grouped, (2,), eps).reshape(x.shape)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groupnorm_normalises_each_group_over_its_channels_and_positions(groups: int) -> None:
    checked = program(f"n = groupnorm({groups}, eps=0.001)")
    weights = random_weights(checked)
    x = images(checked)
    expected = np_groupnorm(x, groups, 0.001) * weights["n.weight"][:, None, None] + weights["n.bias"][:, None, None]
    assert_everywhere(checked, weights, x, expected)


def test_groupnorm_without_affine_and_on_a_flat_input() -> None:
    checked = program("a = groupnorm(2, affine=false)\n n = flatten -> groupnorm(3)", "4, 3, 2")
    weights = random_weights(checked)
    x = images(checked)
    flat = np_groupnorm(np_groupnorm(x, 2, 1e-5).reshape(3, -1), 3, 1e-5)
    assert_everywhere(checked, weights, x, flat * weights["n.weight"] + weights["n.bias"])


def test_groupnorm_is_native_from_opset_21_where_its_scale_is_per_channel() -> None:
    feature_map, flat = program("groupnorm(2)"), program("flatten -> groupnorm(2)")
    for opset in OPSETS:
        assert ("GroupNormalization" in onnx_ops(feature_map, opset)) == (opset >= 21), opset
        # a flat value is normalised as an (N, C, 1, 1) image (OpenCV, see docs/deployment.md)
        assert {"Unsqueeze", "Flatten"} <= onnx_ops(flat, opset)
        assert ("GroupNormalization" in onnx_ops(flat, opset)) == (opset >= 21), opset


def test_groupnorm_groups_must_divide_the_channels() -> None:
    result = check_file("m.cnn", text="model m {\n input image(16, 4, 4)\n g = groupnorm(3)\n}\n")
    (diagnostic,) = result.diagnostics
    assert diagnostic.code == "E005"
    assert diagnostic.message == "groupnorm 'g': groups must divide the 16 channels"
    assert "Received: groups=3, channels=16" in diagnostic.notes


def test_norm_and_scale_parameters_are_counted_and_start_as_declared() -> None:
    checked = program("a = layernorm\n b = groupnorm(2, affine=false)\n c = scale(1e-6)\n d = flatten -> scale")
    nodes = {node.name: node for node in checked.graph.nodes}
    assert [nodes[name].params for name in "abcd"] == [8, 0, 4, 120]
    assert all(nodes[name].macs == 0 for name in "abcd")
    weights = initial_weights(checked.graph)
    assert set(weights) == {"a.weight", "a.bias", "c.weight", "d.weight"}
    np.testing.assert_array_equal(weights["c.weight"], np.full(4, 1e-6, np.float32))
    np.testing.assert_array_equal(weights["d.weight"], np.ones(120, np.float32))


# --- layer scale --------------------------------------------------------------------------------------

def test_scale_multiplies_each_channel_or_feature_by_its_weight() -> None:
    checked = program("a = scale(0.5)\n s = flatten -> scale")
    weights = random_weights(checked)
    x = images(checked)
    expected = (x * weights["a.weight"][:, None, None]).reshape(3, -1) * weights["s.weight"]
    assert_everywhere(checked, weights, x, expected)


# --- adaptive average pooling -------------------------------------------------------------------------

def np_adaptive_avgpool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's definition: bin i of `out` over `size` covers floor(i * size / out) up to, not including,
    ceil((i + 1) * size / out)."""
    _, _, height, width = x.shape

    def bins(size: int, out: int) -> list[tuple[int, int]]:
        return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]

    return np.stack([np.stack([x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for c0, c1 in bins(width, out_w)], axis=-1)
                     for r0, r1 in bins(height, out_h)], axis=-2)


@pytest.mark.parametrize("size, lowered_as", [
    ("(4, 5)", "MatMul"),       # 10 -> 4: bins 0-3, 2-5, 5-8, 7-10; 7 -> 5: 0-2, 1-3, 2-5, 4-6, 5-7
    ("(3, 5)", "MatMul"),       # 10 -> 3 uniform (4, stride 3), 7 -> 5 not
    ("(5, 7)", "AveragePool"),  # divides, and the width unchanged
    ("(3, 3)", "AveragePool"),  # 10 -> 3: 4 wide, stride 3; 7 -> 3: 3 wide, stride 2
    ("(10, 2)", "AveragePool"),  # height unchanged; 7 -> 2: 4 wide, stride 3
    ("(10, 4)", "MatMul"),      # only the width resized
    ("1", "AveragePool"),       # global
    ("(13, 9)", "MatMul"),      # larger than the input: bins repeat rows and columns
])
def test_adaptive_avgpool_follows_pytorchs_bins(size: str, lowered_as: str) -> None:
    checked = program(f"adaptive_avgpool({size})", "2, 10, 7")
    out_h, out_w = checked.graph.output_node.shape[1:]
    x = images(checked)
    expected = np_adaptive_avgpool(x.astype(np.float64), out_h, out_w)
    np.testing.assert_allclose(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (out_h, out_w)).numpy(),
                               expected, rtol=1e-5, atol=1e-6)
    assert_everywhere(checked, {}, x, expected, atol=1e-6)
    for opset in (13, onnx_backend.max_opset()):
        ops = onnx_ops(checked, opset)
        assert lowered_as in ops and ({"AveragePool", "MatMul"} - {lowered_as}).isdisjoint(ops), (opset, ops)


@pytest.mark.parametrize("size, field", [
    ("(5, 7)", (2, 1)),   # 10 -> 5: windows of 2, stride 2; the width unchanged
    ("(3, 3)", (4, 3)),   # windows of 4 (stride 3) and of 3 (stride 2)
    ("(4, 5)", (3, 3)),   # the longest bins: 10 -> 4 has 3-row bins, 7 -> 5 3-column ones
])
def test_adaptive_avgpool_receptive_field_is_its_longest_bin(size: str, field: tuple[int, int]) -> None:
    checked = program(f"p = adaptive_avgpool({size})", "2, 10, 7")
    assert checked.graph.node("p").receptive_field == field


def test_adaptive_avgpool_jump_is_the_stride_or_the_average_bin_distance() -> None:
    # 10 -> 5 (stride 2) then a 3-row conv: 2 + 2 * 2 = 6 rows; 7 -> 5 (jump 7/5) then 3 columns:
    # 3 + 2 * 7/5 = 5.8, so 6 columns
    checked = program("c = adaptive_avgpool((5, 5)) -> conv(1, 3)", "2, 10, 7")
    assert checked.graph.node("c").receptive_field == (6, 6)


def test_adaptive_avgpool_needs_a_feature_map() -> None:
    result = check_file("m.cnn", text="model m {\n input image(3, 4, 4)\n flatten -> adaptive_avgpool(2)\n}\n")
    assert [d.code for d in result.diagnostics] == ["E013"]


# --- the hard and smooth activations ------------------------------------------------------------------

ORACLES = {
    "relu6": lambda x: np.clip(x, 0, 6),
    "hardsigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,
    "hardswish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)),
}


@pytest.mark.parametrize("activation", sorted(ORACLES))
def test_activations_over_their_whole_range_as_layers_and_fused(activation: str) -> None:
    """Inputs from -12 to 12 reach every piece (the clips at -3, 0, 3 and 6; mish's tails)."""
    checked = program(f"{activation}\n c = conv(2, 1, activation={activation})", "1, 10, 10")
    weights = random_weights(checked)
    x = np.linspace(-12, 12, 300, dtype=np.float32).reshape(3, 1, 10, 10)
    f = ORACLES[activation]
    h = f(x.astype(np.float64))
    expected = f(h * weights["c.weight"].reshape(1, 2, 1, 1) + weights["c.bias"].reshape(1, 2, 1, 1))
    assert_everywhere(checked, weights, x, expected)


@pytest.mark.parametrize("activation, op, native_from", [("hardswish", "HardSwish", 14), ("mish", "Mish", 18)])
def test_activations_are_native_from_their_opset(activation: str, op: str, native_from: int) -> None:
    checked = program(activation)
    for opset in OPSETS:
        assert (op in onnx_ops(checked, opset)) == (opset >= native_from), opset


# --- stochastic depth ---------------------------------------------------------------------------------

def test_drop_path_zeroes_whole_samples_while_training_and_scales_the_rest() -> None:
    checked = program("d = drop_path(0.25)", "2, 3, 3")
    module = build_module(checked.graph).train()
    x = torch.from_numpy(images(checked, batch=400))
    torch.manual_seed(7)
    y = module(x)
    dropped = (y == 0).flatten(1).all(dim=1)
    kept = ~dropped
    assert 0.18 < dropped.float().mean().item() < 0.32  # 100 expected of 400
    assert torch.equal(y[kept], x[kept] * torch.tensor(1 / 0.75))  # exactly 1 / (1 - rate)
    torch.manual_seed(7)
    assert torch.equal(module(x), y)  # the draws come from torch's global generator
    assert not torch.equal(module(x), y)  # ... which moves on


def test_drop_path_is_the_identity_at_inference_and_emits_no_onnx_node() -> None:
    checked = program("d = conv(2, 1) -> drop_path(0.5)\n relu")
    module = build_module(checked.graph).eval()
    x = torch.from_numpy(images(checked))
    assert torch.equal(module.forward_all(x)["d"], module.forward_all(x)["conv1"])
    for opset in (13, onnx_backend.max_opset()):
        assert onnx_ops(checked, opset) == {"Conv", "Relu"}
    assert_everywhere(checked, initial_weights(checked.graph), x.numpy(),
                      np.maximum(module(x).detach().numpy(), 0))


# --- all of them together -----------------------------------------------------------------------------

def test_the_spec_using_every_one_agrees_with_torch_layer_by_layer_at_every_opset() -> None:
    checked = check_file(str(Path(__file__).parent / "specs" / "new_ops_a.cnn")).program
    assert checked is not None
    weights = random_weights(checked)
    x = images(checked, spread=2.0)
    with torch.no_grad():
        theirs = build_module(checked.graph, weights=weights).eval().forward_all(torch.from_numpy(x))
    for opset in OPSETS:
        probe, layers = onnx_backend.layer_probe(checked, weights, opset=opset)
        ours = dict(zip([o.name for o in probe.graph.output], run_ort(probe, x)))
        for layer, tensor in layers.items():
            np.testing.assert_allclose(ours[tensor], theirs[layer].numpy(), rtol=1e-4, atol=1e-4,
                                       err_msg=f"{layer} at opset {opset}")
