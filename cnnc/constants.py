"""Constants that several stages share, in one place that imports nothing (no torch, no onnx), so
that the checker, the CLI's help, training, export and the runtime agree without reaching into
each other."""

from __future__ import annotations

MIN_OPSET = 13                   # the oldest ONNX opset cnnc emits
DEFAULT_OPSET = 17
PIXEL_SCALE = 1 / 255            # raw 8-bit pixels -> [0, 1], before a spec's normalize
BUILT_IN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "xo")  # `dataset mnist`
PATH_DATASETS = ("folder", "npz")                                # `dataset folder("path")`
