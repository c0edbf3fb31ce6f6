"""What a run does to cut its fixed cost: data loaded ahead (cnnc.datasets.standard.loading_ahead),
plots drawn by a helper process (cnnc.training.plotter), test evaluation in inference mode, no
interpreter teardown after `cnnc train` (cnnc.cli.program); that none of it changes what a run prints
or writes; and the benchmark that times it all (bench/run_overhead.py, run here on a tiny run only to
show that its timers still find what they time)."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_scripts import load_bench_script

from cnnc.cli import main
from cnnc.compiler.backends.pytorch import CnncModule, build_module
from cnnc.compiler.check import check_file
from cnnc.datasets import standard
from cnnc.datasets.registry import MNIST
from cnnc.errors import CnncError
from cnnc.imports import collector_paused
from cnnc.training import plotter, reporting
from cnnc.training.data import TensorSplit
from cnnc.training.distributed import World
from cnnc.training.plotter import Plots
from cnnc.training.reporting import Console
from cnnc.training.run import Execution, Session
from cnnc.training.settings import Overrides
from cnnc.training.trainer import Trainer

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


def test_the_helper_runs_with_one_openblas_thread(monkeypatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "8")
    monkeypatch.setattr(plotter, "HELPER_COMMAND",
                        [sys.executable, "-c", "import os; print(os.environ['OPENBLAS_NUM_THREADS'])"])
    helper = plotter.spawn_helper()
    assert helper is not None
    assert helper.communicate(timeout=60)[0].strip() == "1"


def test_closing_ends_the_helper_without_drawing(tmp_path: Path) -> None:
    process = plotter.spawn_helper()
    assert process is not None
    plots = Plots(process)
    plots.close()
    assert process.poll() is not None
    plots.wait()  # nothing was asked for: nothing to draw
    assert list(tmp_path.iterdir()) == []


def test_closing_after_plots_were_sent_lets_the_helper_finish_them(tmp_path: Path) -> None:
    process = plotter.spawn_helper()
    assert process is not None
    plots = Plots(process)
    plots.curves(HISTORY, tmp_path / reporting.CURVES, "model")
    plots.close()  # the run failed after sending them: no half-written plot is left behind
    assert process.returncode == 0
    _draw_all(Plots(), tmp_path / "here")
    assert (tmp_path / reporting.CURVES).read_bytes() == (tmp_path / "here" / reporting.CURVES).read_bytes()


def test_a_helper_that_hangs_is_given_up_and_the_plots_are_drawn_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(plotter, "HELPER_COMMAND", [sys.executable, "-c", "import time; time.sleep(600)"])
    monkeypatch.setattr(plotter, "HELPER_TIMEOUT", 1.0)
    process = plotter.spawn_helper()
    assert process is not None
    files = _draw_all(Plots(process), tmp_path / "run")
    assert process.returncode is not None  # ended, not left behind
    assert set(files) == {reporting.CURVES, reporting.CONFUSION_PNG, reporting.CONFUSION_JSON}


def meeting_draw(job: dict) -> None:
    """A stand-in for plotter._draw: writes this process's id to job["path"], then waits (5 s at most)
    for the other job's file, so that it succeeds only while the other job is being drawn too."""
    Path(job["path"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 5
    while not Path(job["other"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the other plot was not being drawn at the same time")
        time.sleep(0.01)


def test_the_helper_draws_each_plot_at_once_in_a_child_of_its_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(plotter, "DRAW_IN_CHILDREN", True)
    monkeypatch.setattr(plotter, "_draw", meeting_draw)
    first, second = tmp_path / "first", tmp_path / "second"
    drawings = [plotter._start_drawing(json.dumps({"path": str(first), "other": str(second)})),
                plotter._start_drawing(json.dumps({"path": str(second), "other": str(first)}))]
    assert [drawn() for drawn in drawings] == [True, True]
    drawers = {int(first.read_text()), int(second.read_text())}
    assert len(drawers) == 2 and os.getpid() not in drawers


def test_a_plot_that_fails_in_a_child_is_reported_as_not_drawn(tmp_path: Path, monkeypatch) -> None:
    def failing_draw(job: dict) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plotter, "DRAW_IN_CHILDREN", True)
    monkeypatch.setattr(plotter, "_draw", failing_draw)
    assert plotter._start_drawing("{}")() is False
    assert plotter._start_drawing("{not json")() is False


def test_a_helper_that_cannot_fork_draws_the_plot_itself(tmp_path: Path, monkeypatch) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(plotter, "DRAW_IN_CHILDREN", True)
    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(plotter, "_draw", lambda job: Path(job["path"]).write_text(str(os.getpid())))
    assert plotter._start_drawing(json.dumps({"path": str(tmp_path / "drawn")}))() is True
    assert (tmp_path / "drawn").read_text() == str(os.getpid())


def test_a_helper_that_hangs_is_ended_with_the_children_drawing_for_it(tmp_path: Path, monkeypatch) -> None:
    child_id = tmp_path / "child"
    hang = ("import os, sys, time\nchild = os.fork()\n"
            "if child: open(sys.argv[1], 'w').write(str(child))\ntime.sleep(600)\n")
    monkeypatch.setattr(plotter, "HELPER_COMMAND", [sys.executable, "-c", hang, str(child_id)])
    monkeypatch.setattr(plotter, "HELPER_TIMEOUT", 1.0)
    process = plotter.spawn_helper()
    assert process is not None
    _draw_all(Plots(process), tmp_path / "run")
    assert process.returncode == -signal.SIGKILL
    status = Path(f"/proc/{child_id.read_text()}/status")
    for _ in range(100):  # killed with the helper: gone, or a zombie that nothing has reaped yet
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the helper's child is still running: {status.read_text()}")


def test_a_run_sends_its_plots_once_the_test_set_is_evaluated(tmp_path: Path, monkeypatch) -> None:
    spec = tmp_path / "m.cnn"
    spec.write_text(TINY_XO)
    events: list[str] = []
    evaluate, curves, confusion = Trainer.evaluate, Plots.curves, Plots.confusion_matrix
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *args, **kwargs: (events.append("evaluate"),
                                                                              evaluate(self, *args, **kwargs))[1])
    monkeypatch.setattr(Plots, "curves", lambda self, *args: (events.append("curves"), curves(self, *args))[1])
    monkeypatch.setattr(Plots, "confusion_matrix",
                        lambda self, *args: (events.append("confusion"), confusion(self, *args))[1])
    assert main(["train", str(spec), "--limit-train", "128", "--limit-test", "32", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    assert events == ["evaluate", "curves", "confusion"]


# --- heavy imports with the garbage collector paused (cnnc.imports) -----------------------------------

def _module_making_cycles(directory: Path, name: str) -> str:
    """A module whose import makes 50,000 objects in reference cycles (and leaves them alive)."""
    (directory / f"{name}.py").write_text("class Node:\n    pass\n\nNODES = [Node() for _ in range(50_000)]\n"
                                          "for node in NODES:\n    node.self = node\n")
    return name


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of each garbage collection that starts while the test runs."""
    started: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(record)  # the collector calls the list it was given: in place, not replaced
    yield started
    gc.callbacks.remove(record)


def test_a_heavy_import_runs_without_collections_and_what_it_made_is_frozen(tmp_path: Path, monkeypatch,
                                                                             collections: list[int]) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _module_making_cycles(tmp_path, "cycles_paused")
    frozen = gc.get_freeze_count()
    try:
        with collector_paused(name):
            # counted from here: before the block, and once it has ended, a collection may start
            # (any allocation, on any thread, can start one)
            before = len(collections)
            importlib.import_module(name)
            assert not gc.isenabled()
            assert collections[before:] == []
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + 50_000
    finally:
        gc.unfreeze()  # the rest of the test session collects as before


def test_a_module_imported_already_or_a_collector_turned_off_is_left_as_it_is(tmp_path: Path, monkeypatch,
                                                                              collections: list[int]) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _module_making_cycles(tmp_path, "cycles_collected")
    frozen = gc.get_freeze_count()
    with collector_paused("json"):  # imported already: the block runs with the collector as it was
        importlib.import_module(name)
    assert collections and gc.isenabled() and gc.get_freeze_count() == frozen
    gc.disable()
    try:
        with collector_paused("cycles_not_imported"):
            pass
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()


@pytest.mark.parametrize("command", ["train", "export", "quantize"])
def test_the_commands_that_import_torch_do_it_with_the_collector_paused(tmp_path: Path, command: str) -> None:
    spec = tmp_path / "m.cnn"
    spec.write_text(TINY_XO)
    if command != "train":
        assert main(["train", str(spec), "--limit-train", "64", "--limit-test", "16", "--quiet",
                     "--out", str(tmp_path / "run")]) == 0
    arguments = {"train": [str(spec), "--limit-train", "64", "--limit-test", "16", "--quiet", "--out", "new"],
                 "export": ["run", "-o", "m.onnx"],
                 "quantize": ["run", "-o", "m.int8.onnx", "--calibration", "16", "--limit", "16", "--max-drop", "100"]
                 }[command]
    # A fresh process, in which the command is the first to import torch.
    script = ("import gc, json, sys\nfrom cnnc.cli import main\ncode = main(sys.argv[1:])\n"
              "print(json.dumps([code, gc.isenabled(), gc.get_freeze_count()]))")
    result = subprocess.run([sys.executable, "-c", script, command, *arguments], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    code, enabled, frozen = json.loads(result.stdout.splitlines()[-1])
    assert code == 0 and enabled, result.stderr
    assert frozen > 100_000  # torch's objects (about 300,000)


# --- what the overlaps must not change ---------------------------------------------------------------

def test_a_missing_spec_is_still_reported_after_what_the_run_checks_first(tmp_path, monkeypatch, capsys) -> None:
    # The spec is read before torch is imported (to load its data ahead); its errors are the run's to report.
    monkeypatch.chdir(tmp_path)
    code = main(["train", "missing.cnn", "--device", "cuda"])
    error = capsys.readouterr().err
    if torch.cuda.is_available():
        assert code == 2 and "no such spec file: missing.cnn" in error
    else:
        assert code == 1 and "--device cuda: CUDA is not available" in error


TINY_XO = """
model m {
    input glyph(1, 28, 28)
    conv(4, kernel=3, stride=2, padding=same, activation=relu)
    global_avgpool
    dense(2)
}
train {
    dataset xo
    epochs 1
    batch 64
}
"""


def test_a_run_with_the_helper_leaves_the_files_a_run_without_it_does(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "m.cnn"
    spec.write_text(TINY_XO)
    flags = ["--limit-train", "128", "--limit-test", "32", "--json"]
    # A fresh process starts the plot helper; this one, with matplotlib imported already, draws here.
    helped = subprocess.run([sys.executable, "-m", "cnnc", "train", str(spec), *flags, "--out", "helped"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and helped.stderr == "", helped.stderr
    assert json.loads(helped.stdout.splitlines()[-1])["event"] == "done"  # all printed before the quick exit
    import matplotlib.pyplot  # noqa: F401

    assert main(["train", str(spec), *flags, "--out", str(tmp_path / "here")]) == 0
    capsys.readouterr()

    def files(run_dir: Path) -> list[str]:
        return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*"))

    assert files(tmp_path / "helped") == files(tmp_path / "here")
    assert {reporting.CURVES, reporting.CONFUSION_PNG, reporting.CONFUSION_JSON} <= set(files(tmp_path / "here"))


BATCH_NORM_LOOKAHEAD = """
model m {
    input glyph(1, 28, 28)
    conv(4, kernel=3, stride=2, padding=same, bias=false) -> batchnorm -> relu
    global_avgpool
    dense(2)
}
train {
    dataset xo
    epochs 2
    batch 32
    validation 0.25
    lookahead(k=2)
}
"""


def batch_norm_session(tmp_path: Path, channels_last: bool) -> Session:
    """A session of BATCH_NORM_LOOKAHEAD on 128 of the xo training images, and 16 to test."""
    spec = tmp_path / "m.cnn"
    spec.write_text(BATCH_NORM_LOOKAHEAD)
    return Session.create(check_file(spec).program, Overrides(limit_train=128, limit_test=16),
                          Execution("cpu", channels_last=channels_last, compile=False, bf16=False), World(),
                          Console("quiet"), tmp_path / "run", str(spec))


def test_evaluation_in_inference_mode_leaves_the_weights_trainable(tmp_path: Path) -> None:
    # Tensors made under inference mode cannot be updated in place outside it: the batch-norm buffers
    # (broadcast by share_buffers and DDP) and the averaged weights must stay ordinary tensors.
    trainer = batch_norm_session(tmp_path, channels_last=False).trainer
    assert trainer.average is not None
    assert trainer._epoch(1)["val_accuracy"] is not None  # evaluated, under inference mode
    modules = (trainer.model, trainer.average.module)
    assert not [name for module in modules for name, tensor in module.state_dict().items() if tensor.is_inference()]
    statistics = trainer.model.state_dict()["batchnorm1.running_mean"]
    before = statistics.clone()
    trainer._epoch(2)  # updates the statistics in place again, as DDP's broadcast of them does
    assert not torch.equal(statistics, before)


def test_evaluation_runs_the_forward_pass_with_batch_norms_folded(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    session = batch_norm_session(tmp_path, channels_last=True)
    trainer = session.trainer
    trainer._epoch(1)
    taken: list[CnncModule] = []
    original = CnncModule.folded
    monkeypatch.setattr(CnncModule, "folded", lambda module: (taken.append(module), original(module))[1])
    test = TensorSplit.of(session.splits.test, trainer.device)
    loss, accuracy, _ = trainer.evaluate(test)
    assert taken == [trainer.evaluated_model()]
    model = trainer.evaluated_model().eval()
    with torch.inference_mode():
        logits = model(trainer.preparer(test.images, train=False))
        assert loss == pytest.approx(trainer.loss(logits, test.labels, reduction="sum").item() / len(test), rel=1e-5)
        assert accuracy == (logits.argmax(1) == test.labels).double().mean().item()


# --- the benchmark ---------------------------------------------------------------------------------

def test_the_benchmark_can_train_on_the_data_as_a_download_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # set by downloaded_copy: restored after the test
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # for its own imports
    benchmark = load_bench_script("run_overhead", monkeypatch)
    with benchmark.downloaded_copy(str(REPO / "specs" / "mnist_fast.cnn"), MNIST_DIR.parent) as directory:
        kept = sorted(path.name for path in Path(directory).iterdir())
        assert kept == sorted(path.name.removesuffix(".gz") for path in MNIST_DIR.glob("*-ubyte.gz"))
    assert not Path(directory).exists()


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
    assert "wall / steps: median" in report and "Python's garbage collector ran" in report


def test_the_hand_written_script_builds_the_specs_network() -> None:
    """bench/hand_mnist_fast.py's nn.Sequential, given the lowered mnist_fast's weights in order,
    computes what the lowered module computes: the comparison is between the same networks."""
    program = check_file(REPO / "specs" / "mnist_fast.cnn").program
    assert program is not None
    lowered = build_module(program.graph, seed=1).eval()
    hand = load_bench_script("hand_mnist_fast").network().eval()
    hand_state = [tensor for name, tensor in hand.state_dict().items() if not name.endswith("num_batches_tracked")]
    with torch.no_grad():
        for tensor in lowered.state_dict().values():
            if tensor.dim() == 1 and tensor.is_floating_point():  # batch norm's scales and statistics not 1 and 0
                tensor.uniform_(0.5, 1.5)
        for target, source in zip(hand_state, lowered.state_dict().values(), strict=True):
            target.copy_(source)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(hand(x), lowered(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_overhead_benchmark_runs_the_hand_written_script_beside_cnnc(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run_overhead.py"), "--data", str(MNIST_DIR),
                             "--runs", "1", "--limit-train", "256", "--limit-test", "100", "--hand-written",
                             "--write", str(tmp_path / "report.md")],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| 1 |") and line.count("|") == 9)
    cnnc_outside, _, wall, steps, outside = (float(cell.strip().removesuffix("x")) for cell in row.split("|")[2:7])
    assert 0 < steps < wall and outside == pytest.approx(wall - steps, abs=0.011)
    assert f"median: cnnc {cnnc_outside:.2f} s, the script {outside:.2f} s**" in report  # one run: its own
