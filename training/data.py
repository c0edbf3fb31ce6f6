"""Data for training: the splits, held in memory as tensors, and batches prepared on the device.

Images stay uint8 until a batch is taken; a batch is scaled to [0, 1] (x * float32(1/255), the
runtime's exact operation), augmented (training only), normalised, and put in the model's memory
format. Batch order is a seeded permutation per epoch, so it is the same after --resume without
any state; under torchrun each process takes every world_size-th example of it (padded by
repeating the first ones so that every process runs the same number of steps, as PyTorch's
DistributedSampler does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnc import constants
from cnnc.compiler.ir import Graph
from cnnc.compiler.train_config import TrainConfig
from cnnc.datasets import Dataset, load_dataset, split_validation
from cnnc.errors import CnncError
from cnnc.training.augment import Augmenter
from cnnc.training.seeds import seeded_generator
from cnnc.training.settings import PATH_DATASETS, Overrides

PIXEL_SCALE = float(np.float32(constants.PIXEL_SCALE))  # the float32 value the batches are multiplied by


@dataclass(frozen=True)
class Splits:
    train: Dataset
    validation: Dataset | None
    test: Dataset


# How a missing-files message tells a `cnnc train` user to download (it downloads unless told not to).
DOWNLOAD_HINT = "run cnnc train without --no-download"


def load_splits(config: TrainConfig, overrides: Overrides, spec_dir: Path, graph: Graph, progress: bool,
                download: bool = False) -> Splits:
    """The train (less the validation fraction), validation and test splits, limited as asked;
    `download` fetches a standard dataset's missing files first."""
    name, data_dir, path = _where(config, overrides, spec_dir)
    train = load_dataset(name, "train", data_dir, path=path, progress=progress, download=download,
                         download_hint=DOWNLOAD_HINT)
    test = load_dataset(name, "test", data_dir, path=path, progress=progress, download=download,
                        download_hint=DOWNLOAD_HINT)
    _check_fits(graph, train)
    train, validation = split_validation(train.subset(overrides.limit_train), config.validation, config.seed)
    return Splits(train, validation, test.subset(overrides.limit_test))


def _where(config: TrainConfig, overrides: Overrides, spec_dir: Path) -> tuple[str, str | None, str | None]:
    """(dataset name, data directory, path of a folder/npz dataset); a path in the spec is
    relative to the spec's directory, --data replaces it."""
    assert config.dataset is not None  # effective_config fills in the dataset
    name = config.dataset.name
    if name not in PATH_DATASETS:
        return name, overrides.data, None
    if overrides.data is not None:
        return name, None, overrides.data
    spec_path = config.dataset.get("path")
    if spec_path is None:
        raise CnncError(f"the {name} dataset needs a path: give --data PATH")
    return name, None, str(spec_dir / spec_path)


def _check_fits(graph: Graph, data: Dataset) -> None:
    shape = "x".join(map(str, graph.input.shape))
    if data.image_shape != graph.input.shape:
        raise CnncError(f"model '{graph.name}' takes {shape} images, but {data.name} has "
                        f"{'x'.join(map(str, data.image_shape))} images")
    if graph.num_classes != len(data.classes):
        raise CnncError(f"model '{graph.name}' has {graph.num_classes} outputs, but {data.name} has "
                        f"{len(data.classes)} classes")


@dataclass(frozen=True)
class Normalization:
    """(x - mean) / std per channel after scaling to [0, 1]; one value applies to every channel."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @staticmethod
    def of(config: TrainConfig) -> Normalization:
        if config.normalize is None:
            return Normalization()
        # the checker has made sure that each has one value or one per channel
        return Normalization(tuple(config.normalize["mean"]), tuple(config.normalize["std"]))

    def to_json(self) -> dict[str, object]:
        """As the runtime's preprocessing metadata reads it."""
        return {"scale": PIXEL_SCALE, "mean": list(self.mean), "std": list(self.std)}


class BatchPreparer:
    """uint8 batches -> float batches ready for the model, as described at the top."""

    def __init__(self, normalization: Normalization, device: torch.device, channels_last: bool,
                 augmenter: Augmenter | None) -> None:
        self.mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(normalization.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.identity = normalization == Normalization()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augmenter = augmenter

    def __call__(self, images: Tensor, train: bool, indices: Tensor | None = None) -> Tensor:
        """`indices`, the images' places in the training split, choose their augmentation (training only)."""
        x = images.to(torch.float32) * PIXEL_SCALE
        if train and self.augmenter is not None:
            assert indices is not None  # the trainer passes them with every training batch
            x = self.augmenter(x, indices)
        if not self.identity:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


@dataclass(frozen=True)
class TensorSplit:
    """One split on the device."""

    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)

    @staticmethod
    def of(data: Dataset, device: torch.device) -> TensorSplit:
        # torch may not share a read-only array (an npz file's, say): such arrays are copied
        images, labels = (array if array.flags.writeable else array.copy() for array in (data.images, data.labels))
        return TensorSplit(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device))

    def __len__(self) -> int:
        return len(self.labels)


def epoch_order(size: int, seed: int, epoch: int) -> Tensor:
    """The seeded permutation of an epoch (epochs count from 1)."""
    return torch.randperm(size, generator=seeded_generator(seed, epoch))


def shard(order: Tensor, rank: int, world_size: int, pad: bool) -> Tensor:
    """This process's share of `order`; with `pad`, all shares are equally long (for training)."""
    if world_size == 1:
        return order
    if pad:
        total = -(-len(order) // world_size) * world_size
        order = order.repeat(-(-total // len(order)))[:total]
    return order[rank::world_size]


def batches(indices: Tensor, batch_size: int) -> list[Tensor]:
    return list(torch.split(indices, batch_size))


def even_batches(indices: Tensor, largest: int) -> list[Tensor]:
    """`indices` in the fewest batches of at most `largest`, whose sizes differ by one at most: the
    kernels a forward pass prepares for a batch shape the first time it sees it (oneDNN's primitives,
    0.1 s for mnist_fast) are then not prepared again for a short last batch."""
    return list(torch.tensor_split(indices, max(-(-len(indices) // largest), 1)))
