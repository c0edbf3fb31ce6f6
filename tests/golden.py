"""Compare output with a golden file, or rewrite it under `pytest --update-goldens`."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest


def check_golden(path: Path, actual: str, update: bool) -> None:
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; create it with `pytest --update-goldens` and review it")
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), str(path), "actual"))
        pytest.fail(f"output differs from {path} (rerun with --update-goldens if the change is intended):\n{diff}")
