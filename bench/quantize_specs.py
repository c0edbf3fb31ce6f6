"""int8 against fp32 for trained models: accuracy drop, size ratio and speed ratio, as `cnnc quantize` measures them.

    python bench/quantize_specs.py RUN_DIR... [--calibration 256] [--rounds 7] [--write bench/QUANTIZATION.md]

Each run directory (from `cnnc train`) is quantised exactly as `cnnc quantize RUN_DIR` does it
(export.quantize.quantize_checkpoint: onnxruntime's pre-processing, static QDQ, per-channel int8
weights, uint8 activations, min/max calibration on a seeded sample of the training split) and both
models are evaluated on the whole test split and timed side by side at batch 1 and 64 (alternating
bursts, the median over rounds; onnxruntime's default threads). A run whose int8 model fails the
default gate (a drop over 1 point) is recorded as such, and quantised again with reduce_range
(7-bit weights), the documented remedy for CPUs without VNNI.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quantize(run: Path, args: argparse.Namespace, reduce_range: bool):
    from cnnc.datasets import load_dataset
    from cnnc.export.quantize import AccuracyGateError, quantize_checkpoint
    from cnnc.training.checkpoint import LAST, load_checkpoint

    checkpoint = load_checkpoint(run, LAST)
    train = load_dataset(checkpoint.dataset, "train", None, progress=False)
    test = load_dataset(checkpoint.dataset, "test", None, progress=False)
    with tempfile.TemporaryDirectory() as folder:
        try:
            return quantize_checkpoint(checkpoint, Path(folder) / "m.int8.onnx", train=train, test=test,
                                       calibration=args.calibration, reduce_range=reduce_range,
                                       timing_rounds=args.rounds)
        except AccuracyGateError as refused:
            return refused.report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", metavar="FILE")
    parser.add_argument("--append", action="store_true", help="add a section to FILE instead of replacing it")
    args = parser.parse_args()
    load_start = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    rows = []
    for run in args.runs:
        for reduce_range in (False, True):
            report = quantize(run, args, reduce_range)
            rows.append((run.name, reduce_range, report))
            print(f"== {run.name}{' (reduce_range)' if reduce_range else ''}\n{report.summary()}", flush=True)
            if report.passed:
                break
    load_end = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    if args.write:
        write_markdown(Path(args.write), rows, " ".join(sys.argv), load_start, load_end, args.append)
        print(f"wrote {args.write}")
    return 0


def write_markdown(path: Path, rows, command: str, load_start: str, load_end: str, append: bool) -> None:
    import onnxruntime

    first = rows[0][2]
    title = "## More runs" if append and path.exists() else "# int8 quantisation: accuracy, size and speed against fp32"
    lines = [
        title, "",
        f"Measured with `python {command}` (the method is in the script's docstring; `cnnc quantize` does the "
        "same per run).", "",
        f"- machine: {first.machine} (AVX2, no AVX-512 or VNNI)",
        f"- onnxruntime {onnxruntime.__version__}; calibration: {first.calibration_images} training images, seed "
        f"{first.seed}; test: the whole test split",
        f"- load average (1, 5, 15 min): {load_start} at the start, {load_end} at the end (the 2 cores are shared "
        "with other jobs: latencies are medians of alternating bursts, and ratios are more reliable than times)",
        "",
        "| run | fp32 acc | int8 acc | drop (points) | gate (1 point) | fp32 KB | int8 KB | size int8/fp32 "
        "| latency int8/fp32, batch 1 | batch 64 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, reduce_range, r in rows:
        label = f"{name} (reduce_range)" if reduce_range else name
        lines.append(
            f"| {label} | {r.fp32_accuracy:.4f} | {r.int8_accuracy:.4f} | {r.drop:+.2f} | "
            f"{'passes' if r.passed else 'REFUSED'} | {r.fp32_bytes / 1024:.0f} | {r.int8_bytes / 1024:.0f} | "
            f"{r.int8_bytes / r.fp32_bytes:.2f} | {r.latency_ratio['1']:.2f} | {r.latency_ratio['64']:.2f} |")
    slower = [name for name, _, r in rows if max(r.latency_ratio.values()) > 1]
    lines += ["", "A latency ratio above 1 means int8 is SLOWER than fp32 on this CPU."]
    if slower:
        lines.append(f"It is for: {', '.join(sorted(set(slower)))}.")
    text = "\n".join(lines) + "\n"
    if append and path.exists():
        text = path.read_text() + "\n" + text
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
