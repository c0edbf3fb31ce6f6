"""Normalisation layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnc.compiler.arguments import ArgSpec, Bool, Float, Int, Option
from cnnc.compiler.ops.core import (
    TRAINABLE,
    Inferred,
    OpDef,
    Param,
    Shape,
    ShapeError,
    TensorInfo,
    divides,
    same_as_input,
    whole_input_field,
)
from cnnc.compiler.ops.initializers import ONES, ZEROS
from cnnc.dsl.codes import BAD_WEIGHTS

FAMILY = "norm"


def _batchnorm_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    if not attrs["scale"] and not attrs["affine"]:
        raise ShapeError(f"{label}: scale=false holds the scale at 1, but with affine=false there is no scale",
                         "use one of them: affine=false has neither scale nor shift, scale=false keeps the shift",
                         code=BAD_WEIGHTS)
    return Inferred(inputs[0].shape)


def _batchnorm_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    channels = (output[0],)
    scale = Param("weight", channels, ONES, trainable=attrs["scale"], role="norm")
    affine = (scale, Param("bias", channels, ZEROS, role="bias")) if attrs["affine"] else ()
    return (*affine, Param("running_mean", channels, ZEROS, trainable=False, role="norm"),
            Param("running_var", channels, ONES, trainable=False, role="norm"))


BATCHNORM = OpDef(
    "batchnorm", FAMILY, "batch normalisation over channels (or features of a flat input)",
    (
        ArgSpec("momentum", Float(minimum=0, maximum=1), 0.1, doc="PyTorch's convention: the weight of the new batch"),
        ArgSpec("eps", Float(minimum=0), 1e-5),
        ArgSpec("affine", Bool(), True),
        ArgSpec("scale", Bool(), True, doc="false holds the scale (weight) at 1, untrained (Keras's scale)"),
        TRAINABLE,
    ),
    _batchnorm_infer, "batchnorm(momentum=0.2, eps=0.001, scale=false)", parameters=_batchnorm_parameters,
)


# --- per-channel layers: layer norm, group norm, layer scale -----------------------------------------
# Each takes (C, H, W) or a flat (C,): the channels (features) come first either way.

def _affine_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    channels = (output[0],)
    scale, shift = Param("weight", channels, ONES, role="norm"), Param("bias", channels, ZEROS, role="bias")
    return (scale, shift) if attrs["affine"] else ()


_NORM_ARGS = (ArgSpec("eps", Float(minimum=0), 1e-5), ArgSpec("affine", Bool(), True), TRAINABLE)

LAYERNORM = OpDef(
    "layernorm", FAMILY,
    "layer normalisation over the channels at each position (ConvNeXt's LayerNorm2d), "
    "or over the features of a flat input (PyTorch's LayerNorm)",
    _NORM_ARGS, same_as_input, "conv(4, 3) -> layernorm(eps=0.001)", parameters=_affine_parameters,
)


def _groupnorm_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels, groups = inputs[0].shape[0], attrs["groups"]
    divides(label, "channels", channels, groups, f"Received: groups={groups}, channels={channels}")
    return Inferred(inputs[0].shape)


GROUPNORM = OpDef(
    "groupnorm", FAMILY,
    "group normalisation (PyTorch's GroupNorm): the channels split into `groups` groups, each normalised "
    "over its channels and all positions",
    (ArgSpec("groups", Int(minimum=1), positional=True, doc="must divide the channels"), *_NORM_ARGS),
    _groupnorm_infer, "conv(6, 3) -> groupnorm(3, eps=0.001)", parameters=_affine_parameters,
    field=whole_input_field,  # each output depends on its group's statistics, so on every position
)


def _scale_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    return (Param("weight", (output[0],), Option("constant", (("value", attrs["init"]),)), role="norm"),)


SCALE = OpDef(
    "scale", FAMILY, "a learnable per-channel multiplier (ConvNeXt's layer scale), starting at `init`",
    (ArgSpec("init", Float(), 1.0, positional=True, doc="the multiplier's initial value, such as 1e-6"), TRAINABLE),
    same_as_input, "conv(4, 3) -> scale(0.5)", parameters=_scale_parameters,
)

OPS = (BATCHNORM, LAYERNORM, GROUPNORM, SCALE)
