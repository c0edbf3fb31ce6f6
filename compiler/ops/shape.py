"""Layers that rearrange values without computing new ones."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cnnc.compiler.ops.core import Inferred, OpDef, TensorInfo, whole_input_field

FAMILY = "shape"


def _flatten_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    return Inferred((math.prod(inputs[0].shape),))


FLATTEN = OpDef("flatten", FAMILY, "(C, H, W) -> (C*H*W,) in channel-major order, as PyTorch", (), _flatten_infer,
                "conv(2, 3) -> flatten", field=whole_input_field)

OPS = (FLATTEN,)
