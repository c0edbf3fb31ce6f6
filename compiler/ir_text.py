"""The checked IR as readable text (`cnnc compile --emit ir`): one line per node, every attribute."""

from __future__ import annotations

from typing import Any

from cnnc.compiler.arguments import Option
from cnnc.compiler.ir import Graph, Node
from cnnc.compiler.values import format_value

HIDDEN_ATTRS = {"padding"}  # shown resolved, as `pads`


def _type(graph: Graph, shape: tuple[int, ...]) -> str:
    return f"{graph.dtype}[N, {', '.join(map(str, shape))}]"


def _attr(value: Any) -> str:
    if isinstance(value, Option):
        return str(value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if value is None:
        return "none"
    return format_value(value)


def node_text(graph: Graph, node: Node) -> str:
    attrs = " ".join(f"{k}={_attr(v)}" for k, v in node.attrs if k not in HIDDEN_ATTRS)
    operands = ", ".join(f"%{name}" for name in node.inputs)
    cost = f"params={node.params}" + (f"+{node.non_trainable}" if node.non_trainable else "") + f" macs={node.macs}"
    head = f"  %{node.name} = {node.op}({operands})"
    return f"{head}{' ' + attrs if attrs else ''} : {_type(graph, node.shape)}  # {cost} line {node.span.line}"


def to_text(graph: Graph) -> str:
    entry = graph.input
    lines = [f"graph {graph.name}(%{entry.name}: {_type(graph, entry.shape)}) -> "
             f"{_type(graph, graph.output_node.shape)} {{"]
    lines += [node_text(graph, n) for n in graph.nodes[1:]]
    lines += [f"  return %{graph.output}", "}"]
    return "\n".join(lines) + "\n"
