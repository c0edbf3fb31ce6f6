"""Small ONNX classifiers with cnnc metadata, built with onnx.helper, for the runtime's tests.

Imported by the other tests/test_runtime*.py files (pytest puts this folder on sys.path); it holds
no tests itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from PIL import Image

FEATURES = 4
MNIST_LIKE_MEAN, MNIST_LIKE_STD = 0.1307, 0.3081


def cnnc_metadata(channels: int, size: int, labels: list[str], output: str = "logits") -> dict[str, str]:
    """The metadata_props the ONNX backend writes, per the runtime's contract."""
    return {
        "cnnc.version": "0.1.0",
        "cnnc.model": "tiny",
        "cnnc.labels": json.dumps(labels),
        "cnnc.input_layout": "NCHW",
        "cnnc.input_shape": json.dumps([channels, size, size]),
        "cnnc.preprocess": json.dumps(
            {"scale": 1 / 255, "mean": [MNIST_LIKE_MEAN] * channels, "std": [MNIST_LIKE_STD] * channels}
        ),
        "cnnc.output": output,
        "cnnc.params": "100",
        "cnnc.dataset": "xo",
    }


def classifier(
    channels: int = 1,
    size: int = 8,
    classes: int = 3,
    metadata: dict[str, str] | None = None,
    softmax: bool = False,
    input_name: str = "image",
    seed: int = 0,
) -> onnx.ModelProto:
    """Conv(3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm [-> Softmax], batch dim symbolic."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.normal(size=(FEATURES, channels, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(size=FEATURES).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(size=(classes, FEATURES)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(size=classes).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", [input_name, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits" if softmax else "output"], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any onnxruntime the runtime supports
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def reference_output(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """The model's output computed by onnx's reference evaluator, independently of onnxruntime."""
    evaluator = ReferenceEvaluator(model)
    return evaluator.run(None, {model.graph.input[0].name: batch})[0]


def reference_preprocess(images_nchw: np.ndarray) -> np.ndarray:
    """cnnc_metadata's normalisation, written out in float64."""
    return ((images_nchw / 255.0 - MNIST_LIKE_MEAN) / MNIST_LIKE_STD).astype(np.float32)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Save an H x W (grayscale) or H x W x 3 (RGB) uint8 array as a PNG."""
    Image.fromarray(pixels).save(path)
    return path


def random_images(count: int, channels: int = 1, size: int = 8, seed: int = 1) -> np.ndarray:
    """uint8 NCHW images."""
    return np.random.default_rng(seed).integers(0, 256, (count, channels, size, size), dtype=np.uint8)
