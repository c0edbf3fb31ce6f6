"""`cnnc export`: a trained checkpoint -> an ONNX file that provably computes what PyTorch computes.

    result = export_checkpoint(load_checkpoint("runs/xo"), "xo.onnx")

1. The program is rebuilt from the spec sources stored in the checkpoint (not from disk, where the
   spec may have changed since training).
2. The ONNX backend (compiler.backends.onnx) emits it with the trained weights and the checkpoint's
   labels, preprocessing, dataset and test accuracy as metadata.
3. The parity gate (export.parity) runs the written bytes with onnxruntime and the PyTorch module with
   the same weights on the same inputs. Only when they agree is the file moved into place
   (os.replace), so a failed export leaves nothing behind, and an existing file is untouched.
   When they disagree, the first diverging layer is named in the error.
4. Deployment forms (export.deploy), applied before the gate so that it checks them: `input_form`
   "uint8" moves the preprocessing into the graph (uint8 N x H x W x C pixels in), `top_k` adds
   the k best scores and their class indices as outputs 1 and 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnc.constants import DEFAULT_OPSET
from cnnc.errors import CnncError
from cnnc.export.parity import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_TOLERANCE,
    ParityReport,
    first_divergence,
    run_gate,
    top_k_problem,
)
from cnnc.files import replacing
from cnnc.runtime.metadata import FLOAT_INPUT, INPUT_FORMS, UINT8_INPUT

Tamper = Callable[[Any], None]  # a test hook: changes each onnx.ModelProto before it is used


class ParityError(CnncError):
    """The exported model does not compute what the PyTorch module computes."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ExportResult:
    path: Path
    report: ParityReport
    outputs: str        # what the graph ends with: "logits" or "probabilities"
    opset: int
    size_bytes: int
    input_form: str = "float32"     # or "uint8": pixels in, preprocessing in the graph
    top_k: int | None = None


def export_checkpoint(
    checkpoint: Any,
    output: str | os.PathLike,
    *,
    opset: int | None = None,
    outputs: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seed: int = 0,
    tamper: Tamper | None = None,
    input_form: str = FLOAT_INPUT,
    top_k: int | None = None,
) -> ExportResult:
    """Export a training.checkpoint.Checkpoint (anything with its model_state, spec_path, sources,
    classes, preprocess, dataset and test_accuracy) to `output`, behind the parity gate."""
    from cnnc.compiler.backends import onnx as backend
    from cnnc.compiler.passes import output_kind, with_outputs
    from cnnc.export.deploy import with_top_k, with_uint8_input

    opset = DEFAULT_OPSET if opset is None else opset
    backend.check_opset(opset)
    if not tolerance > 0:
        raise CnncError(f"the tolerance must be positive, got {tolerance}")
    if input_form not in INPUT_FORMS:
        raise CnncError(f"the input form must be one of {', '.join(INPUT_FORMS)}, got {input_form!r}")
    program = program_of(checkpoint)
    weights = {name: _numpy(value) for name, value in checkpoint.model_state.items()}
    preprocess = dict(checkpoint.preprocess) if getattr(checkpoint, "preprocess", None) else None
    model = backend.to_onnx(
        program, weights, opset=opset, outputs=outputs, labels=list(checkpoint.classes) or None,
        preprocess=preprocess, dataset=getattr(checkpoint, "dataset", None) or None,
        test_accuracy=getattr(checkpoint, "test_accuracy", None),
    )
    uint8_input = input_form == UINT8_INPUT
    if uint8_input:
        with_uint8_input(model, preprocess)
    if top_k is not None:
        with_top_k(model, top_k)
    if tamper is not None:
        tamper(model)
    graph = with_outputs(program.graph, outputs)
    module = _torch_module(graph, checkpoint.model_state)

    output = Path(output)
    with replacing(output) as temporary:
        with open(temporary, "xb") as file:  # "x": never another file; the umask's permissions
            file.write(backend.serialize(model))
        session = _session(temporary)
        input_name = session.get_inputs()[0].name
        top_k_problems: list[str] = []

        def run_onnx(x: np.ndarray) -> np.ndarray:
            values = session.run(None, {input_name: x})
            if top_k is not None:
                top_k_problems.append(top_k_problem(*values[:3]) or "")
            return values[0]

        report, failing = run_gate(
            graph, run_onnx, lambda x: _run_torch(module, x),
            tolerance=tolerance, batch_sizes=batch_sizes, preprocess=preprocess, seed=seed, uint8_input=uint8_input,
        )
        if not report.passed:
            assert failing is not None  # the gate returns the failing batch with a failed report
            report = _diagnose(report, program, graph, weights, module, failing, opset, outputs, tamper)
            raise ParityError(_failure_message(report, uint8_input), report)
        if any(top_k_problems):
            problem = next(p for p in top_k_problems if p)
            raise ParityError(f"the exported model's top-k outputs are wrong: {problem}; nothing was "
                              "written", report)
    return ExportResult(output, report, output_kind(graph), opset, output.stat().st_size, input_form, top_k)


def program_of(checkpoint: Any):
    """The checkpoint's program, re-checked from the sources it stores."""
    from cnnc.compiler.check import check_file

    # the stored sources only (a stored path may name any file); its dataset may have come from --dataset
    result = check_file(checkpoint.spec_path, sources=checkpoint.sources, sources_only=True, check_dataset=False)
    if result.program is None:
        from cnnc.dsl.diagnostics import render_all

        errors = [d for d in result.diagnostics if d.is_error]
        shown = render_all(errors, result.sources) if errors else "it defines no model\n"
        raise CnncError(f"the spec stored in the checkpoint ({checkpoint.spec_path}) does not check with this "
                        f"cnnc:\n{shown.rstrip()}")
    return result.program


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _torch_module(graph, state: Mapping[str, Any]):
    from cnnc.compiler.backends.pytorch import build_module

    return build_module(graph, weights=state).eval()


def _run_torch(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _session(source):
    import onnxruntime as ort

    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _diagnose(report: ParityReport, program, graph, weights, module, x: np.ndarray, opset: int,
              outputs: str | None, tamper: Tamper | None) -> ParityReport:
    """The report with the first layer whose outputs diverge on the failing input."""
    import dataclasses

    import torch

    from cnnc.compiler.backends import onnx as backend

    probe, layers = backend.layer_probe(program, weights, opset=opset, outputs=outputs)
    if tamper is not None:
        tamper(probe)
    session = _session(backend.serialize(probe))
    names = [o.name for o in session.get_outputs()]
    onnx_values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
    with torch.no_grad():
        torch_values = {name: value.numpy() for name, value in module.forward_all(torch.from_numpy(x)).items()}
    divergence = first_divergence(graph, layers, onnx_values, torch_values, report.tolerance)
    return dataclasses.replace(report, first_divergence=divergence)


def _failure_message(report: ParityReport, uint8_input: bool = False) -> str:
    lines = [f"the exported model does not match the PyTorch model: {report.summary()} "
             f"(first failing batch of {report.failing_batch})"]
    divergence = report.first_divergence
    if divergence is not None:
        lines.append(f"the first layer whose outputs diverge is '{divergence.layer}' ({divergence.op} at "
                     f"{divergence.where}): max abs diff {divergence.difference.max_abs:.3g}, "
                     f"max rel diff {divergence.difference.max_rel:.3g}")
    elif uint8_input:
        lines.append("every layer of the float graph agrees on its own: the in-graph preprocessing of the uint8 "
                     "input (transpose, cast, scale, normalisation), or a difference building up across layers, "
                     "is the cause")
    else:
        lines.append("every layer agrees on its own: the difference builds up across layers; "
                     "a larger --tolerance may be appropriate")
    lines.append("nothing was written")
    return "\n".join(lines)
