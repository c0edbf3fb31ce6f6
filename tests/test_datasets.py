"""Tests of cnnc.datasets against the real data in ../shared/data and hand-made broken files.

The shared data is always present here and in CI, so its absence fails these tests, never skips
them. The downloader is exercised only against an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnc.datasets import DATASETS, DEFAULT_DATA_ROOT, Dataset, download, load_dataset, split_validation
from cnnc.datasets.download import download_files
from cnnc.datasets.files import Checksum
from cnnc.datasets.registry import CIFAR10, MNIST, default_data_root
from cnnc.datasets.standard import load_standard
from cnnc.errors import CnncError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNC_DATA") or REPO.parent / "shared" / "data")
MNIST_DIR = SHARED_DATA / "mnist"
CIFAR_DIR = SHARED_DATA / "cifar-10"

MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module", autouse=True)
def shared_data_present() -> None:
    missing = [path for path in (MNIST_DIR, CIFAR_DIR / "test_batch.bin.gz") if not path.exists()]
    assert not missing, f"the shared data these tests read is missing: {missing} (expected under {SHARED_DATA})"


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _write_mnist_test(directory: Path, *, images: bytes | None = None, labels: bytes | None = None) -> Path:
    """t10k files in `directory`, uncompressed: the real ones unless replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "t10k-images-idx3-ubyte").write_bytes(images or _raw(MNIST_DIR / "t10k-images-idx3-ubyte.gz"))
    (directory / "t10k-labels-idx1-ubyte").write_bytes(labels or _raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"))
    return directory


def _assert_standard_invariants(ds: Dataset, shape: tuple[int, int, int]) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
    assert ds.images.shape == (len(ds), *shape)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds),)


# --- MNIST ---------------------------------------------------------------------------------------


def test_mnist_test_split_is_the_real_data() -> None:
    ds = load_dataset("mnist", "test", MNIST_DIR)
    _assert_standard_invariants(ds, (1, 28, 28))
    assert (ds.name, ds.split, len(ds)) == ("mnist", "test", 10_000)
    assert ds.classes == tuple("0123456789")
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_HISTOGRAM
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.images.mean() / 255 == pytest.approx(0.1325, abs=5e-4)  # the well-known test-set mean
    assert ds.images[0, 0, :4].max() == 0 and ds.images[0].max() == 255  # blank margin, saturated strokes


def test_mnist_train_split_is_the_real_data() -> None:
    ds = load_dataset("mnist", "train", MNIST_DIR)
    _assert_standard_invariants(ds, (1, 28, 28))
    assert np.bincount(ds.labels).tolist() == MNIST_TRAIN_HISTOGRAM
    assert ds.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert ds.images.mean() / 255 == pytest.approx(0.1307, abs=5e-4)


def test_default_data_root_is_the_per_user_cache_wherever_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CNNC_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for directory in (REPO, tmp_path):
        monkeypatch.chdir(directory)
        assert default_data_root() == tmp_path / "home" / ".cache" / "cnnc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_root() == tmp_path / "xdg" / "cnnc"
    assert isinstance(DEFAULT_DATA_ROOT, Path)
    _write_mnist_test(tmp_path / "xdg" / "cnnc" / "mnist")
    monkeypatch.chdir(REPO)  # ../shared/data lies beside the repository: it is not looked at
    assert np.bincount(load_dataset("mnist", "test").labels).tolist() == MNIST_TEST_HISTOGRAM


def test_the_product_never_names_the_shared_data_folder() -> None:
    sources = [path for stage in ("cnnc", "datasets", "training", "runtime", "export", "compiler", "dsl")
               for path in (REPO / stage).rglob("*.py")]
    assert sources and not [path for path in sources if "../shared" in path.read_text()]


def test_cnnc_data_names_the_data_root_and_data_dir_may_be_a_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_mnist_test(tmp_path / "root" / "mnist")
    monkeypatch.setenv("CNNC_DATA", str(tmp_path / "root"))
    assert len(load_dataset("mnist", "test")) == 10_000
    assert len(load_dataset("mnist", "test", tmp_path / "root")) == 10_000


def test_uncompressed_and_recompressed_files_verify_by_their_content(tmp_path: Path) -> None:
    _write_mnist_test(tmp_path / "raw")
    assert np.bincount(load_dataset("mnist", "test", tmp_path / "raw").labels).tolist() == MNIST_TEST_HISTOGRAM

    recompressed = tmp_path / "recompressed"
    recompressed.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (recompressed / f"{name}.gz").write_bytes(gzip.compress(_raw(MNIST_DIR / f"{name}.gz"), compresslevel=1))
    assert load_dataset("mnist", "test", recompressed).labels[:3].tolist() == [7, 2, 1]


def test_truncated_idx_file_reports_the_header_and_the_size(tmp_path: Path) -> None:
    images = _raw(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[: 16 + 1234]
    directory = _write_mnist_test(tmp_path, images=images)
    with pytest.raises(CnncError) as error:
        load_dataset("mnist", "test", directory)
    assert str(error.value) == (
        f"{directory / 't10k-images-idx3-ubyte'} is truncated: "
        "header says 10000 images of 28x28 = 7840000 bytes, file holds 1234"
    )


def test_truncated_gzip_stream_names_the_file(tmp_path: Path) -> None:
    shutil.copy(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", tmp_path)
    compressed = (MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(CnncError, match=r"t10k-images-idx3-ubyte\.gz is not a complete gzip file"):
        load_dataset("mnist", "test", tmp_path)


def test_a_gzip_file_of_several_members_reads_as_gzip_reads_it(tmp_path: Path) -> None:
    raw = _raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    directory = _write_mnist_test(tmp_path)
    (directory / "t10k-labels-idx1-ubyte").unlink()
    members = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + bytes(8)  # zeros after a member: skipped
    assert gzip.decompress(members) == raw
    (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(members)
    assert np.bincount(load_dataset("mnist", "test", directory).labels).tolist() == MNIST_TEST_HISTOGRAM


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:-8] + bytes(4) + data[-4:], "incorrect data check"),    # the CRC-32 of the content
    (lambda data: data[:-4] + b"\xff\xff\xff\xff", "incorrect length check"),  # the content's size
    (lambda data: data + b"not gzip", "incorrect header check"),              # something after the last member
], ids=["crc", "size", "trailing-bytes"])
def test_a_damaged_gzip_file_is_refused_with_what_zlib_found(tmp_path: Path, damage, reason: str) -> None:
    directory = _write_mnist_test(tmp_path)
    (directory / "t10k-labels-idx1-ubyte").unlink()
    canonical = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(damage(canonical))
    with pytest.raises(CnncError, match=rf"t10k-labels-idx1-ubyte\.gz is not a complete gzip file \(.*{reason}\)"):
        load_dataset("mnist", "test", directory)


def test_wrong_magic_number_suggests_swapped_files(tmp_path: Path) -> None:
    labels = _raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    directory = _write_mnist_test(tmp_path, images=labels)
    with pytest.raises(CnncError) as error:
        load_dataset("mnist", "test", directory)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte is not an IDX image file: its magic number is 2049, expected 2051" in message
    assert "swapped" in message


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    labels = _raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    short_labels = struct.pack(">II", 2049, 9999) + labels[8 : 8 + 9999]
    directory = _write_mnist_test(tmp_path, labels=short_labels)
    with pytest.raises(CnncError, match=r"holds 10000 images but .*t10k-labels-idx1-ubyte holds 9999 labels"):
        load_dataset("mnist", "test", directory)


def test_label_out_of_range_is_reported_with_its_index(tmp_path: Path) -> None:
    labels = bytearray(_raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"))
    labels[8 + 3] = 12
    directory = _write_mnist_test(tmp_path, labels=bytes(labels))
    with pytest.raises(CnncError, match=r"holds label 12 at index 3 .*labels must be 0 to 9"):
        load_dataset("mnist", "test", directory)


def test_checksum_mismatch_names_the_file_and_both_digests(tmp_path: Path) -> None:
    labels = bytearray(_raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"))
    labels[8] = (labels[8] + 1) % 10  # still a well-formed file, just not the canonical one
    directory = _write_mnist_test(tmp_path, labels=bytes(labels))
    got = hashlib.md5(labels).hexdigest()
    with pytest.raises(CnncError) as error:
        load_dataset("mnist", "test", directory)
    message = str(error.value)
    assert f"checksum mismatch for {directory / 't10k-labels-idx1-ubyte'}" in message
    assert f"is {got}, expected 27ae3e4e09519cfbb04c329615203637" in message
    assert "delete it and fetch it again" in message


def test_missing_files_say_which_files_go_where(tmp_path: Path) -> None:
    with pytest.raises(CnncError) as error:
        load_dataset("mnist", "test", tmp_path)
    message = str(error.value)
    assert f"missing from {tmp_path.resolve()}: t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
    assert "Or pass download=True to fetch them from https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    assert "--download" not in message  # the Python API has no flags


def test_fashion_mnist_in_shared_data_lacks_its_images() -> None:
    with pytest.raises(CnncError, match=r"fashion_mnist train split needs .*: train-images-idx3-ubyte\.gz \("):
        load_dataset("fashion_mnist", "train", SHARED_DATA)


# --- CIFAR-10 ------------------------------------------------------------------------------------


def test_cifar10_test_batch_is_the_real_data() -> None:
    ds = load_dataset("cifar10", "test", CIFAR_DIR)
    _assert_standard_invariants(ds, (3, 32, 32))
    assert ds.classes == CIFAR_CLASSES
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    channel_means = ds.images.mean(axis=(0, 2, 3)) / 255  # the well-known test-set means, R G B
    assert channel_means == pytest.approx([0.4942, 0.4851, 0.4504], abs=5e-4)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (3073 * 10 + 5, r"holds 30735 bytes, not a whole number of 3073-byte records"),
        (3073 * 10, r"holds 10 records; a CIFAR-10 batch holds 10000"),
    ],
)
def test_cifar10_batch_of_the_wrong_size_is_named(tmp_path: Path, size: int, expected: str) -> None:
    (tmp_path / "test_batch.bin").write_bytes(bytes(size))
    with pytest.raises(CnncError, match=rf"test_batch\.bin {expected}"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_missing_batches_are_listed(tmp_path: Path) -> None:
    with pytest.raises(CnncError) as error:
        load_dataset("cifar10", "train", tmp_path)
    message = str(error.value)
    assert "data_batch_1.bin, data_batch_2.bin, data_batch_3.bin, data_batch_4.bin, data_batch_5.bin" in message
    assert "cifar-10-binary.tar.gz" in message


# --- xo ------------------------------------------------------------------------------------------


def test_xo_is_deterministic_balanced_and_shaped() -> None:
    started = time.perf_counter()
    train = load_dataset("xo", "train")
    elapsed = time.perf_counter() - started
    test = load_dataset("xo", "test")
    _assert_standard_invariants(train, (1, 28, 28))
    assert (len(train), len(test), train.classes) == (4000, 1000, ("x", "o"))
    assert np.bincount(train.labels).tolist() == [2000, 2000]
    assert np.bincount(test.labels).tolist() == [500, 500]
    assert elapsed < 1.5  # well under a second on a normal machine; slack for a loaded CI runner

    again = load_dataset("xo", "train")
    assert again.images.tobytes() == train.images.tobytes() and np.array_equal(again.labels, train.labels)
    other_seed = load_dataset("xo", "train", seed=1)
    assert other_seed.images.tobytes() != train.images.tobytes()
    assert not np.array_equal(train.images[:1000], test.images)


def test_xo_glyphs_are_centred_and_of_both_kinds() -> None:
    ds = load_dataset("xo", "train")
    ink = ds.images[:, 0].astype(np.float64)
    rows, columns = np.mgrid[0:28, 0:28] + 0.5
    for label in (0, 1):
        mean = ink[ds.labels == label].mean(axis=0)
        centre = (mean * rows).sum() / mean.sum(), (mean * columns).sum() / mean.sum()
        assert centre == pytest.approx((14, 14), abs=0.5)
    # An X crosses its centre, an O leaves it empty: on average, not in every glyph.
    middle = ink[:, 12:16, 12:16].mean(axis=(1, 2))
    assert middle[ds.labels == 0].mean() > 2 * middle[ds.labels == 1].mean()


def test_xo_is_not_separable_by_one_pixel() -> None:
    ds = load_dataset("xo", "train")
    pixels = ds.images.reshape(len(ds), -1).astype(np.int16)
    is_o = ds.labels == 1
    best = 0.0
    for threshold in range(0, 256, 16):
        above = pixels > threshold
        accuracy = (above == is_o[:, None]).mean(axis=0)
        best = max(best, float(accuracy.max()), float(1 - accuracy.min()))
    assert 0.6 < best < 0.85  # informative pixels exist, but none decides alone


@pytest.fixture
def torch_on_one_thread() -> Iterator[Any]:
    """torch, on one thread: on a shared 2-core machine, more threads mostly wait for each other."""
    import torch  # a dev dependency, so its absence fails rather than skips

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def test_xo_is_learnt_by_a_tiny_cnn_in_one_epoch(torch_on_one_thread: Any) -> None:
    torch = torch_on_one_thread
    torch.manual_seed(0)
    train, test = load_dataset("xo", "train"), load_dataset("xo", "test")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 2),
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.from_numpy(train.images).float() / 255
    labels = torch.from_numpy(train.labels)
    for batch in torch.randperm(len(train)).split(64):
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predictions = model(torch.from_numpy(test.images).float() / 255).argmax(1)
    assert (predictions == torch.from_numpy(test.labels)).float().mean().item() >= 0.95


# --- folder --------------------------------------------------------------------------------------


def _png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_folder_of_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cats = [rng.integers(0, 256, (6, 8), dtype=np.uint8) for _ in range(2)]
    dog = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    for index, pixels in enumerate(cats):
        _png(tmp_path / "cat" / f"{index}.png", pixels)
    _png(tmp_path / "dog" / "a.PNG", dog)
    _png(tmp_path / "dog" / "b.png", np.stack([dog] * 3, axis=-1))  # RGB: converted to L like the first
    (tmp_path / "dog" / "notes.txt").write_text("ignored")

    train = load_dataset("folder", "train", path=str(tmp_path))
    test = load_dataset("folder", "test", tmp_path)  # data_dir works too
    assert (train.name, train.classes, test.classes) == ("folder", ("cat", "dog"), ("cat", "dog"))
    _assert_standard_invariants(train, (1, 6, 8))
    # one image of each class is held out for testing; together the splits hold every image once
    assert train.labels.tolist() == [0, 1] and test.labels.tolist() == [0, 1]
    everything = [*train.images[:, 0], *test.images[:, 0]]
    for original in (*cats, dog):
        assert sum(np.array_equal(original, image) for image in everything) == (2 if original is dog else 1)
    assert train.note == test.note and "held out as the test split and never trained on" in str(test.note)


def test_folder_without_splits_holds_out_a_seeded_fifth_of_each_class(tmp_path: Path) -> None:
    for label in ("a", "b"):
        for index in range(10):
            _png(tmp_path / label / f"{index}.png", np.full((2, 2), index + (100 if label == "b" else 0), np.uint8))
    train, test = load_dataset("folder", "train", path=tmp_path), load_dataset("folder", "test", path=tmp_path)
    assert np.bincount(test.labels).tolist() == [2, 2] and np.bincount(train.labels).tolist() == [8, 8]
    held = {int(pixel) for pixel in test.images[:, 0, 0, 0]}
    assert held.isdisjoint(int(pixel) for pixel in train.images[:, 0, 0, 0])
    again = load_dataset("folder", "test", path=tmp_path)
    assert np.array_equal(again.images, test.images)  # seeded: every load holds out the same images
    assert "4 of its images (20% of each class, seed 0) are held out" in str(test.note)


def test_folder_rgb_images_and_split_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    red = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    _png(tmp_path / "train" / "a" / "0.png", red)
    _png(tmp_path / "train" / "b" / "0.png", red[::-1])
    _png(tmp_path / "test" / "a" / "0.png", red[:, ::-1])
    _png(tmp_path / "test" / "b" / "0.png", red)
    train = load_dataset("folder", "train", path=tmp_path)
    test = load_dataset("folder", "test", path=tmp_path)
    _assert_standard_invariants(train, (3, 5, 4))
    assert np.array_equal(train.images[0], red.transpose(2, 0, 1))
    assert np.array_equal(test.images[0], red[:, ::-1].transpose(2, 0, 1))
    assert test.classes == ("a", "b")


def test_folder_unreadable_image_is_named(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    broken = tmp_path / "b" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(CnncError, match=rf"cannot read image {broken}"):
        load_dataset("folder", "train", path=tmp_path)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({}, r"holds no class folders"),
        ({"a/0.png": (4, 4), "b/readme.txt": None}, r"the class folder .*b holds no \.png/\.jpg/\.jpeg images"),
        ({"a/0.png": (4, 4), "b/0.png": (4, 5)}, r"b/0\.png is 5x4 pixels but .*a/0\.png is 4x4; all images must have"),
        ({"train/a/0.png": (4, 4)}, r"has a train/ folder but no test/ one"),
        ({"train/a/0.png": (4, 4), "test/b/0.png": (4, 4)}, r"has the classes \['a'\] but .*test has \['b'\]"),
    ],
)
def test_folder_layout_errors(tmp_path: Path, layout: dict[str, tuple[int, int] | None], expected: str) -> None:
    for name, shape in layout.items():
        if shape is None:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("not an image")
        else:
            _png(tmp_path / name, np.zeros(shape, np.uint8))
    with pytest.raises(CnncError, match=expected):
        load_dataset("folder", "train", path=tmp_path)


def test_folder_needs_a_path() -> None:
    with pytest.raises(CnncError, match=r"the folder dataset needs the path of your folder of class subfolders"):
        load_dataset("folder", "train")


# --- npz -----------------------------------------------------------------------------------------


def test_npz_split_arrays_and_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)  # channels last
    x_test = rng.integers(0, 256, (2, 3, 6, 7), dtype=np.uint8)  # channels first
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x_train, y_train=np.array([0, 1, 2, 1, 0], np.uint8),
             x_test=x_test, y_test=np.array([[3], [0]], np.int32))
    train = load_dataset("npz", "train", path=str(path))
    test = load_dataset("npz", "test", path=str(path))
    _assert_standard_invariants(train, (3, 6, 7))
    assert np.array_equal(train.images, x_train.transpose(0, 3, 1, 2))
    assert np.array_equal(test.images, x_test)
    assert train.labels.tolist() == [0, 1, 2, 1, 0] and test.labels.tolist() == [3, 0]
    assert train.classes == test.classes == ("0", "1", "2", "3")  # from the largest label of either split


def test_npz_single_split_with_class_names(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(path, x=x, y=np.array([1, 0]), classes=np.array(["cat", "dog"]))
    for split in ("train", "test"):
        ds = load_dataset("npz", split, path)
        assert ds.classes == ("cat", "dog") and np.array_equal(ds.images[:, 0], x)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(2, int)},
         r"has no train split: it needs the arrays x_train and y_train \(or x and y\), but holds images, labels"),
        ({"x": np.zeros((2, 4, 4), np.float32), "y": np.zeros(2, int)}, r"x has dtype float32; images must be uint8"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, int)}, r"x holds 2 images but y holds 3 labels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, float)},
         r"y has dtype float64; labels must be integers"),
        ({"x": np.zeros((2, 5, 5, 5), np.uint8), "y": np.zeros(2, int)}, r"x has shape \(2, 5, 5, 5\)"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, r"negative label -1"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 2]), "classes": np.array(["a", "b"])},
         r"holds the label 2, but `classes` names only 2 classes"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], expected: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CnncError, match=expected):
        load_dataset("npz", "train", path=path)


def test_npz_refuses_pickled_objects_and_non_npz_files(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(CnncError, match=r"pickled\.npz: x\.npy holds Python objects; cnnc reads plain arrays only"):
        load_dataset("npz", "train", path=pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(CnncError, match=r"cannot read .*garbage\.npz"):
        load_dataset("npz", "train", path=garbage)
    with pytest.raises(CnncError, match=r"does not exist"):
        load_dataset("npz", "train", path=tmp_path / "absent.npz")


# --- download ------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[functools.partial[str]]:
    """serve(directory) -> the http://127.0.0.1:PORT URL of a server for `directory`."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy from the environment must not see these
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield functools.partial(start)
    for server in servers:
        server.shutdown()
        server.server_close()


def _mnist_mirror(root: Path) -> Path:
    (root / "mnist").mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / name, root / "mnist" / name)
    return root


def _leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def test_download_fetches_verifies_and_keeps_the_content_decompressed(tmp_path: Path,
                                                                      serve: functools.partial[str]) -> None:
    mirror = serve(_mnist_mirror(tmp_path / "mirror"))
    target = tmp_path / "data" / "mnist"
    ds = load_dataset("mnist", "test", target, download=True, progress=False, mirror=mirror)
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_HISTOGRAM
    assert _leftovers(target) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]  # no .gz, no partial file
    for name in _leftovers(target):
        assert (target / name).read_bytes() == _raw(MNIST_DIR / f"{name}.gz")
        assert (target / name).stat().st_mode & 0o777 == 0o644


def test_a_decompressed_download_that_cannot_be_written_says_so_and_leaves_nothing(
        tmp_path: Path, serve: functools.partial[str], monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = serve(_mnist_mirror(tmp_path / "mirror"))
    temporary_file = download._temporary_file

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    @contextlib.contextmanager
    def on_a_full_disk(directory: Path, name: str) -> Iterator[tuple[Path, Any]]:
        with temporary_file(directory, name) as (path, _):
            yield (path, FullDisk())

    monkeypatch.setattr(download, "_temporary_file", on_a_full_disk)
    target = tmp_path / "data"
    with pytest.raises(CnncError, match=r"cannot write .*t10k-labels-idx1-ubyte: No space left on device"):
        download_files(MNIST, [MNIST.files["test"][1]], target, progress=False, mirror=mirror)
    assert _leftovers(target) == []


def test_a_download_only_its_gz_checksum_verifies_stays_compressed(tmp_path: Path,
                                                                   serve: functools.partial[str]) -> None:
    # As Fashion-MNIST's images: no checksum of their decompressed content is known.
    mirror = serve(_mnist_mirror(tmp_path / "mirror"))
    labels = dataclasses.replace(MNIST.files["test"][1], raw_checksum=None)
    download_files(MNIST, [labels], tmp_path / "data", progress=False, mirror=mirror)
    assert _leftovers(tmp_path / "data") == ["t10k-labels-idx1-ubyte.gz"]
    assert (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").read_bytes() == (
        MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()


def test_download_mirror_from_the_environment_and_only_missing_files(
    tmp_path: Path, serve: functools.partial[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror_root = _mnist_mirror(tmp_path / "mirror")
    (mirror_root / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()  # a request for it would fail
    monkeypatch.setenv("CNNC_DATASET_MIRROR", serve(mirror_root) + "/")
    target = tmp_path / "data"
    target.mkdir()
    shutil.copy(MNIST_DIR / "t10k-images-idx3-ubyte.gz", target)
    ds = load_dataset("mnist", "test", target, download=True, progress=False)
    assert len(ds) == 10_000


def test_download_with_a_wrong_checksum_saves_nothing(tmp_path: Path, serve: functools.partial[str]) -> None:
    mirror_root = _mnist_mirror(tmp_path / "mirror")
    labels = bytearray(_raw(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"))
    labels[8] = (labels[8] + 1) % 10
    tampered = gzip.compress(bytes(labels))
    (mirror_root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(tampered)
    mirror = serve(mirror_root)
    target = tmp_path / "data"
    with pytest.raises(CnncError) as error:
        load_dataset("mnist", "test", target, download=True, progress=False, mirror=mirror)
    message = str(error.value)
    assert f"the download of {mirror}/mnist/t10k-labels-idx1-ubyte.gz is corrupt" in message
    assert f"its md5 is {hashlib.md5(tampered).hexdigest()}, expected ec29112dd5afa0611ce80d1b7f02629c" in message
    assert "Put them in that directory" in message
    assert _leftovers(target) == ["t10k-images-idx3-ubyte"]  # the good file stays, no partial file


def test_download_http_error_and_no_server(tmp_path: Path, serve: functools.partial[str]) -> None:
    empty_mirror = serve(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnncError, match=r"the server answered HTTP 404"):
        load_dataset("mnist", "test", tmp_path / "a", download=True, progress=False, mirror=empty_mirror)
    assert _leftovers(tmp_path / "a") == []

    with socket.socket() as unused:  # a port with no server behind it
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused = r"cannot download http://127\.0\.0\.1:\d+/mnist/t10k-images.*no network access"
    with pytest.raises(CnncError, match=refused):
        load_dataset("mnist", "test", tmp_path / "b", download=True, progress=False, mirror=f"http://127.0.0.1:{port}")


def test_download_unpacks_only_the_expected_archive_members(tmp_path: Path, serve: functools.partial[str]) -> None:
    test_batch = _raw(CIFAR_DIR / "test_batch.bin.gz")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
        for name, data in [
            ("cifar-10-batches-bin/test_batch.bin", test_batch),
            ("cifar-10-batches-bin/../../escaped.bin", b"outside"),
            (f"{tmp_path}/absolute.bin", b"outside"),
            ("cifar-10-batches-bin/readme.html", b"extra"),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    (tmp_path / "mirror" / "cifar-10").mkdir(parents=True)
    (tmp_path / "mirror" / "cifar-10" / "cifar-10-binary.tar.gz").write_bytes(archive.getvalue())
    # A stand-in archive, so the dataset is told its checksum instead of the canonical one.
    checksum = Checksum("md5", hashlib.md5(archive.getvalue()).hexdigest())
    assert CIFAR10.archive is not None
    local_cifar = dataclasses.replace(CIFAR10, archive=dataclasses.replace(CIFAR10.archive, checksum=checksum))
    target = tmp_path / "deep" / "data"
    ds = load_standard(local_cifar, "test", target, download=True, progress=False, mirror=serve(tmp_path / "mirror"))
    assert ds.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert _leftovers(target) == ["test_batch.bin"]
    assert _leftovers(tmp_path) == ["deep", "mirror"]  # nothing escaped next to them


# --- names, splits, subsets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"), [("mnsit", "mnist"), ("cifar-10", "cifar10"), ("Fashion-MNIST", "fashion_mnist")]
)
def test_unknown_dataset_suggests_the_closest_name(name: str, suggestion: str) -> None:
    with pytest.raises(CnncError) as error:
        load_dataset(name, "train")
    assert str(error.value) == (
        f"unknown dataset {name!r}; the datasets are mnist, fashion_mnist, cifar10, xo, folder, npz "
        f"(did you mean {suggestion}?)"
    )


def test_unknown_dataset_without_a_close_name_and_unknown_split() -> None:
    with pytest.raises(CnncError, match=r"^unknown dataset 'imagenet'; the datasets are mnist, .*npz$"):
        load_dataset("imagenet", "train")
    with pytest.raises(CnncError, match=r"unknown split 'valid': use one of train, test"):
        load_dataset("xo", "valid")
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "xo", "folder", "npz"}
    assert [name for name, info in DATASETS.items() if info.needs_path] == ["folder", "npz"]


def test_subset_takes_the_first_examples() -> None:
    ds = load_dataset("xo", "test")
    small = ds.subset(10)
    assert len(small) == 10 and small.images.flags.c_contiguous
    assert np.array_equal(small.images, ds.images[:10]) and np.array_equal(small.labels, ds.labels[:10])
    assert ds.subset(None) is ds and ds.subset(10_000) is ds
    assert len(ds.subset(0)) == 0
    with pytest.raises(CnncError, match=r"the limit must be 0 or more"):
        ds.subset(-1)


def test_split_validation_is_seeded_disjoint_and_complete() -> None:
    ds = load_dataset("xo", "test")
    assert split_validation(ds, 0, seed=0) == (ds, None)
    train, validation = split_validation(ds, 0.2, seed=7)
    assert validation is not None
    assert (len(train), len(validation), train.split, validation.split) == (800, 200, "test", "validation")
    assert train.images.flags.c_contiguous and validation.images.flags.c_contiguous
    rows = {image.tobytes() for image in ds.images}
    train_rows = {image.tobytes() for image in train.images}
    validation_rows = {image.tobytes() for image in validation.images}
    assert train_rows | validation_rows == rows and not train_rows & validation_rows
    again_train, again_validation = split_validation(ds, 0.2, seed=7)
    assert np.array_equal(again_validation.images, validation.images)
    _, other_validation = split_validation(ds, 0.2, seed=8)
    assert not np.array_equal(other_validation.images, validation.images)
    for fraction in (-0.1, 1.0):
        with pytest.raises(CnncError, match=r"the validation fraction must be at least 0 and below 1"):
            split_validation(ds, fraction, seed=0)


def test_importing_the_package_pulls_in_no_heavy_dependency() -> None:
    code = (
        "import sys, cnnc.datasets; "
        "print(sorted(m for m in ('torch', 'lark', 'onnx', 'onnxruntime', 'PIL', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_names_the_folders_the_code_reads() -> None:
    from cnnc.datasets.registry import STANDARD_DATASETS

    readme = (REPO / "README.md").read_text()
    for dataset in STANDARD_DATASETS.values():
        assert f"`{dataset.folder}/`" in readme, dataset.folder
    assert "cifar10/" not in readme and "../shared" not in readme
