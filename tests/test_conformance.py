"""The op registry's conformance suite: every op, from its own example, through every backend.

For each op of compiler.ops.OPS: its example checks clean and uses it; its declared parameters are
exactly the PyTorch module's state_dict and the ONNX initialisers (names and shapes), and its
parameter count is theirs; it lowers in PyTorch and in ONNX at every opset from the oldest supported
to the newest this onnx knows; onnxruntime agrees with PyTorch on the same weights.
Nothing here is listed by hand: a new op is tested as soon as it is registered.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cnnc.compiler.backends import onnx as onnx_backend
from cnnc.compiler.backends import pytorch as torch_backend
from cnnc.compiler.backends.weights import initial_weights, node_parameters
from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Program
from cnnc.compiler.ops import OPS
from cnnc.dsl.diagnostics import render_all

OPSETS = range(onnx_backend.MIN_OPSET, onnx_backend.max_opset() + 1)
INPUT = "input image(3, 10, 10)"


def example_spec(op: str) -> str:
    return f"model conform_{op} {{\n {INPUT}\n {OPS[op].example}\n}}\n"


@cache
def example_program(op: str) -> Program:
    result = check_file(f"{op}.cnn", text=example_spec(op))
    assert not result.has_errors, render_all(result.diagnostics, result.sources)
    assert result.program is not None
    return result.program


def frozen_example_spec(op: str) -> str:
    """The op's example with `trainable=false` added to the op's own (last) call."""
    example = OPS[op].example
    call = list(re.finditer(rf"\b{op}\(", example))[-1]  # an example writes its op's call with parentheses
    depth, position = 0, call.end() - 1
    for position in range(call.end() - 1, len(example)):
        depth += {"(": 1, ")": -1}.get(example[position], 0)
        if depth == 0:
            break
    return example_spec(op).replace(example, f"{example[:position]}, trainable=false{example[position:]}")


@cache
def torch_output(op: str) -> np.ndarray:
    module = torch_backend.build_module(example_program(op).graph, seed=3).eval()
    with torch.no_grad():
        return module(torch.from_numpy(batch())).numpy()


def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)


@pytest.mark.parametrize("op", sorted(OPS))
def test_the_example_uses_the_op(op: str) -> None:
    assert any(node.op == op for node in example_program(op).graph.nodes), OPS[op].example


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_lowers_or_decomposes_in_every_backend(op: str) -> None:
    for backend in (torch_backend, onnx_backend):
        assert op in backend.LOWERINGS or OPS[op].decomposition is not None, f"{backend.__name__} cannot build {op}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_declared_parameters_are_the_torch_state_dict(op: str) -> None:
    graph = example_program(op).graph
    declared = {name: param.shape for name, param in node_parameters(graph)}
    state = torch_backend.build_module(graph).state_dict()
    assert {name: tuple(tensor.shape) for name, tensor in state.items()} == declared
    trainable = sum(p.numel() for p in torch_backend.build_module(graph).parameters() if p.requires_grad)
    assert trainable == graph.trainable_params
    assert sum(t.numel() for t in state.values()) - trainable == graph.non_trainable_params


@pytest.mark.parametrize("op", sorted(OPS))
def test_torch_and_onnxruntime_agree_at_every_opset(op: str) -> None:
    program = example_program(op)
    weights = initial_weights(program.graph, seed=3)
    for opset in OPSETS:
        model = onnx_backend.to_onnx(program, opset=opset, seed=3)
        onnx.checker.check_model(model, full_check=True)
        initializers = {i.name: tuple(i.dims) for i in model.graph.initializer}
        for name, array in weights.items():
            assert initializers.get(name) == array.shape, (opset, name)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (output,) = session.run(None, {"image": batch()})
        np.testing.assert_allclose(output, torch_output(op), rtol=1e-4, atol=1e-5, err_msg=f"opset {opset}")


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_with_parameters_takes_trainable(op: str) -> None:
    node = next(n for n in example_program(op).graph.nodes if n.op == op)
    assert ("trainable" in OPS[op].arg_names) == bool(OPS[op].parameters(node.attrs.as_dict(), node.shape))


@pytest.mark.parametrize("op", sorted(name for name, op in OPS.items() if "trainable" in op.arg_names))
def test_trainable_false_freezes_every_array_and_leaves_the_onnx_graph_as_it_was(op: str) -> None:
    result = check_file(f"{op}.cnn", text=frozen_example_spec(op))
    assert not result.has_errors, render_all(result.diagnostics, result.sources)
    graph, example = result.program.graph, example_program(op).graph
    node = next(n for n in graph.nodes if n.op == op)
    before = next(n for n in example.nodes if n.name == node.name)
    assert node.attrs["trainable"] is False and before.attrs["trainable"] is True
    assert node.params == 0 and node.non_trainable == before.params + before.non_trainable > 0
    assert graph.trainable_params == example.trainable_params - before.params
    module = torch_backend.build_module(graph)
    frozen = {name for name, parameter in module.named_parameters() if not parameter.requires_grad}
    assert frozen == {name for name, _ in module.named_parameters() if name.startswith(f"{node.name}.")}
    opset = max(OPSETS)
    as_frozen = onnx_backend.to_onnx(result.program, opset=opset, seed=3).graph
    as_example = onnx_backend.to_onnx(example_program(op), opset=opset, seed=3).graph
    assert as_frozen.SerializeToString() == as_example.SerializeToString()
