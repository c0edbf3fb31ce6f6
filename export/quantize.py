"""`cnnc quantize`: a trained model to int8 ONNX, written only when its accuracy holds.

    report = quantize_checkpoint(checkpoint, "m.int8.onnx", train=train_split, test=test_split)

1. The checkpoint is exported to float32 ONNX behind the parity gate (export.exporter).
2. onnxruntime's pre-processing (quant_pre_process: graph optimisation, which folds batch norms into
   the convolutions before them, and shape inference) prepares it for quantisation.
3. onnxruntime's static quantisation writes QDQ (QuantizeLinear/DequantizeLinear) pairs: weights
   int8 per output channel, activations uint8 per tensor, with ranges calibrated (min/max) on a
   seeded random sample of the training split, preprocessed as in training.
4. Both models are evaluated on the test split and timed side by side (alternating bursts, batch 1
   and 64). When int8 loses more than `max_drop` accuracy points, nothing is written.
5. The deployment forms (uint8 input, top-k outputs) are applied to the int8 model last, and checked
   to leave its outputs unchanged; the report goes into its metadata (`cnnc.quantization`). The
   other `cnnc.*` entries are the float model's: `cnnc.test_accuracy` stays the trained model's.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnc.errors import CnncError
from cnnc.files import replacing
from cnnc.runtime.metadata import FLOAT_INPUT, QUANTIZATION_KEY, UINT8_INPUT

DEFAULT_CALIBRATION = 256
DEFAULT_MAX_DROP = 1.0          # accuracy points
TIMED_BATCHES = (1, 64)
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class QuantizationReport:
    fp32_accuracy: float
    int8_accuracy: float
    test_images: int
    calibration_images: int
    seed: int
    max_drop: float                     # accuracy points the gate allows int8 to lose
    fp32_bytes: int
    int8_bytes: int
    latency_ratio: dict[str, float]     # batch size -> int8 time / fp32 time (< 1: int8 is faster)
    fp32_ms: dict[str, float]           # batch size -> median fp32 ms per call
    int8_ms: dict[str, float]
    machine: str
    onnxruntime: str

    @property
    def drop(self) -> float:
        """Accuracy points lost (negative: int8 is more accurate on this test set)."""
        return (self.fp32_accuracy - self.int8_accuracy) * 100

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def summary(self) -> str:
        lines = [
            f"accuracy on {self.test_images} test images: fp32 {self.fp32_accuracy:.4f}, int8 {self.int8_accuracy:.4f} "
            f"(drop {self.drop:+.2f} points, the gate allows {self.max_drop:g})",
            f"size: fp32 {self.fp32_bytes:,} bytes, int8 {self.int8_bytes:,} bytes "
            f"(int8/fp32 {self.int8_bytes / self.fp32_bytes:.2f})",
        ]
        for batch, ratio in self.latency_ratio.items():
            verdict = "int8 is SLOWER than fp32 on this CPU" if ratio > 1 else "int8 is faster"
            lines.append(f"latency at batch {batch}: fp32 {self.fp32_ms[batch]:.3f} ms, "
                         f"int8 {self.int8_ms[batch]:.3f} ms "
                         f"(int8/fp32 {ratio:.2f}: {verdict})")
        lines.append(f"calibrated on {self.calibration_images} training images (seed {self.seed}); timed on "
                     f"{self.machine}, onnxruntime {self.onnxruntime}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "drop_points": self.drop})


class AccuracyGateError(CnncError):
    """int8 lost more accuracy than allowed; nothing was written."""

    def __init__(self, report: QuantizationReport) -> None:
        super().__init__(f"{report.summary()}\nint8 loses {report.drop:.2f} accuracy points, more than the "
                         f"{report.max_drop:g} allowed (--max-drop): nothing was written")
        self.report = report


def quantize_checkpoint(
    checkpoint: Any,
    output: str | os.PathLike,
    *,
    train: Any,
    test: Any,
    calibration: int = DEFAULT_CALIBRATION,
    seed: int = 0,
    max_drop: float = DEFAULT_MAX_DROP,
    reduce_range: bool = False,
    input_form: str = FLOAT_INPUT,
    top_k: int | None = None,
    timing_rounds: int = 7,
    log: Callable[[str], None] = lambda line: None,
) -> QuantizationReport:
    """Quantise a training.checkpoint.Checkpoint; `train` and `test` are cnnc.datasets.Dataset splits
    (uint8 N x C x H x W images). Raises AccuracyGateError, writing nothing, when the gate fails."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cnnc.export.exporter import export_checkpoint

    if calibration < 1:
        raise CnncError(f"the calibration sample needs at least 1 image, got {calibration}")
    with tempfile.TemporaryDirectory(prefix="cnnc-quantize-") as folder:
        fp32_path, prepared, int8_path = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        exported = export_checkpoint(checkpoint, fp32_path)
        log(exported.report.summary())
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        reader = _CalibrationReader(_input_name(fp32_path), calibration_batches(train, checkpoint.preprocess,
                                                                                 calibration, seed))
        log(f"calibrating on {min(calibration, len(train))} training images (seed {seed})")
        quantize_static(
            prepared, int8_path, reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
        int8_model = _with_float_model_metadata(int8_path, fp32_path)
        report = _measure(fp32_path, int8_path, int8_model, test, calibration=min(calibration, len(train)),
                          seed=seed, max_drop=max_drop, rounds=timing_rounds, log=log)
        if not report.passed:
            raise AccuracyGateError(report)
        _write(int8_model, output, report, checkpoint.preprocess, input_form, top_k, test, int8_path)
    return report


def calibration_batches(train: Any, preprocess: dict | None, count: int, seed: int) -> Iterator[np.ndarray]:
    """A seeded random sample of `count` training images, preprocessed as in training, in batches."""
    from cnnc.export.parity import preprocessing_of

    if len(train) == 0:
        raise CnncError("the training split is empty: there is nothing to calibrate on")
    chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=min(count, len(train)), replace=False))
    preprocessing = preprocessing_of(preprocess)
    for start in range(0, len(chosen), CALIBRATION_BATCH):
        yield preprocessing.apply(train.images[chosen[start:start + CALIBRATION_BATCH]])


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol: get_next() returns feeds until None."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]) -> None:
        self._input_name = input_name
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:  # a single calibration pass never rewinds; the protocol asks for it
        raise CnncError("the calibration data cannot be read twice")


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name


def _with_float_model_metadata(int8_path: Path, fp32_path: Path):
    """The int8 ModelProto with the float model's cnnc metadata and the lowest IR version its opsets
    allow (the quantiser writes its own newest, which the onnxruntime that apps ship may not read)."""
    import onnx

    from cnnc.export.deploy import set_metadata, with_minimal_ir_version

    model = onnx.load(int8_path)
    set_metadata(model, {prop.key: prop.value for prop in onnx.load(fp32_path).metadata_props})
    with_minimal_ir_version(model)
    onnx.save(model, int8_path)
    return model


def _measure(fp32_path: Path, int8_path: Path, int8_model, test: Any, *, calibration: int, seed: int,
             max_drop: float, rounds: int, log: Callable[[str], None]) -> QuantizationReport:
    import onnxruntime

    from cnnc.runtime.measure import accuracy, machine
    from cnnc.runtime.model import Model

    fp32, int8 = Model.load(fp32_path, provider="cpu"), Model.load(int8_path, provider="cpu")
    if len(test) == 0:
        raise CnncError("the test split is empty: there is nothing to evaluate on")
    log(f"evaluating fp32 and int8 on {len(test)} test images")
    fp32_accuracy, int8_accuracy = accuracy(fp32, test.images, test.labels), accuracy(int8, test.images, test.labels)
    fp32_ms, int8_ms = {}, {}
    for batch_size in TIMED_BATCHES:
        fp32_ms[str(batch_size)], int8_ms[str(batch_size)] = timed_side_by_side(fp32, int8, batch_size, rounds)
    return QuantizationReport(
        fp32_accuracy=fp32_accuracy, int8_accuracy=int8_accuracy, test_images=len(test), calibration_images=calibration,
        seed=seed, max_drop=max_drop, fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=len(int8_model.SerializeToString()),
        latency_ratio={batch: int8_ms[batch] / fp32_ms[batch] for batch in fp32_ms},
        fp32_ms=fp32_ms, int8_ms=int8_ms, machine=machine(), onnxruntime=onnxruntime.__version__,
    )


def timed_side_by_side(a, b, batch_size: int, rounds: int, seconds: float = 0.05) -> tuple[float, float]:
    """Median ms per `predict` call of Models a and b on the same random batch, timed in alternating
    bursts (the order flipping every round) so that other load on the machine hits both alike."""
    channels, height, width = a.input_shape
    pixels = np.random.default_rng(batch_size).integers(0, 256, (batch_size, channels, height, width), dtype=np.uint8)
    runs = [(model, model.preprocess(pixels)) for model in (a, b)]
    calls = []
    for model, batch in runs:
        model.predict(batch)  # the first call allocates and picks kernels
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model.predict(batch)
            count += 1
        calls.append(count)
    count = max(2, min(calls))
    times: list[list[float]] = [[], []]
    for round_index in range(rounds):
        for index in ((0, 1) if round_index % 2 == 0 else (1, 0)):
            model, batch = runs[index]
            start = time.perf_counter()
            for _ in range(count):
                model.predict(batch)
            times[index].append((time.perf_counter() - start) / count * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def _write(int8_model, output: str | os.PathLike, report: QuantizationReport, preprocess: dict | None,
           input_form: str, top_k: int | None, test: Any, int8_path: Path) -> None:
    """Apply the deployment forms, check that they leave the int8 outputs unchanged, and write."""
    import onnx

    from cnnc.export.deploy import set_metadata, with_top_k, with_uint8_input
    from cnnc.runtime.model import Model

    if input_form == UINT8_INPUT:
        with_uint8_input(int8_model, preprocess)
    if top_k is not None:
        with_top_k(int8_model, top_k)
    set_metadata(int8_model, {QUANTIZATION_KEY: report.to_json()})
    with replacing(output) as temporary:
        onnx.save(int8_model, temporary)
        if input_form == UINT8_INPUT or top_k is not None:
            _check_same_outputs(Model.load(int8_path, provider="cpu"), Model.load(temporary, provider="cpu"), test)


def _check_same_outputs(plain, deployed, test: Any) -> None:
    images = test.images[:64]
    expected, found = plain.predict(plain.preprocess(images)), deployed.predict(deployed.preprocess(images))
    if not np.allclose(found, expected, rtol=1e-5, atol=1e-5):
        raise CnncError(f"the int8 model's deployment form changes its outputs (max abs diff "
                        f"{np.abs(found - expected).max():.3g}): nothing was written")


