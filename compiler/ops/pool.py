"""Pooling: windows (`maxpool`, `avgpool`) and global reductions over height and width."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from cnnc.compiler import shapes
from cnnc.compiler.arguments import ArgSpec, Bool, Padding, Pair
from cnnc.compiler.ops.conv import window
from cnnc.compiler.ops.core import (
    Field,
    Inferred,
    OpDef,
    Shape,
    ShapeError,
    TensorInfo,
    need_feature_map,
    whole_input_field,
    window_field,
)
from cnnc.dsl.codes import OUT_OF_RANGE

FAMILY = "pool"


def _pool_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    stride = attrs["stride"] or attrs["kernel"]
    full = {**attrs, "stride": stride, "dilation": (1, 1)}
    if attrs["ceil_mode"] and attrs["padding"] == "same":
        raise ShapeError(f"{label}: ceil_mode=true has no effect with padding=same; remove one",
                         "Received: padding=same, ceil_mode=true", code=OUT_OF_RANGE)
    padding = attrs["padding"]
    if padding != "same":
        kh, kw = attrs["kernel"]
        top, bottom, left, right = padding
        if max(top, bottom) >= kh or max(left, right) >= kw:
            raise ShapeError(
                f"{label}: padding must be smaller than the {kh}x{kw} window, or some windows hold only padding",
                f"Received: padding=({top}, {bottom}, {left}, {right}), kernel={kh}x{kw}", code=OUT_OF_RANGE,
            )
    inferred = window(label, full, inputs[0])
    return Inferred(inferred.shape, {**inferred.attrs, "stride": stride}, inferred.formulas, inferred.warnings)


_POOL_ARGS = (
    ArgSpec("kernel", Pair(), positional=True, doc="the window size, 2 or (2, 3)"),
    ArgSpec("stride", Pair(), None, doc="defaults to the kernel size"),
    ArgSpec("padding", Padding(), (0, 0, 0, 0)),
    ArgSpec("ceil_mode", Bool(), False),
)

MAXPOOL = OpDef("maxpool", FAMILY, "max pooling; padding never wins the max", _POOL_ARGS, _pool_infer,
                "maxpool(3, stride=2, padding=1, ceil_mode=true)", field=window_field)
AVGPOOL = OpDef(
    "avgpool", FAMILY, "average pooling; padding is left out of the average unless count_pad=true",
    (*_POOL_ARGS, ArgSpec("count_pad", Bool(), False)), _pool_infer,
    "avgpool(3, stride=2, padding=1, ceil_mode=true, count_pad=true)", field=window_field,
)


def _global_pool_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = need_feature_map(label, inputs[0])[0]
    return Inferred((channels, 1, 1) if attrs["keepdims"] else (channels,))


_GLOBAL_ARGS = (ArgSpec("keepdims", Bool(), False),)
GLOBAL_AVGPOOL = OpDef("global_avgpool", FAMILY, "mean over height and width", _GLOBAL_ARGS, _global_pool_infer,
                       "global_avgpool(keepdims=true)", field=whole_input_field)
GLOBAL_MAXPOOL = OpDef("global_maxpool", FAMILY, "max over height and width", _GLOBAL_ARGS, _global_pool_infer,
                       "global_maxpool", field=whole_input_field)



# --- adaptive average pooling ------------------------------------------------------------------------

def adaptive_bins(size: int, output: int) -> tuple[tuple[int, int], ...]:
    """PyTorch's adaptive pooling bins along one axis: bin i covers [floor(i * size / output),
    ceil((i + 1) * size / output)), so bins may differ in length and overlap when sizes do not divide."""
    return tuple((i * size // output, -(-(i + 1) * size // output)) for i in range(output))


def uniform_window(size: int, output: int) -> tuple[int, int] | None:
    """(kernel, stride) of a plain sliding window with exactly these bins, or None when they differ."""
    bins = adaptive_bins(size, output)
    kernel = bins[0][1] - bins[0][0]
    stride = bins[1][0] - bins[0][0] if output > 1 else 1
    if stride < 1 or any((start, end) != (i * stride, i * stride + kernel) for i, (start, end) in enumerate(bins)):
        return None
    return kernel, stride


def _adaptive_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = need_feature_map(label, inputs[0])[0]
    return Inferred((channels, *attrs["size"]))


def _adaptive_field(attrs: Mapping[str, Any], inputs: tuple[Field, ...], shapes_: tuple[Shape, ...]) -> Field:
    """A sliding window where the bins are uniform; otherwise the longest bin as the window, and the
    average distance between bins, size / output, as the jump."""
    field_ = inputs[0]
    axes = []
    for size, output, extent, jump in zip(shapes_[0][1:], attrs["size"], (field_.height, field_.width),
                                          (field_.jump_height, field_.jump_width)):
        window_ = uniform_window(size, output)
        if window_ is not None:
            axes.append(shapes.receptive_field(extent, jump, *window_))
        else:
            longest = max(end - start for start, end in adaptive_bins(size, output))
            axes.append((extent + (longest - 1) * jump, jump * Fraction(size, output)))
    (height, jump_h), (width, jump_w) = axes
    return Field(height, width, jump_h, jump_w)


ADAPTIVE_AVGPOOL = OpDef(
    "adaptive_avgpool", FAMILY,
    "average pooling to a given output size (PyTorch's adaptive_avg_pool2d), any input size",
    (ArgSpec("size", Pair(), positional=True, doc="the output's height and width, 7 or (7, 5)"),),
    _adaptive_infer, "adaptive_avgpool((4, 5))", field=_adaptive_field,
)

OPS = (MAXPOOL, AVGPOOL, GLOBAL_AVGPOOL, GLOBAL_MAXPOOL, ADAPTIVE_AVGPOOL)
