"""Turning what callers hand to `classify` (arrays, image files) into one uint8 NCHW batch.

Accepted, for a model taking C channels of H x W pixels:
- an image file path (str or Path), decoded with Pillow and converted to L (C=1) or RGB (C=3);
- a uint8 array: H x W (one grayscale image), H x W x C (one image), N x H x W (grayscale
  images), N x H x W x C or N x C x H x W (images);
- a list or tuple of paths and H x W or H x W x C arrays, mixed freely.
A 3-dimensional array is one H x W x C image when its last axis is C, 3 or 4 (so that an RGB
image given to a grayscale model is reported as such), else N grayscale images. A 4-dimensional
array is N x C x H x W (as `cnnc.datasets` stores images) when its second axis is C and its last
is not, else N x H x W x C.
Images are resized only when asked (`cnnc predict --resize`): otherwise a size mismatch is an error
that names both sizes. A file converted between RGB and grayscale says so (an ImageConversion warning).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np

from cnnc.errors import CnncError

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = PathLike | np.ndarray | Sequence[PathLike | np.ndarray]

_PILLOW_MODES = {1: "L", 3: "RGB"}
_COLOUR_NAMES = {1: "grayscale", 3: "RGB"}


def image_batch(images: ImageInput, shape: tuple[int, int | None, int | None]) -> tuple[tuple[str, ...], np.ndarray]:
    """The images' names (their paths, or "#i" for arrays) and their pixels as a uint8 NCHW batch.

    `shape` is the model's (C, H, W); H or W is None when the model accepts any size.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and not _is_single_image(images, shape[0]):
        batch = _batch_to_nchw(images, shape[0])
        _check_pixels(f"the image batch of shape {images.shape}", batch.dtype, batch.shape[1:], shape)
        return tuple(f"#{index}" for index in range(len(images))), batch
    if isinstance(images, np.ndarray):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise CnncError(f"expected image file paths or uint8 image arrays, received {type(images).__name__}")
    if not images:
        raise CnncError("no images given")
    named = [_single_image(item, index, shape) for index, item in enumerate(images)]
    _check_same_size(named)
    return tuple(name for name, _ in named), np.stack([pixels for _, pixels in named])


def _is_single_image(array: np.ndarray, channels: int) -> bool:
    return array.ndim == 3 and array.shape[-1] in (channels, 3, 4)


def _batch_to_nchw(images: np.ndarray, channels: int) -> np.ndarray:
    if images.ndim == 3:  # N x H x W grayscale
        return images[:, None]
    if images.shape[-1] != channels and images.shape[1] == channels:
        return images
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def _single_image(item: object, index: int, shape: tuple[int, int | None, int | None]) -> tuple[str, np.ndarray]:
    """The image's name and its uint8 C x H x W pixels."""
    if isinstance(item, (str, os.PathLike)):
        name = os.fspath(item)
        pixels = read_image_file(name, shape[0])
        _check_pixels(f"image {name}", pixels.dtype, pixels.shape, shape)
        return name, pixels
    name = f"#{index}"
    if not isinstance(item, np.ndarray) or item.ndim not in (2, 3):
        description = f"an array of shape {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
        raise CnncError(
            f"image {name} must be an image file path or a uint8 array of shape (H, W) or (H, W, C), not {description}"
        )
    pixels = item[None] if item.ndim == 2 else item.transpose(2, 0, 1)
    _check_pixels(f"image {name}", pixels.dtype, pixels.shape, shape)
    return name, pixels


class ImageConversion(UserWarning):
    """An image file was converted to fit the model: colour to grayscale or back, or resized."""


def read_image_file(path: str, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The file's pixels as uint8 C x H x W, converted to grayscale or RGB to match `channels` (16-bit
    images scaled to 8 bits, float ones refused: see cnnc.pixels), resized to `size` (width, height)
    if given. A conversion is stated as an ImageConversion warning, never silent."""
    if channels not in _PILLOW_MODES:
        raise CnncError(f"image files can be read for 1-channel (grayscale) or 3-channel (RGB) models; "
                        f"this model takes {channels} channels")
    from cnnc.pixels import GREYSCALE_MODES, read_pixels

    target = _PILLOW_MODES[channels]
    pixels, own_mode = read_pixels(path, target, size)
    own = "L" if own_mode in GREYSCALE_MODES else "RGB"
    if own != target:
        warnings.warn(ImageConversion(f"{path} is {_COLOUR_NAMES[3 if own == 'RGB' else 1]}: converted to "
                                      f"{_COLOUR_NAMES[channels]} for this {channels}-channel model"), stacklevel=2)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def original_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read from its header (nothing is decoded)."""
    from cnnc.pixels import image_size

    return image_size(path)


def _check_pixels(what: str, dtype: np.dtype, chw: tuple[int, ...], shape: tuple[int, int | None, int | None]) -> None:
    channels, height, width = chw
    want_channels, want_height, want_width = shape
    if dtype != np.uint8:
        raise CnncError(
            f"{what} has dtype {dtype}, but images must be uint8 pixels in [0, 255]; convert floats in [0, 1] "
            "with (x * 255).round().astype(np.uint8), or pass an already preprocessed float32 batch to predict()"
        )
    if channels != want_channels:
        raise CnncError(
            f"{what} has {_channels(channels)} but the model takes {_channels(want_channels)}; "
            f"{_conversion_hint(want_channels)}"
        )
    if (want_height is not None and height != want_height) or (want_width is not None and width != want_width):
        raise CnncError(
            f"{what} is {height}x{width} (height x width) but the model takes "
            f"{_size(want_height)}x{_size(want_width)} images; resize it first"
        )


def _check_same_size(named: list[tuple[str, np.ndarray]]) -> None:
    """Only needed for models that accept any size: a batch still needs one size."""
    first_name, first = named[0]
    for name, pixels in named[1:]:
        if pixels.shape != first.shape:
            raise CnncError(
                f"images in one batch must have the same size: {first_name} is {first.shape[1]}x{first.shape[2]}, "
                f"{name} is {pixels.shape[1]}x{pixels.shape[2]} (height x width)"
            )


def _channels(count: int) -> str:
    colour = _COLOUR_NAMES.get(count)
    return f"{count} channel{'' if count == 1 else 's'}" + (f" ({colour})" if colour else "")


def _conversion_hint(channels: int) -> str:
    if channels in _PILLOW_MODES:
        return f"convert it first, e.g. with Pillow: image.convert({_PILLOW_MODES[channels]!r})"
    return "convert it first"


def _size(size: int | None) -> str:
    return "any" if size is None else str(size)
