"""Normalisation layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnc.compiler.arguments import ArgSpec, Bool, Float
from cnnc.compiler.ops.core import OpDef, Param, Shape, same_as_input
from cnnc.compiler.ops.initializers import ONES, ZEROS

FAMILY = "norm"


def _batchnorm_parameters(attrs: Mapping[str, Any], output: Shape) -> tuple[Param, ...]:
    channels = (output[0],)
    affine = (Param("weight", channels, ONES), Param("bias", channels, ZEROS)) if attrs["affine"] else ()
    return (*affine, Param("running_mean", channels, ZEROS, trainable=False),
            Param("running_var", channels, ONES, trainable=False))


BATCHNORM = OpDef(
    "batchnorm", FAMILY, "batch normalisation over channels (or features of a flat input)",
    (
        ArgSpec("momentum", Float(minimum=0, maximum=1), 0.1, doc="PyTorch's convention: the weight of the new batch"),
        ArgSpec("eps", Float(minimum=0), 1e-5),
        ArgSpec("affine", Bool(), True),
    ),
    same_as_input, "batchnorm(momentum=0.2, eps=0.001)", parameters=_batchnorm_parameters,
)

OPS = (BATCHNORM,)
