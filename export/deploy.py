"""Deployment forms of an exported model: transforms of the onnx ModelProto, after the backend has built it.

    with_uint8_input(model, preprocess)   the model takes uint8 pixels, N x H x W x C, as apps decode
                                          them; the cast, scale, normalisation and transpose are nodes
    with_top_k(model, k)                  two more outputs: the k best scores and their class indices

Both leave output 0 (the class scores) as it was, so every consumer of the plain model still works,
and both record themselves in the metadata (`cnnc.input`, `cnnc.input_layout`, `cnnc.top_k`) that
`cnnc.runtime` reads. They work on any cnnc model, float or quantised, and need only onnx and numpy:
not the compiler's IR, so that the ONNX backend stays the one place that lowers layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnc.constants import PIXEL_SCALE
from cnnc.errors import CnncError
from cnnc.runtime.metadata import INPUT_FORM_KEY, INPUT_LAYOUT_KEY, TOP_K_KEY, UINT8_INPUT

PIXELS_INPUT = "pixels"
TOP_K_SCORES = "top_k_scores"
TOP_K_INDICES = "top_k_indices"


def with_uint8_input(model: onnx.ModelProto, preprocess: Mapping[str, Any] | None) -> onnx.ModelProto:
    """The model fed uint8 N x H x W x C pixels; `preprocess` ({"scale", "mean", "std"}) is what the
    float model expects to have been applied: (pixels * scale - mean) / std per channel.

    The nodes compute what `cnnc.runtime.preprocess.Preprocessing.apply` computes, in the same float32
    operations and order (cast, multiply, subtract, divide), so both forms give identical outputs.
    The transpose comes first, on one byte per value instead of four.
    """
    graph = model.graph
    if _metadata(model).get(INPUT_FORM_KEY) == UINT8_INPUT:
        raise CnncError("the model already takes uint8 pixels")
    if len(graph.input) != 1:
        raise CnncError(f"expected a model with one input, found {len(graph.input)}")
    original = graph.input[0]
    dims = original.type.tensor_type.shape.dim
    if original.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4:
        raise CnncError(f"expected a float input of shape [N, C, H, W], found {original.name}")
    channels = dims[1].dim_value
    scale, mean, std = _normalisation(preprocess, channels)
    name = _free_name(graph, PIXELS_INPUT)
    pixels = helper.make_tensor_value_info(name, TensorProto.UINT8, None)
    pixels.type.tensor_type.shape.dim.extend([_copy_dim(dims[i]) for i in (0, 2, 3, 1)])

    steps = [
        helper.make_node("Transpose", [name], [f"{original.name}/nchw"], name=f"{original.name}/transpose",
                         perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [f"{original.name}/nchw"], [f"{original.name}/float"], name=f"{original.name}/cast",
                         to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{original.name}/float", f"{original.name}/scale"], [f"{original.name}/scaled"],
                         name=f"{original.name}/multiply_scale"),
    ]
    constants = [numpy_helper.from_array(np.asarray(scale, np.float32), f"{original.name}/scale")]
    last = f"{original.name}/scaled"
    # x - 0 and x / 1 are exact in float32, so those steps are left out rather than computed.
    for op, values, identity, label, result in (("Sub", mean, 0.0, "mean", "centred"),
                                                ("Div", std, 1.0, "std", "standardised")):
        if all(value == identity for value in values):
            continue
        constant, output = f"{original.name}/{label}", f"{original.name}/{result}"
        constants.append(numpy_helper.from_array(np.asarray(values, np.float32).reshape(1, -1, 1, 1), constant))
        steps.append(helper.make_node(op, [last, constant], [output], name=f"{original.name}/{op.lower()}_{label}"))
        last = output
    # The last step writes the original input's name, so the layers read it unchanged.
    steps[-1].output[0] = original.name

    del graph.input[:]
    graph.input.append(pixels)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(steps + nodes)
    graph.initializer.extend(constants)
    set_metadata(model, {INPUT_FORM_KEY: UINT8_INPUT, INPUT_LAYOUT_KEY: "NHWC"})
    return model


def with_top_k(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """Outputs 1 and 2: the k highest scores of output 0 (best first) and their class indices (int64)."""
    graph = model.graph
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CnncError(f"top-k must be a positive integer, got {k!r}")
    if TOP_K_KEY in _metadata(model):
        raise CnncError("the model already has top-k outputs")
    scores = graph.output[0]
    dims = scores.type.tensor_type.shape.dim
    classes = dims[1].dim_value if len(dims) == 2 else 0
    if classes <= 0:
        raise CnncError(f"top-k needs an output of shape [N, classes], found {scores.name}")
    if k > classes:
        raise CnncError(f"top-k {k} is more than the model's {classes} classes")
    k_name = _free_name(graph, "top_k/k")
    values, indices = _free_name(graph, TOP_K_SCORES), _free_name(graph, TOP_K_INDICES)
    graph.initializer.append(numpy_helper.from_array(np.asarray([k], np.int64), k_name))
    # sorted=1, largest=1: best first; on ties onnxruntime puts the lower index first, as a stable sort does.
    graph.node.append(helper.make_node("TopK", [scores.name, k_name], [values, indices], name="top_k",
                                       axis=1, largest=1, sorted=1))
    batch = dims[0].dim_param or dims[0].dim_value or None
    graph.output.extend([helper.make_tensor_value_info(values, TensorProto.FLOAT, [batch, k]),
                         helper.make_tensor_value_info(indices, TensorProto.INT64, [batch, k])])
    set_metadata(model, {TOP_K_KEY: str(k)})
    return model


def set_metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    """Add or replace metadata_props entries, keeping the others and their order."""
    merged = {**_metadata(model), **entries}
    del model.metadata_props[:]
    helper.set_model_props(model, merged)


def with_minimal_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with only the opset imports its nodes use, stamped with the lowest IR version that
    carries them, so that older runtimes (the onnxruntime bindings apps ship) load it: tools that
    rewrite a model (onnxruntime's quantiser) import every domain they know and stamp their own
    newest IR version."""
    used = {node.domain or "" for node in model.graph.node} | {""}
    kept = [opset for opset in model.opset_import if (opset.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = helper.find_min_ir_version_for(kept, ignore_unknown=True)
    return model


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _normalisation(preprocess: Mapping[str, Any] | None,
                   channels: int) -> tuple[float, Sequence[float], Sequence[float]]:
    preprocess = preprocess or {}
    scale = float(preprocess.get("scale", PIXEL_SCALE))
    mean = [float(value) for value in np.atleast_1d(preprocess.get("mean", [0.0]))]
    std = [float(value) for value in np.atleast_1d(preprocess.get("std", [1.0]))]
    for label, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise CnncError(f"the preprocessing's {label} has {len(values)} values for {channels} channels")
    if 0.0 in std:
        raise CnncError(f"the preprocessing's std contains 0: {std}")
    return scale, mean, std


def _free_name(graph: onnx.GraphProto, wanted: str) -> str:
    """`wanted`, or `wanted_2`, `wanted_3`, ...: the first that no tensor of the graph has."""
    taken = {value.name for value in (*graph.input, *graph.output, *graph.initializer)}
    taken.update(name for node in graph.node for name in (*node.input, *node.output))
    name, index = wanted, 1
    while name in taken:
        index += 1
        name = f"{wanted}_{index}"
    return name


def _copy_dim(dim: onnx.TensorShapeProto.Dimension) -> onnx.TensorShapeProto.Dimension:
    copy = onnx.TensorShapeProto.Dimension()
    copy.CopyFrom(dim)
    return copy
