"""A run's plots (curves.png, confusion_matrix.png/json), drawn by a helper process when there is one.

Importing matplotlib takes most of a second of one core, and a run's cores are otherwise idle while
it imports torch (one core) and busy with both afterwards. `cnnc train` therefore starts this helper
(`python -m cnnc.training.plotter`) before it imports torch, so that matplotlib is imported on the
other core meanwhile; the curves are then drawn while the test set is evaluated. The helper draws
with the same functions (reporting.write_curves, reporting.write_confusion_matrix), so the files are
the same. Whatever the helper could not draw (it did not start, died, or failed) is drawn again in the
run's own process, so that a real error (a full disk, say) is raised there as it always was.

Protocol: one JSON job per line on the helper's stdin, one line back per job ("ok" or "error");
the helper ends at the end of its input, so it never outlives the run by more than the plot it is
drawing. It runs in a session of its own, so that the terminal's Ctrl-C reaches the run alone (which
handles it, and ends the helper). The run waits for it HELPER_TIMEOUT seconds at most, then draws
what is left itself: a helper that hangs cannot hang the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnc.training import reporting

# How the helper is started (bench/run_overhead.py starts it through itself, to time it).
HELPER_COMMAND = [sys.executable, "-m", "cnnc.training.plotter"]
# Seconds the run waits for the helper's plots (a second or two normally) before drawing them itself.
HELPER_TIMEOUT = 60.0


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
            process.kill()
            process.wait()

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
    """The helper process, started (None if it cannot be)."""
    try:
        return subprocess.Popen(HELPER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError:
        return None


def _finish(process: subprocess.Popen[str]) -> list[str]:
    """The helper's outcome per job, once it has drawn them all (fewer if it died, none if it timed out)."""
    try:
        output, _ = process.communicate(timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return []
    return [line.strip() for line in output.splitlines()]


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
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot  # noqa: F401 - imported now, while the run imports torch
    except Exception:  # noqa: BLE001 - every job is then reported failed, and drawn (and fails) in the run
        pass
    for line in sys.stdin:
        try:
            _draw(json.loads(line))
            outcome = "ok"
        except Exception:  # noqa: BLE001 - the run draws it again, and raises what it raises
            outcome = "error"
        print(outcome, file=replies, flush=True)


if __name__ == "__main__":
    _serve()
    # Its replies are flushed and its files closed: the run, which waits for it to end, need not
    # also wait for the interpreter's teardown of matplotlib (a third of a second).
    os._exit(0)
