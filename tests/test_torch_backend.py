"""The PyTorch backend: real shapes and parameter counts equal the IR's, and convolutions and pooling
match hand-written numpy loops that resolve 'same' padding themselves (TensorFlow's rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnc.compiler.backends import pytorch as pytorch_backend
from cnnc.compiler.backends.pytorch import build_module, load_weights
from cnnc.compiler.backends.weights import initial_weights
from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Graph
from cnnc.compiler.passes import prune, with_outputs
from cnnc.errors import CnncError, InternalError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted([*(ROOT / "specs").glob("*.cnn"), *(ROOT / "tests" / "specs").glob("*.cnn")])


def graph_of(text: str) -> Graph:
    result = check_file("test.cnn", text=text)
    assert result.program is not None, result.diagnostics
    return result.program.graph


# --- numpy references: direct loops over every output element -------------------------------------

def tf_same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same': output ceil(size / stride), the odd padding row at the end."""
    reach = dilation * (kernel - 1) + 1
    total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
    return total // 2, total - total // 2


def conv_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride, pads, dilation,
                   groups: int) -> np.ndarray:
    channels, height, width = x.shape
    filters, per_group, kh, kw = weight.shape
    top, bottom, left, right = pads
    out_h = (height + top + bottom - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    out_w = (width + left + right - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((filters, out_h, out_w))
    for f in range(filters):
        group = f // (filters // groups)
        for i in range(out_h):
            for j in range(out_w):
                total = 0.0 if bias is None else float(bias[f])
                for c in range(per_group):
                    for u in range(kh):
                        for v in range(kw):
                            row = i * stride[0] - top + u * dilation[0]
                            col = j * stride[1] - left + v * dilation[1]
                            if 0 <= row < height and 0 <= col < width:
                                total += x[group * per_group + c, row, col] * weight[f, c, u, v]
                out[f, i, j] = total
    return out


def pooled_size(size: int, kernel: int, stride: int, before: int, after: int, ceil_mode: bool) -> int:
    span = size + before + after - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + before else out


def pool_reference(x: np.ndarray, kind: str, kernel, stride, pads, ceil_mode: bool, count_pad: bool) -> np.ndarray:
    """Max: over input elements only. Average: over the input elements, plus the padding ones with
    count_pad; a ceil-mode window's reach beyond the padding is never counted."""
    channels, height, width = x.shape
    top, bottom, left, right = pads
    out_h = pooled_size(height, kernel[0], stride[0], top, bottom, ceil_mode)
    out_w = pooled_size(width, kernel[1], stride[1], left, right, ceil_mode)
    out = np.zeros((channels, out_h, out_w))
    for c in range(channels):
        for i in range(out_h):
            for j in range(out_w):
                values, counted = [], 0
                for u in range(kernel[0]):
                    for v in range(kernel[1]):
                        row, col = i * stride[0] - top + u, j * stride[1] - left + v
                        inside = 0 <= row < height and 0 <= col < width
                        in_padding = -top <= row < height + bottom and -left <= col < width + right
                        if inside:
                            values.append(x[c, row, col])
                        counted += inside or (count_pad and in_padding)
                out[c, i, j] = max(values) if kind == "maxpool" else sum(values) / counted
    return out


# --- every spec of the project ---------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_spec_lowers_with_the_irs_shapes_parameters_and_weights(spec: Path) -> None:
    graph = check_file(spec).program.graph
    module = build_module(graph, seed=3).eval()
    outputs = module.forward_all(torch.rand(2, *graph.input.shape))
    live = prune(graph)  # dead layers are not built
    assert set(outputs) == {node.name for node in live.nodes}
    for node in live.nodes:
        assert tuple(outputs[node.name].shape) == (2, *node.shape), node.name
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == live.trainable_params
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    assert frozen + sum(b.numel() for b in module.buffers()) == live.non_trainable_params
    expected = initial_weights(graph, seed=3)
    state = module.state_dict()
    assert list(state) == list(expected)
    assert all(np.array_equal(state[name].numpy(), value) for name, value in expected.items())


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_forward_is_forward_all_in_either_memory_format(spec: Path) -> None:
    graph = check_file(spec).program.graph
    module = build_module(graph).eval()
    x = torch.rand(3, *graph.input.shape)
    with torch.no_grad():
        expected = module.forward_all(x)[graph.output]
        assert torch.equal(module(x), expected)
        module.to(memory_format=torch.channels_last)
        torch.testing.assert_close(module(x.to(memory_format=torch.channels_last)), expected)


# Every activation but these has an in-place form; a new one without is added here.
WITHOUT_IN_PLACE = ("gelu", "softmax", "identity")
IN_PLACE_ACTIVATIONS = sorted(op for op in pytorch_backend._ACTIVATIONS if op not in WITHOUT_IN_PLACE)


def spying_on_in_place(monkeypatch: pytest.MonkeyPatch, op: str) -> list[int]:
    """Count the calls of `op`'s in-place form in the modules built from now on."""
    calls: list[int] = []
    activation = pytorch_backend._ACTIVATIONS[op]

    def counted(node, in_place):
        function = activation(node, in_place)
        return (lambda x: (calls.append(1), function(x))[1]) if in_place else function

    monkeypatch.setitem(pytorch_backend._ACTIVATIONS, op, counted)
    return calls


@pytest.mark.parametrize("op", IN_PLACE_ACTIVATIONS)
def test_without_gradients_an_activation_overwrites_its_dead_input_with_the_same_values(
        op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spying_on_in_place(monkeypatch, op)
    graph = graph_of(f"model m {{\n input x(4, 5, 5)\n conv(6, kernel=3) -> {op}\n conv(6, kernel=1, activation={op})\n"
                     " flatten\n}\n")
    module = build_module(graph, seed=1).eval()
    for x in (torch.randn(3, 4, 5, 5) * 4, (torch.randn(3, 4, 5, 5) * 4).to(memory_format=torch.channels_last)):
        calls.clear()
        before = x.clone()
        expected = module(x)  # with gradients: out of place
        assert not calls
        with torch.no_grad():
            assert torch.equal(module(x), expected)
        assert len(calls) == 2  # the separate layer and the fused activation
        with torch.inference_mode():
            assert torch.equal(module(x), expected)
        assert torch.equal(x, before)


@pytest.mark.parametrize("body", [
    " relu\n flatten\n",  # the caller's input itself
    " flatten\n relu\n",  # a view of it
    " y = conv(4, kernel=1)\n a, b = y -> split(2)\n r = a -> relu\n concat(y, r)\n flatten\n",  # a live value's view
], ids=["input", "view-of-input", "view-of-live-value"])
def test_an_activation_never_overwrites_the_input_or_memory_a_live_value_shares(
        body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spying_on_in_place(monkeypatch, "relu")
    module = build_module(graph_of(f"model m {{\n input x(4, 3, 3)\n{body}}}\n"), seed=2).eval()
    x = torch.randn(2, 4, 3, 3)
    before = x.clone()
    expected = module(x)
    with torch.no_grad():
        assert torch.equal(module(x), expected)
    assert not calls
    assert torch.equal(x, before)


def with_trained_values(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The module in eval mode with batch norms' running statistics and affine parameters, and
    convolutions' biases, away from their initial values, so that folding has something to get wrong."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (layer for layer in module.modules() if isinstance(layer, pytorch_backend.Conv)):
            if conv.bias is not None:
                conv.bias.copy_(torch.randn(len(conv.bias), generator=generator))
        for norm in (layer for layer in module.modules() if isinstance(layer, pytorch_backend.BatchNorm)):
            channels = len(norm.running_mean)
            norm.running_mean.copy_(torch.randn(channels, generator=generator))
            norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            for parameter in (norm.weight, norm.bias):
                if parameter is not None:
                    parameter.copy_(torch.randn(channels, generator=generator))
    return module.eval()


def batch_norm_steps(steps) -> int:
    return sum(isinstance(step.function, pytorch_backend.BatchNorm) for step in steps)


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_folded_evaluation_is_forward_in_either_memory_format(spec: Path) -> None:
    graph = check_file(spec).program.graph
    module = with_trained_values(build_module(graph, seed=4), seed=5)
    x = torch.rand(3, *graph.input.shape)
    with torch.inference_mode():
        expected = module(x)
        torch.testing.assert_close(module.folded()(x), expected, rtol=1e-4, atol=1e-5)
        module.to(memory_format=torch.channels_last)
        torch.testing.assert_close(module.folded()(x.to(memory_format=torch.channels_last)), expected,
                                   rtol=1e-4, atol=1e-5)


def test_mnist_fast_evaluates_with_its_three_batch_norms_folded_into_the_convolutions() -> None:
    module = build_module(check_file(ROOT / "specs" / "mnist_fast.cnn").program.graph).eval()
    with torch.inference_mode():
        folded = pytorch_backend._fold_batch_norms(module._steps)
    assert batch_norm_steps(module._steps) == 3
    assert batch_norm_steps(folded) == 0
    assert len(folded) == len(module._steps) - 3


@pytest.mark.parametrize("layers, folds", [
    # every form of convolution: bias, groups, dilation, stride, TF 'same' with its odd row at the end
    (" conv(6, kernel=3, groups=2) -> batchnorm -> relu\n conv(4, kernel=2, stride=2, padding=same) -> batchnorm\n"
     " conv(4, kernel=3, dilation=2, padding=same, bias=false) -> batchnorm(affine=false)\n", 3),
    # the convolution's output is read again, after the batch norm or before it
    (" y = conv(4, kernel=1)\n n = y -> batchnorm\n add(y, n)\n", 0),
    (" y = conv(4, kernel=1)\n r = y -> relu\n n = y -> batchnorm\n add(r, n)\n", 0),
    # batch norm after pooling, and after a fused activation (relu between them)
    (" conv(4, kernel=3) -> maxpool(2) -> batchnorm\n conv(4, kernel=1, activation=relu) -> batchnorm\n", 0),
], ids=["conv-forms", "conv-read-later", "conv-read-before", "not-after-conv"])
def test_only_a_batch_norm_that_alone_reads_a_convolution_is_folded(layers: str, folds: int) -> None:
    graph = graph_of(f"model m {{\n input x(4, 9, 9)\n{layers} flatten\n}}\n")
    module = with_trained_values(build_module(graph, seed=6), seed=7)
    x = torch.randn(2, 4, 9, 9)
    with torch.inference_mode():
        steps = pytorch_backend._fold_batch_norms(module._steps)
        assert batch_norm_steps(module._steps) - batch_norm_steps(steps) == folds
        torch.testing.assert_close(module.folded()(x), module(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool, replaced", [
    ("maxpool(2)", True),  # 9x9 -> 4x4: the last row and column are read by no window
    ("maxpool(2, stride=1)", False),
    ("maxpool(3, stride=2)", False),
    ("maxpool(2, padding=same)", False),  # 9 -> 5: the last window reaches into padding
    ("maxpool(2, ceil_mode=true)", False),
])
def test_folded_2x2_max_pools_of_stride_2_take_the_maxima_of_pairs(pool: str, replaced: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    module = build_module(graph_of(f"model m {{\n input x(4, 9, 9)\n {pool}\n flatten\n}}\n")).eval()
    x = torch.randn(2, 4, 9, 9)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 2:4, 2:4] = float("-inf")
    x[1, 2, 4:6, 4:6] = torch.tensor([[0.0, -0.0], [-0.0, 0.0]])
    calls: list[torch.Tensor] = []
    max_of_pairs = pytorch_backend._max_of_pairs
    monkeypatch.setattr(pytorch_backend, "_max_of_pairs", lambda x: (calls.append(x), max_of_pairs(x))[1])
    with torch.inference_mode():
        for memory_format in (torch.contiguous_format, torch.channels_last):
            laid_out = x.contiguous(memory_format=memory_format)
            torch.testing.assert_close(module.folded()(laid_out), module(laid_out), rtol=0, atol=0, equal_nan=True)
    assert len(calls) == (2 if replaced else 0)


def test_folded_weights_are_taken_when_asked_and_only_for_evaluation() -> None:
    module = with_trained_values(build_module(graph_of(
        "model m {\n input x(2, 5, 5)\n conv(3, kernel=3) -> batchnorm\n flatten\n}\n"), seed=8), seed=9)
    x = torch.randn(2, 2, 5, 5)
    with torch.inference_mode():
        before = module.folded()
        expected = module(x)
    with torch.no_grad():
        module.batchnorm1.running_mean.add_(1.0)  # type: ignore[operator]
    with torch.inference_mode():
        torch.testing.assert_close(before(x), expected)  # the weights as they were when it was taken
        torch.testing.assert_close(module.folded()(x), module(x))
    with pytest.raises(InternalError, match="eval mode without gradients"):
        module.folded()  # gradients on
    with torch.inference_mode(), pytest.raises(InternalError, match="eval mode without gradients"):
        module.train().folded()


def test_block_layers_nest_in_the_state_dict() -> None:
    graph = check_file(next(p for p in SPECS if p.stem == "resnet_cifar")).program.graph
    keys = build_module(graph).state_dict().keys()
    assert {"conv1.weight", "residual_down1.conv3.weight", "residual_down1.shortcut.running_var"} <= set(keys)
    assert not any("num_batches_tracked" in key for key in keys)


def test_the_logits_graph_has_the_same_weights_without_the_final_softmax() -> None:
    graph = check_file(next(p for p in SPECS if p.stem == "keras_mnist")).program.graph
    module = build_module(graph).eval()
    logits = build_module(with_outputs(graph, "logits")).eval()
    assert module.state_dict().keys() == logits.state_dict().keys()
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(torch.softmax(logits(x), dim=1), module(x))


def test_flat_gate_broadcasts_over_a_feature_map() -> None:
    graph = graph_of("model m {\n input x(4, 3, 3)\n gate = global_avgpool\n multiply(x, gate)\n flatten\n}\n")
    x = torch.rand(2, 4, 3, 3)
    expected = x * x.mean((2, 3))[:, :, None, None]
    torch.testing.assert_close(build_module(graph)(x), expected.flatten(1))


def test_weights_that_do_not_fit_are_refused_by_name() -> None:
    graph = graph_of("model m {\n input x(1, 4, 4)\n flatten\n fc = dense(3)\n}\n")
    weights = initial_weights(graph)
    weights["fc.weight"] = np.zeros((3, 15), np.float32)
    with pytest.raises(CnncError, match=r"wrong shape: fc.weight \(3, 15\) \(the model's is \(3, 16\)\)"):
        build_module(graph, weights=weights)
    del weights["fc.bias"]
    weights["head.weight"] = weights.pop("fc.weight")
    with pytest.raises(CnncError, match="missing: fc.weight, fc.bias; unexpected: head.weight"):
        load_weights(build_module(graph), weights)


@pytest.mark.parametrize("name", ["forward", "half", "eval", "cuda", "state_dict", "to", "parameters", "graph"])
def test_a_layer_may_have_the_name_of_a_module_attribute(name: str) -> None:
    graph = graph_of(f"model m {{\n input x(1, 4, 4)\n flatten\n {name} = dense(3)\n}}\n")
    module = build_module(graph)
    assert f"{name}.weight" in module.state_dict()
    x = torch.rand(2, 1, 4, 4)
    expected = x.flatten(1) @ module.state_dict()[f"{name}.weight"].T + module.state_dict()[f"{name}.bias"]
    module.train()
    module(x).sum().backward()
    assert module.training and all(p.grad is not None for p in module.parameters())
    torch.testing.assert_close(module.eval()(x), expected)


# --- 'same' padding and pooling against the loops ---------------------------------------------------

def test_same_maxpool_of_7_pads_the_odd_row_at_the_bottom() -> None:
    x = torch.arange(49, dtype=torch.float32).reshape(1, 1, 7, 7) - 100  # all negative: padding must not win
    y = build_module(graph_of("model m {\n input x(1, 7, 7)\n maxpool(2, padding=same)\n}\n"))(x)
    expected = x[0, 0].numpy()[[1, 3, 5, 6]][:, [1, 3, 5, 6]]  # each window's bottom-right, then the edge
    assert np.array_equal(y[0, 0].numpy(), expected)


@pytest.mark.parametrize("size,kernel,stride", [(7, 3, 1), (7, 2, 2), (8, 3, 2), (5, 4, 3), (6, 2, 1)])
def test_same_conv_and_pooling_match_tensorflow(size: int, kernel: int, stride: int) -> None:
    text = (f"model m {{\n input x(2, {size}, {size + 1})\n"
            f" c = x -> conv(3, kernel={kernel}, stride={stride}, padding=same)\n"
            f" m = x -> maxpool({kernel}, stride={stride}, padding=same)\n"
            f" a = x -> avgpool({kernel}, stride={stride}, padding=same)\n"
            f" concat(c, m, a)\n}}\n")
    module = build_module(graph_of(text), seed=1)
    values = module.forward_all(torch.randn(1, 2, size, size + 1))
    pads = (*tf_same_pads(size, kernel, stride), *tf_same_pads(size + 1, kernel, stride))
    state = module.state_dict()
    conv = conv_reference(values["x"][0].numpy(), state["c.weight"].numpy(), state["c.bias"].numpy(),
                          (stride, stride), pads, (1, 1), 1)
    np.testing.assert_allclose(values["c"][0].detach().numpy(), conv, rtol=1e-5, atol=1e-5)
    for kind, name in (("maxpool", "m"), ("avgpool", "a")):
        pooled = pool_reference(values["x"][0].numpy(), kind, (kernel, kernel), (stride, stride), pads,
                                False, False)
        np.testing.assert_allclose(values[name][0].detach().numpy(), pooled, rtol=1e-5, atol=1e-5)
    assert values["c"].shape[2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))


@dataclass(frozen=True)
class Layer:
    """One generated layer: its spec text and what the reference needs."""

    kind: str  # conv, maxpool or avgpool
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: str | tuple[int, int, int, int]
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    filters: int = 0
    ceil_mode: bool = False
    count_pad: bool = False

    def text(self) -> str:
        padding = self.padding if isinstance(self.padding, str) else f"({', '.join(map(str, self.padding))})"
        common = f"kernel={_pair(self.kernel)}, stride={_pair(self.stride)}, padding={padding}"
        if self.kind == "conv":
            return (f"conv({self.filters}, {common}, dilation={_pair(self.dilation)}, groups={self.groups}, "
                    f"bias=true, init=normal(1.0), bias_init=normal(1.0))")
        extra = f", count_pad={str(self.count_pad).lower()}" if self.kind == "avgpool" else ""
        return f"{self.kind}({common}, ceil_mode={str(self.ceil_mode).lower()}{extra})"

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        if self.padding == "same":
            return (*tf_same_pads(height, self.kernel[0], self.stride[0], self.dilation[0]),
                    *tf_same_pads(width, self.kernel[1], self.stride[1], self.dilation[1]))
        return self.padding


def _pair(values: tuple[int, int]) -> str:
    return f"({values[0]}, {values[1]})"


pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))
explicit_pads = st.tuples(*[st.integers(0, 2)] * 4)


@st.composite
def layers(draw: st.DrawFn, channels: int) -> Layer:
    kind = draw(st.sampled_from(["conv", "maxpool", "avgpool"]))
    padding = draw(st.one_of(st.just("same"), explicit_pads))
    if kind == "conv":
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        return Layer(kind, draw(pairs), draw(pairs), padding, draw(st.tuples(st.integers(1, 2), st.integers(1, 2))),
                     groups, groups * draw(st.integers(1, 2)))
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    if padding != "same":  # a window wholly in the padding has nothing to pool (see the report)
        top, bottom, left, right = padding
        padding = tuple(min(pad, kernel[axis] - 1) for pad, axis in ((top, 0), (bottom, 0), (left, 1), (right, 1)))
    ceil_mode = padding != "same" and draw(st.booleans())
    return Layer(kind, kernel, draw(pairs), padding,
                 ceil_mode=ceil_mode, count_pad=draw(st.booleans()))


@st.composite
def stacks(draw: st.DrawFn) -> tuple[tuple[int, int, int], list[Layer]]:
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    channels, stack = shape[0], []
    for _ in range(draw(st.integers(1, 3))):
        layer = draw(layers(channels))
        channels = layer.filters or channels
        stack.append(layer)
    return shape, stack


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks(), st.integers(0, 2**31 - 1))
def test_generated_conv_and_pool_stacks_match_the_loops(stack, seed: int) -> None:
    shape, layers_ = stack
    body = "".join(f" {layer.text()}\n" for layer in layers_)
    text = f"model m {{\n input x({', '.join(map(str, shape))})\n{body}}}\n"
    result = check_file("stack.cnn", text=text)
    assume(result.program is not None)  # windows larger than their (padded) input are errors
    graph = result.program.graph
    module = build_module(graph, seed=seed)
    assert sum(p.numel() for p in module.parameters()) == graph.trainable_params
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        values = module.forward_all(torch.randn(2, *shape, generator=generator, dtype=torch.float32))
    state = module.state_dict()
    for node, layer in zip(graph.nodes[1:], layers_, strict=True):
        before = values[node.inputs[0]][1].numpy().astype(np.float64)
        after = values[node.name]
        assert tuple(after.shape[1:]) == node.shape
        pads = layer.pads(*before.shape[1:])
        if layer.kind == "conv":
            expected = conv_reference(before, state[f"{node.name}.weight"].numpy(), state[f"{node.name}.bias"].numpy(),
                                      layer.stride, pads, layer.dilation, layer.groups)
        else:
            expected = pool_reference(before, layer.kind, layer.kernel, layer.stride, pads, layer.ceil_mode,
                                      layer.count_pad)
        np.testing.assert_allclose(after[1].numpy(), expected, rtol=1e-4, atol=1e-4, err_msg=f"{node.name}: {layer}")
