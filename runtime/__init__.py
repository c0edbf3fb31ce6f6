"""cnnc.runtime: run exported cnnc models with onnxruntime, without torch.

    from cnnc.runtime import Model
    model = Model.load("mnist.onnx")
    for prediction in model.classify(["digit7.png"], top_k=3):
        print(prediction.input, prediction.label, prediction.score)

This package imports only the standard library, numpy, onnxruntime, `cnnc.errors` and (lazily, to
decode image files) Pillow, so that programs can embed it without the compiler's dependencies.
Its public names are loaded on first use, so that `cnnc.runtime.cli` (imported by every `cnnc`
command) does not pay for numpy and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnc.runtime.model import Model, Prediction
    from cnnc.runtime.providers import ProviderFallbackWarning

__all__ = ["Model", "Prediction", "ProviderFallbackWarning"]

_HOMES = {
    "Model": "cnnc.runtime.model",
    "Prediction": "cnnc.runtime.model",
    "ProviderFallbackWarning": "cnnc.runtime.providers",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
