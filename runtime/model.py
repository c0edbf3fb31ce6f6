"""A loaded model: validated inputs in, predictions out, on the provider that really runs it.

A model without cnnc metadata (exported by another tool) loads and predicts like any other;
`classify` then maps pixels [0, 255] to [0, 1] only, treats the output as logits, and labels
classes by their index ("0", "1", ...).

A Model holds no mutable state: onnxruntime's `InferenceSession.run` is thread-safe, so one Model
can serve many threads at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnnc.errors import CnncError
from cnnc.runtime.images import ImageInput, image_batch
from cnnc.runtime.metadata import read_input_shape, read_labels, read_output_kind
from cnnc.runtime.preprocess import Preprocessing
from cnnc.runtime.providers import Optimization, ProviderChoice, create_session, session_options

InputShape = tuple[int | None, int | None, int | None]  # (C, H, W); None where the model accepts any size


@dataclass(frozen=True)
class Prediction:
    """One image's classification: its best label and score, and the top k (label, score) pairs."""

    input: str  # the image's path, or "#i" for the i-th array given
    label: str
    score: float
    top_k: tuple[tuple[str, float], ...]


@dataclass(frozen=True, eq=False)
class Model:
    """Create with `Model.load(path)`."""

    path: str
    provider: str  # what really runs the model: "cpu" or "cuda"
    input_name: str
    input_shape: InputShape
    labels: tuple[str, ...]  # class names, or class indices as strings when the model has none
    output_kind: str  # "logits" or "probabilities"
    batch_size: int
    metadata: dict[str, str] = field(repr=False)
    preprocessing: Preprocessing = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    output_name: str = field(repr=False)

    @classmethod
    def load(
        cls,
        path: str | Path,
        provider: ProviderChoice = "auto",
        threads: int | None = None,
        optimization: Optimization = "all",
        fallback: bool = False,
        batch_size: int = 256,
    ) -> Model:
        """Load an ONNX model file.

        provider: "cpu", "cuda" (an error if CUDA does not work here, unless `fallback`, which warns
        and runs on the CPU), or "auto" (CUDA when it works, else the CPU, silently).
        threads: onnxruntime's intra-op thread count (None: one per core).
        batch_size: the largest batch sent to onnxruntime at once; bigger inputs are split.
        """
        path = Path(path)
        _check_model_file(path)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CnncError(f"batch_size must be a positive int, not {batch_size!r}")
        session, running_on = create_session(path, provider, session_options(threads, optimization), fallback)
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        try:
            input_name, input_shape, output_name, classes = _signature(session, metadata)
            labels = _labels(metadata, classes)
            return cls(
                path=str(path),
                provider=running_on,
                input_name=input_name,
                input_shape=input_shape,
                labels=labels,
                output_kind=read_output_kind(metadata),
                batch_size=batch_size,
                metadata=metadata,
                preprocessing=Preprocessing.from_metadata(metadata, input_shape[0]),
                session=session,
                output_name=output_name,
            )
        except CnncError as error:
            raise CnncError(f"{path}: {error}") from None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output (N, classes) for a preprocessed float batch (N, C, H, W)."""
        batch = self._checked_float_batch(batch)
        if len(batch) <= self.batch_size:
            return self._run(batch)
        chunks = range(0, len(batch), self.batch_size)
        return np.concatenate([self._run(batch[start : start + self.batch_size]) for start in chunks])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for a preprocessed float batch (N, C, H, W)."""
        output = self.predict(batch)
        if output.ndim != 2:  # a model from elsewhere whose output is not (N, classes)
            raise CnncError(f"{self.path} outputs a {output.ndim}-dimensional tensor of shape {output.shape}; "
                            "a classifier's output is (N, classes)")
        return softmax(output) if self.output_kind == "logits" else output

    def preprocess(self, images: ImageInput) -> np.ndarray:
        """The float32 NCHW batch the model takes, from images in any form `classify` accepts."""
        return self._image_batch(images)[1]

    def classify(self, images: ImageInput, top_k: int = 1) -> list[Prediction]:
        """Classify uint8 images or image files (see `cnnc.runtime.images` for the accepted forms).

        Each Prediction's top_k holds the min(top_k, classes) most likely labels, best first.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise CnncError(f"top_k must be a positive int, not {top_k!r}")
        names, batch = self._image_batch(images)
        probabilities = self.probabilities(batch)
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        return [
            _prediction(name, [(self._label(int(index)), float(row[index])) for index in order])
            for name, row, order in zip(names, probabilities, ranked)
        ]

    def _image_batch(self, images: ImageInput) -> tuple[tuple[str, ...], np.ndarray]:
        channels, height, width = self.input_shape
        if channels is None:
            raise CnncError(f"{self.path} does not say how many channels its input has, so it cannot take images; use predict()")
        names, pixels = image_batch(images, (channels, height, width))
        return names, self.preprocessing.apply(pixels)

    def _label(self, index: int) -> str:
        # Models whose class count is only known when they run may have fewer labels than outputs.
        return self.labels[index] if index < len(self.labels) else str(index)

    def _checked_float_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype.kind != "f":
            raise CnncError(
                f"predict takes a preprocessed float32 batch, received dtype {batch.dtype}; "
                "for uint8 images use classify(), or preprocess() to turn them into the model's input"
            )
        check_batch_shape(batch.shape, self.input_shape)
        # No copy when the batch already is float32 and C-contiguous, the common case.
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        # One reduction and no mask: a float64 sum of float32 values cannot overflow, so it is finite
        # unless some value is NaN or infinite.
        if not math.isfinite(batch.sum(dtype=np.float64)):
            first = tuple(int(i) for i in np.argwhere(~np.isfinite(batch))[0])
            raise CnncError(f"the batch contains NaN or infinite values (the first at index {first}: {batch[first]})")
        return batch

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.provider == "cuda":
            return _run_with_io_binding(self.session, self.input_name, self.output_name, batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def _run_with_io_binding(session: ort.InferenceSession, input_name: str, output_name: str, batch: np.ndarray) -> np.ndarray:
    # Bound, the input is copied to the GPU once and the output is written straight into host
    # memory, with no intermediate copies; a binding per call keeps concurrent calls independent.
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, batch)
    binding.bind_output(output_name)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def check_batch_shape(shape: tuple[int, ...], expected: InputShape) -> None:
    """Raise a CnncError naming the expected and received shapes unless `shape` is a non-empty (N, C, H, W)."""
    problem = _shape_problem(shape, expected)
    if problem:
        expected_text = f"(N, {', '.join('?' if size is None else str(size) for size in expected)})"
        raise CnncError(f"expected a batch of shape {expected_text}, received {tuple(shape)}: {problem}")


def _shape_problem(shape: tuple[int, ...], expected: InputShape) -> str | None:
    if len(shape) != 4:
        single = " (one image? add a batch axis: x[None])" if len(shape) == 3 else ""
        return f"{len(shape)} dimensions instead of 4{single}"
    count, channels, height, width = shape
    want_channels, want_height, want_width = expected
    if count == 0:
        return "the batch is empty"
    if want_channels is not None and channels != want_channels:
        return f"{channels} channel{'' if channels == 1 else 's'} where the model takes {want_channels}"
    if (want_height is not None and height != want_height) or (want_width is not None and width != want_width):
        return f"{height}x{width} images where the model takes {want_height or 'any'}x{want_width or 'any'}"
    return None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # exp of large logits would overflow
    exps = np.exp(shifted)
    return exps / exps.sum(axis=1, keepdims=True)


def _prediction(name: str, ranked: list[tuple[str, float]]) -> Prediction:
    label, score = ranked[0]
    return Prediction(input=name, label=label, score=score, top_k=tuple(ranked))


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise CnncError(f"model file {path} does not exist")
    if not path.is_file():
        raise CnncError(f"{path} is not a file: expected an ONNX model file")


def _signature(session: ort.InferenceSession, metadata: dict[str, str]) -> tuple[str, InputShape, str, int | None]:
    """The input's name and (C, H, W), the output's name, and the class count when the graph fixes it."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
        found = ", ".join(f"{node.name}: {node.type} {node.shape}" for node in inputs)
        raise CnncError(f"expected a model with one float input of shape [N, C, H, W], found {found or 'no inputs'}")
    graph_shape = tuple(_fixed_size(size) for size in inputs[0].shape[1:])
    declared = read_input_shape(metadata)
    if declared is not None and any(size not in (None, want) for size, want in zip(graph_shape, declared)):
        raise CnncError(f"metadata 'cnnc.input_shape' {list(declared)} contradicts the graph's input shape {inputs[0].shape}")
    output_shape = outputs[0].shape
    if output_shape and len(output_shape) != 2:  # a shape the graph declares; an unknown one is checked per run
        raise CnncError(f"the model outputs a {len(output_shape)}-dimensional tensor {output_shape}; a classifier's "
                        "output is [N, classes]")
    classes = _fixed_size(output_shape[1]) if len(output_shape) == 2 else None
    return inputs[0].name, declared or graph_shape, outputs[0].name, classes


def _fixed_size(size: object) -> int | None:
    """onnxruntime reports symbolic dimensions as strings (or None); those accept any size."""
    return size if isinstance(size, int) and size > 0 else None


def _labels(metadata: dict[str, str], classes: int | None) -> tuple[str, ...]:
    labels = read_labels(metadata)
    if labels is None:
        return tuple(str(index) for index in range(classes or 0))
    if classes is not None and len(labels) != classes:
        raise CnncError(f"metadata 'cnnc.labels' names {len(labels)} classes but the model outputs {classes}")
    return labels
