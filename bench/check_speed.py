"""How long `cnnc check` takes, interpreter start included, on each spec (largest last).

    python bench/check_speed.py [--runs 10]

Prints the median wall time of `python -m cnnc check SPEC` per spec, and whether torch, onnx or
onnxruntime were imported (they must not be: the front end never pays for them).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import sys, runpy; sys.argv = ['cnnc', 'check', {spec!r}]\n"
         "try:\n    runpy.run_module('cnnc', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('heavy:' + ','.join(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules), file=sys.stderr)")


def time_check(spec: Path, runs: int) -> tuple[float, str]:
    times, heavy = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE.format(spec=str(spec))], cwd=ROOT,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        heavy = done.stderr.rsplit("heavy:", 1)[-1].strip()
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    specs = sorted((ROOT / "specs").glob("*.cnn"), key=lambda p: len(p.read_text()))
    baseline = statistics.median(
        _time([sys.executable, "-c", "pass"]) for _ in range(args.runs))
    print(f"python {platform.python_version()} on {platform.machine()}, {args.runs} runs each; "
          f"bare interpreter start: {baseline * 1000:.0f} ms")
    for spec in specs:
        seconds, heavy = time_check(spec.relative_to(ROOT), args.runs)
        print(f"{spec.name:24s} {seconds * 1000:6.0f} ms   heavy imports: {heavy or 'none'}")


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
