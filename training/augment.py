"""Data augmentation on batched float tensors in [0, 1], and test-time augmentation.

Training augmentations draw their random numbers once per epoch, not per batch: at the start of epoch
e every augmentation draws its parameters for every image of the training split, from a generator
seeded by (seed, e), and the whole table goes to the device in one copy; a batch takes its images'
rows. An image's augmentation therefore depends on (seed, epoch, its index in the split) alone: the
same on any device and with any number of processes, and a resumed run needs no generator state.

    translate(pixels, fill)  shift by a uniform integer in [-pixels, pixels] along each axis; the
                       pixels moved in are 0 (fill=zeros) or the image mirrored at its edge
                       (fill=reflect: PyTorch's "reflect" padding, the edge row itself not repeated)
    crop(padding, fill)  pad by `padding` and take a random crop of the original size (the same
                       distribution as translate(padding), named as in the CIFAR literature)
    hflip, vflip       mirror left-right / top-bottom with probability 1/2
    hflip(alternate=true)  derandomised flips (airbench): in epoch 1 each image is mirrored with
                       probability 1/2, drawn from the seed and its index alone; in every later epoch
                       it is mirrored exactly when it was not in the epoch before
    cutout(size)       zero a size x size square centred on a uniform pixel (clipped at the edges;
                       DeVries & Taylor 2017)
They apply in the order the spec lists them, before normalisation (so fill=zeros fills black).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnc.compiler.arguments import Option
from cnnc.compiler.backends.pytorch import memory_format_of
from cnnc.training.seeds import seeded_generator

AUGMENT_STREAM = 1  # seeded_generator(seed, epoch, AUGMENT_STREAM); epoch 0 holds the alternate flips' draws

Step = Callable[[Tensor, Tensor], Tensor]  # (batch, its rows of the epoch's table) -> augmented batch


class Augmenter:
    """The training augmentations of one split of `size` images of shape (C, height, width)."""

    def __init__(self, options: Sequence[Option], seed: int, size: int, image_shape: tuple[int, int, int],
                 device: torch.device) -> None:
        self.options = tuple(options)
        self.seed, self.size, self.device = seed, size, device
        _, self.height, self.width = image_shape
        self.steps: list[Step] = [self._step(option) for option in self.options]
        first = seeded_generator(seed, 0, AUGMENT_STREAM)
        # Epoch 1's flips of each alternating hflip, by image (None for the other augmentations).
        self.first_flips = [torch.rand(size, generator=first) < 0.5 if _alternates(option) else None
                            for option in self.options]
        self.epoch = 0
        self.table = torch.zeros(size, 0, dtype=torch.int64, device=device)
        self.columns: list[slice] = []

    def begin_epoch(self, epoch: int) -> None:
        """Draw every image's parameters for `epoch` (epochs count from 1)."""
        generator = seeded_generator(self.seed, epoch, AUGMENT_STREAM)
        drawn = [self._draw(option, generator) if first is None else (first ^ (epoch % 2 == 0)).long()[:, None]
                 for option, first in zip(self.options, self.first_flips, strict=True)]
        self.columns, start = [], 0
        for part in drawn:
            self.columns.append(slice(start, start + part.shape[1]))
            start += part.shape[1]
        self.table = torch.cat(drawn, dim=1).to(self.device)
        self.epoch = epoch

    def __call__(self, x: Tensor, indices: Tensor) -> Tensor:
        """Augment the batch `x` of the split's images `indices` (on x's device) as this epoch says."""
        rows = self.table[indices]
        for step, columns in zip(self.steps, self.columns, strict=True):
            x = step(x, rows[:, columns])
        return x

    def _draw(self, option: Option, generator: torch.Generator) -> Tensor:
        """This epoch's parameters of one augmentation: (size, k) integers on the CPU."""
        def integers(low: int, high: int) -> Tensor:
            return torch.randint(low, high + 1, (self.size, 1), generator=generator)

        if option.name in ("translate", "crop"):
            pixels = _shift(option)
            return torch.cat([integers(-pixels, pixels), integers(-pixels, pixels)], dim=1)
        if option.name in ("hflip", "vflip"):
            return (torch.rand(self.size, 1, generator=generator) < 0.5).long()
        if option.name == "cutout":
            return torch.cat([integers(0, self.height - 1), integers(0, self.width - 1)], dim=1)
        raise ValueError(f"unknown augmentation {option.name}")  # the checker allows no other

    def _step(self, option: Option) -> Step:
        if option.name in ("translate", "crop"):
            pixels, reflect = _shift(option), option.get("fill") == "reflect"
            return lambda x, rows: translate(x, rows[:, 0], rows[:, 1], pixels, reflect)
        if option.name in ("hflip", "vflip"):
            dim = 3 if option.name == "hflip" else 2
            return lambda x, rows: torch.where(rows[:, :1, None, None].bool(), x.flip(dim), x)
        if option.name == "cutout":
            return lambda x, rows: cutout(x, rows[:, 0], rows[:, 1], option["size"])
        raise ValueError(f"unknown augmentation {option.name}")  # the checker allows no other


def _alternates(option: Option) -> bool:
    return option.name == "hflip" and bool(option.get("alternate", False))


def _shift(option: Option) -> int:
    return option["pixels"] if option.name == "translate" else option["padding"]


def translate(x: Tensor, dy: Tensor, dx: Tensor, pixels: int, reflect: bool) -> Tensor:
    """Move image i of x by (dy[i], dx[i]) (|d| <= pixels): down and right for positive d."""
    n, _, height, width = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels), mode="reflect" if reflect else "constant")
    # Output (i, j) reads padded (i + pixels - dy, j + pixels - dx): the image moved by (dy, dx).
    rows = torch.arange(height, device=x.device) + pixels - dy[:, None]  # (N, H)
    cols = torch.arange(width, device=x.device) + pixels - dx[:, None]   # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    moved = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # advanced indexing: (N, H, W, C)
    return moved.permute(0, 3, 1, 2)


def cutout(x: Tensor, centre_rows: Tensor, centre_cols: Tensor, size: int) -> Tensor:
    _, _, height, width = x.shape
    top, left = centre_rows - size // 2, centre_cols - size // 2
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)   # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def test_time_average(model: Callable[[Tensor], Tensor], x: Tensor, views: Sequence[Option]) -> Tensor:
    """The model's outputs averaged over the test-time views of the batch x (the `tta` setting):
    the unshifted views (x, and x mirrored left-right with hflip) share weight 1/2, and the shifted
    views (each unshifted view moved by (+n, +n) and by (-n, -n) pixels, reflect-padded, with
    translate(n)) share the other 1/2; without translate the unshifted views share all of it.
    The order of the views in the setting does not matter."""
    chosen = {view.name: view for view in views}
    unshifted = [x, x.flip(3)] if "hflip" in chosen else [x]
    average = _mean_output(model, unshifted)
    if "translate" not in chosen:
        return average
    pixels = chosen["translate"]["pixels"]
    height, width = x.shape[2:]
    padded = [F.pad(view, (pixels,) * 4, mode="reflect") for view in unshifted]
    # padded[0:H, 0:W] is the view moved by (+pixels, +pixels); padded[2p:2p+H, 2p:2p+W] by (-pixels, -pixels)
    # Copied into x's memory format: convolutions read a strided window of the padded image more slowly.
    shifted = [image[:, :, top:top + height, top:top + width].contiguous(memory_format=memory_format_of(x))
               for image in padded for top in (0, 2 * pixels)]
    return (average + _mean_output(model, shifted)) / 2


def _mean_output(model: Callable[[Tensor], Tensor], views: Sequence[Tensor]) -> Tensor:
    total = model(views[0]).float()  # float32 even under bf16 autocast
    for view in views[1:]:
        total = total + model(view).float()
    return total / len(views)
