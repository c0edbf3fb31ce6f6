"""Runs `cnnc` commands on hostile inputs inside one process, for tests/test_hostile.py.

    python tests/hostile_harness.py CASES.json RESULTS.json

CASES.json is a list of {"id", "argv"}. Each command runs through cnnc.cli.main with its output
captured; the result records the exit code, the stderr text, whether an exception escaped (a
traceback), the seconds it took (wall and CPU) and the process's peak resident memory (ru_maxrss) after it. The
peak never goes down, so a case that allocated too much shows in its own figure and every later one.
The caller sets RLIMIT_AS on this process, so that a case that tries to allocate gigabytes fails
here instead of exhausting the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time
import traceback


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ends(text: str) -> str:
    """The start and the end of a long output (the first error and the summary)."""
    return text if len(text) <= 6000 else f"{text[:3000]}\n[...]\n{text[-3000:]}"


def run(argv: list[str]) -> dict:
    from cnnc.cli import main

    out, err = io.StringIO(), io.StringIO()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    escaped = None
    code: int | str | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:  # noqa: BLE001 - what escapes main is exactly what the suite looks for
        code, escaped = None, traceback.format_exc()
    return {"code": code, "stderr": _ends(err.getvalue()), "stdout": _ends(out.getvalue()),
            "traceback": escaped, "seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu_started,
            "peak_mib": peak_mib()}


def main() -> None:
    cases_path, results_path = sys.argv[1:3]
    with open(cases_path) as file:
        cases = json.load(file)
    # Warm up: import what the commands import, so that a case's memory is its own.
    warm = cases[0].get("warm", [])
    for module in warm:
        __import__(module)
    results = {"baseline_mib": peak_mib(), "cases": {}}
    for case in cases:
        results["cases"][case["id"]] = run(case["argv"])
        with open(results_path, "w") as file:  # written as it goes: a crash keeps what ran
            json.dump(results, file)


if __name__ == "__main__":
    main()
