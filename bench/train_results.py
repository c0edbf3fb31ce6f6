"""Shared by the training benchmarks (bench/train_*.py): the machine's description and RESULTS.md's sections.

Each benchmark owns one section of bench/RESULTS.md, between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`, and rewrites only that, so that several benchmarks share the file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine_description() -> str:
    import numpy
    import torch

    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {numpy.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}")


@dataclass(frozen=True)
class TrainRun:
    """A finished `cnnc train --json` process: how it was called, its wall time, its events."""

    command: str  # as a person would type it
    wall_seconds: float
    epochs: list[dict]
    final: dict


def run_timed(command: list[str], label: str) -> tuple[float, str]:
    """(wall seconds, stdout) of `command` run from the repository's root; exits on failure."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def run_train(arguments: list[str], label: str) -> TrainRun:
    """`python -m cnnc train ARGUMENTS --json` from the repository's root, timed; exits on failure."""
    command = [sys.executable, "-m", "cnnc", "train", *arguments, "--json"]
    wall, stdout = run_timed(command, label)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return TrainRun(" ".join(["python -m cnnc", *command[3:]]), wall,
                    [event for event in events if event["event"] == "epoch"],
                    next(event for event in events if event["event"] == "done"))


def replace_section(path: Path, name: str, text: str) -> None:
    """Put `text` between the section's markers, appending the section if the file lacks it."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    path.write_text(current)
