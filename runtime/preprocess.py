"""The model's own input preprocessing: uint8 pixels -> the float32 tensor it was trained on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cnnc.constants import PIXEL_SCALE
from cnnc.errors import CnncError
from cnnc.runtime.metadata import PREPROCESS_KEY, read_json


@dataclass(frozen=True)
class Preprocessing:
    """`(x * scale - mean[c]) / std[c]` per channel c; mean and std hold one value or one per channel.

    The default (no `cnnc.preprocess` metadata) only maps [0, 255] to [0, 1].
    """

    scale: float = PIXEL_SCALE
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], channels: int | None) -> Preprocessing:
        spec = read_json(metadata, PREPROCESS_KEY)
        if spec is None:
            return cls()
        if not isinstance(spec, dict):
            raise CnncError(f"model metadata '{PREPROCESS_KEY}' must be a JSON object, not {spec!r}")
        preprocessing = cls(
            scale=_number(spec.get("scale", PIXEL_SCALE), "scale"),
            mean=_per_channel(spec.get("mean", [0.0]), "mean", channels),
            std=_per_channel(spec.get("std", [1.0]), "std", channels),
        )
        if 0.0 in preprocessing.std:
            raise CnncError(f"model metadata '{PREPROCESS_KEY}' has a std of 0: {list(preprocessing.std)}")
        return preprocessing

    def apply(self, images: np.ndarray) -> np.ndarray:
        """A float32 copy of a uint8 NCHW batch, normalised as in training."""
        # The same float32 operations, in the same order, as the training pipeline's normalisation.
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return (images.astype(np.float32) * np.float32(self.scale) - mean) / std


def _number(value: object, name: str) -> float:
    # bool is an int subclass, but `true` as a scale is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CnncError(f"model metadata '{PREPROCESS_KEY}': {name} must be a number, not {value!r}")
    return float(value)


def _per_channel(value: object, name: str, channels: int | None) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or (len(values) != 1 and channels is not None and len(values) != channels):
        raise CnncError(
            f"model metadata '{PREPROCESS_KEY}': {name} has {len(values)} values "
            f"but the model takes {channels} channels (give 1 value or {channels})"
        )
    return tuple(_number(item, name) for item in values)
