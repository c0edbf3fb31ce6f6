"""Golden files pin the compiler's visible behaviour: summaries, IR text and rendered diagnostics.

Regenerate with `pytest tests/test_goldens.py --update-goldens` and review the diff: a golden file is
never edited by hand to make a failure pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from golden import check_golden

from cnnc.compiler import ir_text, summary
from cnnc.compiler.check import check_file
from cnnc.dsl.codes import CODES, docs_table
from cnnc.dsl.diagnostics import render_all

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
ERRORS = ROOT / "tests" / "errors"
VALID_SPECS = sorted((ROOT / "specs").glob("*.cnn")) + sorted((ROOT / "tests" / "specs").glob("*.cnn"))
ERROR_FILES = sorted(ERRORS.glob("*.cnn"))
CASE_MARK = "# case:"


def _relative(path: Path) -> str:
    return os.path.relpath(path, ROOT)


@pytest.fixture(autouse=True)
def _from_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # diagnostics name files relative to the repository root


@pytest.mark.parametrize("spec", VALID_SPECS, ids=lambda p: p.stem)
def test_summary_and_ir(spec: Path, update_goldens: bool) -> None:
    result = check_file(_relative(spec))
    assert not result.has_errors, render_all(result.diagnostics, result.sources)
    graph = result.program.graph
    check_golden(GOLDEN / "summary" / f"{spec.stem}.txt", summary.to_text(graph), update_goldens)
    check_golden(GOLDEN / "ir" / f"{spec.stem}.ir", ir_text.to_text(graph), update_goldens)


def split_cases(text: str) -> list[tuple[str, str]]:
    """Each `# case:` section as its own text, with every other line blanked so line numbers hold."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(CASE_MARK)]
    if not starts:
        return [("whole file", text)]
    cases = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(lines)
        kept = ["\n" if not (start <= i < end) else line for i, line in enumerate(lines)]
        cases.append((lines[start][len(CASE_MARK):].strip(), "".join(kept)))
    return cases


def render_cases(path: Path) -> str:
    """The rendered diagnostics of every case of a negative-test file, bril-style, in one text."""
    display = _relative(path)
    blocks = []
    for title, text in split_cases(path.read_text()):
        result = check_file(display, text=text)
        assert result.diagnostics, f"case '{title}' of {display} produced no diagnostics"
        rendered = render_all(result.diagnostics, {**result.sources, display: text})
        blocks.append(f"=== {title}\n{rendered}")
    return "\n".join(blocks)


@pytest.mark.parametrize("path", ERROR_FILES, ids=lambda p: p.stem)
def test_diagnostics(path: Path, update_goldens: bool) -> None:
    check_golden(path.with_suffix(".err"), render_cases(path), update_goldens)


def test_every_error_class_has_a_golden() -> None:
    goldens = "".join(p.with_suffix(".err").read_text() for p in ERROR_FILES)
    missing = sorted(code for code in CODES if f"[{code}]" not in goldens)
    assert not missing, f"no golden diagnostic for {missing}"


def test_the_docs_list_every_diagnostic_code() -> None:
    """docs/language.md's table of codes is generated from the registry (dsl/codes.py)."""
    docs = (ROOT / "docs" / "language.md").read_text()
    assert docs_table() in docs, "regenerate the table in docs/language.md from cnnc.dsl.codes.docs_table()"
