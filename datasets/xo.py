"""The built-in X-versus-O dataset: glyphs drawn procedurally, so it needs no files.

Each glyph is drawn from a distance field: a pixel's ink falls off with its distance to the
strokes (two line segments for an X, an ellipse for an O), which gives anti-aliased strokes of any
thickness without a rasteriser. Every glyph varies in size, stroke width, position, rotation (and
shear for the X), brightness and noise, so no single pixel tells the classes apart, yet a small
CNN learns them in seconds. The same seed always gives the same bytes.
"""

from __future__ import annotations

import numpy as np

from cnnc.datasets.dataset import Dataset

CLASSES = ("x", "o")
SIZE = 28
SPLIT_SIZES = {"train": 4000, "test": 1000}
_SPLIT_STREAMS = {"train": 0, "test": 1}  # distinct random streams, so the splits never share glyphs
_FLOAT = np.float32  # float64 would double the time for no visible difference


def generate_xo(split: str, seed: int = 0) -> Dataset:
    count = SPLIT_SIZES[split]
    rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    distance = np.empty((count, SIZE, SIZE), _FLOAT)
    is_x = labels == CLASSES.index("x")
    distance[is_x] = _x_distance(rng, int(is_x.sum()))
    distance[~is_x] = _o_distance(rng, int((~is_x).sum()))
    return Dataset("xo", split, _render(rng, distance), labels.astype(np.int64), CLASSES)


def _pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (1, SIZE, SIZE), broadcasting over glyphs."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(_FLOAT) + _FLOAT(0.5)
    return xs[None], ys[None]


def _uniform(rng: np.random.Generator, low: float, high: float, size: int | tuple[int, ...]) -> np.ndarray:
    return _FLOAT(low) + _FLOAT(high - low) * rng.random(size, dtype=_FLOAT)


def _random_centres(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    centre_x, centre_y = SIZE / 2 + _uniform(rng, -4, 4, (2, count))
    return centre_x[:, None, None], centre_y[:, None, None]


def _x_distance(rng: np.random.Generator, count: int) -> np.ndarray:
    """Distance of every pixel to the nearer of an X's two strokes, for `count` X glyphs."""
    centre_x, centre_y = _random_centres(rng, count)
    half_size = _uniform(rng, 5, 9.5, count)
    angle = _uniform(rng, -0.3, 0.3, count)  # radians, about +-17 degrees
    shear = _uniform(rng, -0.25, 0.25, count)
    # The corners of the unit square, each nudged a little, then sheared, rotated and scaled.
    corners = np.array([[-1, -1], [1, 1], [-1, 1], [1, -1]], _FLOAT) + _uniform(rng, -0.15, 0.15, (count, 4, 2))
    x = corners[..., 0] + shear[:, None] * corners[..., 1]
    y = corners[..., 1]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    ends_x = half_size[:, None] * (cos * x - sin * y)
    ends_y = half_size[:, None] * (sin * x + cos * y)
    pixel_x, pixel_y = _pixel_grid()
    strokes = [
        _segment_distance(pixel_x - centre_x, pixel_y - centre_y, ends_x[:, start], ends_y[:, start], ends_x[:, start + 1], ends_y[:, start + 1])
        for start in (0, 2)
    ]
    return np.minimum(*strokes)


def _segment_distance(px: np.ndarray, py: np.ndarray, ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Distance from points (px, py) to segments from a to b (one segment per glyph)."""
    ax, ay, bx, by = (value[:, None, None] for value in (ax, ay, bx, by))
    dx, dy = bx - ax, by - ay
    along = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(px - ax - along * dx, py - ay - along * dy)


def _o_distance(rng: np.random.Generator, count: int) -> np.ndarray:
    """Approximate distance of every pixel to an O's ellipse, for `count` O glyphs."""
    centre_x, centre_y = _random_centres(rng, count)
    radius_x, radius_y = _uniform(rng, 4.5, 9.5, count) * _uniform(rng, 0.75, 1.0, (2, count))
    angle = _uniform(rng, 0, np.pi, count)
    pixel_x, pixel_y = _pixel_grid()
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = cos * (pixel_x - centre_x) + sin * (pixel_y - centre_y)
    v = -sin * (pixel_x - centre_x) + cos * (pixel_y - centre_y)
    a, b = radius_x[:, None, None], radius_y[:, None, None]
    # First-order distance to the level set f = 0: |f| / |grad f|, exact on a circle's radius.
    implicit = (u / a) ** 2 + (v / b) ** 2 - 1
    gradient = 2 * np.hypot(u / a**2, v / b**2)
    return np.abs(implicit) / np.maximum(gradient, _FLOAT(1e-6))


def _render(rng: np.random.Generator, distance: np.ndarray) -> np.ndarray:
    """Ink from the distance field (a one-pixel anti-aliased edge), plus brightness and noise."""
    count = len(distance)
    half_width = _uniform(rng, 0.6, 2.0, (count, 1, 1))
    ink = np.clip(half_width + _FLOAT(0.5) - distance, 0, 1)
    brightness = _uniform(rng, 150, 255, (count, 1, 1))
    noise = _uniform(rng, 5, 30, (count, 1, 1)) * rng.standard_normal(distance.shape, dtype=_FLOAT)
    pixels = np.clip(ink * brightness + noise, 0, 255)
    return np.ascontiguousarray(np.rint(pixels).astype(np.uint8)[:, None])
