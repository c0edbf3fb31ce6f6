"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

A big-endian header (a magic number, then one 32-bit size per dimension) followed by the
unsigned bytes. Only the two shapes these datasets use are read: images (N, rows, cols) and
labels (N,).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from cnnc.datasets.files import RawFile
from cnnc.errors import CnncError

IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"


def decode_idx_split(files: Sequence[RawFile], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from an (images, labels) pair of IDX files."""
    images_file, labels_file = files
    images = parse_images(images_file)
    labels = parse_labels(labels_file)
    if len(images) != len(labels):
        raise CnncError(
            f"{images_file.path} holds {len(images)} images but {labels_file.path} holds {len(labels)} labels; "
            "the two files must describe the same examples"
        )
    check_label_range(labels_file, labels, num_classes)
    return images, labels


def parse_images(file: RawFile) -> np.ndarray:
    count, rows, cols = _read_header(file, IMAGES_MAGIC, dimensions=3)
    if rows == 0 or cols == 0:
        raise CnncError(f"{file.path} says its images are {rows}x{cols}; both sides must be at least 1")
    _check_body_size(file, header_size=16, expected=count * rows * cols, what=f"{count} images of {rows}x{cols}")
    return np.frombuffer(file.data, np.uint8, offset=16).reshape(count, 1, rows, cols).copy()


def parse_labels(file: RawFile) -> np.ndarray:
    (count,) = _read_header(file, LABELS_MAGIC, dimensions=1)
    _check_body_size(file, header_size=8, expected=count, what=f"{count} labels")
    return np.frombuffer(file.data, np.uint8, offset=8).astype(np.int64)


def check_label_range(file: RawFile, labels: np.ndarray, num_classes: int) -> None:
    out_of_range = np.flatnonzero(labels >= num_classes)
    if len(out_of_range):
        first = int(out_of_range[0])
        raise CnncError(
            f"{file.path} holds label {labels[first]} at index {first} "
            f"({len(out_of_range)} labels in all are out of range); labels must be 0 to {num_classes - 1}"
        )


def _read_header(file: RawFile, expected_magic: int, dimensions: int) -> tuple[int, ...]:
    header_size = 4 * (1 + dimensions)
    kind = "image" if expected_magic == IMAGES_MAGIC else "label"
    if len(file.data) < header_size:
        raise CnncError(
            f"{file.path} is too short to be an IDX {kind} file: {len(file.data)} bytes, "
            f"the header alone takes {header_size}"
        )
    magic, *sizes = struct.unpack_from(f">{1 + dimensions}I", file.data)
    if magic != expected_magic:
        raise CnncError(
            f"{file.path} is not an IDX {kind} file: its magic number is {magic}, expected {expected_magic}"
            + _magic_hint(file, magic)
        )
    return tuple(sizes)


def _magic_hint(file: RawFile, magic: int) -> str:
    if file.data.startswith(GZIP_MAGIC):
        return f" (its content is gzip-compressed: name it {file.path.name}.gz)"
    if magic in (IMAGES_MAGIC, LABELS_MAGIC):
        return " (that marks the other kind of IDX file: are the image and label files swapped?)"
    return ""


def _check_body_size(file: RawFile, header_size: int, expected: int, what: str) -> None:
    held = len(file.data) - header_size
    if held < expected:
        raise CnncError(f"{file.path} is truncated: header says {what} = {expected} bytes, file holds {held}")
    if held > expected:
        raise CnncError(
            f"{file.path} has {held - expected} bytes too many: "
            f"header says {what} = {expected} bytes, file holds {held}"
        )
