"""Convolutions: `conv` (grouped, dilated), `depthwise_conv`, which is `conv` with groups = channels, and
`conv_transpose`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cnnc.compiler import shapes
from cnnc.compiler.arguments import ArgSpec, Bool, Int, Option, Padding, Pair
from cnnc.compiler.ops.activation import ACTIVATION
from cnnc.compiler.ops.core import (
    TRAINABLE,
    Field,
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
from cnnc.compiler.ops.initializers import DIRAC, INITIALIZER, check_init
from cnnc.dsl.codes import OUT_OF_RANGE

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
    TRAINABLE,
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
    check_init(label, "conv", attrs, inputs[0])
    inferred = window(label, attrs, inputs[0])
    return Inferred(inferred.shape, {**inferred.attrs, "in_channels": channels}, inferred.formulas, inferred.warnings)


def _per_output(attrs: Mapping[str, Any]) -> int:
    kh, kw = attrs["kernel"]
    return attrs["in_channels"] // attrs["groups"] * kh * kw


def conv_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    kh, kw = attrs["kernel"]
    filters = attrs["filters"]
    fans = (_per_output(attrs), filters * kh * kw)
    init = attrs["init"]
    if init.name == DIRAC:  # the identity is per group of filters (torch.nn.init.dirac_'s groups)
        init = Option(DIRAC, (*init.settings, ("groups", attrs["groups"])))
    weight = Param("weight", (filters, attrs["in_channels"] // attrs["groups"], kh, kw), init, fans=fans)
    bias = Param("bias", (filters,), attrs["bias_init"], fans=fans, role="bias")
    return (weight, bias) if attrs["bias"] else (weight,)


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
    check_init(label, "depthwise_conv", full, inputs[0])
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
    _depthwise_infer, "depthwise_conv(3, multiplier=2, padding=1, init=dirac, activation=relu)",
    parameters=conv_parameters, macs=_conv_macs, field=window_field, decomposition=_as_conv,
)

# --- conv_transpose ---------------------------------------------------------------------------------
# PyTorch's ConvTranspose2d: input pixel i adds weight[:, :, t] to the "full" output at i * stride +
# t * dilation; the layer's output is that full output, extended by output_padding at the end, with
# `top` rows cut at the start and `bottom` at the end: output[j] = full[j + top]. Symmetric padding
# is exactly PyTorch's `padding`; asymmetric padding and `same` generalise it by cropping.

def _transposed_same(kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """(before, after, output_padding) of `same`: the adjoint of a TensorFlow `same` convolution of an
    input `stride` times larger, so output = input x stride (Keras's Conv2DTranspose)."""
    reach = shapes.effective_kernel(kernel, dilation)
    total = max(reach - stride, 0)
    return total // 2, total - total // 2, max(stride - reach, 0)


def _transposed_axis(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int],
                     extra: int) -> tuple[int, str]:
    """The output length along one axis and how it is computed, for the summary and messages."""
    reach = shapes.effective_kernel(kernel, dilation)
    output = (size - 1) * stride + reach + extra - pads[0] - pads[1]
    grown = f"({size} - 1)" + (f" x {stride}" if stride > 1 else "")
    terms = f" + {reach}" + (f" + {extra}" if extra else "") + "".join(f" - {pad}" for pad in pads if pad)
    return output, f"{grown}{terms} = {output}"


def _transpose_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    info = inputs[0]
    channels, height, width = need_feature_map(label, info)
    filters, groups = attrs["filters"], attrs["groups"]
    received = f"Received: groups={groups}, filters={filters}, input channels={channels} from {info.origin}"
    divides(label, "input channels", channels, groups, received)
    divides(label, "filters", filters, groups, received)
    check_init(label, "conv_transpose", attrs, info)
    kernel, stride, dilation = attrs["kernel"], attrs["stride"], attrs["dilation"]
    output_padding, padding = attrs["output_padding"], attrs["padding"]
    if padding == "same" and output_padding != (0, 0):
        raise ShapeError(f"{label}: output_padding cannot be combined with padding=same, which makes the output "
                         "the input times the stride", f"Received: output_padding={_pair(output_padding)}",
                         code=OUT_OF_RANGE)
    for extra, s, d in zip(output_padding, stride, dilation):
        if extra >= s and extra >= d:  # PyTorch's rule: it would only add rows no input reaches
            raise ShapeError(f"{label}: output_padding must be smaller than the stride or the dilation",
                             f"Received: output_padding={_pair(output_padding)}, stride={_pair(stride)}, "
                             f"dilation={_pair(dilation)}", code=OUT_OF_RANGE)
    sizes, formulas, pads, extras = [], [], [], []
    for axis, (size, k, s, d, extra) in enumerate(zip((height, width), kernel, stride, dilation, output_padding)):
        if padding == "same":
            before, after, extra = _transposed_same(k, s, d)
        else:
            before, after = padding[2 * axis], padding[2 * axis + 1]
        result, formula = _transposed_axis(size, k, s, d, (before, after), extra)
        if result < 1:
            axis_name = ("height", "width")[axis]
            raise ShapeError(
                f"{label}: padding {before}+{after} crops the whole output {axis_name}: {formula}",
                f"Received: padding={_pair(padding)}, input {dims(info.shape)} from {info.origin}",
                "use less padding, or a larger kernel or stride",
            )
        sizes.append(result)
        formulas.append(formula)
        pads.append((before, after))
        extras.append(extra)
    resolved = {"pads": (*pads[0], *pads[1]), "output_padding": tuple(extras), "in_channels": channels}
    return Inferred((filters, sizes[0], sizes[1]), resolved, (formulas[0], formulas[1]))


def _pair(value: Any) -> str:
    return str(value) if isinstance(value, str) else "(" + ", ".join(map(str, value)) + ")"


def _transpose_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    """PyTorch's layout (in_channels, filters / groups, kh, kw); the fans are PyTorch's and Keras's,
    read from that layout as for the convolution whose gradient this is: fan_in = filters / groups x
    kh x kw, fan_out = in_channels x kh x kw."""
    kh, kw = attrs["kernel"]
    filters, groups, channels = attrs["filters"], attrs["groups"], attrs["in_channels"]
    fans = (filters // groups * kh * kw, channels * kh * kw)
    weight = Param("weight", (channels, filters // groups, kh, kw), attrs["init"], fans=fans)
    bias = Param("bias", (filters,), attrs["bias_init"], fans=fans, role="bias")
    return (weight, bias) if attrs["bias"] else (weight,)


def _transpose_macs(attrs: Mapping[str, Any], inputs: tuple[Shape, ...], output: Shape) -> int:
    """Every input value times every weight it meets (fvcore's and torchvision's count), whether or
    not padding crops the product away."""
    channels, height, width = inputs[0]
    kh, kw = attrs["kernel"]
    return channels // attrs["groups"] * attrs["filters"] * kh * kw * height * width


def _transpose_field(attrs: Mapping[str, Any], inputs: tuple[Field, ...], shapes_: tuple[Shape, ...]) -> Field:
    """An output reads the inputs i with i x stride + t x dilation = its position, t < kernel: at most
    ceil(kernel x g / stride) of them, d / g apart (g = gcd(dilation, stride)); the jump shrinks by the stride."""
    field_ = inputs[0]
    grown = []
    for k, s, d, extent, jump in zip(attrs["kernel"], attrs["stride"], attrs["dilation"],
                                     (field_.height, field_.width), (field_.jump_height, field_.jump_width)):
        g = math.gcd(d, s)
        grown.append((extent + (-(-k * g // s) - 1) * (d // g) * jump, jump / s))
    (height, jump_h), (width, jump_w) = grown
    return Field(height, width, jump_h, jump_w)


CONV_TRANSPOSE = OpDef(
    "conv_transpose", FAMILY, "transposed 2-D convolution (PyTorch's ConvTranspose2d): upsampling with a learnt kernel",
    (
        ArgSpec("filters", Int(minimum=1), positional=True, doc="the number of output channels"),
        ArgSpec("kernel", Pair(), positional=True, doc="the window size, 3 or (3, 5)"),
        ArgSpec("stride", Pair(), (1, 1)),
        ArgSpec("padding", Padding(), (0, 0, 0, 0), doc="rows and columns cut from the output's edges, or same"),
        ArgSpec("output_padding", Pair(minimum=0), (0, 0), doc="rows and columns added at the bottom and right"),
        ArgSpec("dilation", Pair(), (1, 1)),
        ArgSpec("groups", Int(minimum=1), 1),
        *WEIGHT_ARGS,
    ),
    _transpose_infer,
    "conv_transpose(6, 3, stride=(2, 1), padding=(1, 2, 0, 0), output_padding=1, dilation=(1, 2), groups=3, "
    "bias_init=uniform(0.5), activation=relu)",
    parameters=_transpose_parameters, macs=_transpose_macs, field=_transpose_field,
)

OPS = (CONV, DEPTHWISE_CONV, CONV_TRANSPOSE)
