"""Exported models in the engines that apps run instead of onnxruntime: OpenCV's DNN module
(`cv2.dnn`, opencv-python-headless) and OpenVINO (CPU plugin, f32 inference precision).

Every spec under specs/ (recursively, so specs/zoo/ too) and tests/specs/ is compiled with the
initial weights and run on one seeded input batch in onnxruntime (the reference) and in each engine,
from the same ONNX bytes; small specs at opsets 13, 17 (the default) and the newest this onnx knows,
big ones (ImageNet-size) at the default opset only. Each engine's model is compiled once and fed a
batch of 1 and then, for small specs, a batch of 3: both engines take the symbolic batch dimension N
as it is, so no fixed-batch copy of the model is needed. A few small specs below pin the lowerings
that cnnc chose for the engines' sake (see docs/deployment.md, "Lowerings chosen for the engines").

Tolerance: float32 results may differ by the order of summation (Winograd, im2col blocking, batch
norm folded into convolution weights, fused activations) and by each engine's exp/tanh/erf, not by
anything else. Those differences are a few float32 ulps per layer and grow with depth and fan-in:
the specs here (up to 14 layers deep, fan-in up to 3136) stay below 1e-6 (relative to the output's
scale). RTOL = ATOL = 1e-4 leaves room for ImageNet-depth models and is still below what any wrong
lowering gave (the engine bugs found while writing this file were off by 2e-4 (OpenCV's GELU
ignoring `approximate`) to 1e38, crashed, or changed shapes). The absolute part is scaled by the
output's largest magnitude, because the error of a small output element comes from sums as large
as the largest ones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_onnx_support import ROOT, ort_session, program_of, random_input, run_ort, spec_texts

from cnnc.compiler.backends import onnx as backend
from cnnc.compiler.check import check_file
from cnnc.compiler.ir import Program

RTOL = ATOL = 1e-4
SMALL_OPSETS = (13, backend.DEFAULT_OPSET, backend.max_opset())
SMALL_BATCHES = (1, 3)
# Above this many multiply-adds per image a spec is "big" (ImageNet-size: ResNet-18 has 1.8e9):
# one opset, batch 1, so that the file stays fast.
BIG_MACS = 200_000_000
THREADS = 2  # the machines running the suite are shared

ENGINES = ("opencv", "openvino")


def _spec_files() -> list[Path]:
    """Every .cnn file that declares a model; include-only libraries (specs/lib) declare none."""
    paths = sorted([*(ROOT / "specs").rglob("*.cnn"), *(ROOT / "tests" / "specs").rglob("*.cnn")])
    return [p for p in paths if not _is_library(p)]


def _is_library(path: Path) -> bool:
    result = check_file(path)
    return result.program is None and not result.diagnostics


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# Lowerings that the engines need (docs/deployment.md, "Engines"), each at its smallest.
LOWERING_SPECS = {
    # tanh GELU below opset 20: x^3 as Pow(x, 3); OpenCV 5.0 crashes on the Mul(x, x) * x form
    "gelu_tanh": """model gelu_tanh {
        input image(2, 6, 6)
        conv(4, kernel=3, padding=same, activation=gelu(approximate=tanh))
        flatten -> dense(3, activation=gelu(approximate=tanh))
    }""",
    # 1x1 convolutions with pads: explicit Pad (OpenCV 5.0 leaves the padded border unwritten),
    # and with a stride, the subsampling before the convolution (OpenVINO 2026.4 moves a 1x1
    # convolution's stride to the layer before it, ignoring its pads)
    "pointwise_conv_pads": """model pointwise_conv_pads {
        input image(2, 7, 8)
        conv(4, kernel=1, padding=(0, 1, 2, 0))
        conv(4, kernel=3, padding=same)
        conv(3, kernel=1, stride=2, padding=1)
        depthwise_conv(kernel=1, multiplier=2, padding=1)
        conv(4, kernel=3) -> relu
        conv(2, kernel=1, stride=(2, 1), padding=(1, 0))
    }""",
    # add / multiply of a 1-channel map with a C-channel one: the 1 channel expanded to C first
    # (OpenCV 5.0 rejects the broadcast add fused into a convolution and returns the broadcast
    # product of pooled and convolved maps in its internal blocked layout)
    "channel_broadcast": """model channel_broadcast {
        input image(2, 5, 3)
        a = image -> relu
        b = a -> conv(1, kernel=3, padding=same)
        s = add(b, a)
        p = s -> maxpool(3, stride=1, padding=1)
        q = p -> conv(1, kernel=3, padding=same)
        multiply(p, q, p)
    }""",
}


@functools.cache
def program(spec: str) -> Program:
    if spec in LOWERING_SPECS:
        result = program_of(LOWERING_SPECS[spec], f"{spec}.cnn")
        assert result is not None, spec
        return result
    checked = check_file(ROOT / spec)
    assert checked.program is not None, [str(d) for d in checked.diagnostics]
    return checked.program


def is_big(spec: str) -> bool:
    return program(spec).graph.total_macs > BIG_MACS


@functools.lru_cache(maxsize=2)  # tests run spec by spec: the two engines share one model
def model_bytes(spec: str, opset: int) -> bytes:
    return backend.serialize(backend.to_onnx(program(spec), opset=opset))


def batch_of(spec: str, size: int) -> np.ndarray:
    shape = (size, *program(spec).graph.input.shape)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=4)
def reference(spec: str, opset: int, size: int) -> np.ndarray:
    import onnx

    session = ort_session(onnx.load_from_string(model_bytes(spec, opset)))
    return session.run(None, {session.get_inputs()[0].name: batch_of(spec, size)})[0]


# --- the engines: ONNX bytes -> a function of the input batch ---------------------------------------

def opencv_runner(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import cv2

    cv2.setNumThreads(THREADS)
    net = cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8))

    def run(x: np.ndarray) -> np.ndarray:
        net.setInput(x)
        return net.forward()

    return run


def openvino_runner(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model=data, weights=b""), "CPU",
                                  {hints.inference_precision: ov.Type.f32, props.inference_num_threads: THREADS})
    # a CPU with bf16 or fp16 units would otherwise run reduced precision by default
    assert compiled.get_property(hints.inference_precision) == ov.Type.f32
    output = compiled.output(0)
    return lambda x: compiled(x)[output]


RUNNERS = {"opencv": opencv_runner, "openvino": openvino_runner}


def engine_version(engine: str) -> str:
    if engine == "opencv":
        import cv2

        return f"OpenCV {cv2.__version__}"
    import openvino as ov

    return f"OpenVINO {ov.get_version()}"


# --- known engine problems without an equivalent lowering: (spec, engine) -> reason ------------------
# Each is an exact case, xfailed strictly: when an engine release fixes it, the test fails until
# the entry is removed.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _cases() -> list:
    specs = [_name(p) for p in _spec_files()] + list(LOWERING_SPECS)
    cases = []
    for spec in specs:
        for opset in ((backend.DEFAULT_OPSET,) if is_big(spec) else SMALL_OPSETS):
            for engine in ENGINES:
                marks = []
                if (spec, engine) in KNOWN_FAILURES:
                    marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[spec, engine]))
                cases.append(pytest.param(spec, opset, engine, marks=marks, id=f"{spec}-opset{opset}-{engine}"))
    return cases


@pytest.mark.parametrize(("spec", "opset", "engine"), _cases())
def test_engine_matches_onnxruntime(spec: str, opset: int, engine: str):
    run = RUNNERS[engine](model_bytes(spec, opset))
    for size in ((1,) if is_big(spec) else SMALL_BATCHES):
        context = f"{engine_version(engine)}, batch {size}"
        assert_matches(run(batch_of(spec, size)), reference(spec, opset, size), context)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec=spec_texts(), opset=st.sampled_from(SMALL_OPSETS))
def test_generated_specs_match_onnxruntime_in_both_engines(spec, opset):
    """Random valid specs (every layer kind, padding mode and merge), where most of the engine bugs
    that the lowerings avoid were found: 58 of 300 such specs failed in OpenCV or OpenVINO before."""
    generated = program_of(spec)
    assert generated is not None, spec
    model = backend.to_onnx(generated, opset=opset)
    x = random_input(generated, 2)
    expected = run_ort(model, x)[0]
    for engine in ENGINES:
        assert_matches(RUNNERS[engine](backend.serialize(model))(x), expected, f"{engine_version(engine)}\n{spec}")


def assert_matches(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    """Within RTOL of each value plus ATOL of the output's scale (see the module's docstring)."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (context, actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * scale, err_msg=context)


def test_every_spec_and_the_zoo_are_collected():
    """The discovery that the cases above come from: nested folders (specs/zoo) included,
    include-only libraries left out (they declare no model)."""
    names = {_name(p) for p in _spec_files()}
    assert {"specs/xo.cnn", "specs/resnet_cifar.cnn", "tests/specs/all_ops.cnn"} <= names
    assert "specs/lib/blocks.cnn" not in names
    every = [*(ROOT / "specs").rglob("*.cnn"), *(ROOT / "tests" / "specs").rglob("*.cnn")]
    for path in every:
        if _name(path) not in names:  # left out: it must declare no model
            assert not re.search(r"^\s*model\s", path.read_text(), re.MULTILINE), path
