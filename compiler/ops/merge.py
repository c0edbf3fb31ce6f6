"""Merges: layers of several input tensors, named as arguments (`add(a, b)`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnc.compiler import shapes
from cnnc.compiler.ops.core import Inferred, OpDef, ShapeError, TensorInfo, dims
from cnnc.dsl.codes import INCOMPATIBLE_SHAPES

FAMILY = "merge"


def _elementwise_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    shape = inputs[0].shape
    for other in inputs[1:]:
        combined = shapes.broadcast(shape, other.shape)
        if combined is None:
            listing = ", ".join(f"{i.origin}: {dims(i.shape)}" for i in inputs)
            raise ShapeError(
                f"{label}: cannot combine {dims(shape)} with {dims(other.shape)} from {other.origin}",
                f"inputs: {listing}",
                "element-wise inputs need equal shapes (a size of 1, or a flat (C,) against (C, H, W), broadcasts)",
                code=INCOMPATIBLE_SHAPES,
            )
        shape = combined
    return Inferred(shape)


def _concat_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    first = inputs[0]
    for other in inputs[1:]:
        if len(other.shape) != len(first.shape) or other.shape[1:] != first.shape[1:]:
            listing = ", ".join(f"{i.origin}: {dims(i.shape)}" for i in inputs)
            raise ShapeError(
                f"{label}: cannot concatenate {dims(first.shape)} from {first.origin} with "
                f"{dims(other.shape)} from {other.origin} along channels",
                f"inputs: {listing}",
                "all inputs need the same height and width (or all be flat)",
                code=INCOMPATIBLE_SHAPES,
            )
    return Inferred((sum(i.shape[0] for i in inputs), *first.shape[1:]))


_TWO_BRANCHES = "a = conv(4, 3, padding=1)\n b = image -> conv(4, 1)\n"
ADD = OpDef("add", FAMILY, "element-wise sum (residual connections)", (), _elementwise_infer,
            _TWO_BRANCHES + "add(a, b)", is_merge=True)
MULTIPLY = OpDef("multiply", FAMILY, "element-wise product (squeeze-excitation gates)", (), _elementwise_infer,
                 "a = conv(4, 3, padding=1)\n gate = global_avgpool -> dense(4, activation=sigmoid)\n"
                 "multiply(a, gate)", is_merge=True)
CONCAT = OpDef("concat", FAMILY, "concatenation along channels", (), _concat_infer,
               _TWO_BRANCHES + "concat(a, b, a)", is_merge=True)

OPS = (ADD, MULTIPLY, CONCAT)
