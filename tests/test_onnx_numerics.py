"""What the emitted models compute, against independent oracles:
- onnx.reference.ReferenceEvaluator running the same model (every spec, generated specs);
- plain numpy implementations of the ops (asymmetric `same` padding, pooling edge cases, activations).
test_onnx_torch.py compares with the PyTorch backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_onnx_support import (
    SPECS,
    max_error,
    program_of,
    random_input,
    run_ort,
    run_reference,
    spec_program,
    spec_texts,
)

from cnnc.compiler.backends import onnx as backend
from cnnc.compiler.backends.weights import initial_weights
from cnnc.compiler.check import check_file
from cnnc.compiler.ops import ACTIVATIONS

TOLERANCE = 1e-4


# --- onnxruntime against the reference evaluator ------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("spec", SPECS)
def test_onnxruntime_agrees_with_the_reference_evaluator(spec, opset):
    program = spec_program(spec)
    model = backend.to_onnx(program, opset=opset, seed=1)
    x = random_input(program, 2, seed=opset)
    assert max_error(run_ort(model, x)[0], run_reference(model, x)[0]) < TOLERANCE


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec=spec_texts(), opset=st.sampled_from([13, 17, 20]), batch=st.sampled_from([1, 3]))
def test_generated_specs_agree_with_the_reference_evaluator(spec, opset, batch):
    program = program_of(spec)
    probe, layers = backend.layer_probe(program, opset=opset, seed=2)
    x = random_input(program, batch)
    names = [o.name for o in probe.graph.output]
    ours, reference = run_ort(probe, x), run_reference(probe, x)
    for name, a, b in zip(names, ours, reference):
        assert max_error(a, b) < TOLERANCE, (name, spec)


# --- numpy oracles ------------------------------------------------------------------------------------

def np_conv(x, weight, bias, stride, pads, dilation=(1, 1), groups=1):
    """Direct convolution; pads (top, bottom, left, right) as in the IR."""
    top, bottom, left, right = pads
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, w = x.shape
    f, cg, kh, kw = weight.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, f, oh, ow))
    per_group = f // groups
    for o in range(f):
        g = o // per_group
        for i in range(oh):
            for j in range(ow):
                patch = x[:, g * cg:(g + 1) * cg, i * sh:i * sh + dh * kh:dh, j * sw:j * sw + dw * kw:dw]
                out[:, o, i, j] = (patch * weight[o]).sum(axis=(1, 2, 3))
    return out + (0 if bias is None else bias.reshape(1, -1, 1, 1))


def np_pool(x, kernel, stride, pads, out_hw, kind, count_pad=False):
    """The IR's pooling: window (i, j) starts at (i*sh - top, j*sw - left); max over its input
    elements; the average over its input elements, plus its explicit padding with count_pad (never the
    ceil-mode overhang beyond the padding)."""
    top, bottom, left, right = pads
    n, c, h, w = x.shape
    out = np.zeros((n, c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            r0, c0 = i * stride[0] - top, j * stride[1] - left
            r1, c1 = r0 + kernel[0], c0 + kernel[1]
            window = x[:, :, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
            if kind == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                if count_pad:
                    count = (min(r1, h + bottom) - max(r0, -top)) * (min(c1, w + right) - max(c0, -left))
                else:
                    count = window.shape[2] * window.shape[3]
                out[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return out


def emitted(text: str, opset: int = 17, batch: int = 2, seed: int = 0):
    program = program_of(text)
    assert program is not None, text
    model = backend.to_onnx(program, opset=opset)
    x = random_input(program, batch, seed)
    return program, model, x, initial_weights(program.graph), run_ort(model, x)[0]


def node_attributes(model, name: str) -> dict:
    import onnx

    node = next(n for n in model.graph.node if n.name == name)
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_conv_with_asymmetric_same_padding_matches_numpy():
    # TF same, stride 2: height 8, kernel 3 pads 1 in all (0 before, 1 after); width 7, kernel 4
    # pads 3 (1 before, 2 after)
    program, model, x, w, y = emitted("""model m {
        input image(2, 8, 7)
        c = conv(3, kernel=(3, 4), stride=2, padding=same)
    }""")
    pads = program.graph.node("c").attrs["pads"]
    assert pads == (0, 1, 1, 2)
    assert node_attributes(model, "c")["pads"] == [0, 1, 1, 2]  # ONNX: top, left, bottom, right
    np.testing.assert_allclose(y, np_conv(x, w["c.weight"], w["c.bias"], (2, 2), pads), rtol=1e-5, atol=1e-5)


def test_grouped_dilated_and_depthwise_convs_match_numpy():
    program, model, x, w, y = emitted("""model m {
        input image(4, 9, 9)
        a = conv(6, kernel=3, dilation=2, groups=2, padding=(0, 1, 2, 0), bias=false)
        depthwise_conv(kernel=(1, 3), multiplier=2, stride=(1, 2), padding=same)
    }""")
    a = np_conv(x, w["a.weight"], None, (1, 1), (0, 1, 2, 0), (2, 2), 2)
    pads = program.graph.node("depthwise_conv1").attrs["pads"]
    expected = np_conv(a, w["depthwise_conv1.weight"], w["depthwise_conv1.bias"], (1, 2), pads, groups=6)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer, kind, count_pad", [
    ("maxpool(3, stride=2, padding=same)", "max", False),            # pads (0, 1, 0, 1): 8 -> 4
    ("maxpool(2, stride=2, padding=(1, 0, 1, 0), ceil_mode=true)", "max", False),
    ("avgpool(3, stride=2, padding=same)", "avg", False),            # the padding is left out
    ("avgpool(3, stride=2, padding=same, count_pad=true)", "avg", True),
    ("avgpool(2, stride=2, padding=(1, 0, 0, 1), ceil_mode=true)", "avg", False),
    ("avgpool(2, stride=2, padding=(1, 0, 0, 1), ceil_mode=true, count_pad=true)", "avg", True),  # Pad first
    ("avgpool(3, stride=3, ceil_mode=true, count_pad=true)", "avg", True),  # overhang only: not counted
])
def test_pooling_matches_numpy(layer, kind, count_pad):
    program, model, x, w, y = emitted(f"model m {{\n input image(2, 8, 7)\n p = {layer}\n}}")
    node = program.graph.node("p")
    expected = np_pool(x, node.attrs["kernel"], node.attrs["stride"], node.attrs["pads"], node.shape[1:], kind,
                       count_pad)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [
    "maxpool(2, stride=2, padding=2)",
    "avgpool(1, stride=2, padding=(1, 2, 0, 1))",
    "avgpool(2, stride=3, padding=(2, 0, 1, 2), count_pad=true)",
])
def test_pooling_pads_as_large_as_the_kernel_are_rejected_before_any_backend(layer):
    """Such windows would hold padding only (onnxruntime refuses them, PyTorch too): the checker says so."""
    result = check_file("m.cnn", text=f"model m {{\n input image(2, 5, 6)\n p = {layer}\n}}")
    assert [d.code for d in result.diagnostics] == ["E005"]
    assert "some windows hold only padding" in result.diagnostics[0].message


def np_gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
ACTIVATION_ORACLES = {
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu(0.2)": lambda x: np.where(x > 0, x, 0.2 * x),
    "elu(0.7)": lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * (np.exp(x) - 1)),
    "gelu": lambda x: np_gelu(x, "none"),
    "gelu(approximate=tanh)": lambda x: np_gelu(x, "tanh"),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True),
    "identity": lambda x: x,
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "hardsigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hardswish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
}


def test_every_registered_activation_has_an_oracle():
    assert {name.split("(")[0] for name in ACTIVATION_ORACLES} == set(ACTIVATIONS)


@pytest.mark.parametrize("opset", [13, 20])
@pytest.mark.parametrize("activation", list(ACTIVATION_ORACLES))
def test_dense_batchnorm_and_activations_match_numpy(activation, opset):
    """dense (Gemm, transB) -> batchnorm over features (non-trivial statistics) -> the activation,
    standalone and fused into a second dense; gelu is a formula below opset 20, Gelu from 20 (tanh gelu
    stays a formula: OpenCV 5.0 ignores Gelu's `approximate`, see docs/deployment.md)."""
    program = program_of(f"""model m {{
        input image(2, 3, 3)
        flatten -> dense(6, bias=false) -> batchnorm(eps=0.001) -> {activation}
        dense(5, activation={activation})
    }}""")
    rng = np.random.default_rng(3)
    weights = initial_weights(program.graph)
    weights["batchnorm1.running_mean"] = rng.normal(size=6).astype(np.float32)
    weights["batchnorm1.running_var"] = rng.uniform(0.5, 2, size=6).astype(np.float32)
    weights["batchnorm1.weight"] = rng.uniform(0.5, 1.5, size=6).astype(np.float32)
    weights["batchnorm1.bias"] = rng.normal(size=6).astype(np.float32)
    model = backend.to_onnx(program, weights, opset=opset)
    ops = {n.op_type for n in model.graph.node}
    if activation.startswith("gelu"):
        assert ("Gelu" in ops) == (opset >= 20 and "tanh" not in activation)
    x = random_input(program, 4).astype(np.float64)
    f = ACTIVATION_ORACLES[activation]
    h = x.reshape(4, -1) @ weights["dense1.weight"].T
    h = (h - weights["batchnorm1.running_mean"]) / np.sqrt(weights["batchnorm1.running_var"] + 0.001)
    h = f(h * weights["batchnorm1.weight"] + weights["batchnorm1.bias"])
    expected = f(h @ weights["dense2.weight"].T + weights["dense2.bias"])
    np.testing.assert_allclose(run_ort(model, x.astype(np.float32))[0], expected, rtol=1e-5, atol=1e-5)


def test_merges_broadcast_a_flat_gate_over_channels_and_concatenate():
    program, model, x, w, y = emitted("""model m {
        input image(3, 4, 5)
        gate = global_maxpool -> dense(3, activation=sigmoid)
        scaled = multiply(gate, image)
        shifted = add(scaled, gate, image)
        concat(shifted, image, scaled)
    }""")
    gate = 1 / (1 + np.exp(-(x.max(axis=(2, 3)) @ w["gate.weight"].T + w["gate.bias"])))[:, :, None, None]
    scaled = gate * x
    expected = np.concatenate([scaled + gate + x, x, scaled], axis=1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
