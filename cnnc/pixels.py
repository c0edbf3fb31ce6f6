"""Reading an image file as 8-bit pixels, for datasets and the runtime alike (numpy and Pillow only).

Pillow's `convert("L")` clips rather than scales: a 16-bit greyscale image (modes I;16 and, for
PNG, I) comes out nearly white and a float image all black. Here 16-bit pixels are scaled by their
real range (0-65535 -> 0-255, rounded); 32-bit integer and float images, whose range no format
fixes, are refused with a message. An image's size is read from its header and checked against
MAX_PIXELS before any pixel is decoded, and Pillow's own decompression-bomb and oversized-chunk
errors become clean errors.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from cnnc.errors import CnncError

MAX_PIXELS = 1 << 26  # 67 million (8192 x 8192): far beyond what a CNN classifies, far below a bomb
GREYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


def _pillow() -> tuple[Any, Any]:
    """Pillow's Image and ImageOps, imported on first use (the runtime needs them only for files)."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise CnncError("reading image files needs Pillow: pip install pillow") from None
    return Image, ImageOps


def read_pixels(path: str | os.PathLike, mode: str | None = None,
                size: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """(pixels, the file's own mode): (H, W) for `mode` "L", (H, W, 3) for "RGB"; with `mode` None,
    whichever of the two suits the file. The camera's orientation tag is applied, as viewers do;
    `size` (width, height) resizes (bilinear, after scaling to 8 bits). Raises CnncError for anything
    it cannot read faithfully."""
    Image, ImageOps = _pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _check_size(path, opened.size)
                own_mode = opened.mode
                image = ImageOps.exif_transpose(opened) if opened.getexif() else opened
                target = mode or ("L" if own_mode in GREYSCALE_MODES else "RGB")
                pixels = _eight_bit(path, image, target)
                if size is not None and pixels.shape[1::-1] != size:
                    pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    except CnncError:
        raise
    except FileNotFoundError:
        raise CnncError(f"image file {path} does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CnncError(f"cannot read image {path}: {error}") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as error:
        # ValueError covers Pillow's "Decompressed Data Too Large" for an oversized text chunk
        raise CnncError(f"cannot read image {path}: {error}") from None
    return pixels, own_mode


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    Image, _ = _pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CnncError(f"cannot read image {path}: {error}") from None


def _check_size(path: str | os.PathLike, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise CnncError(f"the image {path} is {width}x{height} pixels, more than the {MAX_PIXELS:,} cnnc reads "
                        "(a decompression bomb, or a photo to shrink first); nothing was decoded")


def _eight_bit(path: str | os.PathLike, image, target: str) -> np.ndarray:
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG"):
        grey = np.asarray(image).astype(np.float64)  # PNG stores 16-bit greyscale as mode I, 0-65535
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise CnncError(f"the image {path} holds values outside 0-65535 in a 16-bit mode")
        pixels = np.rint(grey * (255 / 65535)).astype(np.uint8)
        return pixels if target == "L" else np.repeat(pixels[..., None], 3, axis=2)
    if mode in ("I", "F"):
        kind = "floating-point" if mode == "F" else "32-bit integer"
        raise CnncError(f"the image {path} has {kind} pixels, whose range no format fixes, so cnnc cannot scale "
                        "them to 0-255 faithfully: save it as an 8- or 16-bit image")
    return np.asarray(image.convert(target), dtype=np.uint8)
