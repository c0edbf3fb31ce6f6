"""The training loop: epochs of steps, validation, checkpoints, early stopping, interruption.

Exact resume: everything random is either derived from (seed, epoch) (the batch order and the
augmentations) or saved in the checkpoint (torch's generator for dropout, numpy's and Python's),
together with the optimizer, the step count that drives the schedule and the weight average, the
live weights when a weight average (ema, lookahead) is what the checkpoint's model holds, early
stopping and, after an interruption mid-epoch, the position and running totals within the epoch.
On CPU a resumed run therefore ends with bit-identical weights to an uninterrupted one.

Evaluation (validation, test) uses `evaluated_model()`: the weight average's module when there is
one, else the trained module; with `tta`, its outputs averaged over the test-time views. It runs the
module's `folded()` forward pass: batch norms folded into the convolutions before them, as inference
engines do, and on a CPU 2x2 max pools as maxima of pairs, so the metrics equal those of `forward` up
to float rounding.

Synchronisation: reading a value of the device on the host (a loss, to check it and add it up) waits
for the device to finish all the work queued so far. On CUDA the steps' losses therefore stay on the
device and are read together every CUDA_SYNC_EVERY steps, at the end of the epoch and before a
checkpoint mid-epoch; the totals and the non-finite-loss check come out exactly as if each loss had
been read at once (the same values, added in the same order; the error names the step whose loss
first went bad), only up to CUDA_SYNC_EVERY - 1 steps later. On CPU, where a read costs nothing,
every step is read at once. Under torchrun the processes agree on stopping where they read.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from cnnc.compiler.backends.pytorch import CnncModule
from cnnc.compiler.train_config import TrainConfig
from cnnc.errors import CnncError
from cnnc.training.augment import test_time_average
from cnnc.training.averaging import WeightAverage
from cnnc.training.data import BatchPreparer, TensorSplit, batches, epoch_order, even_batches, shard
from cnnc.training.distributed import World, gather, max_over_processes, share_buffers, sum_over_processes
from cnnc.training.losses import CrossEntropy, correct
from cnnc.training.optim import LearningRateSchedule, Optimizer, set_learning_rate
from cnnc.training.reporting import Bar, Console, MetricsLog, epoch_line

# Images per forward pass in evaluation, at most (see even_batches). On a CPU a batch whose activations
# stay in the caches is the fastest: 256 evaluated cifar10_fast, mnist_fast and keras_mnist 1.5-2x
# faster than 1000 on two cores (a sweep of 128-1000, see bench/CIFAR10_FAST.md); a GPU wants large batches.
CPU_EVAL_BATCH_SIZE = 256
CUDA_EVAL_BATCH_SIZE = 1024
# Fault injection for the tests of resume and interruption: "SIGNAL:N" makes the process send
# itself SIGNAL (KILL, INT or TERM) right after its N-th optimizer step.
SIGNAL_AT_STEP_ENV = "CNNC_TEST_SIGNAL_AT_STEP"
# Steps whose losses are read together on CUDA (see the top): a synchronisation lets the device's
# queue run dry, which costs far less than a step once it happens this rarely.
CUDA_SYNC_EVERY = 16
# For the tests: read the losses every N steps on any device, so that CPU runs cover the CUDA path.
SYNC_EVERY_ENV = "CNNC_TEST_SYNC_EVERY"


def eval_batch_size(device: torch.device) -> int:
    return CPU_EVAL_BATCH_SIZE if device.type == "cpu" else CUDA_EVAL_BATCH_SIZE


def sync_interval(device: torch.device) -> int:
    """How many steps' losses are read at once on `device` (see the top)."""
    forced = os.environ.get(SYNC_EVERY_ENV)
    if forced:
        return int(forced)
    return 1 if device.type == "cpu" else CUDA_SYNC_EVERY


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped training; a checkpoint was saved."""


class NonFiniteLoss(CnncError):
    """The loss became NaN or infinite: the run stops, its last checkpoint untouched."""


# --- pieces of state -------------------------------------------------------------------------------

@dataclass
class EpochTotals:
    """Running sums of the epoch under way, on this process (the right answers stay on the device,
    to spare a synchronisation per step)."""

    correct: Tensor
    loss_sum: float = 0.0
    examples: int = 0
    seconds: float = 0.0

    @staticmethod
    def zero(device: torch.device) -> EpochTotals:
        return EpochTotals(torch.zeros((), dtype=torch.int64, device=device))

    def to_json(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "correct": int(self.correct.item()), "examples": self.examples,
                "seconds": self.seconds}

    @staticmethod
    def from_json(data: dict[str, Any], device: torch.device) -> EpochTotals:
        return EpochTotals(torch.tensor(data["correct"], dtype=torch.int64, device=device), data["loss_sum"],
                           data["examples"], data["seconds"])


@dataclass
class PendingLosses:
    """The losses of the steps not read on the host yet, still on the device, with their batch sizes."""

    first_step: int  # the step (in the epoch) of losses[0]
    losses: list[Tensor] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def add(self, loss: Tensor, size: int) -> None:
        self.losses.append(loss.detach())
        self.sizes.append(size)

    def read(self, totals: EpochTotals) -> tuple[int, float] | None:
        """Add the losses to `totals` (in step order, as floats, exactly as one read per step would)
        and forget them: one synchronisation. The step and value of the first non-finite one, if any."""
        values: list[float] = torch.stack(self.losses).tolist() if self.losses else []
        bad = None
        for offset, (value, size) in enumerate(zip(values, self.sizes)):
            totals.loss_sum += value * size
            if bad is None and not math.isfinite(value):
                bad = (self.first_step + offset, value)
        self.first_step += len(values)
        self.losses, self.sizes = [], []
        return bad


@dataclass
class BestTracker:
    """The best validation metric so far and, with early stopping, the epochs since it improved."""

    metric: str = "val_accuracy"
    min_delta: float = 0.0
    patience: int | None = None  # None: no early stopping
    restore_best: bool = False
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    @staticmethod
    def of(config: TrainConfig) -> BestTracker:
        stopping = config.early_stopping
        if stopping is None:
            return BestTracker()
        return BestTracker(stopping["metric"], stopping["min_delta"], stopping["patience"], stopping["restore_best"])

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's metric; whether it is the new best."""
        sign = 1 if self.metric == "val_accuracy" else -1
        improved = self.best_value is None or sign * (value - self.best_value) > self.min_delta
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Position:
    epoch: int = 0          # epochs completed
    step_in_epoch: int = 0  # steps done of the next epoch
    global_step: int = 0    # optimizer steps so far


def rng_state() -> dict[str, Any]:
    """This process's random state, as plain data (see checkpoint.py)."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    _, keys, position, has_gauss, cached = legacy
    version, python_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": [version, list(python_state), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step;
    a second Ctrl-C interrupts at once."""

    def __init__(self, console: Console) -> None:
        self.requested = False
        self.console = console
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: object) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if number == signal.SIGINT:
            self.console.note("SIGINT (Ctrl-C): stopping after this step and saving a checkpoint "
                              "(Ctrl-C again to quit at once, without one)")
        else:
            self.console.note(f"{signal.Signals(number).name}: stopping after this step and saving a checkpoint")


def _injected_fault() -> tuple[signal.Signals, int] | None:
    value = os.environ.get(SIGNAL_AT_STEP_ENV)
    if not value:
        return None
    name, step = value.split(":")
    return signal.Signals[f"SIG{name}"], int(step)


# --- the loop -------------------------------------------------------------------------------------

@dataclass
class Trainer:
    model: CnncModule              # the module itself: evaluated, checkpointed
    train_model: nn.Module         # what training calls: the module, maybe wrapped in DDP and compiled
    optimizer: Optimizer
    schedule: LearningRateSchedule
    loss: CrossEntropy
    preparer: BatchPreparer
    train_data: TensorSplit
    validation_data: TensorSplit | None
    config: TrainConfig
    world: World
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    console: Console
    metrics: MetricsLog | None     # rank 0 only
    average: WeightAverage | None = None  # ema or lookahead: the weights evaluated
    # Writes a checkpoint (on rank 0): ("last", the training state) or ("best", {}). The session that
    # owns the run's metadata sets it once it exists.
    save: Callable[[str, dict[str, Any]], None] = lambda which, training: None
    position: Position = field(default_factory=Position)
    best: BestTracker = field(default_factory=BestTracker)
    best_state: dict[str, Tensor] | None = None
    totals: EpochTotals | None = None  # of an epoch interrupted mid-way
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: StopRequest | None = None
    settled: bool = False  # the evaluated weights are final (restored best): no longer derived from training
    sync_every: int = 1  # steps whose losses are read at once (see the top)

    @property
    def per_process_batch(self) -> int:
        return self.config.batch_size // self.world.size

    def fit(self) -> str:
        """Train the remaining epochs: "finished", "stopped early"; raises Interrupted or NonFiniteLoss."""
        if self.best.should_stop:  # resumed after early stopping, before the test
            return "stopped early"
        started = time.perf_counter()
        with StopRequest(self.console) as self.stop:
            for epoch in range(self.position.epoch + 1, self.config.epochs + 1):
                record = self._epoch(epoch)
                self.history.append(record)
                if self.metrics is not None:
                    self.metrics.append(record)
                self.console.event("epoch", epoch_line(record, self.config.epochs, time.perf_counter() - started),
                                   **record)
                self._checkpoint_epoch(record)
                if self.best.should_stop:
                    counted = "epochs" if self.config.eval_every == 1 else "evaluations"
                    self.console.note(f"early stopping after epoch {epoch}: {self.best.metric} has not improved "
                                      f"for {self.best.patience} {counted} (best {self.best.best_value:.4f}, "
                                      f"epoch {self.best.best_epoch})")
                    return "stopped early"
                if self.stop.requested:
                    raise Interrupted()
        return "finished"

    def evaluated_model(self) -> CnncModule:
        """The module evaluation uses, and checkpoints hold as `model` (see the top of the module)."""
        if self.average is None:
            return self.model
        if not self.settled:
            self.average.refresh()
        return cast(CnncModule, self.average.module)

    def restore_best_if_asked(self) -> int:
        """Load the best epoch's weights when early stopping says so; the epoch the model now holds."""
        if self.best.restore_best and self.best_state is not None and self.best.best_epoch != self.position.epoch:
            self.evaluated_model().load_state_dict(self.best_state)
            self.settled = True
            self.console.note(f"restored the weights of epoch {self.best.best_epoch} "
                              f"(best {self.best.metric} {self.best.best_value:.4f})")
            return self.best.best_epoch
        return self.position.epoch

    # --- one epoch ---------------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> dict[str, Any]:
        order = shard(epoch_order(len(self.train_data), self.config.seed, epoch), self.world.rank,
                      self.world.size, pad=True).to(self.device)
        steps = batches(order, self.per_process_batch)
        if self.preparer.augmenter is not None:
            self.preparer.augmenter.begin_epoch(epoch)
        totals = self.totals or EpochTotals.zero(self.device)
        self.totals = None
        bar = self.console.bar(len(steps), self.position.step_in_epoch, f"epoch {epoch}/{self.config.epochs}")
        self.model.train()
        started = time.perf_counter() - totals.seconds
        try:
            self._steps(epoch, steps, totals, bar, started)
        finally:
            bar.close()
        train_seconds = time.perf_counter() - started
        summed = sum_over_processes(self.world, torch.stack([
            torch.tensor(totals.loss_sum, dtype=torch.float64, device=self.device), totals.correct.double(),
            torch.tensor(float(totals.examples), dtype=torch.float64, device=self.device)]))
        loss_sum, right, examples = summed.tolist()
        record = {"epoch": epoch, "train_loss": loss_sum / examples, "train_accuracy": right / examples,
                  "val_loss": None, "val_accuracy": None, "lr": self.schedule.at(self.position.global_step - 1)}
        if self.validation_data is not None and (epoch % self.config.eval_every == 0 or epoch == self.config.epochs):
            record["val_loss"], record["val_accuracy"], _ = self.evaluate(self.validation_data)
        record["seconds"] = time.perf_counter() - started
        record["images_per_second"] = examples / train_seconds
        self.position = Position(epoch, 0, self.position.global_step)
        return record

    def _steps(self, epoch: int, steps: list[Tensor], totals: EpochTotals, bar: Bar, started: float) -> None:
        fault = _injected_fault()
        pending = PendingLosses(self.position.step_in_epoch)
        for step in range(self.position.step_in_epoch, len(steps)):
            self._check(epoch, step, len(steps), pending, totals, bar, started)
            indices = steps[step]
            x = self.preparer(self.train_data.images[indices], train=True, indices=indices)
            labels = self.train_data.labels[indices]
            set_learning_rate(self.optimizer, self.schedule.at(self.position.global_step))
            # Gradients are dropped before the forward pass: under CUDA graphs (--cuda-graphs) the last
            # step's gradients live in memory that the next replay reuses.
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                output = self.train_model(x)
                loss = self.loss(output, labels)
            loss.backward()
            if self.config.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
            self.optimizer.step()
            self.position.global_step += 1
            if self.average is not None:
                self.average.after_step(self.position.global_step)
            self.position.step_in_epoch = step + 1
            pending.add(loss, len(labels))
            totals.correct += correct(output.detach(), labels)
            totals.examples += len(labels)
            if fault is not None and self.position.global_step == fault[1]:
                os.kill(os.getpid(), fault[0])
        self._check(epoch, len(steps), len(steps), pending, totals, bar, started, may_stop=False)

    def _check(self, epoch: int, step: int, steps: int, pending: PendingLosses, totals: EpochTotals, bar: Bar,
               started: float, may_stop: bool = True) -> None:
        """Before each step: stop if a loss was not finite, or if asked to (after saving a checkpoint at
        this exact position). Losses are read every sync_every steps (and at the end, and before stopping);
        under torchrun all processes agree there, in one collective, and only there."""
        # Nothing pending: the first step of this loop (every process reaches it at the same step).
        due = not may_stop or not pending.losses or len(pending.losses) >= self.sync_every
        asked = may_stop and self.stop is not None and self.stop.requested
        if not (due or (asked and not self.world.distributed)):
            return
        read_any = bool(pending.losses)
        bad = pending.read(totals)
        if read_any and bar.live:
            bar.update(step, totals.loss_sum / totals.examples, totals.correct.item() / totals.examples)
        first_bad = bad[0] if bad is not None else math.inf
        if self.world.distributed:
            flags = max_over_processes(self.world, torch.tensor([float(asked), -first_bad], device=self.device))
            asked, first_bad = bool(flags[0]), -float(flags[1])
        if first_bad != math.inf:
            value = bad[1] if bad is not None and bad[0] == first_bad else "non-finite"
            raise NonFiniteLoss(
                f"the training loss became {value} at epoch {epoch}, step {int(first_bad) + 1} of {steps}; "
                f"training stopped. {self._last_good_checkpoint()} Try a lower learning rate "
                f"(now {self.config.optimizer['lr']}) or clip_grad in the train section.")
        if asked:
            totals.seconds = time.perf_counter() - started
            self.position.step_in_epoch = step
            self.save("last", self.training_state(totals))
            raise Interrupted()

    def _last_good_checkpoint(self) -> str:
        if self.position.epoch == 0:
            return "No checkpoint was written: it happened in the first epoch."
        return f"The last good checkpoint (after epoch {self.position.epoch}) is kept."

    # --- evaluation and checkpoints ------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, split: TensorSplit, confusion: bool = False) -> tuple[float, float, np.ndarray | None]:
        """(mean loss, accuracy, confusion matrix if asked) of the module in eval mode, over all processes."""
        model = self.evaluated_model()
        share_buffers(self.world, model)
        model.eval()
        forward = model.folded()
        classes = self.model.graph.num_classes
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        matrix = torch.zeros(classes * classes, dtype=torch.float64, device=self.device)
        indices = shard(torch.arange(len(split)), self.world.rank, self.world.size, pad=False).to(self.device)
        for chunk in even_batches(indices, eval_batch_size(self.device)):
            labels = split.labels[chunk]
            with self.autocast():
                x = self.preparer(split.images[chunk], train=False)
                output = test_time_average(forward, x, self.config.tta) if self.config.tta else forward(x)
            sums += torch.stack([self.loss(output, labels, reduction="sum").double(),
                                 correct(output, labels).double(),
                                 torch.tensor(len(chunk), device=self.device).double()])
            if confusion:
                matrix += torch.bincount(labels * classes + output.argmax(1), minlength=classes * classes).double()
        model.train()
        loss_sum, right, examples = sum_over_processes(self.world, sums).tolist()
        if confusion:
            matrix = sum_over_processes(self.world, matrix)
        shaped = matrix.view(classes, classes).cpu().numpy().astype(np.int64) if confusion else None
        return loss_sum / max(examples, 1), right / max(examples, 1), shaped

    def _checkpoint_epoch(self, record: dict[str, Any]) -> None:
        if record["val_accuracy"] is not None and self.best.update(record[self.best.metric], record["epoch"]):
            self.best_state = {name: tensor.detach().clone()
                               for name, tensor in self.evaluated_model().state_dict().items()}
            self.save("best", {})
        self.save("last", self.training_state(None))

    def training_state(self, totals: EpochTotals | None) -> dict[str, Any]:
        """The `training` entry of last.pt, with every process's random state and totals."""
        per_process = gather(self.world, {"rng": rng_state(),
                                          "totals": totals.to_json() if totals is not None else None})
        averaged = {} if self.average is None else {"weights": {
            "live": {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.state_dict().items()},
            **self.average.state()}}
        return {
            **averaged,
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"global_step": self.position.global_step},
            "position": dict(self.position.__dict__),
            "best": self.best.to_json(),
            "history": list(self.history),
            "world_size": self.world.size,
            "processes": per_process,
        }

    def resume_from(self, training: dict[str, Any], evaluated: dict[str, Tensor]) -> None:
        """Continue from a checkpoint's `training` entry (see training_state) and `model` (`evaluated`)."""
        if training["world_size"] != self.world.size:
            raise CnncError(f"the run was trained with {training['world_size']} process(es); resume it with the same "
                            f"number (torchrun --nproc_per_node={training['world_size']}), not {self.world.size}")
        if self.average is not None:
            self.model.load_state_dict(training["weights"]["live"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.position = Position(**training["position"])
        if self.average is not None:
            self.average.load_state(training["weights"], evaluated, self.position.global_step)
        self.best = BestTracker(**training["best"])
        self.history = list(training["history"])
        mine = training["processes"][self.world.rank]
        restore_rng_state(mine["rng"])
        if mine["totals"] is not None:
            self.totals = EpochTotals.from_json(mine["totals"], self.device)
