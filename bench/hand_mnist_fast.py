"""specs/mnist_fast.cnn's one epoch as a hand-written PyTorch script, the way people write one.

    python bench/hand_mnist_fast.py --data DIR      # DIR holds MNIST's four IDX files (.gz or not)
    python bench/hand_mnist_fast.py --data DIR --limit-train 256 --limit-test 100   # a quick try

The same network (39,418 parameters), optimiser (Adam, one-cycle to 0.02), loss (label smoothing 0.1),
batch (128) and epoch as the spec, written as the PyTorch tutorials write it: an nn.Sequential in NCHW,
torch.optim, a plain loop, then the test set under no_grad in batches of 1000. No plots, checkpoints
or run files. bench/run_overhead.py --hand-written runs it beside `cnnc train`, to show what any
PyTorch program pays outside its training steps on the same machine. Prints one JSON line:
{"steps_seconds", "test_accuracy"}; steps_seconds is timed around the training loop alone, as cnnc's
trainer times its steps.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

BATCH = 128
MEAN, STD = 0.1307, 0.3081  # MNIST's training pixels, as the PyTorch MNIST example normalises them


def read_idx(directory: Path, name: str, header: int) -> np.ndarray:
    path = directory / name
    data = path.read_bytes() if path.exists() else gzip.decompress((directory / f"{name}.gz").read_bytes())
    return np.frombuffer(data, np.uint8, offset=header)


def load(directory: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(directory, f"{prefix}-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28)
    labels = read_idx(directory, f"{prefix}-labels-idx1-ubyte", 8)
    x = (torch.from_numpy(images.astype(np.float32)) / 255 - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))


def network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Flatten(), nn.Linear(1600, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the directory of MNIST's IDX files")
    parser.add_argument("--limit-train", type=int, help="train on the first N images only")
    parser.add_argument("--limit-test", type=int, help="test on the first N images only")
    args = parser.parse_args()
    torch.manual_seed(0)
    train_x, train_y = (part[:args.limit_train] for part in load(args.data, "train"))
    test_x, test_y = (part[:args.limit_test] for part in load(args.data, "t10k"))
    model = network()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    steps = math.ceil(len(train_x) / BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=steps, pct_start=0.2)
    loss_function = nn.CrossEntropyLoss(label_smoothing=0.1)

    started = time.perf_counter()
    model.train()
    for batch in torch.randperm(len(train_x)).split(BATCH):
        optimizer.zero_grad()
        loss_function(model(train_x[batch]), train_y[batch]).backward()
        optimizer.step()
        schedule.step()
    steps_seconds = time.perf_counter() - started

    model.eval()
    right = 0
    with torch.no_grad():
        for x, y in zip(test_x.split(1000), test_y.split(1000)):
            right += int((model(x).argmax(1) == y).sum())
    print(json.dumps({"steps_seconds": steps_seconds, "test_accuracy": right / len(test_x)}))


if __name__ == "__main__":
    main()
