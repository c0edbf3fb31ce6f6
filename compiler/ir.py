"""The checked IR: a typed, shape-annotated graph of frozen nodes in topological order.

This is what every backend consumes. Shapes exclude the symbolic batch dimension.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cnnc.compiler.arguments import Option
from cnnc.dsl.diagnostics import Span


@dataclass(frozen=True)
class Attrs:
    """An op's resolved attributes (kernel, stride, explicit pads, activation, init, ...)."""

    items: tuple[tuple[str, Any], ...]

    @staticmethod
    def of(mapping: Mapping[str, Any]) -> Attrs:
        return Attrs(tuple(mapping.items()))

    def __getitem__(self, key: str) -> Any:
        for name, value in self.items:
            if name == key:
                return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return any(name == key for name, _ in self.items)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.items)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items)


@dataclass(frozen=True)
class Node:
    name: str                      # unique; block instances nest with dots: "res1.conv2"
    op: str                        # a key of the op registry (compiler.ops.OPS), or "input"
    inputs: tuple[str, ...]        # names of the producing nodes, in argument order
    attrs: Attrs
    shape: tuple[int, ...]         # output shape without the batch: (C, H, W) or (N,)
    params: int                    # trainable parameters
    non_trainable: int             # e.g. batch-norm running mean and variance
    macs: int                      # multiply-accumulates per sample
    receptive_field: tuple[int, int]  # in input pixels (height, width)
    span: Span
    formulas: tuple[str, str] | None = None  # how the output height and width were computed


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]        # topological order; nodes[0] is the input
    output: str
    dtype: str
    source_path: str

    @property
    def input(self) -> Node:
        return self.nodes[0]

    def node(self, name: str) -> Node:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    @property
    def output_node(self) -> Node:
        return self.node(self.output)

    @property
    def trainable_params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def non_trainable_params(self) -> int:
        return sum(n.non_trainable for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def num_classes(self) -> int:
        return self.output_node.shape[0]


@dataclass(frozen=True)
class Program:
    """A checked spec: the model graph, its train settings, and the sources that made it."""

    graph: Graph
    train: Any                     # compiler.train_config.TrainConfig
    sources: Mapping[str, str]     # path -> text of the spec and every file it includes
    weight_init: Option            # the model-wide default initializer

    @property
    def spec_text(self) -> str:
        return self.sources[self.graph.source_path]
