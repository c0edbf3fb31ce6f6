"""IR -> IR passes and questions about a checked graph, shared by check, summary, both backends
and training: which layers are live, where a final softmax is, and what a graph ends with.

`with_outputs` decides what a deployed or trained graph ends with, so that every backend builds the
same thing from it:
    None             the graph as the spec wrote it
    "logits"         a final softmax (a `softmax` layer, or `activation=softmax` on the last layer,
                     possibly followed by dropout, drop_path, identity or flatten) is removed: a softmax layer
                     becomes `identity`, a fused one loses its activation; layer names are kept
    "probabilities"  a `softmax` layer named `probabilities` is appended unless the graph already
                     ends with a softmax
No torch, no onnx: pure IR.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from cnnc.compiler.ir import Attrs, Graph, Node
from cnnc.compiler.ops import OPS, TensorInfo

OUTPUT_CHOICES = ("logits", "probabilities")
PROBABILITIES_NODE = "probabilities"
# Layers that a softmax may be followed by and still be "final": they leave the values unchanged.
_TRANSPARENT = ("dropout", "drop_path", "identity", "flatten")


def final_softmax(graph: Graph) -> Node | None:
    """The layer whose softmax makes the graph's output (the softmax layer, or the layer with a
    fused softmax activation), or None when the graph ends otherwise."""
    node = graph.output_node
    while True:
        activation = node.attrs.get("activation")
        if node.op == "softmax" or (activation is not None and activation.name == "softmax"):
            return node
        if node.op not in _TRANSPARENT or not node.inputs:
            return None
        node = graph.node(node.inputs[0])


def live_nodes(graph: Graph) -> frozenset[str]:
    """The nodes that the output depends on (the input included)."""
    live: set[str] = set()
    stack = [graph.output]
    while stack:
        name = stack.pop()
        if name not in live:
            live.add(name)
            stack.extend(graph.node(name).inputs)
    return frozenset(live)


def dead_nodes(graph: Graph) -> tuple[Node, ...]:
    """Layers whose output never reaches the model's output, in graph order."""
    live = live_nodes(graph)
    return tuple(n for n in graph.nodes if n.name not in live)


def prune(graph: Graph) -> Graph:
    """The graph without its dead layers: what the backends build."""
    live = live_nodes(graph)
    if len(live) == len(graph.nodes):
        return graph
    return replace(graph, nodes=tuple(n for n in graph.nodes if n.name in live))


def output_kind(graph: Graph) -> str:
    """'probabilities' when the graph ends with a softmax, else 'logits' (what the metadata records)."""
    return "probabilities" if final_softmax(graph) is not None else "logits"


def with_outputs(graph: Graph, outputs: str | None) -> Graph:
    if outputs is None:
        return graph
    if outputs not in OUTPUT_CHOICES:
        raise ValueError(f"outputs must be None, 'logits' or 'probabilities', not {outputs!r}")
    softmax = final_softmax(graph)
    if outputs == "logits":
        if softmax is None:
            return graph
        if softmax.op == "softmax":
            stripped = replace(softmax, op="identity", attrs=Attrs(()))
        else:
            stripped = replace(softmax, attrs=Attrs(tuple((k, None if k == "activation" else v)
                                                          for k, v in softmax.attrs)))
        return replace(graph, nodes=tuple(stripped if n.name == softmax.name else n for n in graph.nodes))
    if softmax is not None:
        return graph
    last = graph.output_node
    taken = {n.name for n in graph.nodes}
    name, index = PROBABILITIES_NODE, 1
    while name in taken:
        index += 1
        name = f"{PROBABILITIES_NODE}{index}"
    appended = Node(name=name, op="softmax", inputs=(last.name,), attrs=Attrs(()), shape=last.shape, params=0,
                    non_trainable=0, macs=0, receptive_field=last.receptive_field, span=last.span,
                    formulas=last.formulas)
    return replace(graph, nodes=(*graph.nodes, appended), output=name)


def fused_activation(node: Node) -> Node | None:
    """The activation fused into a layer (`activation=relu`) as a node of its own, named
    `layer/relu`, that reads the layer's output; None when there is none (or it is identity)."""
    if node.op not in OPS or not OPS[node.op].takes_activation:
        return None
    activation = node.attrs.get("activation")
    if activation is None or activation.name == "identity":
        return None
    return Node(f"{node.name}/{activation.name}", activation.name, (node.name,), Attrs(activation.settings),
                node.shape, 0, 0, 0, node.receptive_field, node.span)


def decompose(node: Node, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Node, ...]:
    """A node as the nodes of its op's decomposition (see compiler.ops.core.Part), for a backend
    without a lowering of its own. `shapes` holds the shapes of the node's inputs. Intermediate
    nodes are named `node/part`; the last one keeps the node's name, and so its parameters."""
    decomposition = OPS[node.op].decomposition
    assert decomposition is not None, f"op '{node.op}' has no decomposition"
    parts = decomposition(node.attrs.as_dict())
    known = dict(shapes)
    nodes = []
    for position, part in enumerate(parts):
        name = node.name if position == len(parts) - 1 else f"{node.name}/{part.name}"
        inputs = tuple(node.inputs[i] if isinstance(i, int) else f"{node.name}/{i}" for i in part.inputs)
        infos = tuple(TensorInfo(source, known[source], node.span.line) for source in inputs)
        inferred = OPS[part.op].infer(f"{part.op} '{name}'", part.attrs, infos)
        known[name] = inferred.shape
        nodes.append(Node(name, part.op, inputs, Attrs.of({**part.attrs, **inferred.attrs}), inferred.shape,
                          0, 0, 0, node.receptive_field, node.span))
    return tuple(nodes)
