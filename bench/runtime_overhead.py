"""The runtime's overhead at batch 1: `Model.predict(x)` against a bare `session.run` on the same session.

    python bench/runtime_overhead.py [--rounds 300] [--calls 20] [--threads 1] [--write bench/RUNTIME_OVERHEAD.md]

For every spec in specs/ (untrained weights, seed 0: latency does not depend on the values), the
ONNX model from `cnnc compile` is loaded with `cnnc.runtime.Model.load(path, provider="cpu")`, and
the same float32 batch of 1 goes through
    predict   model.predict(x)                                  (input checks, finiteness, run)
    bare      model.session.run(None, {model.input_name: x})    (onnxruntime's Python API)
    binding   session._sess.run([output], feed, None)           (the C++ binding that both call)
and the same for a uint8-input export of the spec (export.deploy.with_uint8_input), fed pixels.
`Model.predict` calls the binding directly: `session.run` re-validates the feed's names in Python
on every call, which predict's own checks make redundant. So "predict vs bare" is what a user
gains or loses by using the runtime, and "predict vs binding" is the cost of cnnc's checks alone.
Timing is interleaved: each round times a burst of `calls` calls of each, in an order that rotates
every round, so that drift and other load hit all alike. Reported per spec: the median per-call
time of each, and the overhead as the median over rounds of the paired ratio predict / other - 1
(a round's bursts are milliseconds apart, so the pairing cancels most of the load), with its
interquartile range for predict / bare; also the ratio of the 10th percentiles of the two series
(on a shared machine most bursts are slowed by other processes; the fastest tenth are the least
disturbed), and the median paired difference in microseconds.
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


def timed(function: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def interleaved(functions: list[Callable[[], object]], rounds: int, calls: int) -> list[list[float]]:
    """Per-call seconds of each function in each round; the order rotates round by round."""
    for _ in range(20):  # warm up: the first calls allocate and pick kernels
        for function in functions:
            function()
    times: list[list[float]] = [[] for _ in functions]
    for index in range(rounds):
        for offset in range(len(functions)):
            which = (index + offset) % len(functions)
            times[which].append(timed(functions[which], calls))
    return times


def summary(predict: list[float], bare: list[float], binding: list[float]) -> dict[str, float]:
    ratios = sorted(p / b - 1 for p, b in zip(predict, bare))
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "predict_us": statistics.median(predict) * 1e6,
        "bare_us": statistics.median(bare) * 1e6,
        "binding_us": statistics.median(binding) * 1e6,
        "overhead": statistics.median(ratios),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "min_overhead": min(predict) / min(bare) - 1,
        "p10_overhead": percentile(predict, 10) / percentile(bare, 10) - 1,
        "difference_us": statistics.median(p - b for p, b in zip(predict, bare)) * 1e6,
        "checks": statistics.median(p / b - 1 for p, b in zip(predict, binding)),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def versions() -> str:
    import onnx
    import onnxruntime

    return (f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, "
            f"numpy {np.__version__}")


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def measure(spec: Path, folder: Path, args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    import onnx

    from cnnc.compiler.backends.onnx import compile_to_file
    from cnnc.compiler.check import check_file
    from cnnc.export.deploy import with_uint8_input
    from cnnc.runtime.model import Model

    program = check_file(spec).program
    path, uint8_path = folder / f"{spec.stem}.onnx", folder / f"{spec.stem}.u8.onnx"
    compile_to_file(program, path, seed=0)
    proto = onnx.load(path)
    onnx.save(with_uint8_input(proto, None), uint8_path)
    results = []
    for form, model_path in (("float32", path), ("uint8", uint8_path)):
        model = Model.load(model_path, provider="cpu", threads=args.threads)
        channels, height, width = model.input_shape
        pixels = np.random.default_rng(1).integers(0, 256, (1, channels, height, width), dtype=np.uint8)
        x = model.preprocess(pixels)
        feed, names, session = {model.input_name: x}, [model.output_name], model.session
        times = interleaved([lambda model=model, x=x: model.predict(x),
                             lambda session=session, feed=feed: session.run(None, feed),
                             lambda session=session, names=names, feed=feed: session._sess.run(names, feed, None)],
                            args.rounds, args.calls)
        results.append((form, summary(*times)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--calls", type=int, default=20, help="calls per burst")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime's intra-op threads (default: 1)")
    parser.add_argument("--specs", nargs="*", help="spec names (default: every spec in specs/)")
    parser.add_argument("--write", metavar="FILE", help="also write the results as markdown to FILE")
    args = parser.parse_args()

    specs = sorted((ROOT / "specs").glob("*.cnn"))
    if args.specs:
        specs = [s for s in specs if s.stem in args.specs]
    header = [f"machine: {machine()}", f"versions: {versions()}",
              f"{args.rounds} interleaved rounds of {args.calls}-call bursts per model, "
              f"{args.threads} onnxruntime thread(s)", f"load average (1, 5, 15 min) at the start: {load()}"]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in specs:
            for form, result in measure(spec, Path(folder), args):
                rows.append((spec.stem, form, result))
                print(f"{spec.stem:16s} {form:7s}  session.run {result['bare_us']:8.1f} us  Model.predict "
                      f"{result['predict_us']:8.1f} us  overhead {result['overhead'] * 100:+5.1f}% "
                      f"(IQR {result['q1'] * 100:+.1f}% .. {result['q3'] * 100:+.1f}%; fastest bursts "
                      f"{result['min_overhead'] * 100:+.1f}%; p10 {result['p10_overhead'] * 100:+.1f}%; "
                      f"{result['difference_us']:+.1f} us; vs the binding {result['checks'] * 100:+.1f}%)",
                      flush=True)
    header.append(f"load average at the end: {load()}")
    print(header[-1])
    worst = max(result["overhead"] for _, _, result in rows)
    print(f"largest median overhead: {worst * 100:+.1f}%")
    if args.write:
        write_markdown(Path(args.write), header, rows, " ".join(sys.argv))
        print(f"wrote {args.write}")
    return 0


def write_markdown(path: Path, header: list[str], rows, command: str) -> None:
    lines = ["# The runtime's overhead at batch 1", "",
             f"Measured with `python {command}` (the method is in the script's docstring).", ""]
    lines += [f"- {line}" for line in header]
    lines += ["", "| spec | input | session.run (us) | Model.predict (us) | overhead: median of paired rounds "
              "| its IQR | p10 / p10 | fastest bursts | paired difference (us) | binding (us) | predict vs binding |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for spec, form, r in rows:
        lines.append(f"| {spec} | {form} | {r['bare_us']:.1f} | {r['predict_us']:.1f} | {r['overhead'] * 100:+.1f}% | "
                     f"{r['q1'] * 100:+.1f}% .. {r['q3'] * 100:+.1f}% | {r['p10_overhead'] * 100:+.1f}% | "
                     f"{r['min_overhead'] * 100:+.1f}% | {r['difference_us']:+.1f} | {r['binding_us']:.1f} | "
                     f"{r['checks'] * 100:+.1f}% |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
