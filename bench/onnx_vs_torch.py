"""Inference latency: onnxruntime vs PyTorch eager, and the runtime's overhead over a bare session.run.

    python bench/onnx_vs_torch.py [--rounds 7] [--threads 1 2] [--round-seconds 0.15] [--write bench/ONNX_RESULTS.md]

For every spec in specs/ (untrained weights, seed 0; latency does not depend on the values):
- the ONNX model from `cnnc compile` (opset 17) in an onnxruntime CPU session, and the PyTorch
  module from the same weights (eval mode, torch.inference_mode), both with the same thread count,
  run the same float32 batch of 1 and of 64 in one process, alternating: each round times a burst of
  calls of one, then of the other, and the order flips every round, so that drift (frequency,
  caches, other load) hits both alike. Reported: the median over rounds of the mean call time per
  burst, and the ratio torch / onnxruntime (> 1: onnxruntime is faster).
- the runtime (`cnnc.runtime.Model.load(path, provider="cpu").predict(batch)`) against
  `model.session.run` on the very same session at batch 1, alternating the same way: the overhead
  of its input checks and output handling (target: <= 5%).
Each --threads value is a separate pass over all of it. The load average before and after is
recorded: other processes on the machine distort multi-threaded timings most.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnc.runtime.measure import machine

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 64)


def burst(function: Callable[[], object], seconds: float, calls: int | None = None) -> tuple[float, int]:
    """Mean seconds per call over a burst of `calls` (or as many as fit in `seconds`)."""
    if calls is None:
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            function()
            calls += 1
        return (time.perf_counter() - start) / calls, calls
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls, calls


def alternate(a: Callable[[], object], b: Callable[[], object], rounds: int, seconds: float) -> tuple[float, float]:
    """Median per-call seconds of a and b, timed in alternating bursts of equal call counts."""
    for function in (a, b):  # warm up: first calls allocate and pick kernels
        for _ in range(3):
            function()
    _, calls_a = burst(a, seconds)
    _, calls_b = burst(b, seconds)
    calls = max(3, min(calls_a, calls_b))
    times_a, times_b = [], []
    for index in range(rounds):
        order = ((a, times_a), (b, times_b)) if index % 2 == 0 else ((b, times_b), (a, times_a))
        for function, times in order:
            times.append(burst(function, seconds, calls)[0])
    return statistics.median(times_a), statistics.median(times_b)


def versions() -> str:
    import onnx
    import onnxruntime
    import torch

    return (f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"onnx {onnx.__version__}, numpy {np.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-seconds", type=float, default=0.15, help="length of one timed burst")
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count()],
                        help="intra-op thread counts of both (one pass each; default: the core count)")
    parser.add_argument("--specs", nargs="*", help="spec names (default: every spec in specs/)")
    parser.add_argument("--write", metavar="FILE", help="also write the results as markdown to FILE")
    args = parser.parse_args()

    specs = sorted((ROOT / "specs").glob("*.cnn"))
    if args.specs:
        specs = [s for s in specs if s.name in args.specs or s.stem in args.specs]
    header = [f"machine: {machine()}", f"versions: {versions()}",
              f"{args.rounds} alternating rounds of {args.round_seconds}s bursts per measurement",
              f"load average (1, 5, 15 min) at the start: {_load()}"]
    print("\n".join(header), flush=True)
    passes = []
    with tempfile.TemporaryDirectory() as folder:
        for threads in args.threads:
            print(f"-- {threads} thread(s)", flush=True)
            passes.append((threads, *measure(specs, Path(folder), threads, args.rounds, args.round_seconds)))
    header.append(f"load average at the end: {_load()}")
    print(header[-1])
    if args.write:
        write_markdown(Path(args.write), header, passes, " ".join(sys.argv))
        print(f"wrote {args.write}")
    return 0


def _busy(header: list[str]) -> str:
    """A description of the load when the load average exceeded half the cores, else ''."""
    loads = [line for line in header if line.startswith("load average")]
    peak = max((float(line.split(":")[1].split(",")[0]) for line in loads), default=0.0)
    cores = os.cpu_count() or 1
    return f"1-minute load average up to {peak:.2f} on {cores} cores" if peak > cores / 2 else ""


def _load() -> str:
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def measure(specs: list[Path], folder: Path, threads: int, rounds: int, seconds: float):
    import onnxruntime as ort
    import torch

    from cnnc.compiler.backends.onnx import compile_to_file
    from cnnc.compiler.backends.pytorch import build_module
    from cnnc.compiler.check import check_file
    from cnnc.runtime.model import Model

    torch.set_num_threads(threads)
    rows, overhead_rows = [], []
    for spec in specs:
        program = check_file(spec).program
        path = folder / f"{spec.stem}.onnx"
        compile_to_file(program, path, seed=0)
        module = build_module(program.graph, seed=0).eval()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for batch in BATCHES:
            x = np.random.default_rng(batch).standard_normal((batch, *program.graph.input.shape)).astype(np.float32)
            tx = torch.from_numpy(x)

            def run_torch(module=module, tx=tx):
                with torch.inference_mode():
                    return module(tx)

            def run_ort(session=session, name=name, x=x):
                return session.run(None, {name: x})

            t_torch, t_ort = alternate(run_torch, run_ort, rounds, seconds)
            rows.append((spec.stem, batch, t_torch, t_ort))
            print(f"{spec.stem:16s} batch {batch:3d}: torch {t_torch * 1e3:8.3f} ms  onnxruntime "
                  f"{t_ort * 1e3:8.3f} ms  torch/ort {t_torch / t_ort:5.2f}x", flush=True)
        model = Model.load(path, provider="cpu", threads=threads)
        x1 = np.random.default_rng(1).standard_normal((1, *program.graph.input.shape)).astype(np.float32)
        feed = {model.input_name: x1}
        t_predict, t_bare = alternate(lambda model=model, x1=x1: model.predict(x1),
                                      lambda model=model, feed=feed: model.session.run(None, feed), rounds, seconds)
        overhead_rows.append((spec.stem, t_bare, t_predict))
        print(f"{spec.stem:16s} runtime overhead at batch 1: session.run {t_bare * 1e6:8.1f} us  "
              f"Model.predict {t_predict * 1e6:8.1f} us  ({(t_predict / t_bare - 1) * 100:+.1f}%)", flush=True)
    return rows, overhead_rows


def write_markdown(path: Path, header: list[str], passes, command: str) -> None:
    lines = ["# onnxruntime vs PyTorch eager: inference latency", "",
             f"Measured with `python {command}` (the method is in the script's docstring).", ""]
    lines += [f"- {line}" for line in header]
    lines += ["- weights: untrained (seed 0); models: `cnnc compile` (opset 17) and `build_module` in eval mode",
              "- threads: torch.set_num_threads and onnxruntime's intra_op_num_threads, the same for both"]
    busy = _busy(header)
    if busy:
        lines += ["", f"**Caveat: the machine was busy** ({busy}). Other processes competed for the cores, so "
                  "absolute times are inflated and noisy. Multi-threaded PyTorch suffers most: its OpenMP threads wait "
                  "at barriers for a peer that has been descheduled, which can make a 1 ms call take 70 ms. The "
                  "1-thread ratios (both sides equally slowed, alternating) are the meaningful ones here; re-run on "
                  "an idle machine for publishable multi-threaded numbers."]
    for threads, rows, overhead_rows in passes:
        lines += ["", f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "Latency per call (median over rounds):", "",
                  "| spec | batch | PyTorch eager (ms) | onnxruntime (ms) | torch / ort |", "|---|---:|---:|---:|---:|"]
        for spec, batch, t_torch, t_ort in rows:
            lines.append(f"| {spec} | {batch} | {t_torch * 1e3:.3f} | {t_ort * 1e3:.3f} | {t_torch / t_ort:.2f}x |")
        ratios = {batch: [t / o for _, b, t, o in rows if b == batch] for batch in BATCHES}
        lines += ["", "Geometric mean of torch / ort: " + ", ".join(
            f"batch {batch}: {float(np.exp(np.mean(np.log(values)))):.2f}x"
            for batch, values in ratios.items() if values)]
        lines += ["", "The runtime's overhead at batch 1: `Model.predict(x)` against "
                  "`model.session.run(None, {input: x})` on the same session:", "",
                  "| spec | session.run (us) | Model.predict (us) | overhead (us) | overhead |",
                  "|---|---:|---:|---:|---:|"]
        for spec, bare, predict in overhead_rows:
            lines.append(f"| {spec} | {bare * 1e6:.1f} | {predict * 1e6:.1f} | {(predict - bare) * 1e6:+.1f} "
                         f"| {(predict / bare - 1) * 100:+.1f}% |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
