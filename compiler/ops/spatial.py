"""Layers without parameters that move values in space or across channels: `upsample`, `pad` and
`channel_shuffle` (PyTorch's F.interpolate, F.pad and nn.ChannelShuffle)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnnc.compiler.arguments import ArgError, ArgSpec, Choice, Float, Int, Padding, Pair
from cnnc.compiler.ops.core import (
    Field,
    Inferred,
    OpDef,
    Shape,
    ShapeError,
    TensorInfo,
    dims,
    divides,
    need_feature_map,
)
from cnnc.compiler.values import Symbol
from cnnc.dsl.codes import OUT_OF_RANGE

FAMILY = "spatial"

# --- upsample --------------------------------------------------------------------------------------


def _upsample_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels, height, width = need_feature_map(label, inputs[0])
    sh, sw = attrs["scale"]
    formulas = (f"{height} x {sh} = {height * sh}", f"{width} x {sw} = {width * sw}")
    return Inferred((channels, height * sh, width * sw), formulas=formulas)


def _upsample_field(attrs: Mapping[str, Any], inputs: tuple[Field, ...], shapes_: tuple[Shape, ...]) -> Field:
    """Nearest reads one input pixel; bilinear (scale > 1) two neighbours along each axis. The jump
    between neighbouring outputs shrinks by the scale."""
    field_ = inputs[0]
    grown = []
    for scale, extent, jump in zip(attrs["scale"], (field_.height, field_.width),
                                   (field_.jump_height, field_.jump_width)):
        reads_two = attrs["mode"] == "bilinear" and scale > 1
        grown.append((extent + jump if reads_two else extent, jump / scale))
    (height, jump_h), (width, jump_w) = grown
    return Field(height, width, jump_h, jump_w)


UPSAMPLE = OpDef(
    "upsample", FAMILY, "upsampling by an integer factor, nearest or bilinear (PyTorch's F.interpolate)",
    (
        ArgSpec("scale", Pair(), (2, 2), positional=True, doc="an integer, or a (height, width) pair of them"),
        ArgSpec("mode", Choice(("nearest", "bilinear")), "nearest"),
    ),
    _upsample_infer, "upsample((2, 3)) -> upsample(2, mode=bilinear)", field=_upsample_field,
)


# --- pad -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sides:
    """Explicit padding: an integer, (height, width) or (top, bottom, left, right), as conv's `padding`
    without its named modes."""

    description: str = "an integer, (height, width) or (top, bottom, left, right)"

    def convert(self, value: Any) -> tuple[int, int, int, int]:
        if isinstance(value, Symbol):
            raise ArgError(f"must be {self.description}")
        try:
            return Padding().convert(value)  # type: ignore[return-value]  # not a Symbol: never `same`
        except ArgError as bad:
            raise ArgError(f"must be {self.description}" if bad.code != OUT_OF_RANGE else str(bad), bad.code) from None


def _pad_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    info = inputs[0]
    channels, height, width = need_feature_map(label, info)
    top, bottom, left, right = attrs["padding"]
    mode, value = attrs["mode"], attrs["value"]
    received = f"Received: padding=({top}, {bottom}, {left}, {right})"
    if value is not None and mode != "constant":
        raise ShapeError(f"{label}: value applies to mode=constant only; {mode} padding copies input values",
                         f"Received: mode={mode}, value={value}", code=OUT_OF_RANGE)
    if mode == "reflect" and (max(top, bottom) >= height or max(left, right) >= width):
        raise ShapeError(f"{label}: reflect padding must be smaller than the input on each side (it mirrors "
                         "the input without repeating its edge)",
                         f"{received}, input {dims(info.shape)} from {info.origin}", code=OUT_OF_RANGE)
    resolved = {"pads": (top, bottom, left, right), **({"value": 0.0 if value is None else value}
                                                        if mode == "constant" else {})}
    formulas = (_padded(height, top, bottom), _padded(width, left, right))
    return Inferred((channels, height + top + bottom, width + left + right), resolved, formulas)


def _padded(size: int, before: int, after: int) -> str:
    if not before and not after:
        return f"{size}"
    return f"{size}" + "".join(f" + {pad}" for pad in (before, after) if pad) + f" = {size + before + after}"


PAD = OpDef(
    "pad", FAMILY, "explicit padding: a constant, the mirror image (reflect) or the edge (replicate)",
    (
        ArgSpec("padding", Sides(), positional=True, doc="an integer, (height, width) or (top, bottom, left, right)"),
        ArgSpec("mode", Choice(("constant", "reflect", "replicate")), "constant"),
        ArgSpec("value", Float(), None, doc="the constant, mode=constant only (default 0)"),
    ),
    _pad_infer, "pad((1, 2, 0, 3), mode=reflect) -> pad(1, mode=replicate) -> pad((2, 1), value=0.5)",
)


# --- channel_shuffle -------------------------------------------------------------------------------

def _shuffle_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    info = inputs[0]
    channels = need_feature_map(label, info)[0]
    groups = attrs["groups"]
    divides(label, "input channels", channels, groups,
            f"Received: groups={groups}, input channels={channels} from {info.origin}")
    return Inferred(info.shape)


CHANNEL_SHUFFLE = OpDef(
    "channel_shuffle", FAMILY,
    "ShuffleNet's channel shuffle: channel g x C/groups + i moves to i x groups + g (nn.ChannelShuffle)",
    (ArgSpec("groups", Int(minimum=1), positional=True, doc="must divide the channels"),),
    _shuffle_infer, "conv(6, 1) -> channel_shuffle(3)",
)

OPS = (UPSAMPLE, PAD, CHANNEL_SHUFFLE)
