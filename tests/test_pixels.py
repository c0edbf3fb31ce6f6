"""Image files read as 8-bit pixels: 16-bit scaled by their real range, float refused, bombs refused
before decoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnc.datasets import load_dataset
from cnnc.errors import CnncError
from cnnc.pixels import MAX_PIXELS, read_pixels


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares `width` x `height` but which holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def sixteen_bit_digit(path: Path) -> np.ndarray:
    values = np.zeros((8, 8), np.uint16)
    values[2:6, 3:5] = 65535
    values[0, 0] = 32896  # 128 * 257: mid-grey
    Image.fromarray(values).save(path)  # uint16: mode I;16
    return values


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = sixteen_bit_digit(tmp_path / "digit.png")
    assert Image.open(tmp_path / "digit.png").mode in ("I;16", "I")  # really stored as 16 bits
    pixels, mode = read_pixels(tmp_path / "digit.png", "L")
    assert pixels.dtype == np.uint8 and mode in ("I;16", "I")
    assert pixels[3, 3] == 255 and pixels[0, 0] == 128 and pixels[7, 7] == 0
    assert np.array_equal(pixels, np.rint(values / 257).astype(np.uint8))
    rgb, _ = read_pixels(tmp_path / "digit.png", "RGB")
    assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 1], pixels)


def test_a_float_tiff_is_refused_with_the_reason(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tif")  # float32: mode F
    with pytest.raises(CnncError, match="has floating-point pixels, whose range no format fixes"):
        read_pixels(tmp_path / "float.tif", "L")


def test_an_image_too_large_is_refused_before_decoding(tmp_path: Path) -> None:
    large = png_header_only(tmp_path / "large.png", 9000, 9000)  # above MAX_PIXELS, below Pillow's own limit
    assert large.stat().st_size < 200
    with pytest.raises(CnncError, match=f"is 9000x9000 pixels, more than the {MAX_PIXELS:,} cnnc reads"):
        read_pixels(large)
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # Pillow's DecompressionBombError
    with pytest.raises(CnncError, match="cannot read image .*bomb.png: Image size"):
        read_pixels(bomb)


def test_an_oversized_text_chunk_is_a_clean_error(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "text.png", pnginfo=info)
    with pytest.raises(CnncError, match="cannot read image .*text.png"):
        read_pixels(tmp_path / "text.png")


def test_a_folder_dataset_of_16_bit_pngs_is_scaled(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for index in range(2):
            sixteen_bit_digit(tmp_path / label / f"{index}.png")
    train = load_dataset("folder", "train", path=tmp_path)
    assert train.images.max() == 255 and train.images[0, 0, 0, 0] == 128
