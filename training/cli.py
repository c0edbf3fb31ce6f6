"""`cnnc train`: train a spec into a run directory, or continue one with --resume.

Imports only argparse (and the standard library) at module level: `cnnc check` must not pay for torch
(see cnnc/cli.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnc.training.plotter import Plots
    from cnnc.training.settings import Overrides

DEVICES = ("auto", "cpu", "cuda")
# Flags that change what is trained: a resumed run keeps its own, so they may not be given with --resume
# (--epochs may: it extends the run).
TRAINING_FLAGS = ("dataset", "batch_size", "lr", "seed", "limit_train", "limit_test",
                  "channels_last", "compile", "bf16", "cuda_graphs")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a spec with PyTorch into a run directory",
        description="Train SPEC as its train section says (flags override it), into a run directory with "
                    "the spec, settings, metrics.jsonl, checkpoints (last.pt, best.pt) and plots. "
                    "Under torchrun (python -m torch.distributed.run --nproc_per_node=N -m cnnc train ...) "
                    "the processes share each batch.",
    )
    train.add_argument("spec", nargs="?", metavar="SPEC", help="the .cnn file (not with --resume)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--out", metavar="RUN_DIR", help="the run directory (default: runs/<model>-<timestamp>)")
    data = train.add_argument_group("data")
    data.add_argument("--data", metavar="DIR", help="where the dataset's files are (for folder and npz: its path)")
    data.add_argument("--dataset", metavar="NAME", help="train on this dataset instead of the spec's")
    data.add_argument("--no-download", dest="download", action="store_false",
                      help="never download: fail when a standard dataset's files are missing (by default they are "
                           "fetched on first use into the data root, $CNNC_DATA or ~/.cache/cnnc, and checksummed)")
    data.add_argument("--limit-train", type=_positive_int, metavar="N", help="use only the first N training images")
    data.add_argument("--limit-test", type=_positive_int, metavar="N", help="use only the first N test images")
    settings = train.add_argument_group("overriding the train section")
    settings.add_argument("--epochs", type=_positive_int, metavar="N",
                          help="with --resume: train the run (finished or not) up to N epochs in all; the learning-"
                               "rate schedule is recomputed as if N epochs had been planned from the start")
    settings.add_argument("--batch-size", type=_positive_int, metavar="N", help="the global batch (under torchrun too)")
    settings.add_argument("--lr", type=_positive_float, metavar="RATE", help="the optimizer's learning rate")
    settings.add_argument("--seed", type=_non_negative_int, metavar="N",
                          help="initial weights, batch order, validation split, dropout, augmentation")
    execution = train.add_argument_group("execution")
    execution.add_argument("--device", choices=DEVICES, default=None,
                           help="cuda, cpu, or auto: cuda when available (default: auto)")
    execution.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                           help="NHWC memory format (default: on: up to 1.35x faster on CPU for most specs, "
                                "see bench/RESULTS.md)")
    execution.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    execution.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    execution.add_argument("--cuda-graphs", action="store_true",
                           help="torch.compile in mode reduce-overhead: each step's kernels replay as CUDA graphs "
                                "(CUDA only; implies --compile)")
    output = train.add_argument_group("output")
    mode = output.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="print only the final line")
    mode.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    # A run writes and closes all its files before it returns: torch's teardown can be skipped (see cnnc/cli.py)
    train.set_defaults(handler=run_train, exit_at_once=True)


def run_train(args: argparse.Namespace) -> int:
    from cnnc.errors import UsageError
    from cnnc.imports import collector_paused

    if (args.spec is None) == (args.resume is None):
        raise UsageError("give a SPEC to train, or --resume RUN_DIR to continue a run (not both)")
    if args.resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in TRAINING_FLAGS if getattr(args, name) not in (None, False)]
        if given or args.out:
            raise UsageError(f"--resume continues a run with its own settings; drop {', '.join(given or ['--out'])}")
    from cnnc.training.settings import Overrides

    overrides = Overrides(args.dataset, args.data, args.epochs, args.batch_size, args.lr, args.seed,
                          args.limit_train, args.limit_test)
    with _while_torch_imports(args.spec, overrides) as plots:
        with collector_paused("torch"):
            from cnnc.training.run import TrainRequest, train

        mode = "json" if args.json else "quiet" if args.quiet else "text"
        return train(TrainRequest(args.spec, args.resume, args.out, overrides, args.device or "auto",
                                  args.channels_last, args.compile, args.bf16, args.cuda_graphs, mode, args.download),
                     plots)


@contextlib.contextmanager
def _while_torch_imports(spec: str | None, overrides: Overrides) -> Iterator[Plots]:
    """Start what needs no torch before torch is imported (two seconds of one core), so that it runs on
    the other core meanwhile: the plot helper's import of matplotlib (rank 0 only: it draws the plots),
    and the loading of a new run's data. Yields the run's Plots; ends the helper if the run did not."""
    from cnnc.training.plotter import Plots

    plots = Plots.start_helper() if os.environ.get("RANK", "0") == "0" else Plots()
    try:
        with _loading_data_ahead(spec, overrides):
            yield plots
    finally:
        plots.close()


def _loading_data_ahead(spec: str | None, overrides: Overrides) -> contextlib.AbstractContextManager:
    """The spec's standard dataset loading on another thread (cnnc.datasets.standard.loading_ahead), when
    the spec checks; the run checks it again, and reports what is wrong, as it would without this."""
    from cnnc.compiler.check import check_file, spec_path
    from cnnc.datasets.registry import STANDARD_DATASETS
    from cnnc.datasets.standard import loading_ahead
    from cnnc.errors import CnncError, UsageError
    from cnnc.training.settings import effective_config

    if spec is None:
        return contextlib.nullcontext()
    try:
        result = check_file(spec_path(spec), check_dataset=overrides.dataset is None)
    except (CnncError, UsageError):  # raised again by the run, after what it checks first (--device, say)
        return contextlib.nullcontext()
    if result.has_errors or result.program is None or result.program.train is None:
        return contextlib.nullcontext()
    dataset = effective_config(result.program.train, overrides).dataset
    if dataset is None or dataset.name not in STANDARD_DATASETS:
        return contextlib.nullcontext()
    return loading_ahead(STANDARD_DATASETS[dataset.name], ("train", "test"), overrides.data)


def _positive_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _parse(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _parse(text: str, kind: type, description: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None
