"""The in-memory dataset every loader returns, and the seeded train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnc.errors import CnncError


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is elementwise, not a bool
class Dataset:
    """Images and labels of one split, ready to be wrapped in tensors.

    `split` is "train" or "test", or "validation" for the part that `split_validation` holds out.
    """

    name: str
    split: str
    images: np.ndarray  # uint8, (N, C, H, W), C-contiguous
    labels: np.ndarray  # int64, (N,), each in [0, len(classes))
    classes: tuple[str, ...]
    note: str | None = None  # what the user should know about where the split came from

    def __post_init__(self) -> None:
        # A loader that breaks these would hand training a silently wrong tensor, so fail here.
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or not self.images.flags.c_contiguous:
            raise ValueError(
                f"images must be a C-contiguous uint8 (N, C, H, W) array, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"labels must be int64 of shape ({len(self.images)},), got {self.labels.dtype} {self.labels.shape}"
            )
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        _, channels, height, width = self.images.shape
        return channels, height, width

    def subset(self, n: int | None) -> Dataset:
        """The first `n` examples (all of them when `n` is None or at least the size)."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise CnncError(
                f"cannot take the first {n} examples of {self.name} {self.split}: the limit must be 0 or more"
            )
        return Dataset(self.name, self.split, self.images[:n], self.labels[:n], self.classes, self.note)

    def select(self, indices: np.ndarray, split: str) -> Dataset:
        """The examples at `indices`, in that order, as a split named `split`."""
        return Dataset(self.name, split, np.ascontiguousarray(self.images[indices]), self.labels[indices], self.classes,
                       self.note)


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out a random `fraction` of `ds` for validation: (train part, validation part).

    The examples are assigned at random (seeded; no stratification), and each part keeps the
    original order so that `subset` still means "the first n". A fraction of 0 gives (ds, None).
    """
    if not 0 <= fraction < 1:
        raise CnncError(f"the validation fraction must be at least 0 and below 1, got {fraction}")
    if fraction == 0:
        return ds, None
    held_out = max(1, round(len(ds) * fraction))
    if held_out >= len(ds):
        raise CnncError(
            f"a validation fraction of {fraction} of the {len(ds)} examples of {ds.name} {ds.split} "
            "leaves nothing to train on"
        )
    order = np.random.default_rng(seed).permutation(len(ds))
    validation_indices = np.sort(order[:held_out])
    train_indices = np.sort(order[held_out:])
    return ds.select(train_indices, ds.split), ds.select(validation_indices, "validation")
