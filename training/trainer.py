"""The training loop: epochs of steps, validation, checkpoints, early stopping, interruption.

Exact resume: everything random is either derived from (seed, epoch) (the batch order) or saved in
the checkpoint (torch's generator for dropout, the augmentation generator, numpy's and Python's),
together with the optimizer, the step count that drives the schedule, early stopping and, after an
interruption mid-epoch, the position and running totals within the epoch. On CPU a resumed run
therefore ends with bit-identical weights to an uninterrupted one.
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
from cnnc.training.data import BatchPreparer, TensorSplit, batches, epoch_order, shard
from cnnc.training.distributed import World, gather, max_over_processes, share_buffers, sum_over_processes
from cnnc.training.losses import CrossEntropy, correct
from cnnc.training.optim import LearningRateSchedule, set_learning_rate
from cnnc.training.reporting import Bar, Console, MetricsLog, epoch_line

EVAL_BATCH_SIZE = 1000
# Fault injection for the tests of resume and interruption: "SIGNAL:N" makes the process send
# itself SIGNAL (KILL, INT or TERM) right after its N-th optimizer step.
SIGNAL_AT_STEP_ENV = "CNNC_TEST_SIGNAL_AT_STEP"


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


def rng_state(augment_generator: torch.Generator) -> dict[str, Any]:
    """This process's random state, as plain data (see checkpoint.py)."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    _, keys, position, has_gauss, cached = legacy
    version, python_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": [version, list(python_state), gauss],
        "augment": augment_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], augment_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    augment_generator.set_state(state["augment"])
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
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    loss: CrossEntropy
    preparer: BatchPreparer
    augment_generator: torch.Generator
    train_data: TensorSplit
    validation_data: TensorSplit | None
    config: TrainConfig
    world: World
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    console: Console
    metrics: MetricsLog | None     # rank 0 only
    # Writes a checkpoint (on rank 0): ("last", the training state) or ("best", {}). The session that
    # owns the run's metadata sets it once it exists.
    save: Callable[[str, dict[str, Any]], None] = lambda which, training: None
    position: Position = field(default_factory=Position)
    best: BestTracker = field(default_factory=BestTracker)
    best_state: dict[str, Tensor] | None = None
    totals: EpochTotals | None = None  # of an epoch interrupted mid-way
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: StopRequest | None = None

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
                    self.console.note(f"early stopping after epoch {epoch}: {self.best.metric} has not improved "
                                      f"for {self.best.patience} epochs (best {self.best.best_value:.4f}, "
                                      f"epoch {self.best.best_epoch})")
                    return "stopped early"
                if self.stop.requested:
                    raise Interrupted()
        return "finished"

    def restore_best_if_asked(self) -> int:
        """Load the best epoch's weights when early stopping says so; the epoch the model now holds."""
        if self.best.restore_best and self.best_state is not None and self.best.best_epoch != self.position.epoch:
            self.model.load_state_dict(self.best_state)
            self.console.note(f"restored the weights of epoch {self.best.best_epoch} "
                              f"(best {self.best.metric} {self.best.best_value:.4f})")
            return self.best.best_epoch
        return self.position.epoch

    # --- one epoch ---------------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> dict[str, Any]:
        order = shard(epoch_order(len(self.train_data), self.config.seed, epoch), self.world.rank,
                      self.world.size, pad=True).to(self.device)
        steps = batches(order, self.per_process_batch)
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
        if self.validation_data is not None:
            record["val_loss"], record["val_accuracy"], _ = self.evaluate(self.validation_data)
        record["seconds"] = time.perf_counter() - started
        record["images_per_second"] = examples / train_seconds
        self.position = Position(epoch, 0, self.position.global_step)
        return record

    def _steps(self, epoch: int, steps: list[Tensor], totals: EpochTotals, bar: Bar, started: float) -> None:
        fault = _injected_fault()
        previous_loss: float | None = None
        for step in range(self.position.step_in_epoch, len(steps)):
            self._check(epoch, step, len(steps), previous_loss, totals, started)
            indices = steps[step]
            x = self.preparer(self.train_data.images[indices], train=True)
            labels = self.train_data.labels[indices]
            set_learning_rate(self.optimizer, self.schedule.at(self.position.global_step))
            with self.autocast():
                output = self.train_model(x)
                loss = self.loss(output, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
            self.optimizer.step()
            self.position.global_step += 1
            self.position.step_in_epoch = step + 1
            previous_loss = loss.item()
            right = correct(output.detach(), labels)
            totals.loss_sum += previous_loss * len(labels)
            totals.correct += right
            totals.examples += len(labels)
            if self.console.mode == "text":
                bar.update(totals.loss_sum / totals.examples, totals.correct.item() / totals.examples)
            if fault is not None and self.position.global_step == fault[1]:
                os.kill(os.getpid(), fault[0])
        self._check(epoch, len(steps), len(steps), previous_loss, totals, started, may_stop=False)

    def _check(self, epoch: int, step: int, steps: int, previous_loss: float | None, totals: EpochTotals,
               started: float, may_stop: bool = True) -> None:
        """Before each step: stop if the previous step's loss was not finite, or if asked to (after
        saving a checkpoint at this exact position). All processes agree, in one collective."""
        bad = previous_loss is not None and not math.isfinite(previous_loss)
        asked = may_stop and self.stop is not None and self.stop.requested
        if self.world.distributed:
            flags = max_over_processes(self.world, torch.tensor([float(bad), float(asked)], device=self.device))
            bad_anywhere, asked = bool(flags[0]), bool(flags[1])
        else:
            bad_anywhere = bad
        if bad_anywhere:
            raise NonFiniteLoss(
                f"the training loss became {previous_loss if bad else 'non-finite'} at epoch {epoch}, "
                f"step {step} of {steps}; "
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
        share_buffers(self.world, self.model)
        self.model.eval()
        classes = self.model.graph.num_classes
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        matrix = torch.zeros(classes * classes, dtype=torch.float64, device=self.device)
        indices = shard(torch.arange(len(split)), self.world.rank, self.world.size, pad=False).to(self.device)
        for chunk in batches(indices, EVAL_BATCH_SIZE):
            labels = split.labels[chunk]
            with self.autocast():
                output = self.model(self.preparer(split.images[chunk], train=False))
            sums += torch.stack([self.loss(output, labels, reduction="sum").double(),
                                 correct(output, labels).double(),
                                 torch.tensor(len(chunk), device=self.device).double()])
            if confusion:
                matrix += torch.bincount(labels * classes + output.argmax(1), minlength=classes * classes).double()
        self.model.train()
        loss_sum, right, examples = sum_over_processes(self.world, sums).tolist()
        if confusion:
            matrix = sum_over_processes(self.world, matrix)
        shaped = matrix.view(classes, classes).cpu().numpy().astype(np.int64) if confusion else None
        return loss_sum / max(examples, 1), right / max(examples, 1), shaped

    def _checkpoint_epoch(self, record: dict[str, Any]) -> None:
        if record["val_accuracy"] is not None and self.best.update(record[self.best.metric], record["epoch"]):
            self.best_state = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}
            self.save("best", {})
        self.save("last", self.training_state(None))

    def training_state(self, totals: EpochTotals | None) -> dict[str, Any]:
        """The `training` entry of last.pt, with every process's random state and totals."""
        per_process = gather(self.world, {"rng": rng_state(self.augment_generator),
                                          "totals": totals.to_json() if totals is not None else None})
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"global_step": self.position.global_step},
            "position": dict(self.position.__dict__),
            "best": self.best.to_json(),
            "history": list(self.history),
            "world_size": self.world.size,
            "processes": per_process,
        }

    def resume_from(self, training: dict[str, Any]) -> None:
        """Continue from a checkpoint's `training` entry (see training_state)."""
        if training["world_size"] != self.world.size:
            raise CnncError(f"the run was trained with {training['world_size']} process(es); resume it with the same "
                            f"number (torchrun --nproc_per_node={training['world_size']}), not {self.world.size}")
        self.optimizer.load_state_dict(training["optimizer"])
        self.position = Position(**training["position"])
        self.best = BestTracker(**training["best"])
        self.history = list(training["history"])
        mine = training["processes"][self.world.rank]
        restore_rng_state(mine["rng"], self.augment_generator)
        if mine["totals"] is not None:
            self.totals = EpochTotals.from_json(mine["totals"], self.device)
