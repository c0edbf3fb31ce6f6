"""Data augmentation on batched float tensors in [0, 1], one random draw per image, no Python loop
over images. Random numbers come from one CPU generator (saved in checkpoints), so a seed gives
the same augmentations on any device, and --resume continues the same sequence.

    translate(pixels)  shift by a uniform integer in [-pixels, pixels] along each axis, filling with 0
    crop(padding)      pad by `padding` zeros and take a random crop of the original size (the same
                       distribution as translate(padding), named as in the CIFAR literature)
    hflip, vflip       mirror left-right / top-bottom with probability 1/2
    cutout(size)       zero a size x size square centred on a uniform pixel (clipped at the edges;
                       DeVries & Taylor 2017)
They apply in the order the spec lists them, before normalisation (so translation fills black).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnc.compiler.arguments import Option


class Augmenter:
    def __init__(self, options: Sequence[Option], generator: torch.Generator) -> None:
        self.generator = generator
        self.steps: list[Callable[[Tensor], Tensor]] = [self._step(option) for option in options]

    def __call__(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def _step(self, option: Option) -> Callable[[Tensor], Tensor]:
        if option.name in ("translate", "crop"):
            shift = option["pixels"] if option.name == "translate" else option["padding"]
            return lambda x: self.translate(x, shift)
        if option.name == "hflip":
            return lambda x: self.flip(x, dim=3)
        if option.name == "vflip":
            return lambda x: self.flip(x, dim=2)
        if option.name == "cutout":
            return lambda x: self.cutout(x, option["size"])
        raise ValueError(f"unknown augmentation {option.name}")  # the checker allows no other

    def _integers(self, low: int, high: int, count: int, device: torch.device) -> Tensor:
        """`count` uniform integers in [low, high], drawn on the CPU generator."""
        return torch.randint(low, high + 1, (count,), generator=self.generator).to(device)

    def translate(self, x: Tensor, pixels: int) -> Tensor:
        n, _, height, width = x.shape
        dy = self._integers(-pixels, pixels, n, x.device)
        dx = self._integers(-pixels, pixels, n, x.device)
        padded = F.pad(x, (pixels, pixels, pixels, pixels))
        # Output (i, j) reads padded (i + pixels - dy, j + pixels - dx): the image moved by (dy, dx).
        rows = torch.arange(height, device=x.device) + pixels - dy[:, None]  # (N, H)
        cols = torch.arange(width, device=x.device) + pixels - dx[:, None]   # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        moved = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # advanced indexing: (N, H, W, C)
        return moved.permute(0, 3, 1, 2)

    def flip(self, x: Tensor, dim: int) -> Tensor:
        chosen = torch.rand(len(x), generator=self.generator).to(x.device) < 0.5
        return torch.where(chosen[:, None, None, None], x.flip(dim), x)

    def cutout(self, x: Tensor, size: int) -> Tensor:
        n, _, height, width = x.shape
        top = self._integers(0, height - 1, n, x.device) - size // 2
        left = self._integers(0, width - 1, n, x.device) - size // 2
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)   # (N, H)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (N, W)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(x.dtype)
