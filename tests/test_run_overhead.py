"""What a run overlaps to cut its fixed cost: data loaded ahead (cnnc.datasets.standard.loading_ahead),
plots drawn by a helper process (cnnc.training.plotter), and the benchmark that times it all
(bench/run_overhead.py, run here on a tiny run only to show that its timers still find what they time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnc.datasets import standard
from cnnc.datasets.registry import MNIST
from cnnc.errors import CnncError
from cnnc.training import plotter, reporting
from cnnc.training.plotter import Plots

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ["CNNC_DATA"]) / "mnist"

HISTORY = [{"epoch": epoch, "train_loss": 1 / epoch, "train_accuracy": 0.9 + epoch / 100, "val_loss": None,
            "val_accuracy": None, "lr": 0.01, "seconds": 1.0, "images_per_second": 100.0} for epoch in (1, 2, 3)]
MATRIX = np.array([[50, 3, 0], [2, 40, 5], [0, 1, 60]], dtype=np.int64)
CLASSES = ("cat", "dog", "bird")


# --- data loaded ahead ---------------------------------------------------------------------------

def test_a_split_loaded_ahead_is_taken_by_load_standard_without_reading_again(monkeypatch) -> None:
    expected = standard.load_standard(MNIST, "test", MNIST_DIR, download=False, progress=False, mirror=None)
    with standard.loading_ahead(MNIST, ["test"], MNIST_DIR):
        key = ("mnist", "test", standard.resolve_directory(MNIST, MNIST_DIR))
        standard._AHEAD[key].result()  # loaded on the other thread
        monkeypatch.setattr(standard, "read_data_file", lambda *args: pytest.fail("read the files again"))
        loaded = standard.load_standard(MNIST, "test", MNIST_DIR, download=False, progress=False, mirror=None)
        assert key not in standard._AHEAD
    assert np.array_equal(loaded.images, expected.images) and np.array_equal(loaded.labels, expected.labels)


def test_a_split_that_fails_ahead_fails_again_where_it_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"\0" * 20)  # header only: truncated
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\1\0")

    def load():
        return standard.load_standard(MNIST, "test", tmp_path, download=False, progress=False, mirror=None)

    with pytest.raises(CnncError) as without:
        load()
    with standard.loading_ahead(MNIST, ["test"], tmp_path), pytest.raises(CnncError) as ahead:
        load()
    assert str(ahead.value) == str(without.value) and "t10k-images-idx3-ubyte" in str(ahead.value)


def test_what_is_not_taken_is_dropped_and_missing_files_are_left_to_the_load(tmp_path: Path) -> None:
    with standard.loading_ahead(MNIST, ["test"], MNIST_DIR):
        assert len(standard._AHEAD) == 1
    assert standard._AHEAD == {}
    with standard.loading_ahead(MNIST, ["train", "test"], tmp_path):  # nothing there: nothing loaded ahead
        assert standard._AHEAD == {}


# --- plots drawn by the helper process -------------------------------------------------------------

def _draw_all(plots: Plots, run_dir: Path) -> dict[str, bytes]:
    run_dir.mkdir()
    plots.curves(HISTORY, run_dir / reporting.CURVES, "model")
    plots.confusion_matrix(MATRIX, CLASSES, run_dir, "model")
    plots.wait()
    return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir())}


def test_the_helper_draws_the_same_files_as_drawing_here(tmp_path: Path) -> None:
    process = plotter.spawn_helper()
    assert process is not None
    by_helper = _draw_all(Plots(process), tmp_path / "helper")
    assert process.returncode == 0  # it drew them: nothing was left to draw here
    here = _draw_all(Plots(), tmp_path / "here")
    assert set(here) == {reporting.CURVES, reporting.CONFUSION_PNG, reporting.CONFUSION_JSON}
    assert by_helper == here
    assert json.loads(here[reporting.CONFUSION_JSON])["matrix"] == MATRIX.tolist()


def test_plots_of_a_helper_that_died_are_drawn_here(tmp_path: Path) -> None:
    process = plotter.spawn_helper()
    assert process is not None
    process.kill()
    process.wait()
    files = _draw_all(Plots(process), tmp_path / "run")
    assert set(files) == {reporting.CURVES, reporting.CONFUSION_PNG, reporting.CONFUSION_JSON}


def test_a_plot_the_helper_cannot_write_raises_here_as_drawing_here_does(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / reporting.CURVES
    plots = Plots(plotter.spawn_helper())
    plots.curves(HISTORY, missing, "model")
    with pytest.raises(FileNotFoundError) as helped:
        plots.wait()
    plots = Plots()
    plots.curves(HISTORY, missing, "model")
    with pytest.raises(FileNotFoundError) as here:
        plots.wait()
    assert str(helped.value) == str(here.value)


def test_closing_ends_the_helper_without_drawing(tmp_path: Path) -> None:
    process = plotter.spawn_helper()
    assert process is not None
    plots = Plots(process)
    plots.close()
    assert process.poll() is not None
    plots.wait()  # nothing was asked for: nothing to draw
    assert list(tmp_path.iterdir()) == []


# --- the benchmark ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_overhead_benchmark_times_every_phase_of_a_tiny_run(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run_overhead.py"), "--spec", "specs/xo.cnn",
                             "--runs", "1", "--limit-train", "64", "--limit-test", "20",
                             "--write", str(tmp_path / "report.md")],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    for phase in ("import torch", "spec check", "model build", "training steps", "evaluation", "plot curves.png",
                  "plot confusion_matrix.png/json", "checkpoint write", "whole process"):
        assert f"| {phase}" in report or f"**{phase}" in report, phase
    assert "wall / steps: median" in report
