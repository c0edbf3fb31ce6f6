"""What a run shows and records: the progress bar, per-epoch lines or JSON events, metrics.jsonl,
the training curves and the confusion matrix.

Output modes: text (a line per epoch on stdout and, when stderr is a terminal, a tqdm bar per epoch
showing the epoch's running mean loss and accuracy), --json (one JSON object per event on stdout, no
bar) and --quiet (the final line only). Only rank 0 reports. The plots use the console's units:
accuracy in percent, whole epochs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = "metrics.jsonl"
CURVES = "curves.png"
CONFUSION_PNG, CONFUSION_JSON = "confusion_matrix.png", "confusion_matrix.json"


class Bar(Protocol):
    live: bool  # whether updates show: the caller skips computing them (a device read) when not

    def update(self, done: int, loss: float, accuracy: float) -> None: ...
    def close(self) -> None: ...


class _NoBar:
    live = False

    def update(self, done: int, loss: float, accuracy: float) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmBar:
    def __init__(self, total: int, done: int, description: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=description, unit="batch", file=sys.stderr,
                        dynamic_ncols=True, leave=False)

    live = True

    def update(self, done: int, loss: float, accuracy: float) -> None:
        """`done` steps of the epoch are done; `loss` and `accuracy` are the epoch's running means so far."""
        self.bar.set_postfix_str(f"loss {loss:.4f}  acc {accuracy:.2%}", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class Console:
    """The run's voice on stdout and stderr, in the mode the user chose."""

    def __init__(self, mode: str, enabled: bool = True) -> None:
        if mode not in ("text", "json", "quiet"):
            raise ValueError(mode)
        self.mode = mode if enabled else "silent"

    def event(self, name: str, text: str | None, **fields: Any) -> None:
        """An event: a JSON object in json mode, else `text` (when given) as a line."""
        if self.mode == "json":
            print(json.dumps({"event": name, **fields}), flush=True)
        elif self.mode == "text" and text is not None:
            print(text, flush=True)

    def note(self, text: str) -> None:
        """A remark on stderr (a note event in json mode; nothing in quiet mode)."""
        if self.mode == "json":
            self.event("note", None, message=text)
        elif self.mode == "text":
            print(text, file=sys.stderr, flush=True)

    def final(self, text: str, **fields: Any) -> None:
        """The last line: printed in quiet mode too."""
        if self.mode == "json":
            self.event("done", None, **fields)
        elif self.mode != "silent":
            print(text, flush=True)

    def bar(self, total: int, done: int, description: str) -> Bar:
        """A live bar on a terminal only: in a log file its updates would pile up on one line, and the
        epoch lines on stdout already give one line per epoch."""
        return _TqdmBar(total, done, description) if self.mode == "text" and sys.stderr.isatty() else _NoBar()


def epoch_line(metrics: Mapping[str, Any], epochs: int, elapsed: float) -> str:
    """`epoch 3/10  loss 0.1234  acc 96.12%  val_loss ...  lr 0.001  5,432 img/s  11.2s  (0:34 in all)`."""
    parts = [f"epoch {metrics['epoch']}/{epochs}",
             f"loss {metrics['train_loss']:.4f}", f"acc {metrics['train_accuracy']:.2%}"]
    if metrics.get("val_loss") is not None:
        parts += [f"val_loss {metrics['val_loss']:.4f}", f"val_acc {metrics['val_accuracy']:.2%}"]
    minutes, seconds = divmod(int(elapsed), 60)
    parts += [f"lr {metrics['lr']:.3g}", f"{metrics['images_per_second']:,.0f} img/s", f"{metrics['seconds']:.1f}s",
              f"({minutes}:{seconds:02d} in all)"]
    return "  ".join(parts)


class MetricsLog:
    """metrics.jsonl: one JSON object per epoch, then one with the test results."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def keep_epochs_up_to(self, epoch: int) -> list[dict[str, Any]]:
        """Drop what a resumed run will redo (later epochs, a test result); return the epochs kept."""
        kept = [record for record in self.read() if "test_accuracy" not in record and record["epoch"] <= epoch]
        self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        return kept

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def write_curves(history: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, training and validation."""
    from matplotlib import pyplot as plt

    figure = curves_figure(history, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def curves_figure(history: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """The figure of write_curves: whole epochs on the x axis, accuracy in percent as on the console."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, key, label, scale in ((loss_axes, "loss", "loss", 1), (accuracy_axes, "accuracy", "accuracy (%)", 100)):
        axes.plot(epochs, [record[f"train_{key}"] * scale for record in history], marker="o", label="train")
        validation = [record.get(f"val_{key}") for record in history]
        if any(value is not None for value in validation):
            axes.plot(epochs, [None if value is None else value * scale for value in validation], marker="o",
                      label="validation")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    return _laid_out(figure)


def write_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], run_dir: Path, title: str) -> None:
    """confusion_matrix.json ({"classes", "matrix": rows are true classes, columns predictions,
    "accuracy"}) and a picture of it."""
    total = int(matrix.sum())
    accuracy = float(np.trace(matrix) / total) if total else 0.0
    (run_dir / CONFUSION_JSON).write_text(json.dumps(
        {"classes": list(classes), "matrix": matrix.astype(int).tolist(), "accuracy": accuracy}, indent=1) + "\n")
    from matplotlib import pyplot as plt

    figure = confusion_figure(matrix, classes, f"{title}: test accuracy {accuracy:.2%}")
    figure.savefig(run_dir / CONFUSION_PNG, dpi=100)
    plt.close(figure)


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """The confusion matrix's picture; long or many class names are slanted so that none overlap."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    longest = max((len(name) for name in classes), default=1)
    slanted = longest > 3 or len(classes) > 10
    size = max(4.0, 0.5 * len(classes) + 2 + (0.08 * longest if slanted else 0))
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45 if slanted else 0, ha="right" if slanted else "center",
                    rotation_mode="anchor")
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(classes) <= 20:
        threshold = matrix.max() / 2
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, str(int(count)), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    axes.set_title(title)
    return _laid_out(figure)


def _laid_out(figure: Figure) -> Figure:
    """`figure` with tight_layout's margins applied once. tight_layout() leaves a placeholder layout
    engine behind, and savefig draws a figure with any engine twice (a first pass that renders
    nothing, for engines that lay out at draw time): a quarter to a third of saving these figures.
    Without the engine the file is the same, byte for byte (tests/test_train_reporting.py)."""
    figure.tight_layout()
    figure.set_layout_engine(None)
    return figure
