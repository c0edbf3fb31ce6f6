"""`dense`: the fully connected layer on a flat vector."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnc.compiler.arguments import ArgSpec, Int
from cnnc.compiler.ops.conv import WEIGHT_ARGS
from cnnc.compiler.ops.core import Inferred, OpDef, Param, Shape, ShapeError, TensorInfo, describe
from cnnc.compiler.ops.initializers import check_init
from cnnc.dsl.codes import WRONG_RANK

FAMILY = "linear"


def _dense_infer(label: str, attrs: Mapping[str, Any], inputs: tuple[TensorInfo, ...]) -> Inferred:
    info = inputs[0]
    if len(info.shape) != 1:
        raise ShapeError(
            f"{label} needs a flat input, but {info.origin} produces {describe(info)}",
            f"add flatten (giving {info.shape[0] * info.shape[1] * info.shape[2]} features) "
            f"or global_avgpool (giving {info.shape[0]}) before it",
            code=WRONG_RANK,
        )
    check_init(label, "dense", attrs, info)
    return Inferred((attrs["units"],), {"in_features": info.shape[0]})


def _dense_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    units, features = attrs["units"], attrs["in_features"]
    weight = Param("weight", (units, features), attrs["init"], fans=(features, units))
    bias = Param("bias", (units,), attrs["bias_init"], fans=(features, units), role="bias")
    return (weight, bias) if attrs["bias"] else (weight,)


def _dense_macs(attrs: Mapping[str, Any], inputs: tuple[Shape, ...], output: Shape) -> int:
    return attrs["in_features"] * attrs["units"]


DENSE = OpDef(
    "dense", FAMILY, "fully connected layer",
    (ArgSpec("units", Int(minimum=1), positional=True, doc="the number of outputs"), *WEIGHT_ARGS),
    _dense_infer, "flatten -> dense(5, activation=tanh)",
    parameters=_dense_parameters, macs=_dense_macs,
)

OPS = (DENSE,)
