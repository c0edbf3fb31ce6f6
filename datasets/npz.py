"""Your own arrays in a NumPy .npz file.

Keys: `x_train`, `y_train`, `x_test`, `y_test` (one pair per split), or `x` and `y` (the same
arrays for either split). An optional `classes` array of strings names the classes; otherwise
they are "0", "1", ... up to the largest label in the file.

`x` must be uint8, in one of these layouts:
    (N, H, W)       greyscale, one channel
    (N, H, W, C)    channels last, when C is 1 or 3 and the second axis is not
    (N, C, H, W)    channels first, when the second axis is 1 or 3 (so (N, 3, H, 3) reads as this)
`y` holds integers from 0, shape (N,) or (N, 1). The file is read without pickle.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cnnc.datasets.dataset import Dataset
from cnnc.errors import CnncError

CHANNEL_COUNTS = (1, 3)
LABEL_KEYS = ("y_train", "y_test", "y")


def load_npz(path: Path, split: str) -> Dataset:
    arrays = _read_arrays(path)
    x_key, y_key = _split_keys(path, arrays, split)
    images = _images(path, x_key, arrays[x_key])
    labels = _labels(path, y_key, arrays[y_key])
    if len(images) != len(labels):
        raise CnncError(f"{path}: {x_key} holds {len(images)} images but {y_key} holds {len(labels)} labels")
    classes = _classes(path, arrays)
    if len(labels) and labels.max() >= len(classes):
        raise CnncError(
            f"{path}: {y_key} holds the label {labels.max()}, but `classes` names only {len(classes)} classes"
        )
    return Dataset("npz", split, images, labels, classes)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise CnncError(f"the .npz file {path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        # ValueError is also what allow_pickle=False raises for an array of Python objects.
        raise CnncError(f"cannot read {path} as a NumPy .npz file of plain arrays: {error}") from None


def _split_keys(path: Path, arrays: Mapping[str, np.ndarray], split: str) -> tuple[str, str]:
    for keys in ((f"x_{split}", f"y_{split}"), ("x", "y")):
        if all(key in arrays for key in keys):
            return keys
    raise CnncError(
        f"{path} has no {split} split: it needs the arrays x_{split} and y_{split} (or x and y), "
        f"but holds {', '.join(sorted(arrays)) or 'no arrays'}"
    )


def _images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype != np.uint8:
        raise CnncError(
            f"{path}: {key} has dtype {x.dtype}; images must be uint8 (0-255) "
            "(from floats in [0, 1]: (x * 255).round().astype(np.uint8))"
        )
    if x.ndim == 3:
        return np.ascontiguousarray(x[:, None])
    if x.ndim == 4:
        if x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if x.shape[1] in CHANNEL_COUNTS:
            return np.ascontiguousarray(x)
    raise CnncError(
        f"{path}: {key} has shape {x.shape}; images must be (N, H, W), (N, H, W, C) or (N, C, H, W) "
        f"with C in {CHANNEL_COUNTS}"
    )


def _labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise CnncError(f"{path}: {key} has dtype {y.dtype}; labels must be integers")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise CnncError(f"{path}: {key} has shape {y.shape}; labels must be (N,) or (N, 1)")
    if len(y) and y.min() < 0:
        raise CnncError(f"{path}: {key} holds the negative label {y.min()}; labels count from 0")
    return y.astype(np.int64)


def _classes(path: Path, arrays: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    if "classes" in arrays:
        names = arrays["classes"]
        if names.dtype.kind != "U" or names.ndim != 1:
            raise CnncError(f"{path}: classes must be a 1-D array of strings, got {names.dtype} {names.shape}")
        return tuple(str(name) for name in names)
    # Every split's labels count, so that train and test agree on the number of classes.
    labels = [arrays[key] for key in LABEL_KEYS if key in arrays]
    largest = max((int(y.max()) for y in labels if y.size and np.issubdtype(y.dtype, np.integer)), default=0)
    return tuple(str(label) for label in range(largest + 1))
