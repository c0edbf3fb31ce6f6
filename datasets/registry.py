"""What cnnc knows about each dataset: names, classes, canonical files, checksums and sources."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from cnnc.datasets.cifar import decode_cifar_batches
from cnnc.datasets.files import Checksum, DataFile, RawFile
from cnnc.datasets.idx import decode_idx_split

DATA_ROOT_ENV = "CNNC_DATA"
SPLITS = ("train", "test")


def default_data_root() -> Path:
    """$CNNC_DATA if set, else the per-user cache: $XDG_CACHE_HOME/cnnc, or ~/.cache/cnnc (as Keras and
    torchvision keep theirs), the same wherever the command runs."""
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cnnc"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    summary: str
    needs_path: bool  # True where the data is the user's own (`path` names it)


@dataclass(frozen=True)
class Archive:
    """A tarball that holds several of a dataset's files in one folder."""

    name: str
    checksum: Checksum
    member_folder: str  # the folder inside the tarball; members elsewhere are never extracted


@dataclass(frozen=True)
class StandardDataset:
    name: str
    folder: str  # its directory under the data root
    classes: tuple[str, ...]
    files: Mapping[str, tuple[DataFile, ...]]  # split -> the files `decode` takes, in its order
    decode: Callable[[Sequence[RawFile], int], tuple[np.ndarray, np.ndarray]]
    base_url: str
    archive: Archive | None = None  # None: each file is fetched as BASE_URL/NAME.gz

    def default_directory(self) -> Path:
        return default_data_root() / self.folder


def _md5(hexdigest: str) -> Checksum:
    return Checksum("md5", hexdigest)


def _sha256(hexdigest: str) -> Checksum:
    return Checksum("sha256", hexdigest)


# IDX sizes: a 16-byte header and 28x28 bytes per image; an 8-byte header and a byte per label.
_TRAIN_IMAGES_SIZE, _TEST_IMAGES_SIZE = 16 + 60_000 * 784, 16 + 10_000 * 784
_TRAIN_LABELS_SIZE, _TEST_LABELS_SIZE = 8 + 60_000, 8 + 10_000

# The canonical .gz md5s, and the md5s of their decompressed content.
MNIST = StandardDataset(
    name="mnist",
    folder="mnist",
    classes=tuple(str(digit) for digit in range(10)),
    files={
        "train": (
            DataFile("train-images-idx3-ubyte", _TRAIN_IMAGES_SIZE,
                     _md5("6bbc9ace898e44ae57da46a324031adb"), _md5("f68b3c2dcbeaaa9fbdd348bbdeb94873")),
            DataFile("train-labels-idx1-ubyte", _TRAIN_LABELS_SIZE,
                     _md5("a25bea736e30d166cdddb491f175f624"), _md5("d53e105ee54ea40749a09fcbcd1e9432")),
        ),
        "test": (
            DataFile("t10k-images-idx3-ubyte", _TEST_IMAGES_SIZE,
                     _md5("2646ac647ad5339dbf082846283269ea"), _md5("9fb629c4189551a2d022fa330f9573f3")),
            DataFile("t10k-labels-idx1-ubyte", _TEST_LABELS_SIZE,
                     _md5("27ae3e4e09519cfbb04c329615203637"), _md5("ec29112dd5afa0611ce80d1b7f02629c")),
        ),
    },
    decode=decode_idx_split,
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
)

# The image files' raw md5s are not published and no verified copy was at hand, so an
# uncompressed or recompressed image file is checked by its size (and its header) only.
FASHION_MNIST = StandardDataset(
    name="fashion_mnist",
    folder="fashion-mnist",
    classes=("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    files={
        "train": (
            DataFile("train-images-idx3-ubyte", _TRAIN_IMAGES_SIZE, None, _md5("8d4fb7e6c68d591d4c3dfef9ec88bf0d")),
            DataFile("train-labels-idx1-ubyte", _TRAIN_LABELS_SIZE,
                     _md5("9018921c3c673c538a1fc5bad174d6f9"), _md5("25c81989df183df01b3e8a0aad5dffbe")),
        ),
        "test": (
            DataFile("t10k-images-idx3-ubyte", _TEST_IMAGES_SIZE, None, _md5("bef4ecab320f06d8554ea6380940ec79")),
            DataFile("t10k-labels-idx1-ubyte", _TEST_LABELS_SIZE,
                     _md5("15d484375f8d13e6eb1aabb0c3f46965"), _md5("bb300cfdad3c16e7a12a480ee83cd310")),
        ),
    },
    decode=decode_idx_split,
    # The S3 *website* endpoint serves plain HTTP only; the checksums guard what it delivers.
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

# CIFAR-10 is distributed only as a tarball (its md5 is the one the CIFAR page publishes), so there
# is no canonical .gz per batch. These sha256s of the raw batches were computed from a verified
# copy (whose raw md5s, e.g. 5dd7e06a... for data_batch_1.bin, equal the
# md5s other projects publish for the extracted files).
_CIFAR_BATCH_SIZE = 10_000 * 3073
_CIFAR_TRAIN_SHA256 = (
    "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
)
CIFAR10 = StandardDataset(
    name="cifar10",
    folder="cifar-10",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    files={
        "train": tuple(
            DataFile(f"data_batch_{number}.bin", _CIFAR_BATCH_SIZE, _sha256(digest))
            for number, digest in enumerate(_CIFAR_TRAIN_SHA256, start=1)
        ),
        "test": (
            DataFile("test_batch.bin", _CIFAR_BATCH_SIZE,
                     _sha256("8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b")),
        ),
    },
    decode=decode_cifar_batches,
    base_url="https://www.cs.toronto.edu/~kriz/",
    archive=Archive("cifar-10-binary.tar.gz", _md5("c32a1d4ab5d03f1284b67883e8d87530"), "cifar-10-batches-bin"),
)

STANDARD_DATASETS: Mapping[str, StandardDataset] = MappingProxyType(
    {dataset.name: dataset for dataset in (MNIST, FASHION_MNIST, CIFAR10)}
)

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({
    info.name: info
    for info in (
        DatasetInfo("mnist", "handwritten digits, 1x28x28, 10 classes, 60000 train / 10000 test", False),
        DatasetInfo("fashion_mnist", "clothing pictures, 1x28x28, 10 classes, 60000 train / 10000 test", False),
        DatasetInfo("cifar10", "small colour photos, 3x32x32, 10 classes, 50000 train / 10000 test", False),
        DatasetInfo("xo", "generated X and O glyphs, 1x28x28, 2 classes, 4000 train / 1000 test; no files", False),
        DatasetInfo("folder", "your PNG/JPEG images, one subfolder per class", True),
        DatasetInfo("npz", "your arrays in a NumPy .npz file", True),
    )
})
