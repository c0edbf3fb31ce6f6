"""A loaded model: validated inputs in, predictions out, on the provider that really runs it.

A model without cnnc metadata (exported by another tool) loads and predicts like any other;
`classify` then maps pixels [0, 255] to [0, 1] only, treats the output as logits, and labels
classes by their index ("0", "1", ...).

A model takes one of two input forms (metadata `cnnc.input`): a normalised float32 N x C x H x W
batch (the default), or uint8 N x H x W x C pixels that the graph itself casts, scales, normalises
and transposes (`cnnc export --input uint8`). `preprocess` produces, and `predict` takes, the
model's own form; `classify` handles both.

A Model holds no mutable state: onnxruntime's `InferenceSession.run` is thread-safe, so one Model
can serve many threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cnnc.errors import CnncError
from cnnc.runtime.images import ImageInput, image_batch
from cnnc.runtime.metadata import UINT8_INPUT, read_input_form, read_input_shape, read_labels, read_output_kind
from cnnc.runtime.preprocess import Preprocessing
from cnnc.runtime.providers import Optimization, ProviderChoice, create_session, session_options

InputShape = tuple[int | None, int | None, int | None]
# predict's fast path looks these up on every call: module globals are found faster than attributes.
_NDARRAY, _vdot, _isfinite = np.ndarray, np.vdot, math.isfinite  # (C, H, W); None where the model accepts any size


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
    input_form: str  # "float32" (normalised N x C x H x W) or "uint8" (N x H x W x C pixels)
    batch_size: int
    metadata: dict[str, str] = field(repr=False)
    preprocessing: Preprocessing = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    output_name: str = field(repr=False)
    # For predict's fast path, set from the fields above: the dtype and per-sample shape of a batch
    # that runs as it is (shape None: some size is free, so every batch takes the checked path),
    # whether its values need the finiteness check, and the session's run.
    _ready_dtype: np.dtype = field(init=False, repr=False)
    _ready_shape: tuple[int, ...] | None = field(init=False, repr=False)
    _floats: bool = field(init=False, repr=False)
    _run_session: Callable[..., list] = field(init=False, repr=False)
    _output_names: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        channels, height, width = self.input_shape
        pixels = self.input_form == UINT8_INPUT
        shape = (height, width, channels) if pixels else (channels, height, width)
        object.__setattr__(self, "_ready_dtype", np.dtype(np.uint8 if pixels else np.float32))
        object.__setattr__(self, "_ready_shape", None if None in shape or self.provider == "cuda" else shape)
        object.__setattr__(self, "_floats", not pixels)
        # InferenceSession.run re-validates the feed's names in Python on every call, which costs as
        # much as all of predict's checks; the feed built here is right by construction, so the
        # binding's own run is called (it still checks each input's type and shape, in C++).
        object.__setattr__(self, "_run_session", getattr(self.session, "_sess", self.session).run)
        object.__setattr__(self, "_output_names", [self.output_name])

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
            input_form = read_input_form(metadata)
            input_name, input_shape, output_name, classes = _signature(session, metadata, input_form)
            labels = _labels(metadata, classes)
            return cls(
                path=str(path),
                provider=running_on,
                input_name=input_name,
                input_shape=input_shape,
                labels=labels,
                output_kind=read_output_kind(metadata),
                input_form=input_form,
                batch_size=batch_size,
                metadata=metadata,
                preprocessing=Preprocessing.from_metadata(metadata, input_shape[0]),
                session=session,
                output_name=output_name,
            )
        except CnncError as error:
            raise CnncError(f"{path}: {error}") from None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output (N, classes) for a batch in the model's input form: preprocessed
        float32 (N, C, H, W), or for a uint8-input model uint8 pixels (N, H, W, C). `preprocess`
        makes either from images."""
        # The common case, a batch of the model's dtype and size that fits one run, is decided in a
        # few attribute reads and one BLAS pass (see all_finite), inline: a small model's whole call
        # takes ~30 us, and at batch 1 every Python call shows. Anything else, including every error,
        # takes the checked path, which converts, splits or explains.
        if type(batch) is _NDARRAY and batch.dtype is self._ready_dtype:  # builtin dtypes are singletons
            shape = batch.shape
            if (
                shape[1:] == self._ready_shape
                and 0 < shape[0] <= self.batch_size
                and (not self._floats or _isfinite(_vdot(batch, batch)))
            ):
                return self._run_session(self._output_names, {self.input_name: batch}, None)[0]
        return self._predict_checked(batch)

    def _predict_checked(self, batch: np.ndarray) -> np.ndarray:
        batch = self._checked_float_batch(batch) if self._floats else self._checked_pixels(batch)
        if len(batch) <= self.batch_size:
            return self._run(batch)
        chunks = range(0, len(batch), self.batch_size)
        return np.concatenate([self._run(batch[start : start + self.batch_size]) for start in chunks])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for a batch in the model's input form (see predict)."""
        output = self.predict(batch)
        if output.ndim != 2:  # a model from elsewhere whose output is not (N, classes)
            raise CnncError(f"{self.path} outputs a {output.ndim}-dimensional tensor of shape {output.shape}; "
                            "a classifier's output is (N, classes)")
        return softmax(output) if self.output_kind == "logits" else output

    def preprocess(self, images: ImageInput) -> np.ndarray:
        """The batch the model takes (see predict), from images in any form `classify` accepts."""
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
            raise CnncError(f"{self.path} does not say how many channels its input has, so it cannot take images; "
                            "use predict()")
        names, pixels = image_batch(images, (channels, height, width))
        if self.input_form == UINT8_INPUT:
            return names, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
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
        if not all_finite(batch):
            first = tuple(int(i) for i in np.argwhere(~np.isfinite(batch))[0])
            raise CnncError(f"the batch contains NaN or infinite values (the first at index {first}: {batch[first]})")
        return batch

    def _checked_pixels(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8:
            raise CnncError(
                f"{self.path} takes uint8 pixels (N, H, W, C), received dtype {batch.dtype}; "
                "use classify() for image files, or preprocess() to turn images into the model's input"
            )
        channels, height, width = self.input_shape
        check_batch_shape(batch.shape, (height, width, channels), layout="NHWC")
        return np.ascontiguousarray(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.provider == "cuda":
            return _run_with_io_binding(self.session, self.input_name, self.output_name, batch)
        return self._run_session(self._output_names, {self.input_name: batch}, None)[0]


def _run_with_io_binding(session: ort.InferenceSession, input_name: str, output_name: str,
                         batch: np.ndarray) -> np.ndarray:
    # Bound, the input is copied to the GPU once and the output is written straight into host
    # memory, with no intermediate copies; a binding per call keeps concurrent calls independent.
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, batch)
    binding.bind_output(output_name)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def all_finite(batch: np.ndarray) -> bool:
    """Whether no value of the float32 batch is NaN or infinite, exactly.

    One BLAS pass, no temporary array (a fraction of the float64 sum's or min + max's time): the sum
    of squares is finite only if every value is, since NaN and +-inf survive squaring and summing
    and non-negative terms cannot cancel. Its one false alarm, an overflow (values beyond ~1.8e19),
    is settled by the exact elementwise test. vdot rather than dot: it raises no floating-point
    warning on that overflow.
    """
    return math.isfinite(np.vdot(batch, batch)) or bool(np.isfinite(batch).all())


def check_batch_shape(shape: tuple[int, ...], expected: tuple[int | None, ...], layout: str = "NCHW") -> None:
    """Raise a CnncError naming the expected and received shapes unless `shape` is a non-empty batch of
    `expected` (C, H, W), or for layout NHWC (H, W, C)."""
    problem = _shape_problem(shape, expected, layout)
    if problem:
        expected_text = f"(N, {', '.join('?' if size is None else str(size) for size in expected)})"
        raise CnncError(f"expected a batch of shape {expected_text}, received {tuple(shape)}: {problem}")


def _shape_problem(shape: tuple[int, ...], expected: tuple[int | None, ...], layout: str) -> str | None:
    if len(shape) != 4:
        single = " (one image? add a batch axis: x[None])" if len(shape) == 3 else ""
        return f"{len(shape)} dimensions instead of 4{single}"
    if layout == "NHWC":
        count, height, width, channels = shape
        want_height, want_width, want_channels = expected
    else:
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


def _signature(
    session: ort.InferenceSession, metadata: dict[str, str], input_form: str
) -> tuple[str, InputShape, str, int | None]:
    """The input's name and (C, H, W), the output's name, and the class count when the graph fixes it."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    pixels = input_form == UINT8_INPUT
    wanted = ("tensor(uint8)", "uint8", "[N, H, W, C]") if pixels else ("tensor(float)", "float", "[N, C, H, W]")
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != wanted[0]:
        found = ", ".join(f"{node.name}: {node.type} {node.shape}" for node in inputs)
        raise CnncError(f"expected a model with one {wanted[1]} input of shape {wanted[2]}, "
                        f"found {found or 'no inputs'}")
    first, second, third = (_fixed_size(size) for size in inputs[0].shape[1:])
    graph_shape: InputShape = (third, first, second) if pixels else (first, second, third)
    declared = read_input_shape(metadata)
    if declared is not None and any(size not in (None, want) for size, want in zip(graph_shape, declared)):
        raise CnncError(f"metadata 'cnnc.input_shape' {list(declared)} contradicts the graph's input shape "
                        f"{inputs[0].shape}")
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
