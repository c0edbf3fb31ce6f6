"""`cnnc summary`: per-layer shapes, parameters, MACs and receptive fields, and the totals."""

from __future__ import annotations

from typing import Any

from cnnc.compiler.ir import Graph, Node

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


def dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def to_json(graph: Graph) -> dict[str, Any]:
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
                "macs": n.macs,
                "receptive_field": list(n.receptive_field),
                "line": n.span.line,
            }
            for n in graph.nodes
        ],
        "total_params": graph.trainable_params + graph.non_trainable_params,
        "trainable_params": graph.trainable_params,
        "non_trainable_params": graph.non_trainable_params,
        "total_macs": graph.total_macs,
        "total_flops": 2 * graph.total_macs,
        "param_bytes": (graph.trainable_params + graph.non_trainable_params) * PARAM_BYTES,
        "peak_activation_bytes": peak_activation_bytes(graph),
    }


def to_text(graph: Graph) -> str:
    header = ("layer", "op", "output (C,H,W)", "params", "MACs", "RF", "inputs")
    rows = [
        (n.name, describe_op(n), dims(n.shape), f"{n.params:,}", f"{n.macs:,}", dims(n.receptive_field),
         ", ".join(n.inputs) if _merges_or_jumps(graph, n) else "")
        for n in graph.nodes
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    right = {3, 4}

    def line(cells) -> str:
        text = "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return text.rstrip()

    trainable, frozen = graph.trainable_params, graph.non_trainable_params
    param_bytes = (trainable + frozen) * PARAM_BYTES
    totals = [
        ("trainable parameters", f"{trainable:,}"),
        ("non-trainable values", f"{frozen:,}" + ("  (batch-norm running mean and variance)" if frozen else "")),
        ("total (Keras's 'Total params')", f"{trainable + frozen:,}"),
        ("MACs per sample", f"{graph.total_macs:,}"),
        ("FLOPs per sample (2 x MACs)", f"{2 * graph.total_macs:,}"),
        ("parameter memory (float32)", _bytes(param_bytes)),
        (f"peak activation memory ({graph.dtype}, per sample)", _bytes(peak_activation_bytes(graph))),
    ]
    label_width = max(len(k) for k, _ in totals)
    out = [f"model {graph.name}: input {dims(graph.input.shape)} {graph.dtype}, batch symbolic, "
           f"output '{graph.output}' {dims(graph.output_node.shape)}", "", line(header),
           line(["-" * w for w in widths]), *map(line, rows), ""]
    out += [f"{k.ljust(label_width)}  {v}" for k, v in totals]
    return "\n".join(out) + "\n"


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
