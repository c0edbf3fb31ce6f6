"""The initializers a layer's `init=` (and the model's `init` statement) may name.

Their numpy definitions are in compiler/backends/weights.py; this is the language's view of them.
Two set a layer's weight from what the layer is rather than from a distribution, and so belong to one
layer, never to the model's `init`: `dirac` (identity filters) and `whiten` (filters computed from the
training images when a run starts). Their `rest` initialises what they leave: the filters that are not
identities, or the whole weight until training computes the whitening.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnc.compiler.arguments import REQUIRED, ArgSpec, Float, Int, OneOf, Option
from cnnc.compiler.ops.core import ShapeError, TensorInfo
from cnnc.dsl.codes import BAD_WEIGHTS

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
ZEROS, ONES = Option("zeros"), Option("ones")

# The layer's own initializers, and the ops each one fits.
DIRAC, WHITEN = "dirac", "whiten"
_REST = ArgSpec("rest", INITIALIZER, None, doc="what the initializer leaves; default: the model's `init`")
INITIALIZER_ARGS[DIRAC] = (_REST,)
INITIALIZER_ARGS[WHITEN] = (
    ArgSpec("eps", Float(above=0), 5e-4, positional=True, doc="added to each eigenvalue before its square root"),
    ArgSpec("images", Int(minimum=1), 5000, doc="how many training images give the patches"),
    _REST,
)
LAYER_INITIALIZERS: Mapping[str, tuple[str, ...]] = {DIRAC: ("conv", "depthwise_conv"), WHITEN: ("conv",)}


def default_bias_init(weight_init: Option) -> Option:
    """Biases start at zero, except under PyTorch's own scheme, which draws them too."""
    return weight_init if weight_init.name == "torch_default" else ZEROS


def with_rest(init: Option, default: Option) -> Option:
    """A layer initializer with its `rest` filled in (the model's `init` unless given); others as they are."""
    if init.name not in LAYER_INITIALIZERS or init.get("rest") is not None:
        return init
    return Option(init.name, tuple((key, default if key == "rest" else value) for key, value in init.settings))


def whitening_filters(channels: int, kernel: tuple[int, int]) -> int:
    """The filter count of a whitening conv with eigenvectors only: one per dimension of a patch."""
    return channels * kernel[0] * kernel[1]


def check_init(label: str, op: str, attrs: Mapping[str, Any], info: TensorInfo) -> None:
    """Raise the error of an `init=` or `bias_init=` that does not fit this layer (see LAYER_INITIALIZERS)."""
    bias_init, init = attrs.get("bias_init"), attrs.get("init")
    if bias_init is not None and bias_init.name in LAYER_INITIALIZERS:
        raise ShapeError(f"{label}: bias_init={bias_init.name} initialises a weight, not a bias",
                         "use it as init=, or give the bias a plain initializer such as zeros", code=BAD_WEIGHTS)
    if init is None or init.name not in LAYER_INITIALIZERS:
        return
    rest = init.get("rest")
    if rest is not None and rest.name in LAYER_INITIALIZERS:
        raise ShapeError(f"{label}: the rest of init={init.name} must be a plain initializer, not {rest.name}",
                         f"Received: init={_as_written(init)}", code=BAD_WEIGHTS)
    fits = LAYER_INITIALIZERS[init.name]
    if op not in fits:
        raise ShapeError(f"{label}: init={init.name} fits {' and '.join(fits)} layers, not {op}",
                         f"Received: init={_as_written(init)}", code=BAD_WEIGHTS)
    if init.name == DIRAC:
        _check_dirac(label, attrs)
    else:
        _check_whiten(label, attrs, info)


def _as_written(init: Option) -> Option:
    """`init` without the settings left unset (a `rest` not given)."""
    return Option(init.name, tuple((key, _as_written(value) if isinstance(value, Option) else value)
                                   for key, value in init.settings if value is not None))


def _check_dirac(label: str, attrs: Mapping[str, Any]) -> None:
    kernel = attrs["kernel"]
    if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
        raise ShapeError(f"{label}: init=dirac needs an odd kernel, whose centre passes the input through",
                         f"Received: kernel={kernel[0]}x{kernel[1]}", code=BAD_WEIGHTS)


def _check_whiten(label: str, attrs: Mapping[str, Any], info: TensorInfo) -> None:
    if not info.from_input:
        raise ShapeError(f"{label}: init=whiten needs the model's input as the layer's input, but it reads "
                         f"'{info.node}'", "the whitening is computed from patches of the training images as "
                         "the model receives them", code=BAD_WEIGHTS)
    if attrs["groups"] != 1 or attrs.get("dilation", (1, 1)) != (1, 1):
        raise ShapeError(f"{label}: init=whiten needs groups=1 and dilation=1: each filter reads a whole patch",
                         f"Received: groups={attrs['groups']}, dilation={attrs['dilation'][0]}x{attrs['dilation'][1]}",
                         code=BAD_WEIGHTS)
    channels, kernel, filters = info.shape[0], attrs["kernel"], attrs["filters"]
    dimensions = whitening_filters(channels, kernel)
    if filters not in (dimensions, 2 * dimensions):
        raise ShapeError(
            f"{label}: init=whiten needs {dimensions} filters (the eigenvectors of the {kernel[0]}x{kernel[1]} "
            f"patches of {channels} channels) or {2 * dimensions} (and their negatives), not {filters}",
            f"Received: filters={filters}, kernel={kernel[0]}x{kernel[1]}, input channels={channels} from "
            f"{info.origin}", code=BAD_WEIGHTS)
