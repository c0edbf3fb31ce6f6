"""Training checkpoints: written atomically, read back with `torch.load(weights_only=True)`.

A run directory holds two:
    last.pt   the complete training state after the latest epoch (or interruption), for --resume;
              once the run has finished, the final model (the one the test accuracy was measured
              on: the restored best epoch when early stopping restores it) with its test accuracy.
    best.pt   the model of the epoch with the best validation metric (only with a validation
              split, since choosing by test accuracy would leak the test set); model only.

Every checkpoint is a dict of tensors, numbers, strings, lists and dicts only:
    format, version          "cnnc-checkpoint", FORMAT_VERSION
    model                    the state dict (names as in compiler.backends.pytorch): the weights
                             evaluated, which with ema or lookahead are not the live ones
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
    training                 for last.pt: optimizer, schedule step, RNG states (torch, numpy, python;
                             one entry per process), early-stopping state, the interrupted epoch's
                             running totals, the best model's metric, and with ema or lookahead
                             `weights`: the live weights and lookahead's slow ones; else None
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
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

        # Only the stored sources, never the disk: a stored path may name any file. The dataset it was
        # trained on may have come from --dataset, so the spec's own dataset is not compared.
        result = check_file(self.spec_path, sources=self.sources, sources_only=True, check_dataset=False)
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
    problem = _shape_problem(raw)
    if problem is not None:
        raise CnncError(f"{path} is a damaged cnnc checkpoint: {problem}")
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _all(values: Any, test) -> bool:
    return isinstance(values, (list, tuple)) and all(test(value) for value in values)


_TRAINING = ("optimizer", "schedule", "position", "best", "history", "world_size", "processes")
# Each field's expected form (what save_checkpoint writes), as a test and a description for messages.
_FIELDS: dict[str, tuple[Any, str]] = {
    "model": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in v.items()), "a dict of named tensors"),
    "model_name": (lambda v: isinstance(v, str), "a string"),
    "spec_path": (lambda v: isinstance(v, str) and v != "", "a path"),
    "sources": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, str)
                                                      for k, t in v.items()), "a dict of path: text"),
    "classes": (lambda v: _all(v, lambda c: isinstance(c, str)), "a list of class names"),
    "input_shape": (lambda v: _all(v, lambda d: _is_int(d) and d > 0) and len(v) == 3, "[C, H, W]"),
    "preprocess": (lambda v: isinstance(v, dict) and _is_number(v.get("scale")) and _all(v.get("mean"), _is_number)
                   and _all(v.get("std"), _is_number), '{"scale", "mean", "std"}'),
    "settings": (lambda v: isinstance(v, dict), "a dict"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a count of epochs"),
    "step_in_epoch": (lambda v: _is_int(v) and v >= 0, "a count of steps"),
    "finished": (lambda v: isinstance(v, bool), "true or false"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "test_accuracy": (lambda v: v is None or _is_number(v), "a number or None"),
    "test_loss": (lambda v: v is None or _is_number(v), "a number or None"),
    "training": (lambda v: v is None or (isinstance(v, dict) and set(_TRAINING) <= set(v)),
                 "None or a dict with optimizer, position, ..."),
}


def _shape_problem(raw: dict) -> str | None:
    """What is wrong with a checkpoint's fields (None when each has the form cnnc writes)."""
    for key, (test, expected) in _FIELDS.items():
        if key in raw and not test(raw[key]):
            return f"its {key!r} should be {expected}, but it holds {_describe(raw[key])}"
    return None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _read(path: Path, map_location: str | torch.device) -> Any:
    _verify_integrity(path)
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


def _verify_integrity(path: Path) -> None:
    """torch.load does not check the CRC-32 that its zip format stores for every record, so a flipped
    bit inside a tensor would load as a different weight: check them all first."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error):
        raise _unreadable(path) from None
    if damaged is not None:
        raise CnncError(f"{path} is corrupt: its record {damaged} fails its CRC-32 check (the file changed after "
                        "it was written); use another checkpoint, such as best.pt, or train again")


def _unreadable(path: Path) -> CnncError:
    # torch's own message would suggest weights_only=False, which is unsafe for an untrusted file
    return CnncError(f"{path} cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file")


def save_checkpoint(contents: Mapping[str, Any], path: Path) -> None:
    """Write atomically (see cnnc.files.replacing), flushed to disk before it replaces the old one.
    The run directory must exist: one deleted mid-run is reported, not silently made again. A full
    disk, a read-only filesystem or a vanished directory is a CnncError; the previous file is kept."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **contents}
    kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
    try:
        with replacing(path, create_parents=False) as temporary, open(temporary, "xb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
    except CnncError as error:
        raise CnncError(f"{error}{kept}") from None
    except RuntimeError as error:
        # torch reports a failed write (ENOSPC, EIO) as a RuntimeError from its zip writer
        raise CnncError(f"cannot write {path}: {_write_failure(error)}{kept}") from None


def _write_failure(error: RuntimeError) -> str:
    text = str(error)
    if "file write failed" in text or "No space" in text:
        return "the write failed (is the disk full?)"
    return text.splitlines()[0] if text else type(error).__name__
