"""What an op is: `OpDef`, and the pieces every op family shares.

An op declares, in one place (its family's module in this package):
    args            its arguments (kinds, defaults, docs), bound and checked by compiler.arguments
    infer           its shape rule: input shapes -> output shape, or a ShapeError that says why not
    parameters      its arrays (name, shape, initializer, trainable or not); parameter counts and the
                    weights of every backend derive from them. An op with parameters takes TRAINABLE,
                    whose `trainable=false` freezes them all (see OpDef.arrays)
    macs            its multiply-accumulates per sample
    field           its receptive-field rule
    decomposition   optionally, the same computation written with other ops, which a backend
                    without a lowering of its own uses
    example         a snippet that uses it, for the docs and the conformance tests
Shapes exclude the symbolic batch dimension: (C, H, W) for feature maps, (N,) for flat vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from cnnc.compiler import shapes
from cnnc.compiler.arguments import ArgSpec, Bool, Option
from cnnc.dsl.codes import OUT_OF_RANGE, SHAPE_ERROR, WRONG_RANK

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorInfo:
    """An op's view of one input: its shape, and where and how that shape was produced."""

    name: str
    shape: Shape
    line: int
    formulas: tuple[str, str] | None = None  # how its height and width were computed
    node: str = ""            # the layer that produces it
    from_input: bool = False  # whether that is the model's input

    @property
    def origin(self) -> str:
        return f"'{self.name}' (line {self.line})"


@dataclass(frozen=True)
class Inferred:
    shape: Shape
    attrs: Mapping[str, Any] = field(default_factory=dict)  # resolved attributes such as pads
    formulas: tuple[str, str] | None = None
    warnings: tuple[tuple[str, tuple[str, ...]], ...] = ()


class ShapeError(Exception):
    def __init__(self, message: str, *notes: str, code: str = SHAPE_ERROR) -> None:
        super().__init__(message)
        self.notes = notes
        self.code = code


@dataclass(frozen=True)
class Param:
    """One array of a layer, named as in PyTorch's state_dict (`weight`, `running_mean`).

    `role` is what the optimizer's per-group settings go by (never the name): "weight" (the default),
    "bias" (an additive term: the bias of a conv, transposed conv or dense layer, and the shift of a
    norm layer) or "norm" (the other arrays of the norm family: scales and running statistics).
    """

    name: str
    shape: Shape
    init: Option
    trainable: bool = True
    fans: tuple[int, int] = (1, 1)  # fan_in, fan_out, for the scaled initializers
    role: str = "weight"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Field:
    """A receptive field in input pixels, and the distance in input pixels between neighbouring
    outputs (a Fraction: upsampling makes it smaller than one)."""

    height: Fraction
    width: Fraction
    jump_height: Fraction
    jump_width: Fraction

    @staticmethod
    def pixel() -> Field:
        return Field(Fraction(1), Fraction(1), Fraction(1), Fraction(1))

    @property
    def size(self) -> tuple[int, int]:
        return math.ceil(self.height), math.ceil(self.width)


@dataclass(frozen=True)
class Part:
    """One step of a decomposition: `op` with `attrs` applied to `inputs`, each the index of one of
    the decomposed node's inputs or the name of an earlier part. The last part is the result."""

    name: str
    op: str
    attrs: Mapping[str, Any]
    inputs: tuple[int | str, ...]


InferFn = Callable[[str, Mapping[str, Any], tuple[TensorInfo, ...]], Inferred]
ParamsFn = Callable[[Mapping[str, Any], Shape], tuple[Param, ...]]
MacsFn = Callable[[Mapping[str, Any], tuple[Shape, ...], Shape], int]
FieldFn = Callable[[Mapping[str, Any], tuple[Field, ...], tuple[Shape, ...]], Field]
DecomposeFn = Callable[[Mapping[str, Any]], tuple[Part, ...]]


def no_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    return ()


def no_macs(attrs: Mapping[str, Any], inputs: tuple[Shape, ...], output: Shape) -> int:
    return 0


def pointwise_field(attrs: Mapping[str, Any], inputs: tuple[Field, ...], shapes_: tuple[Shape, ...]) -> Field:
    """Each output reads the same position of every input: the widest input field."""
    return Field(*(max(getattr(f, axis) for f in inputs)
                   for axis in ("height", "width", "jump_height", "jump_width")))


def whole_input_field(attrs: Mapping[str, Any], inputs: tuple[Field, ...], shapes_: tuple[Shape, ...]) -> Field:
    """Each output reads every position of a (C, H, W) input (global pooling, flatten)."""
    field_, shape = inputs[0], shapes_[0]
    if len(shape) != 3:
        return field_
    _, height, width = shape
    return Field(field_.height + (height - 1) * field_.jump_height, field_.width + (width - 1) * field_.jump_width,
                 field_.jump_height, field_.jump_width)


def window_field(attrs: Mapping[str, Any], inputs: tuple[Field, ...], shapes_: tuple[Shape, ...]) -> Field:
    """A sliding window: kernel, stride and dilation (default 1) from the attributes."""
    field_ = inputs[0]
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    height, jump_h = shapes.receptive_field(field_.height, field_.jump_height, kh, sh, dh)
    width, jump_w = shapes.receptive_field(field_.width, field_.jump_width, kw, sw, dw)
    return Field(height, width, jump_h, jump_w)


@dataclass(frozen=True)
class OpDef:
    name: str
    family: str
    doc: str
    args: tuple[ArgSpec, ...]
    infer: InferFn
    example: str
    parameters: ParamsFn = no_parameters
    macs: MacsFn = no_macs
    field: FieldFn = pointwise_field
    decomposition: DecomposeFn | None = None
    is_merge: bool = False

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.args)

    @property
    def takes_activation(self) -> bool:
        """Whether the op has a fused `activation=` argument."""
        return "activation" in self.arg_names

    def arrays(self, attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
        """The layer's arrays as trained: `parameters`, every one frozen under `trainable=false`."""
        declared = self.parameters(attrs, output)
        if attrs.get("trainable", True):
            return declared
        return tuple(replace(param, trainable=False) for param in declared)


# The argument of every op with parameters.
TRAINABLE = ArgSpec("trainable", Bool(), True, doc="false freezes every parameter of the layer: not trained")


# --- rules shared by several families ---------------------------------------------------------------

def dims(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def describe(info: TensorInfo) -> str:
    if len(info.shape) == 1:
        return f"a flat vector of {info.shape[0]}"
    return dims(info.shape)


def need_feature_map(label: str, info: TensorInfo) -> tuple[int, int, int]:
    if len(info.shape) != 3:
        raise ShapeError(
            f"{label} needs a (channels, height, width) input, but {info.origin} produces {describe(info)}",
            "feature-map layers must come before flatten, global pooling or dense",
            code=WRONG_RANK,
        )
    channels, height, width = info.shape
    return channels, height, width


def same_as_input(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    return Inferred(inputs[0].shape)


def divides(label: str, what: str, count: int, groups: int, received: str) -> None:
    """Raise the Keras-style error of a `groups` that does not divide `count` `what`."""
    if count % groups:
        raise ShapeError(f"{label}: groups must divide the {count} {what}", received, code=OUT_OF_RANGE)
