"""The parity gate: the exported ONNX model, run by onnxruntime, against the PyTorch module it came from.

The same inputs (several batch sizes, 1 and odd ones included) go through both. An element agrees
when |onnx - torch| <= tolerance * max(1, |torch|): an absolute tolerance for values up to 1 in
magnitude, a relative one above (logits can be large). When they disagree, a diagnostic model that
exposes every layer's output (onnx.layer_probe) is compared with the module's `forward_all`, layer
by layer in graph order, and the first layer that disagrees is named.

A model that takes uint8 pixels (export.deploy.with_uint8_input) gets random pixels, N x H x W x C,
while PyTorch gets the same pixels preprocessed as the runtime does it for the float model; so the
gate covers the in-graph preprocessing too. A model with top-k outputs must report, on every input,
the k best of its own scores, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TOLERANCE = 1e-4
DEFAULT_BATCH_SIZES = (1, 7, 16)


@dataclass(frozen=True)
class Difference:
    max_abs: float        # max |onnx - torch|
    max_rel: float        # max |onnx - torch| / max(1, |torch|): what the tolerance bounds

    def within(self, tolerance: float) -> bool:
        return self.max_rel <= tolerance

    @staticmethod
    def between(onnx_values: np.ndarray, torch_values: np.ndarray) -> Difference:
        a, b = np.asarray(onnx_values, np.float64), np.asarray(torch_values, np.float64)
        if a.shape != b.shape:
            return Difference(float("inf"), float("inf"))
        # Equal values (infinities included) and NaN against NaN agree; any other NaN disagrees.
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.abs(a - b))
            diff = np.nan_to_num(diff, nan=np.inf)
            rel = diff / np.maximum(1.0, np.abs(np.nan_to_num(b, nan=0.0)))
        return Difference(float(diff.max(initial=0.0)), float(rel.max(initial=0.0)))

    def combine(self, other: Difference) -> Difference:
        return Difference(max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel))


@dataclass(frozen=True)
class LayerDivergence:
    layer: str
    op: str
    where: str          # the spec file and line that wrote the layer: "specs/lib/blocks.cnn:14"
    difference: Difference


@dataclass(frozen=True)
class ParityReport:
    batch_sizes: tuple[int, ...]
    tolerance: float
    difference: Difference
    failing_batch: int | None = None           # the first batch size that failed
    first_divergence: LayerDivergence | None = None

    @property
    def passed(self) -> bool:
        return self.failing_batch is None

    def summary(self) -> str:
        sizes = ", ".join(map(str, self.batch_sizes))
        verdict = "within" if self.passed else "EXCEEDS"
        return (f"parity (onnxruntime vs PyTorch, batches of {sizes}): max abs diff {self.difference.max_abs:.3g}, "
                f"max rel diff {self.difference.max_rel:.3g} {verdict} tolerance {self.tolerance:g}")


def gate_pixels(input_shape: Sequence[int], batch_size: int, seed: int) -> np.ndarray:
    """Random uint8 pixels, N x C x H x W."""
    rng = np.random.default_rng([seed, batch_size])
    return rng.integers(0, 256, size=(batch_size, *input_shape), dtype=np.uint8)


def gate_inputs(input_shape: Sequence[int], batch_size: int, preprocess: Mapping | None, seed: int) -> np.ndarray:
    """Realistic inputs: uniform random pixels, preprocessed as the model expects its images."""
    rng = np.random.default_rng([seed, batch_size])
    pixels = rng.uniform(0.0, 1.0, size=(batch_size, *input_shape))
    if preprocess:
        mean = np.asarray(preprocess.get("mean", [0.0]), np.float64).reshape(1, -1, 1, 1)
        std = np.asarray(preprocess.get("std", [1.0]), np.float64).reshape(1, -1, 1, 1)
        pixels = (pixels - mean) / std
    return pixels.astype(np.float32)


def run_gate(
    graph,
    run_onnx: Callable[[np.ndarray], np.ndarray],
    run_torch: Callable[[np.ndarray], np.ndarray],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    preprocess: Mapping | None = None,
    seed: int = 0,
    uint8_input: bool = False,
) -> tuple[ParityReport, np.ndarray | None]:
    """Compare the two on every batch size; returns the report and, on failure, the failing input
    (the float batch PyTorch ran). With `uint8_input`, run_onnx is given uint8 N x H x W x C pixels."""
    total = Difference(0.0, 0.0)
    for size in batch_sizes:
        if uint8_input:
            pixels = gate_pixels(graph.input.shape, size, seed)
            x = preprocessing_of(preprocess).apply(pixels)
            onnx_values = run_onnx(np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)))
        else:
            x = gate_inputs(graph.input.shape, size, preprocess, seed)
            onnx_values = run_onnx(x)
        difference = Difference.between(onnx_values, run_torch(x))
        total = total.combine(difference)
        if not difference.within(tolerance):
            return ParityReport(tuple(batch_sizes), tolerance, total, failing_batch=size), x
    return ParityReport(tuple(batch_sizes), tolerance, total), None


def preprocessing_of(preprocess: Mapping | None):
    """The runtime's preprocessing for a float model with these statistics: the reference that the
    in-graph preprocessing must reproduce."""
    from cnnc.runtime.preprocess import Preprocessing

    if not preprocess:
        return Preprocessing()
    return Preprocessing(scale=float(preprocess.get("scale", 1 / 255)),
                         mean=tuple(float(m) for m in np.atleast_1d(preprocess.get("mean", [0.0]))),
                         std=tuple(float(s) for s in np.atleast_1d(preprocess.get("std", [1.0]))))


def top_k_problem(scores: np.ndarray, top_scores: np.ndarray, top_indices: np.ndarray) -> str | None:
    """Why the top-k outputs are not the k best of `scores`, best first (None when they are)."""
    k = top_scores.shape[1]
    if top_indices.shape != top_scores.shape or top_scores.shape != (len(scores), k):
        return f"top-k outputs of shapes {top_scores.shape} and {top_indices.shape} for scores of shape {scores.shape}"
    if not np.array_equal(np.take_along_axis(scores, top_indices, axis=1), top_scores):
        return "the top-k scores are not the scores at the top-k indices"
    expected = -np.sort(-scores, axis=1)[:, :k]
    if not np.array_equal(top_scores, expected):
        return "the top-k scores are not the k highest scores, highest first"
    if any(len(set(row)) != k for row in top_indices.tolist()):
        return "the top-k indices repeat a class"
    return None


def first_divergence(
    graph,
    layer_outputs: Mapping[str, str],
    onnx_outputs: Mapping[str, np.ndarray],
    torch_outputs: Mapping[str, np.ndarray],
    tolerance: float,
) -> LayerDivergence | None:
    """The first layer, in graph order, whose ONNX output (`onnx_outputs[layer_outputs[name]]`)
    disagrees with the module's (`torch_outputs[name]`)."""
    for node in graph.nodes[1:]:
        tensor = layer_outputs.get(node.name)
        if tensor is None or tensor not in onnx_outputs or node.name not in torch_outputs:
            continue
        difference = Difference.between(onnx_outputs[tensor], torch_outputs[node.name])
        if not difference.within(tolerance):
            return LayerDivergence(node.name, node.op, f"{node.span.path}:{node.span.line}", difference)
    return None
