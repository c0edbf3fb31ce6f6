"""Train the MNIST tutorial specs on the full dataset with their own settings, and record the test
accuracy each reaches against the tutorial's figure, with wall time, machine and versions.

    python bench/train_accuracy.py                       # every spec below, one after another
    python bench/train_accuracy.py --specs mnist_fast    # some of them
    python bench/train_accuracy.py --write-only          # rewrite RESULTS.md from the stored results

Each run is `python -m cnnc train specs/SPEC.cnn --data DATA --json --out runs/bench-accuracy/SPEC`
(a fresh run directory each time). Results accumulate in bench/train_accuracy.json, one entry per
spec (the latest run), and the "Training accuracy" section of bench/RESULTS.md is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_results import machine_description, replace_section, run_train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "bench" / "train_accuracy.json"
SECTION = "train-accuracy"
# The tutorials' test accuracy, which the spec must reach with its own train section.
TARGETS = {
    "keras_mnist": 0.980,
    "tf_mnist_deep": 0.990,
    "tf_mnist_5x5": 0.990,
    "lenet_selu": 0.990,
    "lenet_selu_bn": 0.994,
    "mnist_fast": 0.990,
}


def train(spec: str, data: str, extra: list[str]) -> dict:
    run_dir = ROOT / "runs" / "bench-accuracy" / spec
    shutil.rmtree(run_dir, ignore_errors=True)
    load_before = os.getloadavg()[0]
    run = run_train([f"specs/{spec}.cnn", "--data", data, "--out", str(run_dir.relative_to(ROOT)), *extra], spec)
    epochs, final = run.epochs, run.final
    return {
        "spec": spec,
        "command": run.command,
        "test_accuracy": final["test_accuracy"],
        "target": TARGETS[spec],
        "epochs": len(epochs),
        "model_epoch": final["model_epoch"],
        "wall_seconds": run.wall_seconds,
        "train_images_per_second": statistics.median(e["images_per_second"] for e in epochs),
        "best_val_accuracy": max((e["val_accuracy"] for e in epochs if e["val_accuracy"] is not None), default=None),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "note": f"1-minute load average {load_before:.2f} just before the run (other jobs slow it down)",
    }


def section(results: dict[str, dict]) -> str:
    lines = [
        "## Training accuracy (full MNIST, each spec's own train section)",
        "",
        "`python bench/train_accuracy.py` (one spec: `--specs NAME`). Test accuracy on the 10,000 MNIST "
        "test images after training on the 60,000 training images (less any validation split), with the "
        "spec's optimizer, schedule, batch, epochs and augmentation; wall time includes data loading and "
        "evaluation. Throughput is the median epoch's training images per second.",
        "",
        "| spec | target | test accuracy | met | epochs (tested) | wall time | train img/s | date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in TARGETS:
        if spec not in results:
            lines.append(f"| {spec} | {TARGETS[spec]:.1%} | not run | | | | | |")
            continue
        r = results[spec]
        met = "yes" if r["test_accuracy"] >= r["target"] else "**no**"
        lines.append(f"| {spec} | {r['target']:.1%} | {r['test_accuracy']:.2%} | {met} | {r['epochs']} "
                     f"({r['model_epoch']}) | {r['wall_seconds'] / 60:.1f} min | {r['train_images_per_second']:,.0f} "
                     f"| {r['date']} |")
    machines = sorted({r["machine"] for r in results.values()})
    lines += ["", "Notes:", ""] + [f"- {s}: {results[s]['note']}" for s in TARGETS if results.get(s, {}).get("note")]
    lines += ["", "Commands:", ""] + [f"- `{results[s]['command']}`" for s in TARGETS if s in results]
    lines += ["", "Machine: " + "; ".join(machines) if machines else ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--data", default="../shared/data/mnist")
    parser.add_argument("--write-only", action="store_true", help="only rewrite RESULTS.md from the stored results")
    parser.add_argument("extra", nargs="*", help="more `cnnc train` flags, after --")
    args = parser.parse_args()
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    if not args.write_only:
        for spec in args.specs:
            print(f"training {spec} ...", file=sys.stderr, flush=True)
            results[spec] = train(spec, args.data, args.extra)
            print(f"{spec}: {results[spec]['test_accuracy']:.2%} in {results[spec]['wall_seconds']:.0f}s",
                  file=sys.stderr, flush=True)
            RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
    replace_section(ROOT / "bench" / "RESULTS.md", SECTION, section(results))


if __name__ == "__main__":
    main()
