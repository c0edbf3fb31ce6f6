"""Diagnostics are values: a severity, a code, a message, a source span and notes.

Every stage produces them; this module alone renders them, rustc-style:

    specs/bad.cnn:7:5: error[E010]: conv 'c3': kernel 5 needs input height >= 5, but 'pool2' (line 6) produces 4x4
       |
     7 |     c3 = conv(64, kernel=5)
       |     ^^^^^^^^^^^^^^^^^^^^^^^
       = note: 'pool2' height: floor((8 - 2) / 2) + 1 = 4
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from cnnc.dsl.codes import CODES

MAX_EXCERPT = 100  # characters of a source line shown around the caret


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Span:
    """A region of one source file; lines and columns start at 1, `end_column` is exclusive."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(path: str, line: int, column: int) -> Span:
        return Span(path, line, column, line, column + 1)


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    span: Span | None = None
    notes: tuple[str, ...] = ()

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def error(code: str, message: str, span: Span | None, *notes: str) -> Diagnostic:
    assert code in CODES and CODES[code].is_error, f"{code} is not a registered error code (dsl/codes.py)"
    return Diagnostic(Severity.ERROR, code, message, span, tuple(notes))


def warning(code: str, message: str, span: Span | None, *notes: str) -> Diagnostic:
    assert code in CODES and not CODES[code].is_error, f"{code} is not a registered warning code (dsl/codes.py)"
    return Diagnostic(Severity.WARNING, code, message, span, tuple(notes))


@dataclass
class DiagnosticSink:
    """Collects diagnostics so that a whole file is checked in one run, not stopped at the first."""

    items: list[Diagnostic] = field(default_factory=list)
    _seen: set[Diagnostic] = field(default_factory=set, repr=False)

    def add(self, diagnostic: Diagnostic) -> None:
        if diagnostic not in self._seen:  # a set: checking stays linear in the number of diagnostics
            self._seen.add(diagnostic)
            self.items.append(diagnostic)

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        for diagnostic in diagnostics:
            self.add(diagnostic)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)


def sort_key(diagnostic: Diagnostic) -> tuple:
    span = diagnostic.span
    return (span.path, span.line, span.column) if span else ("", 0, 0)


def render(diagnostic: Diagnostic, sources: Mapping[str, str]) -> str:
    """One diagnostic as text; `sources` maps a span's path to that file's text."""
    span = diagnostic.span
    head = f"{diagnostic.severity.value}[{diagnostic.code}]: {diagnostic.message}"
    if span is None:
        lines = [f"cnnc: {head}"]
    else:
        lines = [f"{span.path}:{span.line}:{span.column}: {head}"]
        lines += _excerpt(span, sources.get(span.path))
    gutter = " " * (len(str(span.line)) + 1) if span else " "
    lines += [f"{gutter}= note: {note}" for note in diagnostic.notes]
    return "\n".join(lines)


def render_all(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str]) -> str:
    ordered = sorted(diagnostics, key=sort_key)
    text = "\n\n".join(render(d, sources) for d in ordered)
    errors = sum(d.is_error for d in ordered)
    warnings = len(ordered) - errors
    if ordered:
        text += f"\n\n{_plural(errors, 'error')}, {_plural(warnings, 'warning')}\n"
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _excerpt(span: Span, source: str | None) -> list[str]:
    if source is None:
        return []
    source_lines = source.splitlines()
    if not 1 <= span.line <= len(source_lines):
        return []
    text = source_lines[span.line - 1].expandtabs(4)
    number = str(span.line)
    pad = " " * len(number)
    end = span.end_column if span.end_line == span.line else len(text) + 1
    width = max(1, min(end, len(text) + 1) - span.column)
    column = span.column
    if len(text) > MAX_EXCERPT:
        text, column = _window(text, column)
        width = min(width, MAX_EXCERPT - column + 1)
    marker = " " * (column - 1) + "^" * width
    return [f"{pad} |", f"{number} | {text}", f"{pad} | {marker}"]


def _window(text: str, column: int) -> tuple[str, int]:
    """A long line cut to MAX_EXCERPT characters around `column`, with '...' where it was cut."""
    start = max(0, min(column - 1 - MAX_EXCERPT // 3, len(text) - MAX_EXCERPT))
    cut = text[start:start + MAX_EXCERPT]
    prefix = "..." if start else ""
    suffix = "..." if start + MAX_EXCERPT < len(text) else ""
    return prefix + cut + suffix, column - start + len(prefix)
