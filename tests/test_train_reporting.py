"""What a training run shows: the progress bar (terminal only, running means), SIGTERM's note, the plots'
units and labels, and extending a finished run with --resume --epochs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnc.cli import main
from cnnc.training.checkpoint import load_checkpoint
from cnnc.training.reporting import Console, confusion_figure, curves_figure
from cnnc.training.trainer import SIGNAL_AT_STEP_ENV

TINY = """model m {
 input glyph(1, 28, 28)
 conv(4, kernel=3, stride=2, padding=same, activation=relu)
 dropout(0.1)
 global_avgpool
 dense(2)
}
train { dataset xo; epochs EPOCHS; batch 64; seed 3 }
"""
FLAGS = ["--limit-train", "256", "--limit-test", "64"]


def spec(directory: Path, epochs: int) -> Path:
    path = directory / f"tiny{epochs}.cnn"
    path.write_text(TINY.replace("EPOCHS", str(epochs)))
    return path


def cnnc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_without_a_terminal_there_is_no_bar_only_one_line_per_epoch(tmp_path: Path) -> None:
    done = cnnc(["train", str(spec(tmp_path, 2)), *FLAGS, "--out", "run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\r" not in done.stdout
    assert [line.split("  ")[0] for line in done.stdout.splitlines() if line.startswith("epoch ")] == \
        ["epoch 1/2", "epoch 2/2"]


def test_the_bar_shows_the_epochs_running_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnc.training.reporting as reporting

    shown: list[tuple[int, float, float]] = []

    class Recorder:
        live = True

        def __init__(self, total: int, done: int, description: str) -> None:
            pass

        def update(self, done: int, loss: float, accuracy: float) -> None:
            shown.append((done, loss, accuracy))

        def close(self) -> None:
            pass

    monkeypatch.setattr(reporting, "_TqdmBar", Recorder)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert isinstance(Console("text").bar(3, 0, "x"), Recorder)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not isinstance(Console("text").bar(3, 0, "x"), Recorder)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    out = tmp_path
    assert main(["train", str(spec(out, 1)), *FLAGS, "--out", str(out / "run")]) == 0
    record = json.loads((out / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # every step on the CPU; the last update is the epoch's mean, the number the epoch line and metrics.jsonl report
    assert [done for done, _, _ in shown] == list(range(1, len(shown) + 1)) and len(shown) > 1
    assert shown[-1][1] == pytest.approx(record["train_loss"], rel=1e-9)
    assert shown[-1][2] == pytest.approx(record["train_accuracy"], rel=1e-9)


def test_sigterm_says_what_happened_without_mentioning_ctrl_c(tmp_path: Path) -> None:
    stopped = cnnc(["train", str(spec(tmp_path, 2)), *FLAGS, "--out", "run"], tmp_path,
                   {SIGNAL_AT_STEP_ENV: "TERM:2"})
    assert stopped.returncode == 130, stopped.stderr
    assert "SIGTERM: stopping after this step and saving a checkpoint" in stopped.stderr
    assert "Ctrl-C" not in stopped.stderr


def test_curves_use_whole_epochs_and_percent() -> None:
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 10, "val_loss": None,
                "val_accuracy": None} for e in (1, 2, 3)]
    figure = curves_figure(history, "m")
    figure.canvas.draw()
    loss_axes, accuracy_axes = figure.axes
    for axes in (loss_axes, accuracy_axes):
        ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks)
    assert accuracy_axes.get_ylabel() == "accuracy (%)"
    assert list(accuracy_axes.lines[0].get_ydata()) == pytest.approx([60, 70, 80])


def test_confusion_matrix_class_labels_do_not_overlap() -> None:
    classes = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
    figure = confusion_figure(np.eye(10, dtype=np.int64) * 7, classes, "m")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in figure.axes[0].get_xticklabels()]
    assert len(boxes) == 10
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(box.x0 >= 0 and box.y0 >= 0 for box in boxes)  # inside the picture


FIGURES = {
    "curves": lambda: curves_figure([{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 10,
                                      "val_loss": 2 / e, "val_accuracy": 0.4 + e / 10} for e in (1, 2, 3)], "m"),
    "confusion": lambda: confusion_figure(np.arange(100, dtype=np.int64).reshape(10, 10), list("0123456789"), "m"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_a_figure_is_drawn_once_when_saved_and_the_file_is_what_tight_layout_gives(name: str) -> None:
    from matplotlib import pyplot as plt
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    def saved(figure) -> tuple[bytes, int]:
        draws: list[object] = []
        figure.canvas.mpl_connect("draw_event", draws.append)
        file = io.BytesIO()
        figure.savefig(file, dpi=100)
        plt.close(figure)
        return file.getvalue(), len(draws)

    as_drawn, draws = saved(FIGURES[name]())
    assert draws == 1
    with_engine = FIGURES[name]()
    with_engine.set_layout_engine(PlaceHolderLayoutEngine(True, True))  # what tight_layout() leaves behind
    as_matplotlib_saves_it, draws_with_engine = saved(with_engine)
    assert draws_with_engine == 2
    assert as_drawn == as_matplotlib_saves_it


def test_resume_with_more_epochs_continues_a_finished_run_exactly(tmp_path: Path) -> None:
    straight = cnnc(["train", str(spec(tmp_path, 2)), *FLAGS, "--out", "straight", "--quiet"], tmp_path)
    assert straight.returncode == 0, straight.stderr
    short = cnnc(["train", str(spec(tmp_path, 1)), *FLAGS, "--out", "extended", "--quiet"], tmp_path)
    assert short.returncode == 0, short.stderr
    same = cnnc(["train", "--resume", "extended", "--epochs", "1"], tmp_path)
    assert same.returncode == 1 and "has already trained 1 epochs; --epochs 1 would add none" in same.stderr
    extended = cnnc(["train", "--resume", "extended", "--epochs", "2", "--quiet"], tmp_path)
    assert extended.returncode == 0, extended.stderr
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "extended")
    assert b.finished and b.epoch == 2
    assert all(torch.equal(a.model_state[name], b.model_state[name]) for name in a.model_state)
    records = [json.loads(line) for line in (tmp_path / "extended" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records[:-1]] == [1, 2] and records[-1]["epochs_trained"] == 2
    settings = json.loads((tmp_path / "extended" / "settings.json").read_text())
    assert b.settings["train"]["epochs"] == 2 and b.settings["overrides"]["epochs"] == 2
    assert settings["train"]["epochs"] == 1  # settings.json describes how the run started


def test_resume_still_refuses_other_training_flags(capsys) -> None:
    assert main(["train", "--resume", "somewhere", "--epochs", "3", "--lr", "0.1"]) == 2
    assert "drop --lr" in capsys.readouterr().err
