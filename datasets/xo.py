"""The built-in X-versus-O dataset: glyphs drawn procedurally, so it needs no files.

Each glyph is drawn from a distance field: a pixel's ink falls off with its distance to the
strokes (two line segments for an X, an ellipse for an O), which gives anti-aliased strokes of any
width without a rasteriser. Every glyph varies in size, stroke width, position, rotation (and
shear for the X), brightness and noise, so no single pixel tells the classes apart, yet a small
CNN learns them within an epoch. The same seed always gives the same bytes.

Points are complex numbers x + iy, which makes rotation a multiplication.
"""

from __future__ import annotations

import numpy as np

from cnnc.datasets.dataset import Dataset

CLASSES = ("x", "o")
SIZE = 28
SPLIT_SIZES = {"train": 4000, "test": 1000}
_SPLIT_STREAMS = {"train": 0, "test": 1}  # distinct random streams, so the splits never share glyphs
_REAL, _COMPLEX = np.float32, np.complex64  # double precision would double the time for nothing visible
_SQUARE_CORNERS = np.array([-1 - 1j, 1 + 1j, -1 + 1j, 1 - 1j], _COMPLEX)  # the X's strokes: 0-1 and 2-3


def generate_xo(split: str, seed: int = 0) -> Dataset:
    count = SPLIT_SIZES[split]
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    is_x = labels == CLASSES.index("x")
    distance = np.empty((count, SIZE, SIZE), _REAL)
    distance[is_x] = _x_distance(rng, int(is_x.sum()))
    distance[~is_x] = _o_distance(rng, int((~is_x).sum()))
    return Dataset("xo", split, _render(rng, distance), labels.astype(np.int64), CLASSES)


def _uniform(rng: np.random.Generator, low: float, high: float, size: int | tuple[int, ...]) -> np.ndarray:
    return _REAL(low) + _REAL(high - low) * rng.random(size, dtype=_REAL)


def _pixels_around_random_centres(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, SIZE, SIZE) pixel centres relative to each glyph's centre, shifted up to 4 pixels."""
    rows, columns = np.mgrid[0:SIZE, 0:SIZE].astype(_REAL) + _REAL(0.5)
    shift = _uniform(rng, -4, 4, count) + 1j * _uniform(rng, -4, 4, count)
    centres = (SIZE / 2 * (1 + 1j) + shift).astype(_COMPLEX)
    return (columns + 1j * rows).astype(_COMPLEX)[None] - centres[:, None, None]


def _x_distance(rng: np.random.Generator, count: int) -> np.ndarray:
    """Distance of every pixel to the nearer of an X's two strokes, for `count` X glyphs."""
    points = _pixels_around_random_centres(rng, count)
    half_size = _uniform(rng, 5, 9.5, (count, 1))
    rotation = np.exp(1j * _uniform(rng, -0.3, 0.3, (count, 1)))  # up to about 17 degrees
    shear = _uniform(rng, -0.25, 0.25, (count, 1))
    corners = _SQUARE_CORNERS + _uniform(rng, -0.15, 0.15, (count, 4)) + 1j * _uniform(rng, -0.15, 0.15, (count, 4))
    ends = (half_size * rotation * (corners + shear * corners.imag)).astype(_COMPLEX)
    return np.minimum(_segment_distance(points, ends[:, 0], ends[:, 1]),
                      _segment_distance(points, ends[:, 2], ends[:, 3]))


def _segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance from each glyph's points to its segment from `start` to `end`."""
    start, direction = start[:, None, None], (end - start)[:, None, None]
    along = np.clip(((points - start) * direction.conj()).real / np.abs(direction) ** 2, 0, 1)
    return np.abs(points - start - along * direction)


def _o_distance(rng: np.random.Generator, count: int) -> np.ndarray:
    """Approximate distance of every pixel to an O's ellipse, for `count` O glyphs."""
    points = _pixels_around_random_centres(rng, count)
    radii = _uniform(rng, 4.5, 9.5, (count, 1, 1)) * _uniform(rng, 0.75, 1.0, (2, count, 1, 1))
    unrotated = points * np.exp(-1j * _uniform(rng, 0, np.pi, (count, 1, 1))).astype(_COMPLEX)
    u, v = unrotated.real / radii[0], unrotated.imag / radii[1]
    # |f| / |grad f| for f = u^2 + v^2 - 1: close to the true distance near the curve, which is
    # the only place where it decides the ink.
    gradient = 2 * np.hypot(u / radii[0], v / radii[1])
    return np.abs(u * u + v * v - 1) / np.maximum(gradient, _REAL(1e-6))


def _render(rng: np.random.Generator, distance: np.ndarray) -> np.ndarray:
    """Ink from the distance field (a one-pixel anti-aliased edge), plus brightness and noise."""
    count = len(distance)
    half_width = _uniform(rng, 0.6, 2.0, (count, 1, 1))
    ink = np.clip(half_width + _REAL(0.5) - distance, 0, 1)
    brightness = _uniform(rng, 150, 255, (count, 1, 1))
    noise = _uniform(rng, 5, 30, (count, 1, 1)) * rng.standard_normal(distance.shape, dtype=_REAL)
    pixels = np.clip(ink * brightness + noise, 0, 255)
    return np.ascontiguousarray(np.rint(pixels).astype(np.uint8)[:, None])
