"""upsample, conv_transpose, pad and channel_shuffle against numpy oracles written from their
definitions (docs/language.md), in PyTorch and in onnxruntime at every opset; their shape rules,
parameters, MACs, receptive fields and errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cnnc.compiler.backends import onnx as onnx_backend
from cnnc.compiler.backends import pytorch as torch_backend
from cnnc.compiler.backends.weights import parameter_shapes
from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Program
from cnnc.dsl.diagnostics import render_all

OPSETS = range(onnx_backend.MIN_OPSET, onnx_backend.max_opset() + 1)


def program(layers: str, shape: tuple[int, int, int]) -> Program:
    text = f"model m {{\n input image({shape[0]}, {shape[1]}, {shape[2]})\n {layers}\n}}\n"
    result = check_file("m.cnn", text=text)
    assert not result.has_errors, render_all(result.diagnostics, result.sources)
    assert result.program is not None
    return result.program


def random_weights(prog: Program, seed: int = 0) -> dict[str, np.ndarray]:
    """Every parameter, biases included, drawn at random (initial biases are zero, which would hide them)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in parameter_shapes(prog.graph).items()}


def outputs(prog: Program, x: np.ndarray, weights: dict[str, np.ndarray] | None = None) -> list[tuple[str, np.ndarray]]:
    """("torch", y) and ("opset N", y) for every opset."""
    weights = weights if weights is not None else random_weights(prog)
    module = torch_backend.build_module(prog.graph, weights=weights).eval()
    with torch.no_grad():
        results = [("torch", module(torch.from_numpy(x)).numpy())]
    for opset in OPSETS:
        model = onnx_backend.to_onnx(prog, weights, opset=opset)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results.append((f"opset {opset}", session.run(None, {"image": x})[0]))
    return results


def batch(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)


# --- upsample ---------------------------------------------------------------------------------------

def np_nearest(x: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """Output (i, j) takes input (floor(i / sh), floor(j / sw))."""
    rows = np.arange(x.shape[2] * scale[0]) // scale[0]
    cols = np.arange(x.shape[3] * scale[1]) // scale[1]
    return x[:, :, rows][:, :, :, cols]


def np_linear_axis(x: np.ndarray, scale: int, axis: int) -> np.ndarray:
    """align_corners=False: output i samples input (i + 0.5) / scale - 0.5, clamped at 0, between its
    two neighbours (the upper one clamped at the last)."""
    size = x.shape[axis]
    source = np.maximum((np.arange(size * scale) + 0.5) / scale - 0.5, 0.0)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, size - 1)
    weight = source - low
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


@pytest.mark.parametrize("scale", [(1, 1), (2, 2), (3, 2), (1, 4), (5, 3)])
@pytest.mark.parametrize("size", [(1, 1), (4, 7)])
def test_upsample_nearest_is_the_floor_of_the_asymmetric_coordinate(scale, size) -> None:
    prog = program(f"upsample({scale})", (3, *size))
    x = batch((3, *size))
    expected = np_nearest(x, scale)
    for where, y in outputs(prog, x):
        np.testing.assert_array_equal(y, expected, err_msg=where)


@pytest.mark.parametrize("scale", [(1, 1), (2, 2), (3, 2), (1, 4), (5, 3)])
@pytest.mark.parametrize("size", [(1, 1), (2, 5), (6, 4)])
def test_upsample_bilinear_is_half_pixel_without_corner_alignment(scale, size) -> None:
    prog = program(f"upsample({scale}, mode=bilinear)", (2, *size))
    x = batch((2, *size))
    expected = np_linear_axis(np_linear_axis(x.astype(np.float64), scale[0], 2), scale[1], 3)
    for where, y in outputs(prog, x):
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5, err_msg=where)


def test_upsample_shape_field_and_cost() -> None:
    prog = program("a = upsample((2, 3)) -> conv(2, 3)\n b = a -> upsample(2, mode=bilinear)", (1, 5, 4))
    nodes = {n.name: n for n in prog.graph.nodes}
    assert nodes["upsample1"].shape == (1, 10, 12)
    assert nodes["upsample1"].macs == 0 and nodes["upsample1"].params == 0
    assert nodes["upsample1"].receptive_field == (1, 1)  # nearest reads one pixel
    # the 3x3 conv steps 1/2 and 1/3 of an input pixel: 1 + 2/2 = 2, 1 + 2/3 -> 2 (rounded up)
    assert nodes["a"].receptive_field == (2, 2)
    # bilinear reads two neighbours one conv-output step (1/2, 1/3 pixel) apart: 2.5 -> 3, 5/3 + 1/3 = 2
    assert nodes["b"].receptive_field == (3, 2)


# --- conv_transpose -----------------------------------------------------------------------------------

def np_conv_transpose(x, weight, bias, stride, pads, output_padding, dilation, groups):
    """Scatter: input (i, j) adds weight[:, :, t, u] x value to the full output at (i s + t d, j s + u d);
    the output is the full one extended by output_padding, from row `top` / column `left`, cut by the pads."""
    n, channels, height, width = x.shape
    _, per_group, kh, kw = weight.shape
    (sh, sw), (dh, dw), (oph, opw) = stride, dilation, output_padding
    top, bottom, left, right = pads
    full_h = (height - 1) * sh + dh * (kh - 1) + 1 + oph
    full_w = (width - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, per_group * groups, full_h, full_w))
    in_group = channels // groups
    for g in range(groups):
        xs = x[:, g * in_group:(g + 1) * in_group].astype(np.float64)
        ws = weight[g * in_group:(g + 1) * in_group].astype(np.float64)
        for t in range(kh):
            for u in range(kw):
                contribution = np.einsum("nchw,cf->nfhw", xs, ws[:, :, t, u])
                rows = slice(t * dh, t * dh + (height - 1) * sh + 1, sh)
                cols = slice(u * dw, u * dw + (width - 1) * sw + 1, sw)
                full[:, g * per_group:(g + 1) * per_group, rows, cols] += contribution
    out = full[:, :, top:full_h - bottom, left:full_w - right]
    return out if bias is None else out + bias[None, :, None, None]


# (layer, input shape); PyTorch's own ConvTranspose2d computes the symmetric ones
SYMMETRIC_TRANSPOSE_CASES = [
    ("conv_transpose(4, 3, stride=2, padding=1, output_padding=1)", (3, 5, 6)),
    ("conv_transpose(2, 1, stride=3, output_padding=2, bias=false)", (2, 3, 3)),
    ("conv_transpose(3, 2, dilation=3, padding=3, output_padding=2)", (2, 4, 5)),  # output_padding >= stride
    ("conv_transpose(3, 2, dilation=3, output_padding=2)", (2, 4, 5)),  # ... and beyond the end pads
    ("conv_transpose(4, 3, stride=(1, 2), dilation=(2, 1), padding=(0, 1), output_padding=1, bias=false)",
     (2, 3, 4)),
]
TRANSPOSE_CASES = SYMMETRIC_TRANSPOSE_CASES + [
    ("conv_transpose(6, (3, 2), stride=(2, 3), padding=(0, 2, 1, 0), output_padding=(1, 2), dilation=(2, 1), "
     "groups=2)", (4, 4, 5)),
    ("conv_transpose(3, 5, stride=(2, 1), dilation=(3, 3), padding=(6, 7, 2, 1), output_padding=(2, 1))",
     (2, 6, 5)),
    ("conv_transpose(2, 3, stride=2, padding=same)", (3, 5, 4)),
    ("conv_transpose(2, 4, stride=3, padding=same, dilation=2)", (1, 3, 4)),
    ("conv_transpose(2, 1, stride=(3, 2), padding=same)", (1, 3, 4)),  # kernel smaller than the stride
    ("conv_transpose(6, 3, padding=(4, 0, 0, 4), groups=3, bias=false)", (3, 6, 6)),  # pads beyond the kernel
]


@pytest.mark.parametrize(("layer", "shape"), TRANSPOSE_CASES)
def test_conv_transpose_matches_the_scatter_definition(layer: str, shape: tuple[int, int, int]) -> None:
    prog = program(layer, shape)
    node = prog.graph.output_node
    weights = random_weights(prog)
    attrs = node.attrs
    expected = np_conv_transpose(batch(shape), weights[f"{node.name}.weight"], weights.get(f"{node.name}.bias"),
                                 attrs["stride"], attrs["pads"], attrs["output_padding"], attrs["dilation"],
                                 attrs["groups"])
    assert expected.shape[1:] == node.shape
    for where, y in outputs(prog, batch(shape), weights):
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4, err_msg=where)


@pytest.mark.parametrize(("layer", "shape"), SYMMETRIC_TRANSPOSE_CASES)
def test_symmetric_conv_transpose_is_torchs_own(layer: str, shape: tuple[int, int, int]) -> None:
    prog = program(layer, shape)
    node = prog.graph.output_node
    attrs = node.attrs
    top, bottom, left, right = attrs["pads"]
    assert (top, left) == (bottom, right)
    reference = nn.ConvTranspose2d(attrs["in_channels"], attrs["filters"], attrs["kernel"], attrs["stride"],
                                   (top, left), attrs["output_padding"], attrs["groups"], attrs["bias"],
                                   attrs["dilation"])
    weights = random_weights(prog)
    reference.load_state_dict({key.split(".", 1)[1]: torch.from_numpy(v) for key, v in weights.items()})
    x = torch.from_numpy(batch(shape))
    module = torch_backend.build_module(prog.graph, weights=weights)
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference(x))


@pytest.mark.parametrize(("kernel", "stride", "dilation", "size"),
                         [(3, 2, 1, 5), (4, 2, 1, 4), (1, 3, 1, 3), (2, 3, 1, 4), (3, 3, 2, 2), (5, 2, 2, 3)])
def test_same_conv_transpose_is_the_adjoint_of_the_same_conv(kernel, stride, dilation, size) -> None:
    """<conv_same(u), v> = <u, conv_transpose_same(v)> with the same weights: the transposed layer is
    the gradient of TensorFlow's `same` convolution of an input `stride` times larger."""
    down = program(f"conv(3, {kernel}, stride={stride}, dilation={dilation}, padding=same, bias=false)",
                   (2, size * stride, size * stride))
    up = program(f"conv_transpose(2, {kernel}, stride={stride}, dilation={dilation}, padding=same, bias=false)",
                 (3, size, size))
    assert down.graph.output_node.shape == (3, size, size)
    assert up.graph.output_node.shape == (2, size * stride, size * stride)
    weight = random_weights(down)["conv1.weight"]
    conv = torch_backend.build_module(down.graph, weights={"conv1.weight": weight})
    transposed = torch_backend.build_module(up.graph, weights={"conv_transpose1.weight": weight})
    u, v = torch.from_numpy(batch((2, size * stride, size * stride))), torch.from_numpy(batch((3, size, size), 5))
    with torch.no_grad():
        left = (conv(u).double() * v.double()).sum()
        right = (u.double() * transposed(v).double()).sum()
    assert math.isclose(left.item(), right.item(), rel_tol=1e-5, abs_tol=1e-5)


def test_conv_transpose_parameters_macs_and_field() -> None:
    prog = program("conv_transpose(6, (3, 2), stride=2, groups=2, init=torch_default)", (4, 5, 7))
    node = prog.graph.output_node
    assert node.shape == (6, 11, 14)
    assert parameter_shapes(prog.graph) == {"conv_transpose1.weight": (4, 3, 3, 2), "conv_transpose1.bias": (6,)}
    assert node.params == 4 * 3 * 3 * 2 + 6
    assert node.macs == 4 // 2 * 6 * 3 * 2 * 5 * 7  # in_channels / groups x filters x kh x kw x H_in x W_in
    assert node.receptive_field == (2, 1)  # ceil(3 / 2) and ceil(2 / 2) inputs per output
    # torch_default draws from U(+-1/sqrt(fan_in)), fan_in = filters / groups x kh x kw = 18, as PyTorch
    module = torch_backend.build_module(prog.graph, seed=0)
    bound = 1 / math.sqrt(18)
    for tensor in module.state_dict().values():
        assert tensor.abs().max().item() <= bound
        assert tensor.abs().max().item() > 0.8 * bound


def test_conv_transpose_field_with_dilation() -> None:
    # stride 2, dilation 2: every other output reads 3 inputs one apart (ceil(3 x 2 / 2) = 3, d / g = 1)
    prog = program("conv_transpose(1, 3, stride=2, dilation=2)", (1, 6, 6))
    assert prog.graph.output_node.receptive_field == (3, 3)


# --- pad ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("layer", "np_mode", "pads", "extra"), [
    ("pad(2)", "constant", (2, 2, 2, 2), {"constant_values": 0.0}),
    ("pad((1, 3), value=-1.5)", "constant", (1, 1, 3, 3), {"constant_values": -1.5}),
    ("pad((0, 3, 2, 1), mode=reflect)", "reflect", (0, 3, 2, 1), {}),
    ("pad((3, 3), mode=reflect)", "reflect", (3, 3, 3, 3), {}),
    ("pad((5, 0, 1, 6), mode=replicate)", "edge", (5, 0, 1, 6), {}),
])
def test_pad_modes_are_numpys(layer, np_mode, pads, extra) -> None:
    prog = program(layer, (2, 4, 5))
    x = batch((2, 4, 5))
    top, bottom, left, right = pads
    expected = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=np_mode, **extra)
    for where, y in outputs(prog, x):
        np.testing.assert_array_equal(y, expected, err_msg=where)


# --- channel_shuffle ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("channels", "groups"), [(6, 2), (6, 3), (12, 4), (5, 1), (5, 5)])
def test_channel_shuffle_permutation(channels: int, groups: int) -> None:
    prog = program(f"channel_shuffle({groups})", (channels, 3, 2))
    x = batch((channels, 3, 2))
    per_group = channels // groups
    expected = np.empty_like(x)
    for g in range(groups):
        for i in range(per_group):
            expected[:, i * groups + g] = x[:, g * per_group + i]
    np.testing.assert_array_equal(nn.ChannelShuffle(groups)(torch.from_numpy(x)).numpy(), expected)
    for where, y in outputs(prog, x):
        np.testing.assert_array_equal(y, expected, err_msg=where)


def test_channel_shuffle_runs_channels_last_and_backward() -> None:
    prog = program("channel_shuffle(3)", (6, 4, 4))
    module = torch_backend.build_module(prog.graph)
    x = torch.from_numpy(batch((6, 4, 4))).to(memory_format=torch.channels_last).requires_grad_()
    y = module(x)
    torch.testing.assert_close(y, nn.ChannelShuffle(3)(x.detach()))
    (y * torch.arange(6.0)[None, :, None, None]).sum().backward()
    assert x.grad is not None
    # channel k of the input lands at position (k % 2) x 3 + k // 2
    expected = torch.tensor([(k % 2) * 3 + k // 2 for k in range(6)], dtype=torch.float32)
    torch.testing.assert_close(x.grad[0, :, 0, 0], expected)


# --- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("layer", "shape", "code", "words"), [
    ("channel_shuffle(4)", (6, 4, 4), "E005", "groups must divide the 6 input channels"),
    ("flatten -> channel_shuffle(2)", (6, 4, 4), "E013", "needs a (channels, height, width) input"),
    ("pad(4, mode=reflect)", (1, 4, 8), "E005", "reflect padding must be smaller than the input"),
    ("pad((0, 0, 0, 8), mode=reflect)", (1, 4, 8), "E005", "reflect padding must be smaller than the input"),
    ("pad(1, mode=replicate, value=1)", (1, 4, 8), "E005", "value applies to mode=constant only"),
    ("pad(same)", (1, 4, 8), "E004", "must be an integer, (height, width) or (top, bottom, left, right)"),
    ("pad(-1)", (1, 4, 8), "E005", "must not be negative"),
    ("conv_transpose(2, 3, stride=2, output_padding=2)", (1, 4, 4), "E005",
     "output_padding must be smaller than the stride or the dilation"),
    ("conv_transpose(2, 3, output_padding=1)", (1, 4, 4), "E005",
     "output_padding must be smaller than the stride or the dilation"),
    ("conv_transpose(2, 3, stride=2, padding=same, output_padding=1)", (1, 4, 4), "E005",
     "output_padding cannot be combined with padding=same"),
    ("conv_transpose(2, 1, padding=(1, 1, 0, 0))", (1, 2, 4), "E010", "crops the whole output height"),
    ("conv_transpose(3, 3, groups=2)", (4, 4, 4), "E005", "groups must divide the 3 filters"),
    ("upsample(0)", (1, 4, 4), "E005", "argument 'scale'"),
    ("upsample(2, mode=bicubic)", (1, 4, 4), "E004", "one of nearest, bilinear"),
])
def test_errors(layer: str, shape: tuple[int, int, int], code: str, words: str) -> None:
    text = f"model m {{\n input image({shape[0]}, {shape[1]}, {shape[2]})\n {layer}\n}}\n"
    result = check_file("m.cnn", text=text)
    errors = [d for d in result.diagnostics if d.code.startswith("E")]
    assert len(errors) == 1, render_all(result.diagnostics, result.sources)
    assert errors[0].code == code
    assert words in errors[0].message
    assert errors[0].span.line == 3


# --- all four in one model ------------------------------------------------------------------------------

def test_the_encoder_decoder_spec_agrees_layer_by_layer() -> None:
    """tests/specs/new_ops_b.cnn: PyTorch against onnxruntime at every opset, output and every layer.
    (onnx's reference evaluator is no oracle here: its ConvTranspose mishandles groups with more
    than one filter per group, onnx 1.23.)"""
    result = check_file(Path(__file__).parent / "specs" / "new_ops_b.cnn")
    assert result.program is not None and not result.has_errors
    prog = result.program
    weights = {name: 0.3 * w for name, w in random_weights(prog, seed=4).items()}  # values stay near 1
    x = batch(prog.graph.input.shape, seed=2)
    module = torch_backend.build_module(prog.graph, weights=weights).eval()
    with torch.no_grad():
        layers = {name: value.numpy() for name, value in module.forward_all(torch.from_numpy(x)).items()}
    for opset in OPSETS:
        probe, tensors = onnx_backend.layer_probe(prog, weights, opset=opset)
        names = [o.name for o in probe.graph.output]
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        values = dict(zip(names, session.run(None, {"image": x})))
        for layer, tensor in tensors.items():
            np.testing.assert_allclose(values[tensor], layers[layer], rtol=1e-4, atol=1e-4,
                                       err_msg=f"{layer} at opset {opset}")
