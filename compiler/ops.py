"""Every op of the language in one place: its arguments, shape rule, parameter count and MACs.

Adding an op means adding an `OpDef` here and a lowering in each backend (compiler/backends/).
Shapes exclude the symbolic batch dimension: (C, H, W) for feature maps, (N,) for flat vectors.
MACs count the multiply-accumulates of conv and dense layers per sample (bias adds, pooling,
normalisation and activations are not counted, as in most papers and tools); FLOPs = 2 x MACs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cnnc.compiler import shapes
from cnnc.compiler.arguments import (
    OUT_OF_RANGE, ArgSpec, Bool, Choice, Float, Int, OneOf, Option, Padding, Pair, REQUIRED,
)

SHAPE_ERROR = "E010"
INCOMPATIBLE_SHAPES = "E011"
WRONG_RANK = "E013"


@dataclass(frozen=True)
class TensorInfo:
    """An op's view of one input: its shape, and where and how that shape was produced."""

    name: str
    shape: tuple[int, ...]
    line: int
    formulas: tuple[str, str] | None = None  # how its height and width were computed

    @property
    def origin(self) -> str:
        return f"'{self.name}' (line {self.line})"


@dataclass(frozen=True)
class Inferred:
    shape: tuple[int, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)  # resolved attributes such as pads
    formulas: tuple[str, str] | None = None
    warnings: tuple[tuple[str, tuple[str, ...]], ...] = ()


class ShapeError(Exception):
    def __init__(self, message: str, *notes: str, code: str = SHAPE_ERROR) -> None:
        super().__init__(message)
        self.notes = notes
        self.code = code


@dataclass(frozen=True)
class Cost:
    params: int = 0
    non_trainable: int = 0
    macs: int = 0


InferFn = Callable[[str, Mapping[str, Any], tuple[TensorInfo, ...]], Inferred]
CostFn = Callable[[Mapping[str, Any], tuple[tuple[int, ...], ...], tuple[int, ...]], Cost]


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    args: tuple[ArgSpec, ...]
    infer: InferFn
    cost: CostFn = field(default=lambda attrs, inputs, output: Cost())
    is_merge: bool = False
    windowed: bool = False  # slides a kernel: has kernel/stride/dilation for the receptive field


# --- value choices shared by several ops --------------------------------------------------------

ACTIVATION_ARGS: dict[str, tuple[ArgSpec, ...]] = {
    "relu": (),
    "leaky_relu": (ArgSpec("alpha", Float(minimum=0), 0.01, positional=True),),
    "elu": (ArgSpec("alpha", Float(minimum=0), 1.0, positional=True),),
    "selu": (),
    "gelu": (ArgSpec("approximate", Choice(("none", "tanh")), "none"),),
    "silu": (),
    "sigmoid": (),
    "tanh": (),
    "softmax": (),
    "identity": (),
}
ACTIVATION = OneOf("an activation", ACTIVATION_ARGS)

INITIALIZER_ARGS: dict[str, tuple[ArgSpec, ...]] = {
    "glorot_uniform": (),
    "glorot_normal": (),
    "he_uniform": (),
    "he_normal": (),
    "lecun_uniform": (),
    "lecun_normal": (),
    "normal": (ArgSpec("std", Float(minimum=0), 0.05, positional=True), ArgSpec("mean", Float(), 0.0)),
    "truncated_normal": (ArgSpec("std", Float(minimum=0), 0.05, positional=True), ArgSpec("mean", Float(), 0.0)),
    "uniform": (ArgSpec("limit", Float(minimum=0), 0.05, positional=True),),
    "constant": (ArgSpec("value", Float(), REQUIRED, positional=True),),
    "zeros": (),
    "ones": (),
    "torch_default": (),
}
INITIALIZER = OneOf("an initializer", INITIALIZER_ARGS)
DEFAULT_WEIGHT_INIT = Option("glorot_uniform")


def default_bias_init(weight_init: Option) -> Option:
    """Biases start at zero, except under PyTorch's own scheme, which draws them too."""
    return weight_init if weight_init.name == "torch_default" else Option("zeros")


# --- helpers for rules --------------------------------------------------------------------------

def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _describe(info: TensorInfo) -> str:
    if len(info.shape) == 1:
        return f"a flat vector of {info.shape[0]}"
    return _dims(info.shape)


def _need_feature_map(label: str, info: TensorInfo) -> tuple[int, int, int]:
    if len(info.shape) != 3:
        raise ShapeError(
            f"{label} needs a (channels, height, width) input, but {info.origin} produces {_describe(info)}",
            "feature-map layers must come before flatten, global pooling or dense",
            code=WRONG_RANK,
        )
    return info.shape  # type: ignore[return-value]


def _window(label: str, attrs: Mapping[str, Any], info: TensorInfo, kind: str) -> Inferred:
    """The shared rule of convolutions and pooling windows over (C, H, W)."""
    _, height, width = _need_feature_map(label, info)
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
    size_text = _dims(info.shape[1:])
    notes = []
    if info.formulas:
        notes.append(f"{info.name} {axis_name}: {info.formulas[axis]}")
    notes.append("use a smaller kernel or stride, padding=same, or remove a pooling layer before it")
    return ShapeError(
        f"{label}: {kernel_text}{padding_text} needs an input {axis_name} of at least {needed}, "
        f"but {info.origin} produces {size_text}",
        *notes,
    )


def _dropped_warning(label: str, padding, dropped: list) -> tuple[str, tuple[str, ...]]:
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
    message = f"{label}: a {kernel}-wide window with stride {stride} and {mode} never reads {' and '.join(parts)} of its input"
    return message, (*arithmetic, "use padding=same (or ceil_mode=true for pooling) to cover them")


def _same_as_input(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    return Inferred(inputs[0].shape)


# --- convolutions ------------------------------------------------------------------------------

_WINDOW_ARGS = (
    ArgSpec("stride", Pair(), (1, 1)),
    ArgSpec("padding", Padding(), (0, 0, 0, 0)),
)
_WEIGHT_ARGS = (
    ArgSpec("bias", Bool(), True),
    ArgSpec("activation", ACTIVATION, None),
    ArgSpec("init", INITIALIZER, None),
    ArgSpec("bias_init", INITIALIZER, None),
)


def _conv_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = _need_feature_map(label, inputs[0])[0]
    filters, groups = attrs["filters"], attrs["groups"]
    for what, count in (("input channels", channels), ("filters", filters)):
        if count % groups:
            raise ShapeError(
                f"{label}: groups must divide the {count} {what}", f"Received: groups={groups}, filters={filters}, "
                f"input channels={channels} from {inputs[0].origin}", code=OUT_OF_RANGE,
            )
    inferred = _window(label, attrs, inputs[0], "conv")
    return Inferred(inferred.shape, {**inferred.attrs, "in_channels": channels}, inferred.formulas, inferred.warnings)


def _conv_cost(attrs, inputs, output) -> Cost:
    (kh, kw), groups = attrs["kernel"], attrs["groups"]
    per_output = (attrs["in_channels"] // groups) * kh * kw
    weights = attrs["filters"] * per_output + (attrs["filters"] if attrs["bias"] else 0)
    return Cost(params=weights, macs=output[0] * output[1] * output[2] * per_output)


def _depthwise_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = _need_feature_map(label, inputs[0])[0]
    full = {**attrs, "filters": channels * attrs["multiplier"], "groups": channels}
    inferred = _window(label, full, inputs[0], "depthwise_conv")
    resolved = {**inferred.attrs, "filters": full["filters"], "groups": channels, "in_channels": channels}
    return Inferred(inferred.shape, resolved, inferred.formulas, inferred.warnings)


CONV = OpDef(
    "conv", "2-D convolution",
    (
        ArgSpec("filters", Int(minimum=1), positional=True, doc="the number of output channels"),
        ArgSpec("kernel", Pair(), positional=True, doc="the window size, 3 or (3, 5)"),
        *_WINDOW_ARGS,
        ArgSpec("dilation", Pair(), (1, 1)),
        ArgSpec("groups", Int(minimum=1), 1),
        *_WEIGHT_ARGS,
    ),
    _conv_infer, _conv_cost, windowed=True,
)

DEPTHWISE_CONV = OpDef(
    "depthwise_conv", "depthwise 2-D convolution: one filter group per input channel",
    (
        ArgSpec("kernel", Pair(), positional=True, doc="the window size, 3 or (3, 5)"),
        ArgSpec("multiplier", Int(minimum=1), 1),
        *_WINDOW_ARGS,
        ArgSpec("dilation", Pair(), (1, 1)),
        *_WEIGHT_ARGS,
    ),
    _depthwise_infer, _conv_cost, windowed=True,
)


# --- pooling -------------------------------------------------------------------------------------

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
    inferred = _window(label, full, inputs[0], "pool")
    return Inferred(inferred.shape, {**inferred.attrs, "stride": stride}, inferred.formulas, inferred.warnings)


_POOL_ARGS = (
    ArgSpec("kernel", Pair(), positional=True, doc="the window size, 2 or (2, 3)"),
    ArgSpec("stride", Pair(), None, doc="defaults to the kernel size"),
    ArgSpec("padding", Padding(), (0, 0, 0, 0)),
    ArgSpec("ceil_mode", Bool(), False),
)

MAXPOOL = OpDef("maxpool", "max pooling; padding never wins the max", _POOL_ARGS, _pool_infer, windowed=True)
AVGPOOL = OpDef(
    "avgpool", "average pooling; padding is left out of the average unless count_pad=true",
    (*_POOL_ARGS, ArgSpec("count_pad", Bool(), False)), _pool_infer, windowed=True,
)


def _global_pool_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    channels = _need_feature_map(label, inputs[0])[0]
    return Inferred((channels, 1, 1) if attrs["keepdims"] else (channels,))


_GLOBAL_ARGS = (ArgSpec("keepdims", Bool(), False),)
GLOBAL_AVGPOOL = OpDef("global_avgpool", "mean over height and width", _GLOBAL_ARGS, _global_pool_infer)
GLOBAL_MAXPOOL = OpDef("global_maxpool", "max over height and width", _GLOBAL_ARGS, _global_pool_infer)


# --- dense and reshaping -------------------------------------------------------------------------

def _flatten_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    size = 1
    for dim in inputs[0].shape:
        size *= dim
    return Inferred((size,))


def _dense_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    info = inputs[0]
    if len(info.shape) != 1:
        raise ShapeError(
            f"{label} needs a flat input, but {info.origin} produces {_describe(info)}",
            f"add flatten (giving {info.shape[0] * info.shape[1] * info.shape[2]} features) "
            f"or global_avgpool (giving {info.shape[0]}) before it",
            code=WRONG_RANK,
        )
    return Inferred((attrs["units"],), {"in_features": info.shape[0]})


def _dense_cost(attrs, inputs, output) -> Cost:
    weights = attrs["in_features"] * attrs["units"]
    return Cost(params=weights + (attrs["units"] if attrs["bias"] else 0), macs=weights)


FLATTEN = OpDef("flatten", "(C, H, W) -> (C*H*W,) in channel-major order, as PyTorch", (), _flatten_infer)
DENSE = OpDef(
    "dense", "fully connected layer",
    (ArgSpec("units", Int(minimum=1), positional=True, doc="the number of outputs"), *_WEIGHT_ARGS),
    _dense_infer, _dense_cost,
)


# --- regularisation and normalisation ------------------------------------------------------------

def _batchnorm_cost(attrs, inputs, output) -> Cost:
    channels = output[0]
    return Cost(params=2 * channels if attrs["affine"] else 0, non_trainable=2 * channels)


DROPOUT = OpDef(
    "dropout", "zeroes a fraction of activations while training",
    (ArgSpec("rate", Float(minimum=0, below=1), 0.5, positional=True),), _same_as_input,
)
BATCHNORM = OpDef(
    "batchnorm", "batch normalisation over channels (or features of a flat input)",
    (
        ArgSpec("momentum", Float(minimum=0, maximum=1), 0.1, doc="PyTorch's convention: the weight of the new batch"),
        ArgSpec("eps", Float(minimum=0), 1e-5),
        ArgSpec("affine", Bool(), True),
    ),
    _same_as_input, _batchnorm_cost,
)


# --- activations ---------------------------------------------------------------------------------

ACTIVATION_OPS = {
    name: OpDef(name, f"{name} activation", args, _same_as_input) for name, args in ACTIVATION_ARGS.items()
}


# --- merges --------------------------------------------------------------------------------------

def _elementwise_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    shape = inputs[0].shape
    for other in inputs[1:]:
        combined = shapes.broadcast(shape, other.shape)
        if combined is None:
            listing = ", ".join(f"{i.origin}: {_dims(i.shape)}" for i in inputs)
            raise ShapeError(
                f"{label}: cannot combine {_dims(shape)} with {_dims(other.shape)} from {other.origin}",
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
            listing = ", ".join(f"{i.origin}: {_dims(i.shape)}" for i in inputs)
            raise ShapeError(
                f"{label}: cannot concatenate {_dims(first.shape)} from {first.origin} with "
                f"{_dims(other.shape)} from {other.origin} along channels",
                f"inputs: {listing}",
                "all inputs need the same height and width (or all be flat)",
                code=INCOMPATIBLE_SHAPES,
            )
    return Inferred((sum(i.shape[0] for i in inputs), *first.shape[1:]))


ADD = OpDef("add", "element-wise sum (residual connections)", (), _elementwise_infer, is_merge=True)
MULTIPLY = OpDef("multiply", "element-wise product (squeeze-excitation gates)", (), _elementwise_infer, is_merge=True)
CONCAT = OpDef("concat", "concatenation along channels", (), _concat_infer, is_merge=True)


# --- the registry --------------------------------------------------------------------------------

INPUT_ARGS = (
    ArgSpec("channels", Int(minimum=1), positional=True),
    ArgSpec("height", Int(minimum=1), positional=True),
    ArgSpec("width", Int(minimum=1), positional=True),
    ArgSpec("dtype", Choice(("float32", "float16", "bfloat16")), "float32"),
)

OPS: dict[str, OpDef] = {
    op.name: op
    for op in (
        CONV, DEPTHWISE_CONV, MAXPOOL, AVGPOOL, GLOBAL_AVGPOOL, GLOBAL_MAXPOOL, FLATTEN, DENSE,
        DROPOUT, BATCHNORM, ADD, MULTIPLY, CONCAT, *ACTIVATION_OPS.values(),
    )
}

WEIGHTED_OPS = frozenset({"conv", "depthwise_conv", "dense"})
