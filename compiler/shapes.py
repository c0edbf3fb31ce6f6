"""Pure shape arithmetic for one spatial axis, shared by the op rules, the backends and the tests.

Conventions (documented in docs/language.md):
- `same` padding follows TensorFlow: output = ceil(input / stride); the total padding
  max((output - 1) * stride + effective_kernel - input, 0) is split with the extra row/column at the
  bottom/right, so it is asymmetric when the total is odd.
- Explicit padding: output = floor((input + before + after - effective_kernel) / stride) + 1.
- ceil mode (pooling): the division rounds up, but, as in PyTorch and ONNX, the last window must
  start inside the input or the leading padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's `same` padding for one axis: (before, after), the odd extra one after."""
    output = math.ceil(size / stride)
    total = max((output - 1) * stride + effective_kernel(kernel, dilation) - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class AxisResult:
    """One axis's output size and how it was computed, for messages: `floor((8 - 2) / 2) + 1 = 4`."""

    size: int
    formula: str
    dropped: int  # input rows/columns no window reaches (valid/explicit padding only)


def window_output(
    size: int,
    kernel: int,
    stride: int,
    pads: tuple[int, int],
    dilation: int = 1,
    ceil_mode: bool = False,
) -> AxisResult:
    """Output length of a sliding window over one axis with explicit padding."""
    before, after = pads
    reach = effective_kernel(kernel, dilation)
    span = size + before + after - reach
    padded = f"{size}" + (f" + {before}" if before else "") + (f" + {after}" if after else "")
    if span < 0:
        return AxisResult(math.floor(span / stride) + 1, f"{padded} - {reach} < 0", 0)
    if ceil_mode:
        output = -(-span // stride) + 1
        if (output - 1) * stride >= size + before:
            output -= 1
        return AxisResult(output, f"ceil(({padded} - {reach}) / {stride}) + 1 = {output}", 0)
    output = span // stride + 1
    dropped = max(span % stride - after, 0)
    if stride == 1:
        formula = f"{padded} - {reach} + 1 = {output}"
    else:
        formula = f"floor(({padded} - {reach}) / {stride}) + 1 = {output}"
    return AxisResult(output, formula, dropped)


def same_output(size: int, stride: int) -> AxisResult:
    output = math.ceil(size / stride)
    formula = f"{size} (same padding)" if stride == 1 else f"ceil({size} / {stride}) = {output} (same padding)"
    return AxisResult(output, formula, 0)


def receptive_field(field: Fraction, jump: Fraction, kernel: int, stride: int,
                    dilation: int = 1) -> tuple[Fraction, Fraction]:
    """(receptive field, jump) after a window: each output sees kernel-1 more input steps."""
    return field + (effective_kernel(kernel, dilation) - 1) * jump, jump * stride


def broadcast(left: tuple[int, ...], right: tuple[int, ...]) -> tuple[int, ...] | None:
    """Numpy broadcasting over (C, H, W) or (N,), where a flat (C,) meets (C, H, W) as (C, 1, 1)."""
    if len(left) != len(right):
        if len(left) == 1 and len(right) == 3:
            left = (left[0], 1, 1)
        elif len(right) == 1 and len(left) == 3:
            right = (right[0], 1, 1)
        else:
            return None
    out = []
    for a, b in zip(left, right):
        if a != b and 1 not in (a, b):
            return None
        out.append(max(a, b))
    return tuple(out)
