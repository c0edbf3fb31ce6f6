"""Training checkpoints: written atomically, read back with `torch.load(weights_only=True)`.

A run directory holds two:
    last.pt   the complete training state after the latest epoch (or interruption), for --resume;
              once the run has finished, the final model (the one the test accuracy was measured
              on: the restored best epoch when early stopping restores it) with its test accuracy.
    best.pt   the model of the epoch with the best validation metric (only with a validation
              split, since choosing by test accuracy would leak the test set); model only.

Every checkpoint is a dict of tensors, numbers, strings, lists and dicts only:
    format, version          "cnnc-checkpoint", FORMAT_VERSION
    model                    the state dict (names as in compiler.backends.pytorch)
    model_name, spec_path    the model's name and the spec's path as given when training started
    sources                  {path: text} of the spec and every file it includes
    classes                  the class labels, in output order
    input_shape              [C, H, W]
    preprocess               {"scale": 1/255, "mean": [...], "std": [...]}: x * scale, then (x - mean) / std
    dataset                  the dataset's name
    settings                 what ran: the run's settings.json
    epoch                    epochs completed (the epoch whose weights `model` holds, for best.pt)
    step_in_epoch            batches done of the next epoch (non-zero after an interruption)
    finished                 whether training ended (then `model` is the final model)
    test_accuracy, test_loss on the test set, when measured for these weights (else None)
    training                 for last.pt: optimizer, schedule step, RNG states (torch, numpy, python,
                             augmentation; one entry per process), early-stopping state, the
                             interrupted epoch's running totals, the best model's metric; else None
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnc.errors import CnncError
from cnnc.files import replacing

FORMAT = "cnnc-checkpoint"
FORMAT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"
_REQUIRED = ("model", "model_name", "spec_path", "sources", "classes", "input_shape", "preprocess", "epoch",
             "finished", "settings")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read from disk. `training` is None in best.pt (it cannot be resumed)."""

    path: Path
    model_state: dict[str, torch.Tensor]
    model_name: str
    spec_path: str
    sources: dict[str, str]
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    preprocess: dict[str, Any]  # {"scale": float, "mean": [float], "std": [float]}
    dataset: str
    settings: dict[str, Any]
    epoch: int
    step_in_epoch: int
    finished: bool
    test_accuracy: float | None
    test_loss: float | None
    training: dict[str, Any] | None

    @property
    def normalize(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) applied after scaling pixels to [0, 1]."""
        return tuple(self.preprocess["mean"]), tuple(self.preprocess["std"])

    def program(self):
        """The spec re-checked from the stored sources (not from disk, where it may have changed)."""
        from cnnc.compiler.check import check_file

        result = check_file(self.spec_path, sources=self.sources)
        if result.program is None:
            raise CnncError(f"{self.path}: the spec stored in the checkpoint no longer checks "
                            f"({len(result.diagnostics)} diagnostics; was it written by another cnnc version?)")
        return result.program


def checkpoint_path(path_or_run_dir: str | os.PathLike, which: str = LAST) -> Path:
    """A checkpoint file, or the `which` checkpoint (last.pt or best.pt) of a run directory."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        candidate = path / which
        if not candidate.is_file():
            raise CnncError(f"{path} is not a cnnc run directory: it has no {which}")
        return candidate
    if not path.exists():
        raise CnncError(f"no checkpoint or run directory at {path}")
    return path


def load_checkpoint(path_or_run_dir: str | os.PathLike, which: str = LAST, *,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint file, or a run directory's `which` checkpoint (default last.pt: the
    final model of a finished run). Raises CnncError for a missing, corrupt, truncated or foreign file."""
    path = checkpoint_path(path_or_run_dir, which)
    raw = _read(path, map_location)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        held = f"a dict with keys {', '.join(map(str, list(raw)[:5]))}" if isinstance(raw, dict) else type(raw).__name__
        raise CnncError(f"{path} is not a cnnc checkpoint (it holds {held})")
    if raw.get("version") != FORMAT_VERSION:
        raise CnncError(f"{path} is a version {raw.get('version')} checkpoint; "
                        f"this cnnc reads version {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise CnncError(f"{path} is an incomplete cnnc checkpoint: it lacks {', '.join(missing)}")
    return Checkpoint(
        path=path,
        model_state=dict(raw["model"]),
        model_name=raw["model_name"],
        spec_path=raw["spec_path"],
        sources=dict(raw["sources"]),
        classes=tuple(raw["classes"]),
        input_shape=tuple(raw["input_shape"]),
        preprocess=dict(raw["preprocess"]),
        dataset=raw.get("dataset", ""),
        settings=dict(raw["settings"]),
        epoch=int(raw["epoch"]),
        step_in_epoch=int(raw.get("step_in_epoch", 0)),
        finished=bool(raw["finished"]),
        test_accuracy=raw.get("test_accuracy"),
        test_loss=raw.get("test_loss"),
        training=raw.get("training"),
    )


def _read(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses anything but plain data, naming the first class it met
        detail = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), None)
        if detail is not None:
            raise CnncError(f"{path} is not a cnnc checkpoint: it holds objects other than tensors and plain "
                            f"data ({detail})") from None
        raise _unreadable(path) from None
    except Exception:  # noqa: BLE001 - torch.load fails on junk bytes in many ways (struct.error, IndexError, ...)
        raise _unreadable(path) from None


def _unreadable(path: Path) -> CnncError:
    # torch's own message would suggest weights_only=False, which is unsafe for an untrusted file
    return CnncError(f"{path} cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file")


def save_checkpoint(contents: Mapping[str, Any], path: Path) -> None:
    """Write atomically (see cnnc.files.replacing), flushed to disk before it replaces the old one."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **contents}
    with replacing(path) as temporary, open(temporary, "xb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
