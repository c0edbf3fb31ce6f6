"""The binary version of CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html).

Each batch file is a sequence of 3073-byte records: one label byte, then the 32x32 red, green and
blue planes, each row-major. That is already (C, H, W) order, so a record needs no transposing.
The pickled "python version" is deliberately not read: unpickling a downloaded file can run code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnc.datasets.files import RawFile
from cnnc.datasets.idx import check_label_range
from cnnc.errors import CnncError

IMAGE_SHAPE = (3, 32, 32)
RECORD_SIZE = 1 + 3 * 32 * 32
RECORDS_PER_BATCH = 10_000


def decode_cifar_batches(files: Sequence[RawFile], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from binary batch files, in order."""
    records = [_records(file, num_classes) for file in files]
    images = np.concatenate([batch[:, 1:] for batch in records]).reshape(-1, *IMAGE_SHAPE)
    labels = np.concatenate([batch[:, 0] for batch in records]).astype(np.int64)
    return images, labels


def _records(file: RawFile, num_classes: int) -> np.ndarray:
    size = len(file.data)
    if size % RECORD_SIZE:
        raise CnncError(
            f"{file.path} holds {size} bytes, not a whole number of {RECORD_SIZE}-byte records "
            "(1 label byte + 3x32x32 pixels): it is truncated or not a CIFAR-10 binary batch"
        )
    if size // RECORD_SIZE != RECORDS_PER_BATCH:
        raise CnncError(
            f"{file.path} holds {size // RECORD_SIZE} records; a CIFAR-10 batch holds {RECORDS_PER_BATCH} "
            f"({RECORDS_PER_BATCH * RECORD_SIZE} bytes)"
        )
    records = np.frombuffer(file.data, np.uint8).reshape(RECORDS_PER_BATCH, RECORD_SIZE)
    check_label_range(file, records[:, 0], num_classes)
    return records
