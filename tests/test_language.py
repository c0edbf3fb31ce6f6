"""The language's control features, checked through the front end: conditionals, lists and loops,
loop-carried names, layer parameters, several results, helpers; and two elaboration bugs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from cnnc.compiler.check import check_file
from cnnc.compiler.values import evaluate
from cnnc.dsl.diagnostics import render_all
from cnnc.dsl.parser import parse


def check(text: str):
    return check_file("spec.cnn", text=text)


def graph_of(text: str):
    result = check(text)
    assert not result.has_errors, render_all(result.diagnostics, result.sources)
    return result.program.graph


def errors_of(text: str):
    return [d for d in check(text).diagnostics if d.is_error]


def value_of(expression: str):
    tree, problems = parse(f"const X = ({expression})", "spec.cnn")
    assert not problems, problems
    return evaluate(tree.consts[0].value, {}).value


# --- the two bugs ----------------------------------------------------------------------------------

def test_a_failed_chain_leaves_its_name_silent() -> None:
    errors = errors_of("""model m {
        input image(1, 28, 28)
        x = conv(4, kernel=3) -> undefined_op
        y = x -> relu
    }""")
    assert [(e.code, e.message) for e in errors] == [("E002", "unknown layer 'undefined_op'")]


def test_every_use_of_a_failed_name_is_silent() -> None:
    errors = errors_of("""model m {
        input image(1, 28, 28)
        x = conv(4, kernel=3) -> undefined_op
        z = add(x, image) -> conv(channels(x), 3, stride=x)
        output x
    }""")
    assert [e.code for e in errors] == ["E002"]


def test_a_failed_chain_does_not_pass_on_the_previous_tensor() -> None:
    # Before: the dense after the failed chain took the 28x28 input and added a false rank error.
    errors = errors_of("""model m {
        input image(1, 28, 28)
        flatten -> nonsense
        dense(10)
    }""")
    assert [e.code for e in errors] == ["E002"]


def test_an_error_inside_a_block_is_reported_once_with_its_uses() -> None:
    uses = "\n".join("        bad(8)" for _ in range(18))
    errors = errors_of(f"""block bad(c) {{
        conv(c, 3) -> nonsense
    }}
    model m {{
        input image(1, 64, 64)
{uses}
    }}""")
    assert len(errors) == 1
    notes = errors[0].notes
    assert "in block 'bad', instantiated as 'bad1' on line 6" in notes
    assert any(n.startswith("the same error in 17 more instances: 'bad2' (line 7), 'bad3' (line 8)") for n in notes)


def test_block_errors_that_differ_between_uses_stay_apart() -> None:
    errors = errors_of("""block pick(c) { conv(c, 3) }
    model m { input image(1, 28, 28); pick(0); pick(-1) }""")
    assert sorted(e.notes[0] for e in errors) == ["Received: filters=-1", "Received: filters=0"]


# --- conditionals ----------------------------------------------------------------------------------

RESIDUAL = """
block maybe_residual(out, stride) {
    y = conv(out, 3, stride=stride, padding=same)
    if stride == 1 and channels(in) == out { add(in, y) }
}
model m {
    input image(8, 16, 16)
    maybe_residual(8, 1)
    maybe_residual(8, 2)
    maybe_residual(16, 1)
}
"""


def test_a_block_is_residual_only_when_stride_and_channels_allow() -> None:
    ops = [(n.name, n.op) for n in graph_of(RESIDUAL).nodes if n.op != "input"]
    assert ops == [("maybe_residual1.y", "conv"), ("maybe_residual1.add1", "add"),
                   ("maybe_residual2.y", "conv"), ("maybe_residual3.y", "conv")]


def test_else_if_chooses_the_first_true_branch() -> None:
    for size, expected in ((1, "relu"), (2, "sigmoid"), (3, "tanh")):
        graph = graph_of(f"""const K = {size}
        model m {{ input image(1, 8, 8)
            if K == 1 {{ relu }} else if K < 3 {{ sigmoid }} else {{ tanh }}
        }}""")
        assert graph.output_node.op == expected


def test_the_branch_not_taken_is_not_checked() -> None:
    graph_of("""model m { input image(1, 8, 8)
        if false { nonsense(1) -> conv(0, 99) } else { relu }
    }""")


@pytest.mark.parametrize("expression, expected", [
    ("1 < 2 and 2 <= 2", True), ("3 > 4 or not 1 != 1", True), ("2 >= 3", False),
    ("relu == relu", True), ("relu != leaky_relu(0.2)", True), ("[1, 2] == [1, 2]", True),
    ("5 if 1 == 1 else 1 / 0", 5), ("false and 1 / 0 == 1", False), ("true or nothing", True),
])
def test_comparisons_and_logic(expression: str, expected) -> None:
    assert value_of(expression) == expected


# --- lists, loops and loop-carried names ------------------------------------------------------------

def test_lists_index_from_either_end() -> None:
    assert value_of("[(1, 16), (6, 24), (6, 32)][-1][1]") == 32
    assert value_of("len([1, [2, 3], 4])") == 3
    assert value_of("range(2, 5)") == (2, 3, 4)


def test_a_stage_table_drives_the_network() -> None:
    graph = graph_of("""const STAGES = [(8, 1), (16, 2), (32, 2)]
    model m { input image(3, 32, 32)
        for c, s in STAGES { conv(c, 3, stride=s, padding=same) -> relu }
    }""")
    convs = [n for n in graph.nodes if n.op == "conv"]
    assert [(n.shape, n.attrs["stride"]) for n in convs] == [((8, 32, 32), (1, 1)), ((16, 16, 16), (2, 2)),
                                                           ((32, 8, 8), (2, 2))]


def test_dense_connectivity_carries_names_between_passes() -> None:
    graph = graph_of("""model m { input image(64, 8, 8)
        x = conv(64, 1)
        repeat 6 { y = x -> batchnorm -> relu -> conv(128, 1) -> batchnorm -> relu -> conv(32, 3, padding=1)
                   x = concat(x, y) }
        x -> relu
    }""")
    concats = [n for n in graph.nodes if n.op == "concat"]
    assert [n.name for n in concats] == [f"x_{i}" for i in range(1, 7)]
    assert concats[0].inputs == ("x", "y_1")
    assert concats[5].inputs == ("x_5", "y_6") and concats[5].shape == (64 + 6 * 32, 8, 8)
    assert graph.node(graph.output).inputs == ("x_6",)


def test_repeat_zero_adds_nothing() -> None:
    graph = graph_of("model m { input image(1, 8, 8); relu; repeat 0 { conv(4, 3) } }")
    assert [n.op for n in graph.nodes] == ["input", "relu"]


# --- layer parameters and several results ----------------------------------------------------------

def test_an_activation_passed_to_a_block() -> None:
    graph = graph_of("""block conv_bn(c, act=relu) { conv(c, 3, padding=same) -> batchnorm -> act }
    model m { input image(3, 8, 8)
        conv_bn(8)
        conv_bn(8, act=leaky_relu(0.2))
        conv_bn(8, act=elu(alpha=0.5))
    }""")
    acts = [n for n in graph.nodes if n.op in ("relu", "leaky_relu", "elu")]
    assert [(n.name, n.op) for n in acts] == [("conv_bn1.relu1", "relu"), ("conv_bn2.leaky_relu1", "leaky_relu"),
                                            ("conv_bn3.elu1", "elu")]
    assert acts[1].attrs["alpha"] == 0.2 and acts[2].attrs["alpha"] == 0.5


def test_a_block_yields_several_named_tensors() -> None:
    graph = graph_of("""block two(c) { a = conv(c, 1); b = in -> conv(c, 3, padding=same); output a, b }
    model m { input image(3, 8, 8)
        p, q = two(4)
        add(q, p)
    }""")
    assert graph.node(graph.output).inputs == ("two1.b", "two1.a")


# --- helpers ----------------------------------------------------------------------------------------

def torchvision_make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision.models._utils._make_divisible, as published."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@settings(max_examples=300, deadline=None)
@given(hs.floats(0.1, 4000, allow_nan=False), hs.integers(1, 64), hs.one_of(hs.none(), hs.integers(1, 64)))
def test_make_divisible_is_torchvisions(value: float, divisor: int, min_value: int | None) -> None:
    extra = f", min_value={min_value}" if min_value is not None else ""
    assert value_of(f"make_divisible({value!r}, {divisor}{extra})") == torchvision_make_divisible(value, divisor,
                                                                                              min_value)


@pytest.mark.parametrize("expression, expected", [
    ("min(3, 2.5, 7)", 2.5), ("max([4, 9, 2])", 9), ("abs(-3)", 3), ("round(2.5)", 2), ("round(3.5)", 4),
    ("floor(-1.5)", -2), ("ceil(1.2)", 2), ("ceil(6 * 1.1)", math.ceil(6 * 1.1)),
])
def test_integer_helpers(expression: str, expected) -> None:
    assert value_of(expression) == expected


def test_split_cuts_channels_into_named_slices() -> None:
    graph = graph_of("""model m { input image(3, 8, 8)
        x = conv(12, 1)
        a, b = x -> split(2)
        p, q, r = x -> split(sizes=(2, 4, 6))
        concat(r, a)
    }""")
    slices = {n.name: (n.attrs["start"], n.attrs["stop"], n.shape) for n in graph.nodes if n.op == "channel_slice"}
    assert slices == {"a": (0, 6, (6, 8, 8)), "b": (6, 12, (6, 8, 8)), "p": (0, 2, (2, 8, 8)),
                      "q": (2, 6, (4, 8, 8)), "r": (6, 12, (6, 8, 8))}
