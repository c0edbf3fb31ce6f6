"""Your own arrays in a NumPy .npz file.

Keys: `x_train`, `y_train`, `x_test`, `y_test` (one pair per split), or `x` and `y` (the same
arrays for either split). An optional `classes` array of strings names the classes; otherwise
they are "0", "1", ... up to the largest label in the file.

`x` must be uint8, in one of these layouts:
    (N, H, W)       greyscale, one channel
    (N, H, W, C)    channels last, when C is 1 or 3 and the second axis is not
    (N, C, H, W)    channels first, when the second axis is 1 or 3 (so (N, 3, H, 3) reads as this)
`y` holds integers from 0, shape (N,) or (N, 1). The file is read without pickle, and each array's
declared size is checked before it is inflated (at most MAX_NPZ_BYTES in all, compression ratios up
to MAX_COMPRESSION_RATIO, labels below MAX_CLASSES).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cnnc.datasets.dataset import Dataset
from cnnc.errors import CnncError

CHANNEL_COUNTS = (1, 3)
LABEL_KEYS = ("y_train", "y_test", "y")
MAX_CLASSES = 100_000            # more labels than any classification dataset has: a broken file
MAX_NPZ_BYTES = 16 * 2**30       # the arrays of one .npz, uncompressed
MAX_COMPRESSION_RATIO = 200      # real images compress 2-20x; deflate's ceiling is about 1000x
BOMB_MIN_BYTES = 64 * 2**20      # small members may compress as well as they like


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
    """Every array, each checked before it is inflated: a plain dtype, a header whose declared size
    matches the member's, a sane compression ratio and a total that fits MAX_NPZ_BYTES."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            _check_sizes(path, members)
            return {_array_name(info): _read_member(path, archive, info) for info in members}
    except FileNotFoundError:
        raise CnncError(f"the .npz file {path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, zlib.error) as error:
        # ValueError is also what allow_pickle=False raises for an array of Python objects.
        raise CnncError(f"cannot read {path} as a NumPy .npz file of plain arrays: {error}") from None


def _array_name(info: zipfile.ZipInfo) -> str:
    return info.filename[:-4] if info.filename.endswith(".npy") else info.filename


def _check_sizes(path: Path, members: list[zipfile.ZipInfo]) -> None:
    total = sum(info.file_size for info in members)
    if total > MAX_NPZ_BYTES:
        raise CnncError(f"{path} declares {_size(total)} of arrays; cnnc reads .npz files of up to "
                        f"{_size(MAX_NPZ_BYTES)} (a dataset that large belongs in an image folder)")
    for info in members:
        if info.file_size > BOMB_MIN_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise CnncError(f"{path}: {info.filename} would inflate {info.compress_size:,} bytes to "
                            f"{_size(info.file_size)}, a ratio over {MAX_COMPRESSION_RATIO} that no image data "
                            "reaches: refusing a decompression bomb")


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
        if dtype.hasobject:
            raise CnncError(f"{path}: {info.filename} holds Python objects; cnnc reads plain arrays only")
        declared = math.prod(shape) * dtype.itemsize  # Python integers: a huge shape cannot overflow
        held = info.file_size - member.tell()
        if declared != held:
            raise CnncError(f"{path}: {info.filename} declares a {dtype} array of shape {shape} "
                            f"({_size(declared)}), but holds {_size(held)}")
        data = member.read(held)
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _size(count: int) -> str:
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    scaled = float(count)
    for unit in units:
        if scaled < 1024 or unit == units[-1]:
            return f"{count:,} bytes" if unit == "bytes" else f"{scaled:,.4g} {unit}"
        scaled /= 1024
    raise AssertionError


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
    if largest >= MAX_CLASSES:
        raise CnncError(f"{path}: the largest label is {largest:,}, so there would be {largest + 1:,} classes; "
                        f"cnnc allows up to {MAX_CLASSES:,} (are these labels class indices?)")
    return tuple(str(label) for label in range(largest + 1))
