"""Fuzzing: random byte and token mutations of every spec never raise anything but diagnostics.

CI runs a few thousand cases; `python bench/fuzz_front_end.py --cases N` runs more.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzzing import mutate

from cnnc.compiler.check import check_file

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.cnn")) + [ROOT / "tests" / "specs" / "language.cnn"]
CASES_PER_SPEC = 300


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_mutations_give_diagnostics_not_exceptions(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(spec.parent)  # includes resolve as for the real file
    original = spec.read_text()
    rng = random.Random(spec.stem)
    for case in range(CASES_PER_SPEC):
        text = mutate(original, rng)
        try:
            result = check_file(spec.name, text=text)
        except RecursionError:
            pytest.fail(f"case {case}: recursion overflow on\n{text}")
        assert result.has_errors == (result.program is None) or not result.has_errors
        for diagnostic in result.diagnostics:
            assert diagnostic.message and diagnostic.code
