"""Convolutions: `conv` (grouped, dilated) and `depthwise_conv`, which is `conv` with groups = channels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnc.compiler import shapes
from cnnc.compiler.arguments import ArgSpec, Bool, Int, Padding, Pair
from cnnc.compiler.ops.activation import ACTIVATION
from cnnc.compiler.ops.core import (
    Inferred,
    OpDef,
    Param,
    Part,
    Shape,
    ShapeError,
    TensorInfo,
    dims,
    divides,
    need_feature_map,
    window_field,
)
from cnnc.compiler.ops.initializers import INITIALIZER

FAMILY = "conv"

WINDOW_ARGS = (
    ArgSpec("stride", Pair(), (1, 1)),
    ArgSpec("padding", Padding(), (0, 0, 0, 0)),
)
WEIGHT_ARGS = (
    ArgSpec("bias", Bool(), True),
    ArgSpec("activation", ACTIVATION, None),
    ArgSpec("init", INITIALIZER, None, doc="default: the model's `init`, else glorot_uniform"),
    ArgSpec("bias_init", INITIALIZER, None, doc="default: zeros (torch_default's own under init=torch_default)"),
)


# --- the window rule, shared with pooling ------------------------------------------------------------

def window(label: str, attrs: Mapping[str, Any], info: TensorInfo) -> Inferred:
    """The output of a window sliding over (C, H, W): explicit pads, or TensorFlow's `same`."""
    _, height, width = need_feature_map(label, info)
    kernel, stride = attrs["kernel"], attrs["stride"]
    dilation = attrs.get("dilation", (1, 1))
    ceil_mode = attrs.get("ceil_mode", False)
    padding = attrs["padding"]
    results, pads, dropped = [], [], []
    for axis, (size, k, s, d) in enumerate(zip((height, width), kernel, stride, dilation)):
        axis_name = ("height", "width")[axis]
        if padding == "same":
            before_after = shapes.same_padding(size, k, s, d)
            result = shapes.same_output(size, s)
        else:
            before_after = (padding[0], padding[1]) if axis == 0 else (padding[2], padding[3])
            result = shapes.window_output(size, k, s, before_after, d, ceil_mode)
        if result.size < 1:
            raise _collapse(label, info, axis, k, d, before_after)
        if result.dropped and shapes.effective_kernel(k, d) >= s:
            dropped.append((axis_name, size, k, s, d, before_after, result.dropped))
        results.append(result)
        pads.append(before_after)
    channels = attrs.get("filters", info.shape[0])
    resolved = {"pads": (pads[0][0], pads[0][1], pads[1][0], pads[1][1])}
    formulas = (results[0].formula, results[1].formula)
    warnings = (_dropped_warning(label, padding, dropped),) if dropped else ()
    return Inferred((channels, results[0].size, results[1].size), resolved, formulas, warnings)


def _collapse(label: str, info: TensorInfo, axis: int, kernel: int, dilation: int, pads: tuple[int, int]) -> ShapeError:
    axis_name = ("height", "width")[axis]
    reach = shapes.effective_kernel(kernel, dilation)
    needed = reach - sum(pads)
    kernel_text = f"kernel {kernel}" + (f" (dilation {dilation} spreads it over {reach})" if dilation > 1 else "")
    padding_text = f" with padding {pads[0]}+{pads[1]}" if any(pads) else ""
    notes = []
    if info.formulas:
        notes.append(f"{info.name} {axis_name}: {info.formulas[axis]}")
    notes.append("use a smaller kernel or stride, padding=same, or remove a pooling layer before it")
    return ShapeError(
        f"{label}: {kernel_text}{padding_text} needs an input {axis_name} of at least {needed}, "
        f"but {info.origin} produces {dims(info.shape[1:])}",
        *notes,
    )


def _dropped_warning(label: str, padding: Any, dropped: list) -> tuple[str, tuple[str, ...]]:
    """One warning for the rows and/or columns that no window reaches (kernel >= stride only:
    a smaller kernel skips input by design, not just at the edge)."""
    parts, arithmetic = [], []
    for axis_name, size, kernel, stride, dilation, pads, count in dropped:
        unit = "row" if axis_name == "height" else "column"
        parts.append(f"the last {unit}" if count == 1 else f"the last {count} {unit}s")
        reach = shapes.effective_kernel(kernel, dilation)
        padded = f"{size} + {sum(pads)}" if any(pads) else f"{size}"
        unread = f"{unit} {size - 1}" if count == 1 else f"{unit}s {size - count}-{size - 1}"
        arithmetic.append(f"{axis_name}: ({padded} - {reach}) % {stride} = {(size + sum(pads) - reach) % stride}, "
                          f"so input {unread} (counting from 0) {'is' if count == 1 else 'are'} never read")
    kernel, stride = dropped[0][2], dropped[0][3]
    mode = "valid padding" if padding == (0, 0, 0, 0) else "this padding"
    message = (f"{label}: a {kernel}-wide window with stride {stride} and {mode} never reads "
               f"{' and '.join(parts)} of its input")
    return message, (*arithmetic, "use padding=same (or ceil_mode=true for pooling) to cover them")


# --- conv ----------------------------------------------------------------------------------------------

def _conv_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = need_feature_map(label, inputs[0])[0]
    filters, groups = attrs["filters"], attrs["groups"]
    received = f"Received: groups={groups}, filters={filters}, input channels={channels} from {inputs[0].origin}"
    divides(label, "input channels", channels, groups, received)
    divides(label, "filters", filters, groups, received)
    inferred = window(label, attrs, inputs[0])
    return Inferred(inferred.shape, {**inferred.attrs, "in_channels": channels}, inferred.formulas, inferred.warnings)


def _per_output(attrs: Mapping[str, Any]) -> int:
    kh, kw = attrs["kernel"]
    return attrs["in_channels"] // attrs["groups"] * kh * kw


def conv_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    kh, kw = attrs["kernel"]
    filters = attrs["filters"]
    fans = (_per_output(attrs), filters * kh * kw)
    weight = Param("weight", (filters, attrs["in_channels"] // attrs["groups"], kh, kw), attrs["init"], fans=fans)
    return (weight, Param("bias", (filters,), attrs["bias_init"], fans=fans)) if attrs["bias"] else (weight,)


def _conv_macs(attrs: Mapping[str, Any], inputs: tuple[Shape, ...], output: Shape) -> int:
    return output[0] * output[1] * output[2] * _per_output(attrs)


CONV = OpDef(
    "conv", FAMILY, "2-D convolution",
    (
        ArgSpec("filters", Int(minimum=1), positional=True, doc="the number of output channels"),
        ArgSpec("kernel", Pair(), positional=True, doc="the window size, 3 or (3, 5)"),
        *WINDOW_ARGS,
        ArgSpec("dilation", Pair(), (1, 1)),
        ArgSpec("groups", Int(minimum=1), 1),
        *WEIGHT_ARGS,
    ),
    _conv_infer, "conv(6, 3, stride=2, padding=same, groups=3, activation=relu)",
    parameters=conv_parameters, macs=_conv_macs, field=window_field,
)


# --- depthwise_conv ---------------------------------------------------------------------------------

def _depthwise_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = need_feature_map(label, inputs[0])[0]
    full = {**attrs, "filters": channels * attrs["multiplier"], "groups": channels}
    inferred = window(label, full, inputs[0])
    resolved = {**inferred.attrs, "filters": full["filters"], "groups": channels, "in_channels": channels}
    return Inferred(inferred.shape, resolved, inferred.formulas, inferred.warnings)


def _as_conv(attrs: Mapping[str, Any]) -> tuple[Part, ...]:
    conv_attrs = {spec.name: attrs[spec.name] for spec in CONV.args if spec.name in attrs}
    conv_attrs.update(filters=attrs["filters"], groups=attrs["groups"], pads=attrs["pads"],
                      in_channels=attrs["in_channels"])
    return (Part("conv", "conv", conv_attrs, (0,)),)


DEPTHWISE_CONV = OpDef(
    "depthwise_conv", FAMILY, "depthwise 2-D convolution: one filter group per input channel",
    (
        ArgSpec("kernel", Pair(), positional=True, doc="the window size, 3 or (3, 5)"),
        ArgSpec("multiplier", Int(minimum=1), 1),
        *WINDOW_ARGS,
        ArgSpec("dilation", Pair(), (1, 1)),
        *WEIGHT_ARGS,
    ),
    _depthwise_infer, "depthwise_conv(3, multiplier=2, padding=1, activation=relu)",
    parameters=conv_parameters, macs=_conv_macs, field=window_field, decomposition=_as_conv,
)

OPS = (CONV, DEPTHWISE_CONV)
