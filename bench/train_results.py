"""Shared by the training benchmarks (bench/train_*.py): the machine's description and RESULTS.md's sections.

Each benchmark owns one section of bench/RESULTS.md, between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`, and rewrites only that, so that several benchmarks share the file.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_description() -> str:
    import numpy
    import torch

    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {numpy.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}")


def replace_section(path: Path, name: str, text: str) -> None:
    """Put `text` between the section's markers, appending the section if the file lacks it."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    path.write_text(current)
