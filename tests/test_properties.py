"""Property tests: random conv/pool stacks against the closed-form shape formulas, and random
specs that must either check clean or get diagnostics, never an exception."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.compiler import shapes
from cnnc.compiler.check import check_file
from cnnc.compiler.ops import OPS

LAYER_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def window_layers(draw):
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool"]))
    kernel = draw(st.integers(1, 5))
    stride = draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["valid", "same", "explicit"]))
    dilation = draw(st.integers(1, 2)) if kind == "conv" else 1
    pads = draw(st.integers(0, kernel // 2)) if padding == "explicit" else None
    ceil_mode = kind != "conv" and padding != "same" and draw(st.booleans())
    return kind, kernel, stride, padding, dilation, pads, ceil_mode


def layer_text(layer) -> str:
    kind, kernel, stride, padding, dilation, pads, ceil_mode = layer
    args = [f"kernel={kernel}", f"stride={stride}"]
    if kind == "conv":
        args = ["4"] + args + [f"dilation={dilation}"]
    args.append(f"padding={pads}" if pads is not None else f"padding={padding}")
    if ceil_mode:
        args.append("ceil_mode=true")
    return f"{kind}({', '.join(args)})"


def expected_size(size: int, layer) -> int:
    """The closed forms, written independently of compiler.shapes."""
    kind, kernel, stride, padding, dilation, pads, ceil_mode = layer
    reach = dilation * (kernel - 1) + 1
    if padding == "same":
        return math.ceil(size / stride)
    pad = pads or 0
    total = size + 2 * pad - reach
    if total < 0:
        return 0
    if ceil_mode:
        out = math.ceil(total / stride) + 1
        before = pad
        return out - 1 if (out - 1) * stride >= size + before else out
    return math.floor(total / stride) + 1


@LAYER_SETTINGS
@given(size=st.integers(1, 64), layers=st.lists(window_layers(), min_size=1, max_size=5))
def test_inferred_shapes_follow_the_closed_forms(size: int, layers, tmp_path_factory) -> None:
    body = "\n".join(f"    {layer_text(layer)}" for layer in layers)
    text = f"model random {{\n    input image(3, {size}, {size})\n{body}\n}}\n"
    result = check_file("random.cnn", text=text)
    expected = size
    for layer in layers:
        expected = expected_size(expected, layer)
        if expected < 1:
            assert result.has_errors, text
            assert any(d.code == "E010" for d in result.diagnostics), text
            return
    assert not result.has_errors, (text, [d.message for d in result.diagnostics])
    assert result.program.graph.output_node.shape[1:] == (expected, expected)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 50), kernel=st.integers(1, 7), stride=st.integers(1, 4), dilation=st.integers(1, 3))
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int, dilation: int) -> None:
    before, after = shapes.same_padding(size, kernel, stride, dilation)
    reach = dilation * (kernel - 1) + 1
    out = math.ceil(size / stride)
    assert before + after == max((out - 1) * stride + reach - size, 0)
    assert after - before in (0, 1)  # the odd one goes to the bottom/right
    assert shapes.window_output(size, kernel, stride, (before, after), dilation).size == out


# Every registered op's example lines, and variants that stress the shape rules.
LAYERS = [line.strip() for op in OPS.values() for line in op.example.split("\n")] + [
    "conv(8, kernel=3)", "conv(4, 1, padding=same)", "maxpool(2)", "avgpool(3, stride=2, padding=same)", "dense(10)",
    "depthwise_conv(3, multiplier=2)", "conv(8, kernel=3, groups=2)", "x = relu", "add(x)", "concat(x)",
    "multiply(x)", "conv(3, kernel=(1, 7), dilation=2)", "leaky_relu(0.1)"]


@settings(max_examples=300, deadline=None)
@given(channels=st.integers(1, 4), size=st.integers(1, 40),
       body=st.lists(st.sampled_from(LAYERS), min_size=0, max_size=8))
def test_random_specs_check_clean_or_get_diagnostics(channels: int, size: int, body: list[str]) -> None:
    lines = "\n".join(f"    {layer}" for layer in body)
    text = f"model random {{\n    input image({channels}, {size}, {size})\n{lines}\n}}\n"
    result = check_file("random.cnn", text=text)
    assert result.has_errors == (result.program is None)
    if result.program is not None:
        graph = result.program.graph
        assert graph.trainable_params == sum(n.params for n in graph.nodes)
        assert all(dim >= 1 for node in graph.nodes for dim in node.shape)
