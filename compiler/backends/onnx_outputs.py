"""What a deployed graph ends with: the spec's own output, logits, or softmax probabilities.

An IR -> IR transform, so that every backend (ONNX, PyTorch for the export's parity gate) builds
the same thing from it:
    None             the graph as the spec wrote it
    "logits"         a final softmax (a `softmax` layer, or `activation=softmax` on the last layer,
                     possibly followed by dropout, identity or flatten) is removed: a softmax layer
                     becomes `identity`, a fused one loses its activation; layer names are kept
    "probabilities"  a `softmax` layer named `probabilities` is appended unless the graph already
                     ends with a softmax
No torch, no onnx: pure IR.
"""

from __future__ import annotations

from dataclasses import replace

from cnnc.compiler.ir import Attrs, Graph, Node

OUTPUT_CHOICES = ("logits", "probabilities")
PROBABILITIES_NODE = "probabilities"
# Layers that a softmax may be followed by and still be "final": they leave the values unchanged.
_TRANSPARENT = ("dropout", "identity", "flatten")


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
