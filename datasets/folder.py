"""Your own images, one subfolder per class.

    ROOT/cat/001.png, ROOT/dog/002.jpg, ...                      the same images for either split
    ROOT/train/cat/001.png, ..., ROOT/test/cat/101.png, ...      ROOT/<split> for each split

The class names are the subfolder names, sorted; with train/ and test/ both must hold the same
classes. PNG and JPEG files (.png, .jpg, .jpeg, any case) are read; other files are ignored.
Every image must have the size of the first one (in sorted order). Their colour modes may differ:
if the first image is greyscale (Pillow modes 1, L, LA, I, I;16, F), all are converted to L, one
channel; otherwise all are converted to RGB, three channels.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from cnnc.datasets.dataset import Dataset
from cnnc.errors import CnncError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
SPLIT_FOLDERS = ("train", "test")


def load_folder(root: Path, split: str) -> Dataset:
    split_root = _split_root(root, split)
    classes = _class_folders(split_root)
    if split_root != root:
        _check_same_classes(split_root, root / _other_split(split), classes)
    files, labels = [], []
    for label, folder in enumerate(classes):
        images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
        if not images:
            raise CnncError(f"the class folder {folder} holds no .png/.jpg/.jpeg images")
        files += images
        labels += [label] * len(images)
    return Dataset(
        "folder", split, _read_images(files), np.array(labels, dtype=np.int64), tuple(folder.name for folder in classes)
    )


def _split_root(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise CnncError(f"the image folder {root} does not exist or is not a directory")
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if len(present) == 1:
        raise CnncError(
            f"{root} has a {present[0]}/ folder but no {_other_split(present[0])}/ one: "
            "give both splits their own folder, or neither (then the whole folder serves both)"
        )
    return root / split if present else root


def _class_folders(root: Path) -> list[Path]:
    classes = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise CnncError(f"{root} holds no class folders: put each class's images in a subfolder named after it")
    return classes


def _other_split(split: str) -> str:
    return "test" if split == "train" else "train"


def _check_same_classes(split_root: Path, other_root: Path, classes: list[Path]) -> None:
    # Labels are class indices, so a class missing from one split would shift every later label.
    names = [folder.name for folder in classes]
    other_names = [folder.name for folder in _class_folders(other_root)]
    if other_names != names:
        raise CnncError(
            f"{split_root} has the classes {names} but {other_root} has {other_names}; "
            "both splits need the same class folders"
        )


def _read_images(files: list[Path]) -> np.ndarray:
    try:
        from PIL import Image  # only this loader needs Pillow, so only it imports it
    except ImportError:
        raise CnncError("reading an image folder needs Pillow: pip install pillow") from None
    first = _load(Image, files[0], mode=None)
    mode = "L" if first.shape[0] == 1 else "RGB"
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for index, path in enumerate(files[1:], start=1):
        pixels = _load(Image, path, mode)
        if pixels.shape != first.shape:
            raise CnncError(
                f"{path} is {_size(pixels)} pixels but {files[0]} is {_size(first)}; all images must have the same size"
            )
        images[index] = pixels
    return images


def _load(image_module: ModuleType, path: Path, mode: str | None) -> np.ndarray:
    """The (C, H, W) pixels of `path` converted to `mode` (None: L or RGB, whichever fits it)."""
    try:
        with image_module.open(path) as image:
            target_mode = mode or ("L" if image.mode in GREYSCALE_MODES else "RGB")
            pixels = np.asarray(image.convert(target_mode), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, image_module.DecompressionBombError) as error:
        raise CnncError(f"cannot read the image {path}: {error}") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _size(pixels: np.ndarray) -> str:
    _, height, width = pixels.shape
    return f"{width}x{height}"
