"""`init=whiten`: a conv's weight computed from the training images when a new run starts.

For each live conv with init=whiten (the checker has made sure it reads the model's input, with
groups 1 and dilation 1): the first `images` images of the training split (all of them if it holds
fewer), scaled and normalised as the model receives them and not augmented, give every kh x kw patch
(stride 1, no padding). The covariance of those patches (centred, divided by their count; accumulated
in float64) gives the weight through compiler.backends.weights.whitening_weights. The bias keeps its
initial value (zeros unless bias_init says otherwise). A resumed run never recomputes it: its weights
come from the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cnnc.compiler.backends.pytorch import CnncModule
from cnnc.compiler.backends.weights import whitening_weights
from cnnc.compiler.ir import Node
from cnnc.compiler.ops.initializers import WHITEN
from cnnc.compiler.passes import prune
from cnnc.training.data import BatchPreparer, Normalization

CHUNK = 256  # images per step of the accumulation: a few MB of float64 patches at CIFAR size


def whitened_layers(model: CnncModule) -> list[Node]:
    return [node for node in prune(model.graph).nodes
            if node.op == "conv" and node.attrs["init"].name == WHITEN]


def whiten(model: CnncModule, images: np.ndarray, normalization: Normalization, device: torch.device) -> list[str]:
    """Set the weight of every init=whiten conv of `model` from `images` (uint8 N, C, H, W, the training
    split); a note per layer saying what it was computed from."""
    preparer = BatchPreparer(normalization, device, channels_last=False, augmenter=None)
    notes = []
    parameters = dict(model.named_parameters())
    for node in whitened_layers(model):
        init, kernel = node.attrs["init"], node.attrs["kernel"]
        count = min(init["images"], len(images))
        covariance = patch_covariance(images[:count], kernel, preparer, device)
        weight = parameters[f"{node.name}.weight"]
        values = whitening_weights(covariance, tuple(weight.shape), init["eps"])
        with torch.no_grad():
            weight.copy_(torch.from_numpy(values))
        notes.append(f"init=whiten: {node.name} from the {kernel[0]}x{kernel[1]} patches of {count:,} training images")
    return notes


def patch_covariance(images: np.ndarray, kernel: tuple[int, int], preparer: BatchPreparer,
                     device: torch.device) -> np.ndarray:
    """The covariance of the flattened (C, kh, kw) patches of the prepared `images`."""
    height, width = kernel
    total: Tensor | None = None
    outer: Tensor | None = None
    count = 0
    for start in range(0, len(images), CHUNK):
        x = preparer(torch.from_numpy(np.ascontiguousarray(images[start:start + CHUNK])).to(device), train=False)
        windows = x.unfold(2, height, 1).unfold(3, width, 1)  # (N, C, H', W', kh, kw)
        patches = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * height * width).double()
        chunk_total, chunk_outer = patches.sum(0), patches.T @ patches
        total = chunk_total if total is None else total + chunk_total
        outer = chunk_outer if outer is None else outer + chunk_outer
        count += len(patches)
    assert total is not None and outer is not None  # a training split is never empty
    mean = total / count
    return (outer / count - torch.outer(mean, mean)).cpu().numpy()
