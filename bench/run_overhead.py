"""The fixed cost of a run: the wall time of a whole `cnnc train` process against its training steps.

    python bench/run_overhead.py --data ../shared/data/mnist                  # mnist_fast, 5 runs
    python bench/run_overhead.py --data DIR --runs 7 --write bench/RUN_OVERHEAD.md
    python bench/run_overhead.py --download-from ../shared/data --runs 7   # MNIST as cnnc's download keeps it
    python bench/run_overhead.py --download-from ../shared/data --runs 7 --hand-written   # and beside a script
    python bench/run_overhead.py --spec specs/xo.cnn --runs 1 --limit-train 64  # a quick try (xo needs no files)

Each run is the command a user types, `python -m cnnc train SPEC --data DIR --out TMP --json`, in a
fresh process started in the repository's root (train_results.run_train: stdout a pipe, so no progress
bar, as in a log; SPEC and DIR are relative to the root). Its wall time is taken around the whole
process: interpreter start, imports, data, model, steps, test evaluation, plots, checkpoints, exit.
Its training-step time is read from the run's own metrics.jsonl: per epoch, the training images
divided by the epoch's images per second, which the trainer measures over its steps alone (no
validation). The ratio wall / steps is what a one-epoch run pays beyond its steps; the target for
mnist_fast is at most 1.25x. Each run's ratio is its own (wall and steps under the same load), and
the median and the best of the runs are reported.

With --hand-written, each plain run is followed by a run of bench/hand_mnist_fast.py on the same data:
the same epoch of mnist_fast as a hand-written PyTorch script, timed the same way, so that the report
shows what any PyTorch program pays outside its steps on the machine at that moment, beside cnnc.

After the plain runs, one more run, in this script's own process tree but as its own process,
breaks the time down: `--breakdown-child` runs `cnnc.cli.main` with timers wrapped around the
phases (an import hook wraps modules and functions the moment they are loaded, so that the run
imports and calls everything as it does on its own): importing torch and cnnc's training stage,
checking the spec, loading the data, building the model, the steps, test evaluation, each plot,
each checkpoint write, with the thread each ran on. Phases on another thread than the main one
overlap the main thread's work; the table says which. cnnc's plot helper process (see
cnnc.training.plotter) is started through this script too (`--helper-child`), so that its import of
matplotlib and its drawing (in its forked children, on Linux) are timed as well; they run alongside
the main process, which waits only for what is left of them ("waiting for the plots"). The timers
cost well under a millisecond.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import http.server
import importlib.abc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_results import run_timed, run_train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Modules whose loading is timed (inclusive of what they import), by the label reported.
TIMED_MODULES = {
    "torch": "import torch",
    "cnnc.training.run": "import cnnc.training.run (torch and the training stage)",
    "matplotlib.pyplot": "import matplotlib.pyplot",
    "torch._dynamo": "import torch._dynamo",
}
# Functions timed, as (module, attribute path, label): patched in their module as soon as it has run,
# before any other module binds them with `from ... import`.
TIMED_FUNCTIONS = (
    ("cnnc.compiler.check", "load_program", "spec check"),
    ("cnnc.training.data", "load_splits", "data load"),
    ("cnnc.datasets.standard", "_load", "data files read and decoded"),
    ("cnnc.compiler.backends.pytorch", "build_module", "model build"),
    ("cnnc.training.run", "Session.create", "session (data, model, trainer)"),
    ("cnnc.training.run", "Session.write_run_files", "run files (spec, IR, settings.json)"),
    ("cnnc.training.trainer", "Trainer._steps", "training steps"),
    ("cnnc.training.trainer", "Trainer.evaluate", "evaluation"),
    ("cnnc.training.reporting", "write_curves", "plot curves.png"),
    ("cnnc.training.reporting", "write_confusion_matrix", "plot confusion_matrix.png/json"),
    ("cnnc.training.checkpoint", "save_checkpoint", "checkpoint write"),
    ("cnnc.training.plotter", "Plots.wait", "waiting for the plots"),
)
HELPER_THREAD = "plot helper process"
HELPER_CHILD_THREAD = "child of the plot helper"
# The same epoch of mnist_fast as a hand-written PyTorch script (--hand-written).
HAND_WRITTEN = ROOT / "bench" / "hand_mnist_fast.py"
HAND_WRITTEN_SPEC = "specs/mnist_fast.cnn"
# How the report names the temporary directory that --download-from trains on.
DOWNLOADED = "DOWNLOADED"


# --- the breakdown child ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    label: str
    thread: str
    start: float  # time.monotonic(), shared by the processes of one machine
    end: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Recorder:
    def __init__(self) -> None:
        self.intervals: list[Interval] = []
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def timing(self, label: str):
        start = time.monotonic()
        try:
            yield
        finally:
            interval = Interval(label, threading.current_thread().name, start, time.monotonic())
            with self.lock:
                self.intervals.append(interval)

    def wrap(self, function: Callable, label: str) -> Callable:
        def timed(*args, **kwargs):
            with self.timing(label):
                return function(*args, **kwargs)
        timed.__wrapped__ = function  # type: ignore[attr-defined]
        return timed


class TimingFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asks the finders after it, then times the module's execution and patches
    its timed functions right after it."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.functions: dict[str, list[tuple[str, str]]] = {}
        for module, attribute, label in TIMED_FUNCTIONS:
            self.functions.setdefault(module, []).append((attribute, label))
        self.patched: set[str] = set()
        self.helper_report: Path | None = None  # where the plot helper, if started, writes its intervals

    def find_spec(self, name, path, target=None):
        if name not in TIMED_MODULES and name not in self.functions:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module) -> None:
            if name in TIMED_MODULES:
                with self.recorder.timing(TIMED_MODULES[name]):
                    execute(module)
            else:
                execute(module)
            self._patch(name, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def _patch(self, name: str, module) -> None:
        if name == "cnnc.training.plotter" and self.helper_report is not None:
            # cnnc's plot helper process, started through this script so that its phases are timed too
            module.HELPER_COMMAND = [sys.executable, str(Path(__file__).resolve()), "--helper-child",
                                     str(self.helper_report)]
        for attribute, label in self.functions.get(name, ()):
            owner, _, function_name = attribute.rpartition(".")
            holder = getattr(module, owner) if owner else module
            setattr(holder, function_name, self.recorder.wrap(getattr(holder, function_name), label))
            self.patched.add(f"{name}.{attribute}")


def helper_child(report: Path) -> NoReturn:
    """Serve as cnnc's plot helper with its phases timed; write the intervals to `report`."""
    recorder = Recorder()
    sys.meta_path.insert(0, TimingFinder(recorder))
    threading.current_thread().name = HELPER_THREAD
    from cnnc.training import plotter

    helper = os.getpid()
    draw = plotter._draw

    def draw_and_report(job) -> None:
        """Draw; in a child of the helper (cnnc.training.plotter.DRAW_IN_CHILDREN), which ends without
        returning here, write what was timed to a report of its own first."""
        first = len(recorder.intervals)
        if os.getpid() != helper:
            threading.current_thread().name = HELPER_CHILD_THREAD
        try:
            draw(job)
        finally:
            if os.getpid() != helper:
                report.with_name(f"{report.stem}-{os.getpid()}.json").write_text(
                    json.dumps([interval.to_json() for interval in recorder.intervals[first:]]))

    plotter._draw = draw_and_report
    plotter._serve()
    report.write_text(json.dumps([interval.to_json() for interval in recorder.intervals]))
    os._exit(0)  # as the helper does (see the end of cnnc/training/plotter.py)


class CollectionTimer:
    """The passes of Python's cyclic garbage collector in this process, and their seconds in all."""

    def __init__(self) -> None:
        self.passes, self.seconds, self.started = 0, 0.0, 0.0
        gc.callbacks.append(self.observe)

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.passes += 1
            self.seconds += time.perf_counter() - self.started


def breakdown_child(report: Path, argv: list[str]) -> NoReturn:
    """Run `cnnc <argv>` in this process with the phases timed; write the intervals to `report`."""
    started = time.monotonic()
    collections = CollectionTimer()
    recorder = Recorder()
    finder = TimingFinder(recorder)
    finder.helper_report = report.with_name(report.stem + "-helper.json")
    sys.meta_path.insert(0, finder)
    from cnnc.cli import main

    with contextlib.redirect_stdout(sys.stderr):
        code = main(argv)
    ended = time.monotonic()
    expected = {f"{module}.{attribute}" for module, attribute, _ in TIMED_FUNCTIONS}
    for helper_report in sorted(report.parent.glob(f"{finder.helper_report.stem}*.json")):  # its children's too
        recorder.intervals += [Interval(**interval) for interval in json.loads(helper_report.read_text())]
    report.write_text(json.dumps({
        "code": code, "started": started, "ended": ended, "main_thread": threading.main_thread().name,
        "unpatched": sorted(expected - finder.patched),
        "collections": {"passes": collections.passes, "seconds": collections.seconds},
        "intervals": [interval.to_json() for interval in recorder.intervals],
    }))
    sys.stderr.flush()
    os._exit(code)  # as cnnc.cli.program does after cnnc train: no interpreter teardown


# --- the parent: plain runs and the breakdown -------------------------------------------------------

@dataclass(frozen=True)
class Run:
    wall: float
    steps: float
    test_accuracy: float

    @property
    def ratio(self) -> float:
        return self.wall / self.steps


def train_arguments(spec: str, data: str | None, out: Path, extra: Sequence[str]) -> list[str]:
    """`cnnc train`'s arguments for one run (train_results.run_train adds --json)."""
    return [spec, *(["--data", data] if data else []), "--out", str(out), *extra]


def plain_run(spec: str, data: str | None, out: Path, extra: Sequence[str]) -> Run:
    run = run_train(train_arguments(spec, data, out, extra), f"cnnc train {spec}")
    return Run(run.wall_seconds, step_seconds(out), run.final["test_accuracy"])


def hand_written_run(data: str, extra: Sequence[str]) -> Run:
    """One run of bench/hand_mnist_fast.py (mnist_fast as a hand-written PyTorch script), timed as a
    plain run is; its steps are timed by the script around its training loop."""
    wall, stdout = run_timed([sys.executable, str(HAND_WRITTEN), "--data", data, *extra], HAND_WRITTEN.name)
    result = json.loads(stdout.splitlines()[-1])
    return Run(wall, result["steps_seconds"], result["test_accuracy"])


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_seconds(run_dir: Path) -> float:
    """The run's training-step time: each epoch's training images over its images per second."""
    settings = json.loads((run_dir / "settings.json").read_text())
    train_examples = settings["data"]["train_examples"]
    return sum(train_examples / record["images_per_second"] for record in _records(run_dir) if "epoch" in record
               and "images_per_second" in record)


def breakdown_run(spec: str, data: str | None, out: Path, extra: Sequence[str]) -> dict[str, Any]:
    report = out.with_suffix(".json")
    command = [sys.executable, str(Path(__file__).resolve()), "--breakdown-child", str(report), "--",
               "train", *train_arguments(spec, data, out, extra), "--json"]
    spawned = time.monotonic()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    exited = time.monotonic()
    if finished.returncode != 0:
        raise SystemExit(f"the breakdown run failed ({finished.returncode}):\n{finished.stderr}")
    result = json.loads(report.read_text())
    if result["unpatched"]:
        raise SystemExit(f"the breakdown found no {', '.join(result['unpatched'])}: update TIMED_FUNCTIONS")
    return {**result, "spawned": spawned, "exited": exited, "steps": step_seconds(out)}


def breakdown_table(result: dict[str, Any]) -> list[str]:
    """One row per timed phase, in the order they started, offsets from the process's spawn."""
    zero = result["spawned"]
    main = result["main_thread"]
    rows = [("python start-up (to the script's first line)", main, 0.0, result["started"] - zero)]
    for interval in sorted(result["intervals"], key=lambda interval: interval["start"]):
        rows.append((interval["label"], interval["thread"], interval["start"] - zero,
                     interval["end"] - interval["start"]))
    rows.append(("exit (after cnnc's main returned)", main, result["ended"] - zero, result["exited"] - result["ended"]))
    lines = ["| phase | thread | starts at (s) | seconds |", "| --- | --- | ---: | ---: |"]
    for label, thread, start, seconds in rows:
        where = "main" if thread == main else f"{thread} (alongside main)"
        lines.append(f"| {label} | {where} | {start:.2f} | {seconds:.2f} |")
    wall = result["exited"] - zero
    lines.append(f"| **whole process** | | | **{wall:.2f}** (steps {result['steps']:.2f}: "
                 f"{wall / result['steps']:.2f}x) |")
    collections = result["collections"]
    lines += ["", f"Python's garbage collector ran {collections['passes']} times in the main process, for "
                  f"{collections['seconds']:.3f} s in all."]
    return lines


@contextlib.contextmanager
def downloaded_copy(spec: str, root: Path) -> Iterator[str]:
    """The spec's dataset as a cnnc download leaves it: fetched by cnnc's own download
    (cnnc.datasets.load_dataset with download=True) from `root`, laid out as a data root
    (ROOT/mnist/...), served over HTTP on 127.0.0.1, into a temporary directory; yields that
    directory, for --data."""
    from cnnc.compiler.check import check_file
    from cnnc.datasets import load_dataset
    from cnnc.training.settings import Overrides, effective_config

    program = check_file(Path(spec)).program
    dataset = effective_config(program.train, Overrides()).dataset if program and program.train else None
    if dataset is None:
        raise SystemExit(f"{spec} names no dataset to download")
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1"  # a proxy from the environment must not see it
    with tempfile.TemporaryDirectory(prefix="cnnc-downloaded-") as directory:
        with _serving(root) as url:
            for split in ("train", "test"):
                load_dataset(dataset.name, split, directory, download=True, progress=False, mirror=url)
        yield directory


@contextlib.contextmanager
def _serving(root: Path) -> Iterator[str]:
    """An HTTP server for `root` on 127.0.0.1 while the block runs; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


def versions() -> str:
    import numpy
    import torch

    import cnnc

    try:
        import matplotlib
        plotting = f", matplotlib {matplotlib.__version__}"
    except ImportError:
        plotting = ""
    return (f"cnnc {cnnc.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {numpy.__version__}{plotting}, Python {platform.python_version()}")


def machine() -> str:
    from cnnc.runtime.measure import machine as describe

    return describe()


def report(spec: str, data: str | None, extra: Sequence[str], runs: list[Run], hand_runs: list[Run],
           breakdown: dict[str, Any], loads: tuple[tuple[float, ...], tuple[float, ...]], command: str,
           download_from: str | None) -> str:
    ratios = [run.ratio for run in runs]
    fastest = min(runs, key=lambda run: run.wall)
    shown = " ".join(["-m cnnc train", *train_arguments(spec, data, Path("RUN_DIR"), extra), "--json"])
    lines = [
        "# The fixed cost of a run",
        "",
        f"Measured with `{command}` (the method is in the script's docstring). Each run is "
        f"`python {shown}` in a fresh process; *wall* is the whole process, *steps* the training steps' "
        "time from the run's metrics.jsonl."
        + (f" {DOWNLOADED} is a temporary directory that cnnc's download filled from {download_from} (served on "
           "127.0.0.1) before the runs: the data as a download leaves it." if download_from else ""),
        "",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- load average (1, 5, 15 min) at the start: {', '.join(f'{value:.2f}' for value in loads[0])}; "
        f"at the end: {', '.join(f'{value:.2f}' for value in loads[1])}",
        "",
        "| run | wall (s) | steps (s) | outside the steps (s) | wall / steps | test accuracy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number, run in enumerate(runs, 1):
        lines.append(f"| {number} | {run.wall:.2f} | {run.steps:.2f} | {run.wall - run.steps:.2f} | {run.ratio:.2f}x "
                     f"| {run.test_accuracy:.2%} |")
    lines += [
        "",
        f"**wall / steps: median {statistics.median(ratios):.2f}x, best {min(ratios):.2f}x, worst "
        f"{max(ratios):.2f}x** over {len(runs)} runs (the fastest run: {fastest.wall:.2f} s wall, "
        f"{fastest.steps:.2f} s of steps, {fastest.ratio:.2f}x); outside the steps: median "
        f"{statistics.median(run.wall - run.steps for run in runs):.2f} s.",
        "",
        *(hand_written_section(runs, hand_runs, data, extra) if hand_runs else []),
        "## Where the time goes (one more run, timed phase by phase)",
        "",
        *breakdown_table(breakdown),
        "",
    ]
    return "\n".join(lines)


def hand_written_section(runs: list[Run], hand_runs: list[Run], data: str | None, extra: Sequence[str]) -> list[str]:
    """The plain runs beside the hand-written script's, run N of each one after the other."""
    script = " ".join(["python", str(HAND_WRITTEN.relative_to(ROOT)), "--data", str(data), *extra])
    lines = [
        "## Beside a hand-written PyTorch script",
        "",
        f"After each plain run, `{script}`: the same epoch of the same network, written as the PyTorch "
        "tutorials write it (NCHW, torch.optim, a plain loop, the test set in batches of 1000 under no_grad; "
        "no plots, checkpoints or run files), in a fresh process timed the same way. Its steps are timed "
        "around its training loop.",
        "",
        "| run | cnnc: outside the steps (s) | cnnc: wall / steps | script: wall (s) | script: steps (s) "
        "| script: outside the steps (s) | script: wall / steps | script: test accuracy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number, (run, hand) in enumerate(zip(runs, hand_runs), 1):
        lines.append(f"| {number} | {run.wall - run.steps:.2f} | {run.ratio:.2f}x | {hand.wall:.2f} | {hand.steps:.2f} "
                     f"| {hand.wall - hand.steps:.2f} | {hand.ratio:.2f}x | {hand.test_accuracy:.2%} |")
    return lines + [
        "",
        f"**Outside the steps, median: cnnc {statistics.median(run.wall - run.steps for run in runs):.2f} s, the "
        f"script {statistics.median(hand.wall - hand.steps for hand in hand_runs):.2f} s**; wall / steps, median: "
        f"cnnc {statistics.median(run.ratio for run in runs):.2f}x, the script "
        f"{statistics.median(hand.ratio for hand in hand_runs):.2f}x.",
        "",
    ]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--breakdown-child":
        breakdown_child(Path(sys.argv[2]), sys.argv[4:])
    if len(sys.argv) > 1 and sys.argv[1] == "--helper-child":
        helper_child(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="specs/mnist_fast.cnn", help="the spec to train (default: mnist_fast)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", help="the dataset's directory (passed to cnnc train --data)")
    data.add_argument("--download-from", metavar="ROOT",
                      help="have cnnc download the dataset from ROOT (a data root's layout, served on 127.0.0.1) "
                           "into a temporary directory first, and train on that: the data as a download leaves it")
    parser.add_argument("--runs", type=int, default=5, help="plain runs (default: 5)")
    parser.add_argument("--limit-train", type=int, help="train on the first N images only (for a quick try)")
    parser.add_argument("--limit-test", type=int, help="test on the first N images only (for a quick try)")
    parser.add_argument("--hand-written", action="store_true",
                        help=f"after each plain run, run {HAND_WRITTEN.name} (mnist_fast as a hand-written PyTorch "
                             "script) on the same data, and compare")
    parser.add_argument("--write", metavar="FILE", help="also write the report as markdown to FILE")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    if args.hand_written and (args.spec != HAND_WRITTEN_SPEC or not (args.data or args.download_from)):
        parser.error(f"--hand-written compares {HAND_WRITTEN_SPEC} only, and needs --data or --download-from")
    extra = [*(["--limit-train", str(args.limit_train)] if args.limit_train else []),
             *(["--limit-test", str(args.limit_test)] if args.limit_test else [])]
    runs, hand_runs = [], []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnnc-run-overhead-")))
        data = args.data
        if args.download_from:
            data = stack.enter_context(downloaded_copy(args.spec, Path(args.download_from)))
        loads = os.getloadavg()
        for number in range(1, args.runs + 1):
            run = plain_run(args.spec, data, scratch / f"run{number}", extra)
            print(f"run {number}: wall {run.wall:.2f} s, steps {run.steps:.2f} s, {run.ratio:.2f}x "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
            runs.append(run)
            if args.hand_written:
                hand = hand_written_run(data, extra)
                print(f"script {number}: wall {hand.wall:.2f} s, steps {hand.steps:.2f} s, {hand.ratio:.2f}x",
                      flush=True)
                hand_runs.append(hand)
        breakdown = breakdown_run(args.spec, data, scratch / "breakdown", extra)
    command = "python bench/run_overhead.py " + " ".join(sys.argv[1:])
    text = report(args.spec, DOWNLOADED if args.download_from else args.data, extra, runs, hand_runs, breakdown,
                  (loads, os.getloadavg()), command, args.download_from)
    print(text)
    if args.write:
        write_keeping_notes(Path(args.write), text)
        print(f"wrote {args.write}")
    return 0


NOTES = "## Notes (written by hand)"


def write_keeping_notes(path: Path, text: str) -> None:
    """Write the report to `path`, keeping the hand-written notes at the end of the file it replaces."""
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    path.write_text(text + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    sys.exit(main())
