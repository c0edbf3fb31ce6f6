"""The op registry: every op of the language, declared once in its family's module.

Adding an op: declare its `OpDef` in the family module (shape rule, parameters, MACs, receptive
field, example) and add it to that module's `OPS`; then give each backend a lowering
(compiler/backends/pytorch.py `LOWERINGS`, compiler/backends/onnx.py `LOWERINGS`), or a
`decomposition` into ops that have one. tests/test_conformance.py walks this registry.
"""

from __future__ import annotations

from cnnc.compiler.arguments import ArgSpec, Choice, Int
from cnnc.compiler.ops import activation, conv, linear, merge, norm, pool, regularize, shape, spatial
from cnnc.compiler.ops.activation import ACTIVATION, ACTIVATION_ARGS
from cnnc.compiler.ops.core import (
    Field,
    Inferred,
    OpDef,
    Param,
    Part,
    ShapeError,
    TensorInfo,
)
from cnnc.compiler.ops.initializers import DEFAULT_WEIGHT_INIT, INITIALIZER, default_bias_init

FAMILIES = (conv, pool, shape, linear, regularize, norm, merge, activation, spatial)

OPS: dict[str, OpDef] = {op.name: op for family in FAMILIES for op in family.OPS}
ACTIVATIONS: tuple[str, ...] = tuple(ACTIVATION_ARGS)

INPUT_ARGS = (
    ArgSpec("channels", Int(minimum=1), positional=True),
    ArgSpec("height", Int(minimum=1), positional=True),
    ArgSpec("width", Int(minimum=1), positional=True),
    ArgSpec("dtype", Choice(("float32", "float16", "bfloat16")), "float32"),
)

__all__ = [
    "ACTIVATION", "ACTIVATIONS", "DEFAULT_WEIGHT_INIT", "INITIALIZER", "INPUT_ARGS", "OPS", "Field", "Inferred",
    "OpDef", "Param", "Part", "ShapeError", "TensorInfo", "default_bias_init",
]
