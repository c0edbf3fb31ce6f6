"""The initializers a layer's `init=` (and the model's `init` statement) may name.

Their numpy definitions are in compiler/backends/weights.py; this is the language's view of them.
"""

from __future__ import annotations

from cnnc.compiler.arguments import REQUIRED, ArgSpec, Float, OneOf, Option

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


def default_bias_init(weight_init: Option) -> Option:
    """Biases start at zero, except under PyTorch's own scheme, which draws them too."""
    return weight_init if weight_init.name == "torch_default" else ZEROS
