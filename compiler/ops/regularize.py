"""Layers that act only while training and are the identity at inference."""

from __future__ import annotations

from cnnc.compiler.arguments import ArgSpec, Float
from cnnc.compiler.ops.core import OpDef, same_as_input

FAMILY = "regularize"

DROPOUT = OpDef(
    "dropout", FAMILY, "zeroes a fraction of activations while training",
    (ArgSpec("rate", Float(minimum=0, below=1), 0.5, positional=True),), same_as_input, "dropout(0.25)",
)

DROP_PATH = OpDef(
    "drop_path", FAMILY,
    "stochastic depth (torchvision's StochasticDepth, mode \"row\"): zeroes each sample's whole tensor "
    "while training",
    (ArgSpec("rate", Float(minimum=0, below=1), positional=True, doc="the probability of dropping a sample"),),
    same_as_input, "conv(4, 3) -> drop_path(0.2)",
)

OPS = (DROPOUT, DROP_PATH)
