#!/usr/bin/env bash
# The GPU path's check (issue 10): CUDA tests, onnxruntime CUDA vs CPU, the airbench spec's time to 94%,
# in under 5 minutes on the GPU machine; the CPU form of each part where there is no CUDA (or with --cpu).
#   bench/gpu_check.sh [--cpu] [--out DIR] [--spec SPEC] [--data DIR] [--budget SECONDS] [--target 0.94]
# bench/gpu_check.py documents the parts and the options; bench/GPU.md how to prepare the GPU machine.
# The script itself needs only Python 3.10+: the checkout's .venv here, the PATH's python3 (with its
# CUDA build of torch) on the GPU machine, or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ -x .venv/bin/python ]; then
    python=.venv/bin/python
else
    python=python3
fi
exec "$python" bench/gpu_check.py "$@"
