"""`cnnc summary`: per-layer shapes, parameters, MACs and receptive fields, and the totals."""

from __future__ import annotations

from typing import Any

from cnnc.compiler.ir import Graph, Node
from cnnc.compiler.passes import dead_nodes, prune

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
PARAM_BYTES = 4  # parameters are kept in float32 whatever the input's dtype


def peak_activation_bytes(graph: Graph) -> int:
    """Peak memory of live activations for one sample, running the nodes in order and freeing each
    tensor after its last consumer: what an inference engine without in-place reuse needs."""
    last_use = {node.name: index for index, node in enumerate(graph.nodes)}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = index
    last_use[graph.output] = len(graph.nodes)
    element = DTYPE_BYTES[graph.dtype]
    live: dict[str, int] = {}
    peak = 0
    for index, node in enumerate(graph.nodes):
        live[node.name] = _elements(node.shape) * element
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use[n] <= index]:
            del live[name]
    return peak


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def describe_op(node: Node) -> str:
    activation = node.attrs.get("activation")
    return f"{node.op}+{activation.name}" if activation is not None else node.op


DEAD_MARK = " (dead)"
FROZEN_MARK = " (frozen)"


def _frozen_layer(node: Node) -> bool:
    """trainable=false: every parameter of the layer is frozen."""
    return node.attrs.get("trainable") is False


def _holds_frozen_parameters(node: Node) -> bool:
    """Whether the spec holds any of the layer's parameters fixed: trainable=false, or batchnorm's scale=false."""
    return _frozen_layer(node) or node.op == "batchnorm" and node.attrs.get("scale") is False


def dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def to_json(graph: Graph) -> dict[str, Any]:
    """Totals count the live layers, the ones the backends build; dead ones are listed apart."""
    dead = {node.name for node in dead_nodes(graph)}
    live = prune(graph)
    return {
        "model": graph.name,
        "input_shape": list(graph.input.shape),
        "input_dtype": graph.dtype,
        "output": graph.output,
        "layers": [
            {
                "name": n.name,
                "op": n.op,
                "activation": str(n.attrs["activation"]) if n.attrs.get("activation") else None,
                "inputs": list(n.inputs),
                "output_shape": list(n.shape),
                "params": n.params,
                "non_trainable_params": n.non_trainable,
                "frozen": _frozen_layer(n),
                "macs": n.macs,
                "receptive_field": list(n.receptive_field),
                "line": n.span.line,
                "dead": n.name in dead,
            }
            for n in graph.nodes
        ],
        "total_params": live.trainable_params + live.non_trainable_params,
        "trainable_params": live.trainable_params,
        "non_trainable_params": live.non_trainable_params,
        "total_macs": live.total_macs,
        "total_flops": 2 * live.total_macs,
        "param_bytes": (live.trainable_params + live.non_trainable_params) * PARAM_BYTES,
        "peak_activation_bytes": peak_activation_bytes(live),
        "dead_layers": sorted(dead),
        "dead_params": graph.trainable_params + graph.non_trainable_params - live.trainable_params
        - live.non_trainable_params,
        "dead_macs": graph.total_macs - live.total_macs,
    }


def to_text(graph: Graph) -> str:
    """The layer table, then totals over the live layers (those the backends build)."""
    dead = {node.name for node in dead_nodes(graph)}
    header = ("layer", "op", "output (C,H,W)", "params", "MACs", "RF", "inputs")
    rows = [
        (n.name, describe_op(n) + (FROZEN_MARK if _frozen_layer(n) else "")
         + (DEAD_MARK if n.name in dead else ""), dims(n.shape), f"{n.params:,}",
         f"{n.macs:,}", dims(n.receptive_field),
         ", ".join(n.inputs) if _merges_or_jumps(graph, n) else "")
        for n in graph.nodes
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    right = {3, 4}

    def line(cells) -> str:
        text = "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
        return text.rstrip()

    live = prune(graph)
    trainable, frozen = live.trainable_params, live.non_trainable_params
    param_bytes = (trainable + frozen) * PARAM_BYTES
    totals = [
        ("trainable parameters", f"{trainable:,}"),
        ("non-trainable values", f"{frozen:,}" + _kinds_of_untrained(live)),
        ("total (Keras's 'Total params')", f"{trainable + frozen:,}"),
        ("MACs per sample", f"{live.total_macs:,}"),
        ("FLOPs per sample (2 x MACs)", f"{2 * live.total_macs:,}"),
        ("parameter memory (float32)", _bytes(param_bytes)),
        (f"peak activation memory ({graph.dtype}, per sample)", _bytes(peak_activation_bytes(live))),
    ]
    if dead:
        dead_params = graph.trainable_params + graph.non_trainable_params - trainable - frozen
        totals.append(("dead layers (not built, exported or counted above)",
                       f"{len(dead)} layers, {dead_params:,} parameters, {graph.total_macs - live.total_macs:,} MACs"))
    label_width = max(len(k) for k, _ in totals)
    out = [f"model {graph.name}: input {dims(graph.input.shape)} {graph.dtype}, batch symbolic, "
           f"output '{graph.output}' {dims(graph.output_node.shape)}", "", line(header),
           line(["-" * w for w in widths]), *map(line, rows), ""]
    out += [f"{k.ljust(label_width)}  {v}" for k, v in totals]
    return "\n".join(out) + "\n"


def _kinds_of_untrained(live: Graph) -> str:
    kinds = [kind for kind, present in (
        ("batch-norm running mean and variance", any(n.op == "batchnorm" for n in live.nodes)),
        ("frozen parameters", any(_holds_frozen_parameters(n) for n in live.nodes))) if present]
    return f"  ({', '.join(kinds)})" if kinds else ""


def _merges_or_jumps(graph: Graph, node: Node) -> bool:
    """Show a node's inputs only where the graph is not a plain chain at that point."""
    if not node.inputs:
        return False
    index = graph.nodes.index(node)
    return len(node.inputs) > 1 or graph.nodes[index - 1].name != node.inputs[0]


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:,.2f} {unit} ({count:,} bytes)"
    return f"{count:,} bytes"
