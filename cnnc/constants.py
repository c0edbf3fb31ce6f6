"""Constants that several stages share, in one place that imports nothing (no torch, no onnx), so
that the checker, the CLI's help, training, export and the runtime agree without reaching into
each other."""

from __future__ import annotations

MIN_OPSET = 13                   # the oldest ONNX opset cnnc emits
DEFAULT_OPSET = 17
PIXEL_SCALE = 1 / 255            # raw 8-bit pixels -> [0, 1], before a spec's normalize
BUILT_IN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "xo")  # `dataset mnist`
# What each built-in dataset's images are and how many classes it has, so that `cnnc check` can
# compare them with the model (datasets/ holds the data itself; a test keeps the two equal).
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "xo": ((1, 28, 28), 2),
}
PATH_DATASETS = ("folder", "npz")                                # `dataset folder("path")`
