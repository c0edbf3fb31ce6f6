"""A run's plots (curves.png, confusion_matrix.png/json), drawn by a helper process when there is one.

Importing matplotlib takes most of a second of one core, and a run's cores are otherwise idle while
it imports torch (one core) and busy with both afterwards. `cnnc train` therefore starts this helper
(`python -m cnnc.training.plotter`) before it imports torch, so that matplotlib is imported on the
other core meanwhile. The run sends both plots once the test set is evaluated, and on Linux the
helper draws each in a child of its own (fork: matplotlib stays imported), so that they are drawn at
once, one per core. Drawn during the evaluation instead, the curves took from its two threads about
as long as they took to draw (bench/RUN_OVERHEAD.md). The helper draws with the same functions
(reporting.write_curves, reporting.write_confusion_matrix), so the files are the same. Whatever the
helper could not draw (it did not start, died, or failed) is drawn again in the run's own process, so
that a real error (a full disk, say) is raised there as it always was.

Protocol: one JSON job per line on the helper's stdin; at the end of its input, once every job is
drawn, one line back per job, in order ("ok" or "error"), and the helper ends, so it never outlives the
run by more than the plots it is drawing. It runs in a session of its own, so that the terminal's
Ctrl-C reaches the run alone (which handles it, and ends the helper). The run waits for it
HELPER_TIMEOUT seconds at most, then ends it and its children and draws what is left itself: a helper
that hangs cannot hang the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnc.imports import collector_paused
from cnnc.training import reporting

# How the helper is started (bench/run_overhead.py starts it through itself, to time it).
HELPER_COMMAND = [sys.executable, "-m", "cnnc.training.plotter"]
# Seconds the run waits for the helper's plots (a second or two normally) before drawing them itself.
HELPER_TIMEOUT = 60.0
# Whether the helper draws each plot in a forked child: not where fork without exec is unsafe (macOS's
# system libraries) or missing (Windows).
DRAW_IN_CHILDREN = sys.platform == "linux"


class Plots:
    """Draws the plots: in the helper process when one was started, else here, when waited for."""

    def __init__(self, process: subprocess.Popen[str] | None = None) -> None:
        self.process = process
        self.jobs: list[tuple[Callable[[], None], bool]] = []  # (how to draw it here, whether the helper has it)

    @staticmethod
    def start_helper() -> Plots:
        """Plots with a helper process started now (without one if it cannot start, or if this process
        has imported matplotlib already, so that drawing here costs little)."""
        return Plots(None if "matplotlib.pyplot" in sys.modules else spawn_helper())

    def curves(self, history: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
        history = [dict(record) for record in history]
        job = {"plot": "curves", "history": history, "path": str(path), "title": title}
        self._submit(job, lambda: reporting.write_curves(history, path, title))

    def confusion_matrix(self, matrix: np.ndarray, classes: Sequence[str], run_dir: Path, title: str) -> None:
        job = {"plot": "confusion", "matrix": matrix.astype(np.int64).tolist(), "classes": list(classes),
               "run_dir": str(run_dir), "title": title}
        self._submit(job, lambda: reporting.write_confusion_matrix(matrix, classes, run_dir, title))

    def wait(self) -> None:
        """Return once every plot asked for is drawn, in the order asked; raises what drawing one here
        raises (each one the helper did not draw is drawn here)."""
        process, self.process = self.process, None
        outcomes = iter(_finish(process) if process is not None else [])
        jobs, self.jobs = self.jobs, []
        for draw_here, sent in jobs:
            if not sent or next(outcomes, "error") != "ok":
                draw_here()

    def close(self) -> None:
        """End the helper (the run stopped before it waited for the plots): at once when it was sent
        nothing, else once it has drawn what it was sent, so that no plot is left half-written."""
        process, self.process = self.process, None
        if process is None:
            return
        if any(sent for _, sent in self.jobs):
            _finish(process)
        elif process.poll() is None:
            _kill(process)

    def _submit(self, job: dict[str, Any], draw_here: Callable[[], None]) -> None:
        sent = False
        if self.process is not None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps(job) + "\n")
                self.process.stdin.flush()
                sent = True
            except OSError:  # the helper has died: what it was sent is drawn here too
                pass
        self.jobs.append((draw_here, sent))


def spawn_helper() -> subprocess.Popen[str] | None:
    """The helper process, started (None if it cannot be).

    It runs with one OpenBLAS thread: numpy's OpenBLAS starts a thread per core at import, which spin
    for work the helper never gives them, on the cores the run is importing torch and loading data on
    (0.15-0.3 s of CPU, measured with /usr/bin/time on the helper alone)."""
    try:
        return subprocess.Popen(HELPER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                start_new_session=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    except OSError:
        return None


def _finish(process: subprocess.Popen[str]) -> list[str]:
    """The helper's outcome per job, once it has drawn them all (fewer if it died, none if it timed out)."""
    try:
        output, _ = process.communicate(timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(process)
        return []
    return [line.strip() for line in output.splitlines()]


def _kill(process: subprocess.Popen[str]) -> None:
    """End the helper and the children drawing for it (its session is their process group), so that
    none of them writes a plot while the run draws it again."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    else:
        process.kill()
    process.wait()


# --- the helper process ---------------------------------------------------------------------------

def _draw(job: Mapping[str, Any]) -> None:
    if job["plot"] == "curves":
        reporting.write_curves(job["history"], Path(job["path"]), job["title"])
    else:
        reporting.write_confusion_matrix(np.array(job["matrix"], dtype=np.int64), job["classes"],
                                         Path(job["run_dir"]), job["title"])


def _serve() -> None:
    replies, sys.stdout = sys.stdout, sys.stderr  # what a library prints must not pass for a reply
    try:
        with collector_paused("matplotlib.pyplot"):
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot  # noqa: F401 - imported now, while the run imports torch
    except Exception:  # noqa: BLE001 - every job is then reported failed, and drawn (and fails) in the run
        pass
    drawings = [_start_drawing(line) for line in sys.stdin]
    for drawn in drawings:
        print("ok" if drawn() else "error", file=replies, flush=True)


def _start_drawing(job: str) -> Callable[[], bool]:
    """Start drawing `job`, a line of JSON (in a forked child when DRAW_IN_CHILDREN); a function that
    waits for it and says whether it was drawn."""
    child = _forked() if DRAW_IN_CHILDREN else None
    if child is None:
        drawn = _drew(job)
        return lambda: drawn
    if child == 0:
        drawn = False
        try:
            drawn = _drew(job)
        finally:
            os._exit(0 if drawn else 1)  # no teardown, and no flush of buffers copied from the parent
    return lambda: os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


def _forked() -> int | None:
    """os.fork()'s result, or None when no process can be made now (the plot is then drawn here)."""
    try:
        return os.fork()
    except OSError:
        return None


def _drew(job: str) -> bool:
    try:
        _draw(json.loads(job))
        return True
    except Exception:  # noqa: BLE001 - the run draws it again, and raises what it raises
        return False


if __name__ == "__main__":
    _serve()
    # Its replies are flushed and its files closed: the run, which waits for it to end, need not
    # also wait for the interpreter's teardown of matplotlib (a third of a second).
    os._exit(0)
