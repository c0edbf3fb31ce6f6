"""What the language server knows about one document: its diagnostics (exactly those of `cnnc check`),
its syntax trees and those of its includes, and the checked layers, even when another part of the
file has errors. Positions here are 1-based lines and columns, as in the compiler's spans.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnc.compiler import check
from cnnc.compiler.elaborate import Elaborator
from cnnc.compiler.ir import Node
from cnnc.compiler.loader import LoadedSpec, load
from cnnc.compiler.ops import DEFAULT_WEIGHT_INIT
from cnnc.dsl import syntax_tree as st
from cnnc.dsl.diagnostics import Diagnostic, DiagnosticSink, Span

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str          # "block", "constant", "parameter", "tensor", "loop variable"
    span: Span
    detail: str        # the block's signature, the constant's expression, the tensor's statement


@dataclass(frozen=True)
class Analysis:
    path: str
    text: str
    diagnostics: tuple[Diagnostic, ...]
    loaded: LoadedSpec
    nodes: tuple[Node, ...]

    @property
    def trees(self) -> list[st.SourceFile]:
        return [*self.loaded.included, *([self.loaded.main] if self.loaded.main else [])]

    @property
    def blocks(self) -> dict[str, st.Block]:
        return {block.name: block for tree in self.trees for block in tree.blocks}

    def source(self, path: str) -> str:
        return self.loaded.sources.get(path, "")


def analyse(path: str, text: str) -> Analysis:
    result = check.check_file(path, text=text)
    loaded = load(path, text)
    nodes = result.program.graph.nodes if result.program is not None else _partial_nodes(loaded)
    return Analysis(path, text, result.diagnostics, loaded, tuple(nodes))


def _partial_nodes(loaded: LoadedSpec) -> list[Node]:
    """The layers that checked, when others did not: hover still works on the rest of the file."""
    if loaded.main is None or not loaded.main.models:
        return []
    files = [*loaded.included, loaded.main]
    sink = DiagnosticSink()
    try:
        elaborator = Elaborator(check._constants(files, sink), check._blocks(files, sink), sink, DEFAULT_WEIGHT_INIT)
        elaborator.model(loaded.main.models[0], check.DEFAULT_MAX_PARAMS)
    except RecursionError:
        return []
    return [node for node in elaborator.nodes.values() if node is not None]


# --- positions ---------------------------------------------------------------------------------------

def contains(span: Span, line: int, column: int) -> bool:
    return (span.line, span.column) <= (line, column) < (span.end_line, span.end_column)


def word_at(text: str, line: int, column: int) -> tuple[str, Span] | None:
    """The identifier under (or just before) the cursor."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return None
    for match in WORD.finditer(lines[line - 1]):
        if match.start() + 1 <= column <= match.end() + 1:
            return match.group(), Span("", line, match.start() + 1, line, match.end() + 1)
    return None


def _size(span: Span) -> tuple[int, int]:
    return span.end_line - span.line, span.end_column - span.column if span.end_line == span.line else 10**6


# --- layers ------------------------------------------------------------------------------------------

def nodes_at(analysis: Analysis, line: int, column: int) -> list[Node]:
    """The layers made by the call under the cursor (several when it is inside a block or a repeat)."""
    here = [n for n in analysis.nodes if n.span.path == analysis.path and contains(n.span, line, column)]
    if not here:
        return []
    smallest = min(_size(n.span) for n in here)
    return [n for n in here if _size(n.span) == smallest]


# --- definitions -------------------------------------------------------------------------------------

def definitions(analysis: Analysis, line: int, column: int) -> dict[str, Definition]:
    """Every name visible at the position: blocks and constants of every file, and the constants,
    parameters and tensors of the enclosing model or block (innermost wins)."""
    found: dict[str, Definition] = {}
    for tree in analysis.trees:
        source = analysis.source(tree.path)
        for const in tree.consts:
            found[const.name] = Definition(const.name, "constant", _name_span(const.span, const.name, source),
                                           _text(source, const.span))
        for block in tree.blocks:
            found[block.name] = Definition(block.name, "block", block.name_span, signature(block, source))
    body = enclosing_body(analysis, line, column)
    if body is not None:
        source = analysis.source(body.span.path)
        if isinstance(body, st.Block):
            for param in body.params:
                found[param.name] = Definition(param.name, "parameter", _name_span(param.span, param.name, source),
                                               _text(source, param.span))
        for definition in _assignments(body.body, source):
            found.setdefault(definition.name, definition)
    return found


def enclosing_body(analysis: Analysis, line: int, column: int) -> st.Model | st.Block | None:
    if analysis.loaded.main is None:
        return None
    bodies: list[st.Model | st.Block] = [*analysis.loaded.main.models, *analysis.loaded.main.blocks]
    return next((body for body in bodies if contains(body.span, line, column)), None)


def _assignments(body: tuple[st.Statement, ...], source: str) -> Iterator[Definition]:
    """What a body defines, through repeat, for and if bodies: tensors, constants and loop variables."""
    for statement in body:
        if isinstance(statement, st.Chain | st.InputDecl):
            names = statement.targets if isinstance(statement, st.Chain) else (statement.name,)
            for name in names:
                yield Definition(name, "tensor", _name_span(statement.span, name, source),
                                 _text(source, statement.span))
        elif isinstance(statement, st.Const):
            yield Definition(statement.name, "constant", _name_span(statement.span, statement.name, source),
                             _text(source, statement.span))
        elif isinstance(statement, st.Repeat | st.For):
            names = statement.names if isinstance(statement, st.For) else (statement.index,) if statement.index else ()
            header = _text(source, statement.span).split("{", 1)[0].strip()
            for name in names:
                yield Definition(name, "loop variable", _name_span(statement.span, name, source), header)
            yield from _assignments(statement.body, source)
        elif isinstance(statement, st.If):
            yield from _assignments(statement.then, source)
            yield from _assignments(statement.otherwise, source)


def _name_span(span: Span, name: str, source: str) -> Span:
    """Where `name` is first written within `span`."""
    text = _text(source, span)
    match = re.search(rf"\b{re.escape(name)}\b", text)
    if match is None:
        return span
    before = text[:match.start()]
    line = span.line + before.count("\n")
    column = (match.start() - before.rfind("\n")) if "\n" in before else span.column + match.start()
    return Span(span.path, line, column, line, column + len(name))


def _text(source: str, span: Span) -> str:
    lines = source.split("\n")[span.line - 1:span.end_line]
    if not lines:
        return ""
    if len(lines) == 1:
        return lines[0][span.column - 1:span.end_column - 1]
    return "\n".join([lines[0][span.column - 1:], *lines[1:-1], lines[-1][:span.end_column - 1]])


def signature(block: st.Block, source: str) -> str:
    params = ", ".join(_text(source, p.span) for p in block.params)
    return f"block {block.name}({params})"


def doc_comment(source: str, line: int) -> str:
    """The comment lines right above line `line`, without their '#'."""
    lines = source.split("\n")
    found: list[str] = []
    index = line - 2
    while index >= 0 and lines[index].strip().startswith("#"):
        found.insert(0, lines[index].strip()[1:].strip())
        index -= 1
    return " ".join(found)


def instance_blocks(blocks: list[st.Block], nodes: tuple[Node, ...]) -> dict[str, str]:
    """Which block each instance (a node-name prefix such as "residual1") instantiates: the block whose
    body holds the spans of the instance's own layers."""
    names: dict[str, str] = {}
    for node in nodes:
        if "." in node.name:
            found = next((b.name for b in blocks if _inside(node.span, b.span)), None)
            if found is not None:
                names.setdefault(node.name.rsplit(".", 1)[0], found)
    return names


def _inside(inner: Span, outer: Span) -> bool:
    return inner.path == outer.path and (outer.line, outer.column) <= (inner.line, inner.column) \
        and (inner.end_line, inner.end_column) <= (outer.end_line, outer.end_column)


def include_at(analysis: Analysis, line: int, column: int) -> Path | None:
    """The file an include statement under the cursor names."""
    if analysis.loaded.main is None:
        return None
    for include in analysis.loaded.main.includes:
        if contains(include.span, line, column):
            return (Path(analysis.path).parent / include.path).resolve()
    return None
