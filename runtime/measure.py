"""Measuring a loaded model: test accuracy on a labelled image set, and latency per batch size."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnc.errors import CnncError
from cnnc.runtime.model import Model


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float


def accuracy(model: Model, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of uint8 NCHW `images` whose predicted class is their label."""
    if len(images) == 0:
        raise CnncError("there are no images to evaluate")
    # Preprocess chunk by chunk, so that a large test set never exists as float32 all at once.
    correct = 0
    for start in range(0, len(images), model.batch_size):
        chunk = slice(start, start + model.batch_size)
        output = model.predict(model.preprocess(images[chunk]))
        if output.ndim != 2:
            raise CnncError(f"{model.path} outputs a {output.ndim}-dimensional tensor of shape {output.shape}; "
                            "a classifier's output is (N, classes)")
        predicted = output.argmax(axis=1)
        correct += int((predicted == labels[chunk]).sum())
    return correct / len(images)


# The most input a benchmark allocates (uint8 pixels and their float32 batch): a model that declares a
# huge input must not make `cnnc bench` exhaust the machine's memory before it times anything.
MAX_BENCH_INPUT_BYTES = 4 * 2**30


def _check_affordable(model: Model, batch_size: int, pixels_per_image: int) -> None:
    needed = batch_size * pixels_per_image * (1 + 4)  # uint8 pixels, then float32
    if needed > MAX_BENCH_INPUT_BYTES:
        channels, height, width = model.input_shape
        raise CnncError(f"{model.path} takes {channels}x{height}x{width} inputs: a batch of {batch_size} needs "
                        f"{needed / 2**30:,.1f} GiB of input, over the {MAX_BENCH_INPUT_BYTES / 2**30:.0f} GiB "
                        "cnnc bench allocates; benchmark a smaller batch or input")


def latency(model: Model, batch_size: int, iterations: int, warmup: int) -> LatencyStats:
    """Time `iterations` calls of `model.predict` on random images, after `warmup` untimed calls."""
    channels, height, width = model.input_shape
    if channels is None or height is None or width is None:
        raise CnncError(f"{model.path} accepts inputs of any size ({model.input_shape}), "
                        "so there is no input size to time")
    _check_affordable(model, batch_size, channels * height * width)
    # Random pixels rather than zeros: some kernels take shortcuts on zeros.
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, channels, height, width), dtype=np.uint8)
    batch = model.preprocess(pixels)
    for _ in range(warmup):
        model.predict(batch)
    seconds = np.empty(iterations)
    for iteration in range(iterations):
        start = time.perf_counter()
        model.predict(batch)
        seconds[iteration] = time.perf_counter() - start
    p50, p90, p99 = np.percentile(seconds * 1000, [50, 90, 99])
    return LatencyStats(batch_size, float(p50), float(p90), float(p99), batch_size * iterations / float(seconds.sum()))


def machine() -> str:
    """The CPU and its logical cores, and the OS, as the benchmarks and quantize's report record them."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"
