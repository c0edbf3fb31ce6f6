"""Layers that rearrange values without computing new ones."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cnnc.compiler.arguments import ArgSpec, Int
from cnnc.compiler.ops.core import Inferred, OpDef, ShapeError, TensorInfo, whole_input_field
from cnnc.dsl.codes import OUT_OF_RANGE

FAMILY = "shape"


def _flatten_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    return Inferred((math.prod(inputs[0].shape),))


FLATTEN = OpDef("flatten", FAMILY, "(C, H, W) -> (C*H*W,) in channel-major order, as PyTorch", (), _flatten_infer,
                "conv(2, 3) -> flatten", field=whole_input_field)



def _channel_slice_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    info = inputs[0]
    start, stop = attrs["start"], attrs["stop"]
    if not start < stop <= info.shape[0]:
        raise ShapeError(f"{label}: channels {start} to {stop} are not a part of the {info.shape[0]} channels "
                         f"of {info.origin}", f"Received: start={start}, stop={stop}; start < stop <= channels",
                         code=OUT_OF_RANGE)
    return Inferred((stop - start, *info.shape[1:]))


# One part of a channel split: `a, b = split(2)` elaborates into one channel_slice node per part.
CHANNEL_SLICE = OpDef(
    "channel_slice", FAMILY, "channels start to stop - 1, as x[:, start:stop]; split is made of these",
    (
        ArgSpec("start", Int(minimum=0), positional=True, doc="the first channel"),
        ArgSpec("stop", Int(minimum=1), positional=True, doc="one past the last channel"),
    ),
    _channel_slice_infer, "conv(4, 3) -> channel_slice(1, 3)",
)

OPS = (FLATTEN, CHANNEL_SLICE)
