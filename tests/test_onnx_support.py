"""Shared helpers of the ONNX backend's tests: spec checking, a hypothesis strategy of random valid
specs, ORT and reference runs, and inferred shapes.

Imported by tests/test_onnx*.py and tests/test_export*.py (pytest puts this folder on sys.path);
it holds no tests itself.
"""

from __future__ import annotations

import functools
import glob
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st

from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Program
from cnnc.compiler.ops import ACTIVATIONS as REGISTERED_ACTIVATIONS
from cnnc.compiler.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
# The example specs and the test specs (every op, every padding mode), as paths relative to the root;
# the ImageNet-size zoo (specs/zoo/) has its own, lighter tests.
SPECS = sorted(str(Path(p).relative_to(ROOT)) for folder in ("specs", "tests/specs")
               for p in glob.glob(str(ROOT / folder / "*.cnn")))


@functools.cache
def spec_program(name: str) -> Program:
    result = check_file(ROOT / name)
    assert result.program is not None, [str(d) for d in result.diagnostics]
    return result.program


def program_of(text: str, path: str = "generated.cnn") -> Program | None:
    return check_file(path, text=text).program


def ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort_session(model)
    return session.run(None, {session.get_inputs()[0].name: x})


def run_reference(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model, new_ops=list(_reference_fixes()))
    return evaluator.run(None, {model.graph.input[0].name: x})


@functools.cache
def _reference_fixes() -> tuple[type, ...]:
    """Three bugs of onnx 1.23's ReferenceEvaluator that the emitted models meet, fixed with the
    evaluator's own code paths:
    - ConvTranspose with group > 1 and several filters per group fails to broadcast (its grouped
      path is wrong): each group is computed by the evaluator's own group-1 path and concatenated.
    - BatchNormalization-9 (opsets 9-13) always normalises with the batch's statistics, because the
      schema fills in momentum=0.9 (onnx/onnx PR #8442, open); a one-output node is inference mode.
    - MaxPool with every stride 1 takes a shortcut that reads 2-D pads as (top, bottom, left, right)
      instead of ONNX's (top, left, bottom, right): asymmetric `same` pads give wrong shapes. The
      general path (`_max_pool`, used for other strides) reads them right."""
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as ReferenceConvTranspose
    from onnx.reference.ops.op_max_pool import MaxPool as ReferenceMaxPool

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):
            shape = (-1,) + (1,) * (x.ndim - 2)
            y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon)
            return ((y + bias.reshape(shape)).astype(x.dtype),)

    class MaxPool(ReferenceMaxPool):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
                 storage_order=None, strides=None):
            return self._max_pool(x, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                                  kernel_shape=kernel_shape, pads=pads, storage_order=storage_order,
                                  strides=strides)

    class ConvTranspose(ReferenceConvTranspose):
        op_domain = ""

        def _run(self, x, w, b=None, group=None, **attributes):
            if not group or group == 1:
                return super()._run(x, w, b, group=group, **attributes)
            per_group = x.shape[1] // group
            parts = [super(ConvTranspose, self)._run(x[:, g * per_group:(g + 1) * per_group],
                                                     w[g * per_group:(g + 1) * per_group], None, group=1,
                                                     **attributes)[0] for g in range(group)]
            y = np.concatenate(parts, axis=1)
            return ((y if b is None else y + b.reshape(1, -1, 1, 1)).astype(x.dtype),)

    return BatchNormalization, MaxPool, ConvTranspose


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Every tensor's shape after strict shape inference: dim_param names or dim values."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def random_input(program: Program, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *program.graph.input.shape)).astype(np.float32)


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / (1 + |b|): absolute for small values, relative for large ones. Equal values
    (infinities included) and NaN against NaN count as no error (windows of padding only give them)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        error = np.where(same, 0.0, np.abs(a - b) / (1 + np.abs(b)))
    return float(np.max(np.nan_to_num(error, nan=np.inf), initial=0.0))


# --- random valid specs --------------------------------------------------------------------------------

# Every registered activation, plus argument variants of those that take arguments.
ACTIVATIONS = (*REGISTERED_ACTIVATIONS, "leaky_relu(0.2)", "elu(0.7)", "gelu(approximate=tanh)")
# The layer call of every single-input op's registered example (the last layer of its last line).
REGISTERED_LAYERS = tuple(op.example.split("\n")[-1].split("->")[-1].strip() for op in OPS.values() if not op.is_merge)


def _padding(draw) -> str:
    return draw(st.sampled_from(["same", "valid", "1", "(1, 0)", "(0, 1, 2, 0)", "(1, 2, 0, 1)"]))


@st.composite
def spec_texts(draw) -> str:
    """A model of 1-6 feature layers (convolutions, pooling, merges, normalisation, activations) and
    a head (flatten or global pooling, dense layers), drawn layer by layer; each candidate layer is
    kept only when the checker accepts the model with it, so every result checks."""
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(4, 11)), draw(st.integers(4, 11))
    lines = [f"input image({channels}, {height}, {width})"]
    state = {"count": 0, "current": "image"}

    def fresh() -> str:
        state["count"] += 1
        return f"t{state['count']}"

    def attempt(candidate: list[str], name: str) -> bool:
        if program_of(_model(lines + candidate)) is None:
            return False
        lines.extend(candidate)
        state["current"] = name
        return True

    for _ in range(draw(st.integers(1, 6))):
        current = state["current"]
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "maxpool", "avgpool", "batchnorm", "activation",
                                     "dropout", "residual", "gate", "concat", "keepdims", "registered"]))
        name = fresh()
        if kind == "conv":
            groups = draw(st.sampled_from([1, 1, 2]))
            filters = draw(st.integers(1, 3)) * groups
            options = [f"kernel=({draw(st.integers(1, 3))}, {draw(st.integers(1, 3))})",
                       f"stride=({draw(st.integers(1, 2))}, {draw(st.integers(1, 2))})", f"padding={_padding(draw)}"]
            if draw(st.booleans()):
                options.append(f"dilation={draw(st.integers(1, 2))}")
            if groups > 1:
                options.append(f"groups={groups}")
            if draw(st.booleans()):
                options.append("bias=false")
            if draw(st.booleans()):
                options.append(f"activation={draw(st.sampled_from(ACTIVATIONS))}")
            candidate = [f"{name} = {current} -> conv({filters}, {', '.join(options)})"]
        elif kind == "depthwise":
            options = [f"kernel={draw(st.integers(1, 3))}", f"multiplier={draw(st.integers(1, 2))}",
                       f"stride={draw(st.integers(1, 2))}", f"padding={_padding(draw)}"]
            if draw(st.booleans()):
                options.append(f"activation={draw(st.sampled_from(ACTIVATIONS))}")
            candidate = [f"{name} = {current} -> depthwise_conv({', '.join(options)})"]
        elif kind in ("maxpool", "avgpool"):
            padding = draw(st.sampled_from(["same", "valid", "1", "(0, 1, 1, 0)"]))
            # Explicit pads stay below the kernel: a window of padding only has no meaningful value
            # (onnxruntime's max over it is -FLT_MAX, PyTorch's -inf); test_onnx_ops covers that lowering.
            kernel = draw(st.integers(1 if padding in ("same", "valid") else 2, 3))
            options = [f"{kernel}", f"stride={draw(st.integers(1, 3))}", f"padding={padding}"]
            if padding != "same" and draw(st.booleans()):
                options.append("ceil_mode=true")
            if kind == "avgpool" and draw(st.booleans()):
                options.append("count_pad=true")
            candidate = [f"{name} = {current} -> {kind}({', '.join(options)})"]
        elif kind == "batchnorm":
            affine = draw(st.sampled_from(["", "affine=false", "eps=0.001"]))
            candidate = [f"{name} = {current} -> batchnorm({affine})"]
        elif kind == "activation":
            candidate = [f"{name} = {current} -> {draw(st.sampled_from(ACTIVATIONS))}"]
        elif kind == "dropout":
            candidate = [f"{name} = {current} -> dropout(0.3)"]
        elif kind == "residual":
            branch = fresh()
            merge = draw(st.sampled_from(["add", "multiply"]))
            operands = [branch, current] + ([current] if draw(st.booleans()) else [])
            candidate = [f"{branch} = {current} -> conv(1, kernel=3, padding=same) -> batchnorm",
                         f"{name} = {merge}({', '.join(draw(st.permutations(operands)))})"]
        elif kind == "gate":
            gate = fresh()
            pool = draw(st.sampled_from(["global_avgpool", "global_maxpool"]))
            operands = draw(st.permutations([current, gate]))
            candidate = [f"{gate} = {current} -> {pool} -> dense(1, activation=sigmoid)",
                         f"{name} = {draw(st.sampled_from(['multiply', 'add']))}({', '.join(operands)})"]
        elif kind == "concat":
            branch = fresh()
            candidate = [f"{branch} = {current} -> conv({draw(st.integers(1, 3))}, kernel=1)",
                         f"{name} = concat({', '.join(draw(st.permutations([branch, current])))})"]
        elif kind == "registered":
            candidate = [f"{name} = {current} -> {draw(st.sampled_from(REGISTERED_LAYERS))}"]
        else:
            candidate = [f"{name} = {current} -> {draw(st.sampled_from(['global_avgpool', 'global_maxpool']))}"
                         "(keepdims=true)"]
        attempt(candidate, name)

    current = state["current"]
    head = fresh()
    flat = draw(st.sampled_from(["flatten", "global_avgpool", "global_maxpool"]))
    attempt([f"{head} = {current} -> {flat}"], head)
    for _ in range(draw(st.integers(0, 2))):
        current, name = state["current"], fresh()
        layer = draw(st.sampled_from(["dense", "batchnorm", "dropout", "activation"]))
        if layer == "dense":
            text = f"dense({draw(st.integers(1, 6))}, activation={draw(st.sampled_from(ACTIVATIONS))})"
        elif layer == "activation":
            text = draw(st.sampled_from(ACTIVATIONS))
        else:
            text = {"batchnorm": "batchnorm", "dropout": "dropout(0.5)"}[layer]
        attempt([f"{name} = {current} -> {text}"], name)
    current, name = state["current"], fresh()
    ending = draw(st.sampled_from(["", ", activation=softmax", " -> softmax", ", bias=false"]))
    classes = draw(st.integers(2, 5))
    attempt([f"{name} = {current} -> dense({classes}{ending})"], name)
    lines.append(f"output {state['current']}")
    return _model(lines)


def _model(lines: list[str]) -> str:
    return "model generated {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
