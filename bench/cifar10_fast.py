"""specs/cifar10_fast.cnn against its target: at least 90% CIFAR-10 test accuracy within 10 minutes of
`cnnc train` wall time, for each of several seeds, on this machine.

    python bench/cifar10_fast.py --data ../shared/data/cifar-10              # seeds 0 1 2
    python bench/cifar10_fast.py --data ../shared/data/cifar-10 --seeds 3    # more seeds
    python bench/cifar10_fast.py --data ../shared/data/cifar-10 --epochs 8   # the curve: fewer epochs
    python bench/cifar10_fast.py --write-only                                # rewrite the report

Each run is `python -m cnnc train specs/cifar10_fast.cnn --seed S --data DATA --json --out RUN`, timed
from the process's start to its exit (imports, data loading, whitening, training, the test with
test-time augmentation, plots and checkpoints included). The machine's load is sampled every 5 s
during each run, because another job on the two cores slows a run down and would void its time.
Results accumulate in bench/cifar10_fast.json (one entry per seed and epoch count, the latest run); the
report is bench/CIFAR10_FAST.md. Runs with --epochs (the schedule recomputed for that many epochs) trace
accuracy against time; only the spec's own epoch count counts for the target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_results import machine_description, run_train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/cifar10_fast.cnn"
RESULTS_JSON = ROOT / "bench" / "cifar10_fast.json"
REPORT = ROOT / "bench" / "CIFAR10_FAST.md"
NOTES = ROOT / "bench" / "cifar10_fast_notes.md"  # what the person who ran it observed, appended to the report
TARGET_ACCURACY = 0.90
TARGET_SECONDS = 600.0
LOAD_SAMPLE_SECONDS = 5.0


class LoadSampler:
    """The 1-minute load average, sampled in a thread while a run goes on."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_SECONDS):
            self.samples.append(os.getloadavg()[0])


def result_key(seed: int, epochs: int | None) -> str:
    return str(seed) if epochs is None else f"{seed}:{epochs}ep"


def train(seed: int, epochs: int | None, data: str, extra: list[str]) -> dict:
    run_dir = ROOT / "runs" / "bench-cifar10-fast" / result_key(seed, epochs).replace(":", "-")
    if epochs is not None:
        extra = ["--epochs", str(epochs), *extra]
    shutil.rmtree(run_dir, ignore_errors=True)
    load_before = os.getloadavg()[0]
    with LoadSampler() as load:
        run = run_train([SPEC, "--seed", str(seed), "--data", data, "--out", str(run_dir.relative_to(ROOT)), *extra],
                        f"seed {seed}")
    return {
        "seed": seed,
        "command": run.command,
        "test_accuracy": run.final["test_accuracy"],
        "epochs": len(run.epochs),
        "epochs_override": epochs is not None,
        "wall_seconds": run.wall_seconds,
        "train_seconds": sum(event["seconds"] for event in run.epochs),
        "load_before": load_before,
        "load_max": max(load.samples, default=load_before),
        "load_mean": sum(load.samples) / len(load.samples) if load.samples else load_before,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
    }


TABLE_HEAD = ("| seed | test accuracy | wall time | training steps | epochs | load avg before / mean / max | met "
              "| date |")
TABLE_RULE = "| --- | --- | --- | --- | --- | --- | --- | --- |"


def meets_target(r: dict) -> bool:
    return r["test_accuracy"] >= TARGET_ACCURACY and r["wall_seconds"] <= TARGET_SECONDS


def row(r: dict, met: str) -> str:
    return (f"| {r['seed']} | {r['test_accuracy']:.2%} | {r['wall_seconds']:.0f} s | {r['train_seconds']:.0f} s | "
            f"{r['epochs']} | {r['load_before']:.2f} / {r['load_mean']:.2f} / {r['load_max']:.2f} | {met} | "
            f"{r['date']} |")


def report(results: dict[str, dict]) -> str:
    ordered = [results[key] for key in sorted(results, key=lambda key: (results[key]["seed"], results[key]["epochs"]))]
    runs = [r for r in ordered if not r.get("epochs_override")]
    met = [meets_target(r) for r in runs]
    lines = [
        "# cifar10_fast: CIFAR-10 on two CPU cores",
        "",
        f"Target: at least {TARGET_ACCURACY:.0%} test accuracy within {TARGET_SECONDS / 60:.0f} minutes of "
        "`cnnc train` wall time (the whole process: imports, data, whitening, training, the test with test-time "
        "augmentation, plots, checkpoints), for every seed. Written by `python bench/cifar10_fast.py`.",
        "",
        f"Result: {sum(met)} of {len(runs)} seeds met it.",
        "",
        TABLE_HEAD,
        TABLE_RULE,
    ]
    lines += [row(r, "yes" if ok else "**no**") for r, ok in zip(runs, met)]
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in runs]
    curve = sorted((r for r in ordered if r.get("epochs_override")), key=lambda r: (r["epochs"], r["seed"]))
    if curve:
        lines += ["", "## Accuracy against time: the same spec with fewer or more epochs (`--epochs N`)", "",
                  "The learning-rate schedule is recomputed for N epochs; everything else is the spec's.", "",
                  TABLE_HEAD, TABLE_RULE] + [row(r, "yes" if meets_target(r) else "no") for r in curve]
        lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in curve]
    lines += ["", "Machine: " + "; ".join(sorted({r["machine"] for r in ordered}))]
    if NOTES.exists():
        lines += ["", NOTES.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", default="../shared/data/cifar-10")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the spec's (the curve)")
    parser.add_argument("--write-only", action="store_true", help="only rewrite the report from the stored results")
    parser.add_argument("extra", nargs="*", help="more `cnnc train` flags, after --")
    args = parser.parse_args()
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    if not args.write_only:
        for seed in args.seeds:
            print(f"seed {seed} ...", file=sys.stderr, flush=True)
            results[result_key(seed, args.epochs)] = run = train(seed, args.epochs, args.data, args.extra)
            print(f"seed {seed}: {run['test_accuracy']:.2%} in {run['wall_seconds']:.0f}s", file=sys.stderr, flush=True)
            RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
    REPORT.write_text(report(results))


if __name__ == "__main__":
    main()
