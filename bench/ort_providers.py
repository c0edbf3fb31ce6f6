"""onnxruntime's CUDA execution provider against its CPU provider: the same outputs, and how fast.

    python bench/ort_providers.py MODEL.onnx ... --json results.json [--cpu-only] [--batches 1 64]

Each model (cnnc's ONNX: a float32 N x C x H x W input) is loaded twice through cnnc.runtime
(`Model.load(provider=...)`, which fails rather than fall back when CUDA cannot run) and both sessions
run the same seeded normal batch: reported are the largest absolute difference of the outputs, the
largest output magnitude, and how many rows have the same arg max. Then each batch size is timed on
each session: the median of repeated `session.run` calls (at least 3, for about 0.3 s) after 3 warm-up
calls; on CUDA a call includes the copies of the input to the device and of the output back, as the
runtime's users see it. --cpu-only compares the CPU provider with all graph optimisations against
the CPU provider with none instead (a machine without CUDA runs the same code that way).

On the GPU machine run it through bench/gpu_check.sh, which finds an onnxruntime with the CUDA
provider (bench/GPU.md). torch is imported first when there is CUDA: it loads the CUDA, cuBLAS and
cuDNN libraries that onnxruntime's CUDA provider links to, from the Python packages torch depends on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Outputs agree when every difference is within ABSOLUTE + RELATIVE * (the largest output magnitude):
# float32 on both sides, but cuDNN's kernels (and TF32 on GPUs that have it) sum in other orders.
ABSOLUTE, RELATIVE = 1e-4, 5e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--cpu-only", action="store_true", help="optimised vs unoptimised CPU provider")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=0.3, help="about how long each timing runs")
    args = parser.parse_args()
    if not args.cpu_only:
        import torch  # noqa: F401 - loads the CUDA libraries (see the top)
    import onnxruntime

    from cnnc.runtime import Model

    if args.cpu_only:
        reference, candidate = ("cpu", "all"), ("cpu", "disable")
    else:
        reference, candidate = ("cpu", "all"), ("cuda", "all")
    results = {"onnxruntime": onnxruntime.__version__, "available": onnxruntime.get_available_providers(),
               "reference": "/".join(reference), "candidate": "/".join(candidate), "models": []}
    for path in args.models:
        first = Model.load(path, provider=reference[0], optimization=reference[1])  # type: ignore[arg-type]
        second = Model.load(path, provider=candidate[0], optimization=candidate[1])  # type: ignore[arg-type]
        results["models"].append(compare(path, first, second, args.batches, args.seconds))
        print(json.dumps(results["models"][-1]), flush=True)
    results["agree"] = all(model["agree"] for model in results["models"])
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def compare(path: Path, first, second, batches: list[int], seconds: float) -> dict:
    shape = first.input_shape
    x = np.random.default_rng(0).standard_normal((max(batches), *shape), dtype=np.float32)
    a, b = run(first, x), run(second, x)
    difference = float(np.abs(a - b).max())
    scale = float(np.abs(a).max())
    record = {
        "model": path.stem, "providers": [first.provider, second.provider],
        "max_abs_difference": difference, "max_abs_output": scale,
        "same_argmax": float((a.argmax(1) == b.argmax(1)).mean()),
        "agree": difference <= ABSOLUTE + RELATIVE * scale,
        "milliseconds": {},
    }
    for batch in batches:
        record["milliseconds"][str(batch)] = [1000 * median_seconds(model, x[:batch], seconds)
                                              for model in (first, second)]
    return record


def run(model, x: np.ndarray) -> np.ndarray:
    return model.session.run(None, {model.input_name: x})[0].reshape(len(x), -1)


def median_seconds(model, x: np.ndarray, seconds: float) -> float:
    for _ in range(3):
        run(model, x)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < seconds and len(times) < 200):
        begin = time.perf_counter()
        run(model, x)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
