"""A training run, from the command line's arguments to a complete run directory.

Run directory (rank 0 writes it):
    spec/<spec file> and every included file (relative to the spec), spec/<model>.ir (the checked IR)
    settings.json          what exactly ran: the effective train settings, the command-line overrides,
                           device and memory format, dataset sizes, versions, the command line
    metrics.jsonl          one object per epoch (epoch, train_loss, train_accuracy, val_loss,
                           val_accuracy, lr, seconds, images_per_second), then one with test_loss,
                           test_accuracy, test_examples, model_epoch (whose weights were tested)
    last.pt, best.pt       checkpoints (see checkpoint.py)
    curves.png             loss and accuracy per epoch
    confusion_matrix.png, confusion_matrix.json   on the test set
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

import cnnc
from cnnc.compiler.backends.pytorch import CnncModule, build_module
from cnnc.compiler.backends.weights import parameter_roles
from cnnc.compiler.check import load_program
from cnnc.compiler.ir import Program
from cnnc.compiler.passes import final_softmax, with_outputs
from cnnc.compiler.train_config import TrainConfig
from cnnc.errors import CnncError, UsageError
from cnnc.files import check_writable, remove_stale_temporaries
from cnnc.training.augment import Augmenter
from cnnc.training.averaging import weight_average
from cnnc.training.checkpoint import BEST, LAST, Checkpoint, load_checkpoint, save_checkpoint
from cnnc.training.data import BatchPreparer, Normalization, Splits, TensorSplit, load_splits
from cnnc.training.distributed import World, gather, join_world, leave_world
from cnnc.training.losses import CrossEntropy
from cnnc.training.optim import LearningRateSchedule, build_optimizer
from cnnc.training.plotter import Plots
from cnnc.training.reporting import (
    CONFUSION_JSON,
    CONFUSION_PNG,
    CURVES,
    METRICS,
    Console,
    MetricsLog,
)
from cnnc.training.settings import Overrides, config_to_json, effective_config
from cnnc.training.trainer import BestTracker, Interrupted, Trainer, sync_interval
from cnnc.training.whiten import whiten

EXIT_INTERRUPTED = 130
SETTINGS = "settings.json"


@dataclass(frozen=True)
class Execution:
    """How the run executes (not what it learns): kept in settings.json and reused by --resume."""

    device: str  # "cpu" or "cuda"
    channels_last: bool
    compile: bool
    bf16: bool
    cuda_graphs: bool = False  # torch.compile's mode reduce-overhead (absent from the settings of older runs)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrainRequest:
    """What `cnnc train` is asked for: a new run of `spec`, or `resume` of a run directory."""

    spec: str | None = None
    resume: str | None = None
    out: str | None = None
    overrides: Overrides = Overrides()  # with `resume`, only `data` may be given
    device: str = "auto"                # auto, cpu or cuda
    channels_last: bool | None = None   # None: on
    compile: bool = False
    bf16: bool = False
    cuda_graphs: bool = False           # implies compile
    mode: str = "text"                  # text, quiet or json
    download: bool = True               # fetch a standard dataset's missing files


def train(request: TrainRequest, plots: Plots | None = None) -> int:
    """Run (or resume) a training run; the exit code. `plots` draws the plots (by default here, at the end)."""
    device_type, device_note = resolve_device(request.device)
    world = join_world(device_type)
    try:
        return _run_session(request, device_type, device_note, world, plots)
    finally:
        leave_world(world)


def _run_session(request: TrainRequest, device_type: str, device_note: str | None, world: World,
                 plots: Plots | None) -> int:
    """The run itself, in its own frame: once it returns, nothing of the session (DistributedDataParallel
    holds the process group) outlives it, so that leave_world can free it before destroying the group."""
    console = Console(request.mode, enabled=world.is_main)
    if request.resume is not None:
        session = _resume(request, device_type, world, console)
    else:
        session = _start(request, device_type, world, console)
    if session is None:
        return 0
    if device_note:
        console.note(device_note)
    return session.run(plots or Plots())


def resolve_device(choice: str) -> tuple[str, str | None]:
    """("cpu" or "cuda", a note saying what auto picked)."""
    if choice == "cpu":
        return "cpu", None
    available = torch.cuda.is_available()
    reason = "a CUDA device is available" if available else (
        "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA device was found")
    if choice == "cuda":
        if not available:
            raise CnncError(f"--device cuda: CUDA is not available ({reason}); use --device cpu")
        return "cuda", None
    picked = "cuda" if available else "cpu"
    return picked, f"device: {picked} (auto: {reason})"


# --- starting and resuming ----------------------------------------------------------------------------

def _start(request: TrainRequest, device_type: str, world: World, console: Console) -> Session:
    assert request.spec is not None
    spec = request.spec
    if world.is_main:  # before the spec and the data are read: an unwritable place fails at once
        check_writable(Path(request.out or "runs") / LAST)
    program = _check_spec(spec, world, check_dataset=request.overrides.dataset is None)
    if program.train is None:
        raise CnncError(f"{spec} has no train section: add one (for example `train {{ dataset mnist }}`)")
    for flag, asked in (("--bf16", request.bf16), ("--cuda-graphs", request.cuda_graphs)):
        if asked and device_type != "cuda":
            message = f"{flag} needs CUDA; this run is on the CPU"
            raise UsageError(message) if request.device == "cpu" else CnncError(message)
    if request.cuda_graphs and world.distributed:
        raise UsageError("--cuda-graphs is not supported under torchrun (several processes) yet: drop it")
    execution = Execution(device_type, True if request.channels_last is None else request.channels_last,
                          request.compile or request.cuda_graphs, request.bf16, request.cuda_graphs)
    run_dir = _shared(world, lambda: _new_run_dir(request.out, program.graph.name))
    session = Session.create(program, request.overrides, execution, world, console, run_dir, spec,
                             download=request.download)
    session.write_run_files(spec)  # only now that the data and the model are known to be good
    return session


def _resume(request: TrainRequest, device_type: str, world: World, console: Console) -> Session | None:
    """The session that continues the run (None when it has already finished)."""
    assert request.resume is not None
    run_dir = Path(request.resume)
    if not run_dir.exists():
        raise UsageError(f"no such run directory or checkpoint: {run_dir}")
    if _never_checkpointed(run_dir):
        raise CnncError(f"{run_dir} stopped before its first checkpoint, so there is nothing to resume; start it "
                        f"again with: cnnc train {_stored_spec(run_dir)} --out {run_dir} (that reuses the directory)")
    if world.is_main:
        remove_stale_temporaries(run_dir)
        check_writable(run_dir / LAST)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint.training is None:
        raise CnncError(f"{checkpoint.path} holds no training state to resume from")
    epochs = request.overrides.epochs
    if epochs is not None:
        _check_extension(checkpoint, epochs)
    elif checkpoint.finished:
        accuracy = checkpoint.test_accuracy
        console.final(f"{run_dir} has already finished: test accuracy {accuracy:.2%} "
                      f"(--epochs N continues it up to N epochs)",
                      run_dir=str(run_dir), test_accuracy=accuracy, already_finished=True)
        return None
    stored = checkpoint.settings
    if stored["execution"]["bf16"] and device_type != "cuda":
        raise CnncError(f"{run_dir} was trained with --bf16, which needs CUDA; this machine has none")
    changed = {key: value for key, value in (("data", request.overrides.data), ("epochs", epochs)) if value}
    overrides = Overrides.from_json({**stored["overrides"], **changed})
    execution = Execution(**{**stored["execution"], "device": device_type})
    if execution.cuda_graphs and device_type != "cuda":
        console.note(f"{run_dir} was trained with --cuda-graphs, which needs CUDA: continuing on the CPU with "
                     "torch.compile alone (the same arithmetic)")
        execution = Execution(**{**execution.to_json(), "cuda_graphs": False})
    session = Session.create(checkpoint.program(), overrides, execution, world, console, run_dir,
                              checkpoint.spec_path, checkpoint, download=request.download)
    console.note(f"resuming {run_dir} after epoch {checkpoint.epoch}"
                 + (f", step {checkpoint.step_in_epoch}" if checkpoint.step_in_epoch else ""))
    return session


def _check_extension(checkpoint: Checkpoint, epochs: int) -> None:
    """--resume --epochs N: the run can be trained on up to N epochs (as Keras's initial_epoch does)."""
    assert checkpoint.training is not None
    done = checkpoint.training["position"]["epoch"]
    if epochs <= done:
        raise CnncError(f"{checkpoint.path.parent} has already trained {done} epochs; --epochs {epochs} would "
                        f"add none (give more than {done})")
    if not checkpoint.finished:
        return
    best = checkpoint.training["best"]
    if checkpoint.epoch != done:
        raise CnncError(f"{checkpoint.path.parent} ended by restoring the weights of epoch {checkpoint.epoch} (early "
                        "stopping); its optimizer state belongs to later weights, so it cannot be continued: train "
                        "a new run")
    if best.get("patience") is not None and best.get("bad_epochs", 0) >= best["patience"]:
        raise CnncError(f"{checkpoint.path.parent} was stopped early ({best['metric']} had stopped improving); "
                        "continuing it would stop again at once: train a new run")


def _check_spec(spec: str, world: World, check_dataset: bool) -> Program:
    """The checked program (compared with its own dataset unless --dataset replaces it); only rank 0
    prints the spec's warnings."""
    if world.is_main:
        return load_program(spec, check_dataset=check_dataset)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        return load_program(spec, check_dataset=check_dataset)


def _new_run_dir(out: str | None, model_name: str) -> Path:
    """The new run's directory (created later, when the run is known to start). An --out directory
    left by a run stopped before its first checkpoint is emptied and reused."""
    if out is not None:
        run_dir = Path(out)
        if _never_checkpointed(run_dir):
            _clear_unstarted_run(run_dir)
        elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UsageError(f"--out {out} already exists and is not an empty directory: "
                             f"continue that run with --resume {out}, or choose another --out")
    else:
        stem = Path("runs") / f"{model_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir, suffix = stem, 1
        while run_dir.exists():
            suffix += 1
            run_dir = stem.with_name(f"{stem.name}-{suffix}")
    return run_dir


# What a run writes before its first checkpoint, and may be removed to restart it.
_UNSTARTED_FILES = ("spec", SETTINGS, METRICS, CURVES, CONFUSION_JSON, CONFUSION_PNG)


def _never_checkpointed(run_dir: Path) -> bool:
    """A run directory whose run was stopped (killed) before it wrote a checkpoint: only the files
    written at the start, and the temporary files of a killed writer."""
    if not (run_dir / SETTINGS).is_file() or (run_dir / LAST).exists() or (run_dir / BEST).exists():
        return False
    return all(entry.name in _UNSTARTED_FILES or entry.name.endswith(".tmp") for entry in run_dir.iterdir())


def _clear_unstarted_run(run_dir: Path) -> None:
    try:
        for entry in run_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as error:
        raise CnncError(f"cannot reuse {run_dir}: {error.strerror or error}") from None


def _stored_spec(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / SETTINGS).read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return "SPEC"


def _shared(world: World, make):
    """`make()` on rank 0, its result on every process (an error on rank 0 stops all of them)."""
    error: Exception | None = None
    try:
        value = make() if world.is_main else None
    except Exception as problem:  # noqa: BLE001 - re-raised below, on every process
        value, error = None, problem
    value, error = gather(world, (value, error))[0]
    if error is not None:
        raise error
    return value


# --- a session: everything one run needs ------------------------------------------------------------

@dataclass
class Session:
    program: Program
    overrides: Overrides
    execution: Execution
    world: World
    console: Console
    run_dir: Path
    spec_path: str
    splits: Splits
    normalization: Normalization
    trainer: Trainer
    started: float
    settings: dict[str, Any]  # settings.json, also stored in every checkpoint

    @staticmethod
    def create(program: Program, overrides: Overrides, execution: Execution, world: World, console: Console,
               run_dir: Path, spec_path: str, checkpoint: Checkpoint | None = None, *,
               download: bool = True) -> Session:
        """Check the settings, load the data, build the model and trainer; continue `checkpoint` if given."""
        config = effective_config(program.train, overrides)
        graph = program.graph
        if config.batch_size % world.size:
            raise CnncError(f"the batch size {config.batch_size} does not divide among {world.size} processes")
        device = _device(execution.device, world)
        _seed_everything(config.seed, world.rank)
        splits = load_splits(config, overrides, Path(spec_path).parent, graph, progress=console.mode == "text",
                             download=download)
        for note in dict.fromkeys(split.note for split in (splits.train, splits.test) if split.note):
            console.note(note)
        normalization = Normalization.of(config)
        loss = CrossEntropy(config.loss, model_ends_in_softmax=final_softmax(graph) is not None)
        # A loss on the logits of a final softmax trains the graph without that softmax: the same weights.
        trained_graph = with_outputs(graph, "logits") if loss.wants_logits else graph
        model = build_module(trained_graph, seed=config.seed, weights=checkpoint.model_state if checkpoint else None)
        # Module.to takes memory_format (documented), but torch's type overloads leave it out.
        model.to(device, memory_format=torch.channels_last if execution.channels_last  # type: ignore[call-overload]
                 else torch.preserve_format)
        if checkpoint is None:  # a resumed run's whitening is in its checkpoint's weights
            for note in whiten(model, splits.train.images, normalization, device):
                console.note(note)
        trainer = _build_trainer(model, loss, config, execution, world, device, splits, normalization, console,
                                 run_dir)
        session = Session(program, overrides, execution, world, console, run_dir, spec_path, splits, normalization,
                          trainer, time.perf_counter(), {})
        trainer.save = session.save
        session.settings = json.loads(json.dumps(session.describe()))  # plain data only (weights_only loading)
        if checkpoint is not None:
            session.continue_from(checkpoint)
        return session

    @property
    def config(self) -> TrainConfig:
        return self.trainer.config

    @property
    def dataset_name(self) -> str:
        assert self.config.dataset is not None  # effective_config always sets one
        return self.config.dataset.name

    def continue_from(self, checkpoint: Checkpoint) -> None:
        assert checkpoint.training is not None  # _resume refuses checkpoints without it
        stored = checkpoint.settings
        self.settings = {**stored, "execution": self.execution.to_json(), "overrides": self.overrides.to_json(),
                         "train": config_to_json(self.config),
                         "resumed": [*stored.get("resumed", []), " ".join(sys.argv)]}
        try:
            self.trainer.resume_from(checkpoint.training, checkpoint.model_state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
            raise CnncError(f"{checkpoint.path} is a damaged cnnc checkpoint: its training state cannot be "
                            f"restored ({type(error).__name__}: {str(error)[:200]})") from None
        best = self.run_dir / BEST
        if self.trainer.best.best_epoch and best.exists():
            self.trainer.best_state = load_checkpoint(best).model_state
        if self.trainer.metrics is not None:
            self.trainer.metrics.keep_epochs_up_to(checkpoint.epoch)

    # --- running ------------------------------------------------------------------------------------

    def run(self, plots: Plots) -> int:
        """Train, test and plot (with `plots`); the exit code."""
        self._announce()
        try:
            outcome = self.trainer.fit()
            return self._finish(outcome, plots)
        except OSError as error:  # the run directory deleted, its filesystem full or remounted read-only
            kept = f"; the last good checkpoint is {self.run_dir / LAST}" if (self.run_dir / LAST).exists() else ""
            raise CnncError(f"cannot write to the run directory {self.run_dir}: "
                            f"{error.strerror or error}{kept}") from None
        except Interrupted:
            position = self.trainer.position
            self.console.final(
                f"interrupted at epoch {position.epoch + 1}, step {position.step_in_epoch}: saved "
                f"{self.run_dir / LAST}; continue with: cnnc train --resume {self.run_dir}",
                run_dir=str(self.run_dir), interrupted=True, epoch=position.epoch + 1, step=position.step_in_epoch)
            return EXIT_INTERRUPTED

    def _announce(self) -> None:
        graph, config, splits = self.program.graph, self.config, self.splits
        validation = len(splits.validation) if splits.validation is not None else 0
        self.console.event(
            "start",
            f"training {graph.name} ({graph.trainable_params:,} parameters) on {self.execution.device}"
            f"{f' x {self.world.size} processes' if self.world.distributed else ''}: {self.dataset_name} "
            f"{len(splits.train):,} train / {validation:,} validation / {len(splits.test):,} test images, "
            f"{config.epochs} epochs of {self.trainer.schedule.steps_per_epoch} steps -> {self.run_dir}",
            run_dir=str(self.run_dir), model=graph.name, parameters=graph.trainable_params,
            device=self.execution.device, processes=self.world.size, dataset=self.dataset_name,
            train_examples=len(splits.train), validation_examples=validation, test_examples=len(splits.test),
            epochs=config.epochs, steps_per_epoch=self.trainer.schedule.steps_per_epoch,
        )

    def _finish(self, outcome: str, plots: Plots) -> int:
        trainer = self.trainer
        model_epoch = trainer.restore_best_if_asked()
        title = self.program.graph.name
        test_loss, test_accuracy, matrix = trainer.evaluate(TensorSplit.of(self.splits.test, trainer.device),
                                                            confusion=True)
        record = {"test_loss": test_loss, "test_accuracy": test_accuracy, "test_examples": len(self.splits.test),
                  "model_epoch": model_epoch, "epochs_trained": trainer.position.epoch}
        training = trainer.training_state(None)
        if self.world.is_main:
            assert trainer.metrics is not None and matrix is not None  # rank 0 logs; confusion=True
            trainer.metrics.append(record)
            # sent after the evaluation, which needs both cores: the helper then draws both at once
            if trainer.history:
                plots.curves(trainer.history, self.run_dir / CURVES, title)
            plots.confusion_matrix(matrix, self.splits.test.classes, self.run_dir, title)
            plots.wait()
            final = {"finished": True, "test_accuracy": test_accuracy, "test_loss": test_loss}
            self._save(LAST, {**final, "training": training, "epoch": model_epoch})
            if model_epoch == trainer.best.best_epoch and (self.run_dir / BEST).exists():
                self._save(BEST, {**final, "training": None, "epoch": model_epoch})
        self.console.event("test", None, **record)
        seconds = time.perf_counter() - self.started
        self.console.final(
            f"test accuracy {test_accuracy:.2%} (loss {test_loss:.4f}) on {len(self.splits.test):,} images after "
            f"{trainer.position.epoch} epochs ({outcome}, {seconds:.0f}s); run directory: {self.run_dir}",
            run_dir=str(self.run_dir), outcome=outcome, seconds=seconds, **record)
        return 0

    # --- files -----------------------------------------------------------------------------------

    def save(self, which: str, training: dict[str, Any]) -> None:
        """The trainer's checkpoint callback: "last" (with the training state) or "best"."""
        if not self.world.is_main:
            return
        if which == "last":
            self._save(LAST, {"training": training})
        else:
            self._save(BEST, {"training": None, "step_in_epoch": 0})

    def _save(self, name: str, fields: dict[str, Any]) -> None:
        position = self.trainer.position
        contents = {
            "model": {key: value.detach().cpu().contiguous()
                      for key, value in self.trainer.evaluated_model().state_dict().items()},
            "model_name": self.program.graph.name,
            "spec_path": self.spec_path,
            "sources": dict(self.program.sources),
            "classes": list(self.splits.train.classes),
            "input_shape": list(self.program.graph.input.shape),
            "preprocess": self.normalization.to_json(),
            "dataset": self.dataset_name,
            "settings": self.settings,
            "epoch": position.epoch,
            "step_in_epoch": position.step_in_epoch,
            "finished": False,
            "test_accuracy": None,
            "test_loss": None,
            **fields,
        }
        save_checkpoint(contents, self.run_dir / name)

    def describe(self) -> dict[str, Any]:
        """settings.json of a new run."""
        splits, graph = self.splits, self.program.graph
        return {
            "spec": self.spec_path,
            "model": graph.name,
            "train": config_to_json(self.config),
            "overrides": self.overrides.to_json(),
            "execution": self.execution.to_json(),
            "processes": self.world.size,
            "data": {
                "dataset": self.dataset_name,
                "train_examples": len(splits.train),
                "validation_examples": len(splits.validation) if splits.validation is not None else 0,
                "test_examples": len(splits.test),
                "classes": list(splits.train.classes),
                "preprocess": self.normalization.to_json(),
            },
            "model_size": {"trainable_params": graph.trainable_params,
                           "non_trainable_params": graph.non_trainable_params, "macs": graph.total_macs},
            "versions": {"cnnc": cnnc.__version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "machine": {"host": platform.node(), "platform": platform.platform(), "threads": torch.get_num_threads()},
            "command": " ".join(sys.argv),
        }

    def write_run_files(self, spec: str) -> None:
        """The spec and its includes, the checked IR, and settings.json (rank 0)."""
        if not self.world.is_main:
            return
        from cnnc.compiler import ir_text

        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec_dir = self.run_dir / "spec"
        base = Path(spec).parent
        for path, text in self.program.sources.items():
            relative = Path(os.path.relpath(path, base))
            if relative.parts and relative.parts[0] == "..":  # an include from outside the spec's folder
                relative = Path("_outside") / relative.name
            (spec_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            (spec_dir / relative).write_text(text)
        (spec_dir / f"{self.program.graph.name}.ir").write_text(ir_text.to_text(self.program.graph))
        (self.run_dir / SETTINGS).write_text(json.dumps(self.settings, indent=2) + "\n")


# --- helpers -------------------------------------------------------------------------------------

def _build_trainer(model: CnncModule, loss: CrossEntropy, config: TrainConfig, execution: Execution, world: World,
                   device: torch.device, splits: Splits, normalization: Normalization, console: Console,
                   run_dir: Path) -> Trainer:
    augmenter = Augmenter(config.augment, config.seed, len(splits.train), splits.train.image_shape,
                          device) if config.augment else None
    steps_per_epoch = math.ceil(math.ceil(len(splits.train) / world.size) / (config.batch_size // world.size))
    total_steps = config.epochs * steps_per_epoch
    # copied before DDP or torch.compile wraps the module
    average = weight_average(model, config.ema, config.lookahead, steps_per_epoch, total_steps)
    return Trainer(
        model=model,
        train_model=_training_module(model, execution, world, device, console),
        optimizer=build_optimizer(model.named_parameters(), parameter_roles(model.graph), config.optimizer),
        schedule=LearningRateSchedule(config.optimizer["lr"], config.schedule, steps_per_epoch,
                                      total_steps, config.warmup_epochs * steps_per_epoch),
        loss=loss,
        preparer=BatchPreparer(normalization, device, execution.channels_last, augmenter),
        train_data=TensorSplit.of(splits.train, device),
        validation_data=TensorSplit.of(splits.validation, device) if splits.validation is not None else None,
        config=config, world=world, device=device,
        autocast=_autocast(execution, device),
        console=console,
        metrics=MetricsLog(run_dir / METRICS) if world.is_main else None,
        average=average,
        best=BestTracker.of(config),
        sync_every=sync_interval(device),
    )


def _device(device_type: str, world: World) -> torch.device:
    if device_type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def _seed_everything(seed: int, rank: int) -> None:
    """Seed torch (dropout), numpy and Python; each process differently, every run the same."""
    process_seed = _derived_seed(seed, rank)
    torch.manual_seed(process_seed)
    np.random.seed(process_seed % 2**32)
    random.seed(process_seed)


def _training_module(model: CnncModule, execution: Execution, world: World, device: torch.device,
                     console: Console) -> torch.nn.Module:
    wrapped: torch.nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if execution.cuda_graphs:
        # reduce-overhead: each compiled graph is recorded once as a CUDA graph and replayed, one launch
        # instead of one per kernel. A CUDA graph has fixed shapes, so the graphs are compiled for fixed
        # shapes too (dynamic=False: an epoch's short last batch gets its own graph, instead of turning
        # every later step into the slower shape-generic code).
        compiled = cast(torch.nn.Module, torch.compile(wrapped, mode="reduce-overhead", dynamic=False))
        return _CudaGraphWatch(compiled, console)
    if execution.compile:
        wrapped = cast(torch.nn.Module, torch.compile(wrapped))
    return wrapped


class _CudaGraphWatch(torch.nn.Module):
    """The module compiled for CUDA graphs, saying when PyTorch runs some of it without them: it does
    so silently (a graph that mutates its inputs, or runs ops on the CPU, say), which would leave
    --cuda-graphs without effect unnoticed."""

    def __init__(self, compiled: torch.nn.Module, console: Console) -> None:
        super().__init__()
        self.compiled = compiled
        self.console = console
        self.skips = _cudagraph_skips()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.compiled(x)
        skips = _cudagraph_skips()
        if skips > self.skips:
            self.console.note(f"--cuda-graphs: PyTorch runs {skips - self.skips} compiled graph(s) of this model "
                              "without CUDA graphs (TORCH_LOGS=cudagraphs says why)")
            self.skips = skips
        return output


def _cudagraph_skips() -> int:
    """How many compiled graphs torch.compile has run without CUDA graphs in this process so far."""
    from torch._dynamo.utils import counters  # inductor's counters: no public API tells this

    return int(counters["inductor"]["cudagraph_skips"])


def _autocast(execution: Execution, device: torch.device):
    if execution.bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
