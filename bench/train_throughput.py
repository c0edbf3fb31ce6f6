"""Training throughput: cnnc's trainer against the loop a person would write by hand.

    python bench/train_throughput.py                       # every tutorial spec
    python bench/train_throughput.py --specs keras_mnist --rounds 9

For each spec, on the same in-memory training images (the spec's dataset, first --images of them),
the same batch size, optimizer and loss, in the same process, one after another in rotating order
(so that a noisy neighbour hurts every variant alike), it times one pass over the images of:

    cnnc           cnnc's trainer epoch (Trainer._epoch: batch preparation, the lowered module,
                   loss, optimizer, running totals) in cnnc's default memory format (channels-last)
    cnnc NCHW      the same with --no-channels-last
    hand NCHW      a plain nn.Sequential written by hand, in a plain training loop: what a person
                   would write (x.float() / 255, CrossEntropyLoss, torch.optim, loss.item() per step)
    hand NHWC      the same hand-written loop with the model and batches in channels-last

and reports images per second of the fastest round of each (the round least disturbed by other
processes on a shared machine; the medians are printed too) and the ratios cnnc / hand NCHW (cnnc
against the usual script) and cnnc / hand NHWC (cnnc against the same script in cnnc's own memory
format: any gap is cnnc's own overhead). Augmentation is switched off, since the hand-written loop
has none; validation is not run. The hand-written models are checked to compute the same function
as the lowered ones (same weights, same outputs) before timing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_results import machine_description, replace_section  # noqa: E402

from cnnc.compiler.check import check_file  # noqa: E402
from cnnc.training.data import PIXEL_SCALE, batches, epoch_order  # noqa: E402
from cnnc.training.distributed import World  # noqa: E402
from cnnc.training.reporting import Console  # noqa: E402
from cnnc.training.run import Execution, Session  # noqa: E402
from cnnc.training.settings import Overrides  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "train-throughput"


def _max_pool_same_end(kernel: int, stride: int) -> nn.Module:
    """TF 'same' max pooling whose padding falls at the end only: ceil mode computes exactly that."""
    return nn.MaxPool2d(kernel, stride, ceil_mode=True)


# The tutorial specs written by hand, as nn.Sequential, in the order of their parameters.
HAND_WRITTEN: dict[str, Callable[[], nn.Module]] = {
    "keras_mnist": lambda: nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 10)),
    "tf_mnist_5x5": lambda: nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 1000), nn.ReLU(), nn.Linear(1000, 10)),
    "tf_mnist_deep": lambda: nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
        nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.ReLU(), _max_pool_same_end(2, 2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(2048, 625, bias=False), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(625, 10, bias=False)),
    "lenet_selu": lambda: nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.SELU(), nn.MaxPool2d(3, 2), nn.Conv2d(12, 16, 3, padding=1), nn.SELU(),
        nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(576, 256), nn.SELU(), nn.Linear(256, 100), nn.SELU(),
        nn.Linear(100, 10)),
    "lenet_selu_bn": lambda: nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.SELU(), _max_pool_same_end(3, 2),
        nn.Conv2d(12, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SELU(), _max_pool_same_end(3, 2),
        nn.Flatten(), nn.Linear(784, 256, bias=False), nn.BatchNorm1d(256), nn.SELU(),
        nn.Linear(256, 100, bias=False), nn.BatchNorm1d(100), nn.SELU(), nn.Dropout(0.2), nn.Linear(100, 10)),
    "cifar10": lambda: nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(2304, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10)),
    "xo": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2)),
}


def hand_optimizer(parameters, option) -> torch.optim.Optimizer:
    """The torch.optim class a person would pick for the spec's optimizer."""
    if option.name == "sgd":
        return torch.optim.SGD(parameters, lr=option["lr"], momentum=option["momentum"], nesterov=option["nesterov"],
                               weight_decay=option["weight_decay"])
    if option.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=option["lr"], alpha=option["rho"], eps=option["eps"],
                                   momentum=option["momentum"], centered=option["centered"],
                                   weight_decay=option["weight_decay"])
    kind = torch.optim.Adam if option.name == "adam" else torch.optim.AdamW
    return kind(parameters, lr=option["lr"], betas=(option["beta1"], option["beta2"]), eps=option["eps"],
                weight_decay=option["weight_decay"])


def session_for(spec: Path, images: int | None, channels_last: bool, data: str | None,
                test_images: int | None = 1) -> Session:
    """cnnc's session for the spec on its first `images` training images (None: all), without
    augmentation or validation (also used by bench/keras_fit.py)."""
    program = check_file(spec).program
    overrides = Overrides(limit_train=images, limit_test=test_images, data=data)
    execution = Execution("cpu", channels_last, compile=False, bf16=False)
    session = Session.create(program, overrides, execution, World(), Console("quiet"),
                              Path(tempfile.mkdtemp()), str(spec))
    session.trainer.validation_data = None
    session.trainer.preparer.augmenter = None
    return session


def check_same_function(session: Session, hand: nn.Module) -> None:
    """Load the lowered module's weights into the hand-written one, in order; compare outputs."""
    lowered = session.trainer.model
    hand_state = [t for name, t in hand.state_dict().items() if not name.endswith("num_batches_tracked")]
    with torch.no_grad():
        for target, source in zip(hand_state, lowered.state_dict().values(), strict=True):
            target.copy_(source)
    lowered.eval(), hand.eval()
    x = session.trainer.preparer(session.trainer.train_data.images[:8], train=False).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(hand(x), lowered(x), rtol=1e-4, atol=1e-4)
    lowered.train(), hand.train()


class HandLoop:
    """The plain training loop, on the session's data, with its own model and optimizer."""

    def __init__(self, session: Session, model: nn.Module, channels_last: bool) -> None:
        config = session.trainer.config
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.optimizer = hand_optimizer(model.parameters(), config.optimizer)
        self.smoothing = config.loss["label_smoothing"]
        self.data = session.trainer.train_data
        self.batch_size, self.seed, self.epoch = config.batch_size, config.seed, 0

    def epoch_pass(self) -> None:
        self.epoch += 1
        self.model.train()
        running_loss, correct = 0.0, 0
        for indices in batches(epoch_order(len(self.data), self.seed, self.epoch), self.batch_size):
            x = (self.data.images[indices].float() * PIXEL_SCALE).contiguous(memory_format=self.memory_format)
            labels = self.data.labels[indices]
            output = self.model(x)
            loss = F.cross_entropy(output, labels, label_smoothing=self.smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()
            correct += (output.argmax(1) == labels).sum().item()


def measure(spec_name: str, images: int, rounds: int, data: str | None) -> dict[str, list[float]]:
    """Images per second of every variant, one rate per round."""
    spec = ROOT / "specs" / f"{spec_name}.cnn"
    cnnc_cl, cnnc_nchw = session_for(spec, images, True, data), session_for(spec, images, False, data)
    hand_nchw, hand_nhwc = HAND_WRITTEN[spec_name](), HAND_WRITTEN[spec_name]()
    check_same_function(cnnc_nchw, hand_nchw)
    check_same_function(cnnc_nchw, hand_nhwc)
    epochs = {"cnnc": 0, "cnnc NCHW": 0}

    def trainer_pass(name: str, session: Session) -> Callable[[], None]:
        def run() -> None:
            epochs[name] += 1
            session.trainer._epoch(epochs[name])
        return run

    variants = {
        "cnnc": trainer_pass("cnnc", cnnc_cl),
        "cnnc NCHW": trainer_pass("cnnc NCHW", cnnc_nchw),
        "hand NCHW": HandLoop(cnnc_nchw, hand_nchw, channels_last=False).epoch_pass,
        "hand NHWC": HandLoop(cnnc_nchw, hand_nhwc, channels_last=True).epoch_pass,
    }
    count = len(cnnc_cl.splits.train)
    for run in variants.values():  # warm-up: oneDNN primitives, allocator
        run()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            variants[name]()
            rates[name].append(count / (time.perf_counter() - started))
    return rates


def table(results: dict[str, dict[str, float]], images: int, rounds: int, load: tuple[float, float]) -> str:
    lines = [
        "## Training throughput: cnnc against a hand-written loop",
        "",
        f"`python bench/train_throughput.py --images {images} --rounds {rounds} --write`: training images per "
        "second in the fastest of the rounds, each round one pass over the same images per variant in rotating "
        "order (see the script's docstring). *cnnc* is cnnc's trainer in its default memory format, "
        "channels-last; *hand* is a plain nn.Sequential in a plain loop, NCHW as usually written or NHWC as "
        f"cnnc runs. 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after: other jobs shared the "
        "two cores, which is why the fastest round, not the median, is reported.",
        "",
        "| spec | cnnc | cnnc NCHW | hand NCHW | hand NHWC | cnnc / hand NCHW | cnnc / hand NHWC "
        "| channels-last gain (cnnc) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec, r in results.items():
        lines.append(f"| {spec} | {r['cnnc']:,.0f} | {r['cnnc NCHW']:,.0f} | {r['hand NCHW']:,.0f} | "
                     f"{r['hand NHWC']:,.0f} | {r['cnnc'] / r['hand NCHW']:.2f}x | {r['cnnc'] / r['hand NHWC']:.2f}x | "
                     f"{r['cnnc'] / r['cnnc NCHW']:.2f}x |")
    lines += ["", f"Machine: {machine_description()}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", choices=list(HAND_WRITTEN), default=list(HAND_WRITTEN))
    parser.add_argument("--images", type=int, default=2048, help="training images per pass (default: 2048)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default=None, help="the dataset's directory (default: ../shared/data/<name>)")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    results = {}
    load_before = os.getloadavg()[0]
    for spec in args.specs:
        with contextlib.redirect_stdout(sys.stderr):
            rates = measure(spec, args.images, args.rounds, args.data)
        results[spec] = {name: max(values) for name, values in rates.items()}
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for label, r in (("fastest", results[spec]), ("median", medians)):
            print(f"{spec} ({label}): " + ", ".join(f"{name} {rate:,.0f}/s" for name, rate in r.items())
                  + f"; cnnc / hand NCHW {r['cnnc'] / r['hand NCHW']:.2f}x, "
                  f"cnnc / hand NHWC {r['cnnc'] / r['hand NHWC']:.2f}x", flush=True)
    text = table(results, args.images, args.rounds, (load_before, os.getloadavg()[0]))
    print(text)
    if args.write:
        replace_section(ROOT / "bench" / "RESULTS.md", SECTION, text)


if __name__ == "__main__":
    main()
