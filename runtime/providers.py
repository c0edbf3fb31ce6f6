"""Creating onnxruntime sessions, and telling the truth about which execution provider runs them.

onnxruntime silently drops a requested provider whose libraries fail to load and runs on the
CPU instead; here asking for CUDA either gets CUDA, or an error, or (with fallback) a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from cnnc.errors import CnncError

ProviderChoice = Literal["auto", "cpu", "cuda"]
Optimization = Literal["disable", "basic", "extended", "all"]

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class ProviderFallbackWarning(RuntimeWarning):
    """CUDA was asked for with fallback=True but is not usable, so the model runs on the CPU."""


class _CudaUnavailable(Exception):
    """Why CUDA cannot run here; becomes a CnncError or a warning, depending on the caller."""


def session_options(threads: int | None, optimization: str) -> ort.SessionOptions:
    if optimization not in OPTIMIZATION_LEVELS:
        raise CnncError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, not {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CnncError(f"threads must be a positive int (or None for onnxruntime's default), not {threads!r}")
        options.intra_op_num_threads = threads
    return options


def create_session(
    path: Path, choice: str, options: ort.SessionOptions, fallback: bool
) -> tuple[ort.InferenceSession, str]:
    """The session and the provider that really runs it: "cpu" or "cuda"."""
    if choice not in PROVIDER_CHOICES:
        raise CnncError(f"provider must be one of {', '.join(PROVIDER_CHOICES)}, not {choice!r}")
    if choice == "cpu":
        return _new_session(path, [CPU_PROVIDER], options), "cpu"
    try:
        return _cuda_session(path, options), "cuda"
    except _CudaUnavailable as unavailable:
        if choice == "cuda" and not fallback:
            raise CnncError(str(unavailable)) from None
        if choice == "cuda":
            # stacklevel 3 points at the caller of Model.load, the line the user can change.
            warnings.warn(f"{unavailable}; running on the CPU instead", ProviderFallbackWarning, stacklevel=3)
    return _new_session(path, [CPU_PROVIDER], options), "cpu"


def _cuda_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise _CudaUnavailable(
            f"{CUDA_PROVIDER} is not available in this onnxruntime build "
            f"(onnxruntime {ort.__version__}, available: {', '.join(available)}); "
            "install onnxruntime-gpu and a matching CUDA/cuDNN"
        )
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=[CUDA_PROVIDER, CPU_PROVIDER])
    except Exception as error:  # onnxruntime's errors share no base class more specific than Exception
        _new_session(path, [CPU_PROVIDER], options)  # raises the CnncError if the model itself is invalid
        raise _CudaUnavailable(f"onnxruntime {ort.__version__} could not start {CUDA_PROVIDER}: {error}") from None
    if CUDA_PROVIDER not in session.get_providers():
        raise _CudaUnavailable(
            f"onnxruntime {ort.__version__} lists {CUDA_PROVIDER} but could not load it: its CUDA or cuDNN "
            "libraries are missing or do not match (onnxruntime's log above names the library); "
            "install the CUDA/cuDNN versions this onnxruntime-gpu was built for"
        )
    return session


def _new_session(path: Path, providers: list[str], options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime's errors share no base class more specific than Exception
        raise CnncError(f"{path} is not a valid ONNX model: {error}") from None
