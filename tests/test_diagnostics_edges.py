"""Rendering diagnostics: carets under tabs, and time linear in the number of diagnostics."""

from __future__ import annotations

from cnnc.compiler.check import check_file
from cnnc.dsl import diagnostics
from cnnc.dsl.diagnostics import render_all


def test_a_caret_stays_under_its_text_when_the_line_holds_tabs() -> None:
    text = "model m {\n\tinput x(1, 8, 8)\n\tconv(4, kernel=3, stride=0)\n}\n"
    result = check_file("t.cnn", text=text)
    rendered = render_all(result.diagnostics, result.sources)
    lines = rendered.splitlines()
    source_line = next(line for line in lines if line.startswith("3 | "))
    caret_line = lines[lines.index(source_line) + 1]
    start = caret_line.index("^")
    assert source_line[start:start + caret_line.count("^")] == "0"
    assert "\t" not in source_line


def test_a_file_is_split_into_lines_once_however_many_diagnostics_it_has() -> None:
    count = 2000
    text = "model m {\n input x(1, 8, 8)\n" + " conv(4, kernl=3)\n" * count + "}\n"
    result = check_file("many.cnn", text=text)
    diagnostics._source_lines.cache_clear()
    rendered = render_all(result.diagnostics, result.sources)
    assert rendered.count("error[E003]") == count
    assert diagnostics._source_lines.cache_info().misses == 1
