"""Activations: element-wise functions, usable as layers (`-> relu`) and fused (`activation=relu`)."""

from __future__ import annotations

from cnnc.compiler.arguments import ArgSpec, Choice, Float, OneOf
from cnnc.compiler.ops.core import OpDef, Part, same_as_input

FAMILY = "activation"

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
    "relu6": (),
    "hardsigmoid": (),
    "hardswish": (),
    "mish": (),
}
ACTIVATION = OneOf("an activation", ACTIVATION_ARGS)

_DOCS = {
    "relu": "max(x, 0)",
    "leaky_relu": "x for x >= 0, alpha * x below",
    "elu": "x for x > 0, alpha * (exp(x) - 1) below",
    "selu": "scale * elu(x, alpha) with PyTorch's self-normalising constants",
    "gelu": "x * Phi(x), or PyTorch's tanh approximation",
    "silu": "x * sigmoid(x) (swish)",
    "sigmoid": "1 / (1 + exp(-x))",
    "tanh": "the hyperbolic tangent",
    "softmax": "softmax over channels (features of a flat input)",
    "identity": "x, unchanged",
    "relu6": "min(max(x, 0), 6)",
    "hardsigmoid": "relu6(x + 3) / 6 (PyTorch's; Keras's older hard_sigmoid has slope 0.2)",
    "hardswish": "x * relu6(x + 3) / 6 (PyTorch's)",
    "mish": "x * tanh(softplus(x)), softplus(x) = log(1 + exp(x))",
}

_DECOMPOSITIONS = {
    "silu": lambda attrs: (Part("sigmoid", "sigmoid", {}, (0,)), Part("mul", "multiply", {}, (0, "sigmoid"))),
}

OPS = tuple(
    OpDef(name, FAMILY, _DOCS[name], args, same_as_input, example=f"conv(4, 3) -> {name}",
          decomposition=_DECOMPOSITIONS.get(name))
    for name, args in ACTIVATION_ARGS.items()
)
