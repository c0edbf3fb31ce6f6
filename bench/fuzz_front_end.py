"""A longer fuzz run of the front end than CI's: mutate every spec many times and check that the
compiler answers with diagnostics, never an exception.

    python bench/fuzz_front_end.py [--cases 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import mutate  # noqa: E402

from cnnc.compiler.check import check_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    specs = sorted((ROOT / "specs").glob("*.cnn"))
    os.chdir(ROOT / "specs")
    rng = random.Random(args.seed)
    start, failures, errors = time.perf_counter(), 0, 0
    for case in range(args.cases):
        spec = rng.choice(specs)
        text = mutate(spec.read_text(), rng)
        try:
            errors += check_file(spec.name, text=text).has_errors
        except Exception:  # noqa: BLE001 - finding these is the point
            failures += 1
            print(f"case {case} ({spec.name}) raised:\n{traceback.format_exc()}\n--- input ---\n{text}")
    elapsed = time.perf_counter() - start
    print(f"{args.cases} cases in {elapsed:.1f} s ({args.cases / elapsed:.0f}/s): "
          f"{errors} with errors, {args.cases - errors} clean, {failures} exceptions")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
