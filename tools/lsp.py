"""`cnnc lsp`: a language server for .cnn files over stdio (pygls).

Diagnostics as you type (the codes, spans and notes of `cnnc check`; notes as related
information), hover (a layer's output shape, parameters, MACs and receptive field; a block's
signature), go to definition (blocks, constants, parameters, tensors, included files), completion
(ops and their arguments with the op registry's docs, blocks, tensors, constants) and formatting
(`cnnc fmt`). LSP positions are 0-based; the compiler's are 1-based.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from cnnc import __version__
from cnnc.compiler.arguments import REQUIRED, ArgSpec, Bool, Padding
from cnnc.compiler.ir import Node
from cnnc.compiler.ops import OPS
from cnnc.dsl.diagnostics import Diagnostic, Severity, Span
from cnnc.errors import CnncError
from cnnc.tools import analysis as an
from cnnc.tools import vocabulary
from cnnc.tools.fmt import format_text
from cnnc.tools.layout import describe_node

VALUES = ("constant", "parameter", "loop variable")  # names that hold values rather than tensors
CALL_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\($")
KEYWORD_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*[A-Za-z_0-9]*$")


class CnnServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("cnnc", __version__)
        self.analyses: dict[str, an.Analysis] = {}
        self.published: dict[str, set[str]] = {}  # document -> every uri its diagnostics went to

    def analyse(self, uri: str) -> an.Analysis:
        document = self.workspace.get_text_document(uri)
        self.analyses[uri] = an.analyse(_path(uri), document.source)
        return self.analyses[uri]

    def current(self, uri: str) -> an.Analysis:
        return self.analyses.get(uri) or self.analyse(uri)


server = CnnServer()


def _path(uri: str) -> str:
    return unquote(urlparse(uri).path)


def _uri(path: str) -> str:
    return Path(path).resolve().as_uri()


def _range(span: Span) -> lsp.Range:
    return lsp.Range(lsp.Position(span.line - 1, span.column - 1), lsp.Position(span.end_line - 1, span.end_column - 1))


# --- diagnostics -------------------------------------------------------------------------------------

def _diagnostic(diagnostic: Diagnostic, uri: str) -> lsp.Diagnostic:
    span = diagnostic.span or Span("", 1, 1, 1, 1)
    where = lsp.Location(uri, _range(span))
    return lsp.Diagnostic(
        range=_range(span),
        message=diagnostic.message,
        severity=lsp.DiagnosticSeverity.Error if diagnostic.severity is Severity.ERROR
        else lsp.DiagnosticSeverity.Warning,
        code=diagnostic.code,
        source="cnnc",
        related_information=[lsp.DiagnosticRelatedInformation(where, note) for note in diagnostic.notes] or None,
    )


def _publish(ls: CnnServer, uri: str) -> None:
    analysis = ls.analyse(uri)
    by_uri: dict[str, list[lsp.Diagnostic]] = {uri: []}
    for diagnostic in analysis.diagnostics:
        target = _uri(diagnostic.span.path) if diagnostic.span and diagnostic.span.path != analysis.path else uri
        by_uri.setdefault(target, []).append(_diagnostic(diagnostic, target))
    for stale in ls.published.get(uri, set()) - set(by_uri):
        by_uri[stale] = []
    ls.published[uri] = set(by_uri)
    for target, diagnostics in by_uri.items():
        ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=target, diagnostics=diagnostics))


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CnnServer, params: lsp.DidOpenTextDocumentParams) -> None:
    _publish(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CnnServer, params: lsp.DidChangeTextDocumentParams) -> None:
    _publish(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: CnnServer, params: lsp.DidSaveTextDocumentParams) -> None:
    _publish(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CnnServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.analyses.pop(uri, None)
    for target in ls.published.pop(uri, set()):
        ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=target, diagnostics=[]))


# --- hover -------------------------------------------------------------------------------------------

@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: CnnServer, params: lsp.HoverParams) -> lsp.Hover | None:
    analysis = ls.current(params.text_document.uri)
    line, column = params.position.line + 1, params.position.character + 1
    text = _hover_text(analysis, line, column)
    if text is None:
        return None
    return lsp.Hover(lsp.MarkupContent(lsp.MarkupKind.Markdown, text))


def _hover_text(analysis: an.Analysis, line: int, column: int) -> str | None:
    found = an.word_at(analysis.text, line, column)
    word = found[0] if found else None
    visible = an.definitions(analysis, line, column)
    if word is not None and word in visible:
        definition = visible[word]
        if definition.kind == "block":
            return _block_hover(analysis, word)
        if definition.kind in ("constant", "parameter", "loop variable"):
            return f"{definition.kind} `{definition.detail}`"
        produced = [n for n in analysis.nodes if n.name == word or n.name.endswith(f".{word}")]
        if produced:
            return _layer_hover(produced)
    nodes = an.nodes_at(analysis, line, column)
    if nodes:
        return _layer_hover(nodes)
    if word in vocabulary.layers():
        return _layer_doc(word)
    return None


def _block_hover(analysis: an.Analysis, name: str) -> str:
    block = analysis.blocks[name]
    source = analysis.source(block.span.path)
    doc = an.doc_comment(source, block.span.line)
    where = f"{Path(block.span.path).name}:{block.span.line}"
    text = f"```cnn\n{an.signature(block, source)}\n```\n" + (f"{doc}\n\n" if doc else "") + f"defined at {where}"
    instances = [key for key, of in an.instance_blocks(list(analysis.blocks.values()), analysis.nodes).items()
                 if of == name]
    if instances:
        text += "\n\ninstances in the model:\n" + "\n".join(_instance(analysis, key) for key in instances)
    return text


def _instance(analysis: an.Analysis, key: str) -> str:
    """An instance's output shape and parameters: those of its layers (nested instances included)."""
    layers = [n for n in analysis.nodes if n.name.startswith(key + ".")]
    params = sum(n.params + n.non_trainable for n in layers)
    return f"- {key}: output {_dims(layers[-1].shape)}, {params:,} parameters, {sum(n.macs for n in layers):,} MACs"


def _layer_hover(nodes: list[Node]) -> str:
    node = nodes[0]
    lines = [f"**{node.name}** `{describe_node(node)}`", "",
             f"- output: {_dims(node.shape)}",
             f"- parameters: {node.params:,}" + (f" (+ {node.non_trainable:,} non-trainable)" if node.non_trainable
                                                 else ""),
             f"- MACs: {node.macs:,}",
             f"- receptive field: {_dims(node.receptive_field)}"]
    if node.inputs:
        lines.append(f"- inputs: {', '.join(node.inputs)}")
    if len(nodes) > 1:
        lines.append(f"\n{len(nodes)} layers come from this line: " + ", ".join(n.name for n in nodes[:8])
                     + (", ..." if len(nodes) > 8 else ""))
    if node.op in OPS:
        lines.append(f"\n{OPS[node.op].doc}")
    return "\n".join(lines)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _layer_doc(name: str) -> str:
    doc, specs = vocabulary.layers()[name]
    family = f" ({OPS[name].family})" if name in OPS else ""
    args = "\n".join(f"- `{spec.name}`{_default(spec)}: {_arg_doc(spec)}" for spec in specs)
    return f"**{name}**{family}: {doc}" + (f"\n\n{args}" if args else "")


def _default(spec: ArgSpec) -> str:
    if spec.default is REQUIRED:
        return " (required" + (", positional)" if spec.positional else ")")
    return ""


def _arg_doc(spec: ArgSpec) -> str:
    description = getattr(spec.kind, "description", "")
    return f"{description}; {spec.doc}" if spec.doc else description


# --- definition --------------------------------------------------------------------------------------

@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: CnnServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    analysis = ls.current(params.text_document.uri)
    line, column = params.position.line + 1, params.position.character + 1
    included = an.include_at(analysis, line, column)
    if included is not None:
        return lsp.Location(included.as_uri(), lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0)))
    found = an.word_at(analysis.text, line, column)
    if found is None:
        return None
    target = an.definitions(analysis, line, column).get(found[0])
    if target is None:
        return None
    return lsp.Location(_uri(target.span.path), _range(target.span))


# --- completion --------------------------------------------------------------------------------------

@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=["(", ",", ">", "="]))
def completion(ls: CnnServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    analysis = ls.current(params.text_document.uri)
    line, column = params.position.line + 1, params.position.character + 1
    before = _text_before(ls.workspace.get_text_document(params.text_document.uri).source, line, column)
    return lsp.CompletionList(is_incomplete=False, items=_completions(analysis, before, line, column))


def _text_before(text: str, line: int, column: int) -> str:
    lines = text.split("\n")
    return "\n".join([*lines[:line - 1], lines[line - 1][:column - 1] if line <= len(lines) else ""])


def _completions(analysis: an.Analysis, before: str, line: int, column: int) -> list[lsp.CompletionItem]:
    visible = an.definitions(analysis, line, column)
    callee = _open_call(before)
    layers = vocabulary.layers()
    values = _name_items(visible, VALUES) + _helper_items()
    if callee in layers:
        keyword = KEYWORD_BEFORE.search(before)
        spec = next((s for s in layers[callee][1] if keyword and s.name == keyword.group(1)), None)
        if spec is not None:
            return _value_items(spec) + values
        if callee in OPS and OPS[callee].is_merge:
            return _name_items(visible, ("tensor",))
        return _argument_items(layers[callee][1]) + values
    if callee in analysis.blocks:
        block = analysis.blocks[callee]
        return [lsp.CompletionItem(f"{p.name}=", kind=lsp.CompletionItemKind.Field, insert_text=f"{p.name}=",
                                   detail=an.signature(block, analysis.source(block.span.path)))
                for p in block.params] + values + _layer_items()
    if callee is not None:
        return values + _name_items(visible, ("tensor",))
    items = _layer_items()
    items += [lsp.CompletionItem(name, kind=lsp.CompletionItemKind.Module, detail=d.detail,
                                 documentation=an.doc_comment(analysis.source(d.span.path), d.span.line) or None)
              for name, d in visible.items() if d.kind == "block"]
    items += _name_items(visible, ("tensor",))
    if not before.rstrip().endswith("->"):
        items += [lsp.CompletionItem(k, kind=lsp.CompletionItemKind.Keyword) for k in vocabulary.keywords()]
    return items


def _open_call(before: str) -> str | None:
    """The name of the call whose parentheses the cursor is in, if any."""
    depth = 0
    for index in range(len(before) - 1, -1, -1):
        char = before[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                match = CALL_BEFORE.search(before[:index + 1])
                return match.group(1) if match else None
            depth -= 1
        elif char in "{}":
            return None
    return None


def _layer_items() -> list[lsp.CompletionItem]:
    """Every layer of the op registry (and split), documented from it."""
    return [lsp.CompletionItem(name, kind=lsp.CompletionItemKind.Function,
                               detail=f"{OPS[name].family}: {doc}" if name in OPS else doc,
                               documentation=lsp.MarkupContent(lsp.MarkupKind.Markdown, _layer_doc(name)))
            for name, (doc, _) in vocabulary.layers().items()]


def _helper_items() -> list[lsp.CompletionItem]:
    return [lsp.CompletionItem(name, kind=lsp.CompletionItemKind.Function, detail="helper function")
            for name in vocabulary.helpers()]


def _argument_items(specs: tuple[ArgSpec, ...]) -> list[lsp.CompletionItem]:
    return [lsp.CompletionItem(f"{spec.name}=", kind=lsp.CompletionItemKind.Field, insert_text=f"{spec.name}=",
                               detail=getattr(spec.kind, "description", ""), documentation=_arg_doc(spec) or None)
            for spec in specs]


def _value_items(spec: ArgSpec) -> list[lsp.CompletionItem]:
    if isinstance(spec.kind, Padding):
        options: list[str] = ["same", "valid"]
    elif isinstance(spec.kind, Bool):
        options = ["true", "false"]
    else:
        options = list(getattr(spec.kind, "options", ()))
    return [lsp.CompletionItem(option, kind=lsp.CompletionItemKind.EnumMember, detail=f"{spec.name}: {option}")
            for option in options]


def _name_items(visible: dict[str, an.Definition], kinds: tuple[str, ...]) -> list[lsp.CompletionItem]:
    kind_of = {"tensor": lsp.CompletionItemKind.Variable, "constant": lsp.CompletionItemKind.Constant,
               "parameter": lsp.CompletionItemKind.Variable, "loop variable": lsp.CompletionItemKind.Variable}
    return [lsp.CompletionItem(name, kind=kind_of[d.kind], detail=f"{d.kind}: {d.detail}")
            for name, d in visible.items() if d.kind in kinds]


# --- formatting --------------------------------------------------------------------------------------

@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: CnnServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    """The whole document replaced by its `cnnc fmt` layout; nothing while it does not parse."""
    source = ls.workspace.get_text_document(params.text_document.uri).source
    try:
        formatted = format_text(source, _path(params.text_document.uri))
    except CnncError:
        return None
    if formatted == source:
        return []
    lines = source.split("\n")
    end = lsp.Position(len(lines) - 1, len(lines[-1]))
    return [lsp.TextEdit(lsp.Range(lsp.Position(0, 0), end), formatted)]


def main() -> None:
    server.start_io()
