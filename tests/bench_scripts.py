"""The scripts of bench/ loaded as modules, for the tests that call their functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str, monkeypatch: pytest.MonkeyPatch | None = None) -> ModuleType:
    """bench/NAME.py as a module named NAME. With `monkeypatch`, it is in sys.modules for the test's
    duration: dataclasses defined in a module look it up there."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
