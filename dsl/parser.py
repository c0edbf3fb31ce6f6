"""Text -> syntax tree, with syntax errors explained in plain words at the right place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import BAD_ARITHMETIC, SYNTAX_ERROR
from cnnc.dsl.diagnostics import Diagnostic, Span, error

# What a person calls each token the grammar can expect.
TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a quoted string such as "blocks.cnn"',
    "$END": "the end of the file",
}

# Mistakes recognised from example snippets (lark's match_examples): the label says what is wrong.
LABELLED_EXAMPLES = {
    "a model needs a name, as in `model my_net { ... }`": [
        "model { }",
        "model { conv(3) }",
    ],
    "a block needs a parameter list, as in `block name(param, other=1) { ... }`": [
        "block b { }",
    ],
    "statements cannot start with a number": [
        "model m { 32 }",
        "model m { conv(3) 32 }",
    ],
}


# Labels that say all there is to say: the parser's list of expected tokens would only confuse.
CHAINED_COMPARISON = "comparisons cannot be chained: write `a < b and b < c`"
BARE_CONDITIONAL = "a conditional value needs parentheses here: `(a if condition else b)`"
STRAY_ELSE = "'else' must follow the '}' of an if"
ARROW_IN_VALUE = "'->' chains layers in a statement, not inside an argument: name the chain first, `y = x -> relu`"
COMPLETE_LABELS = {CHAINED_COMPARISON, BARE_CONDITIONAL, STRAY_ELSE, ARROW_IN_VALUE}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("cnnc.dsl").joinpath("cnn.lark").read_text(encoding="utf-8")
    # cache=True keeps the built LALR tables in the temp directory, keyed by the grammar's hash:
    # it saves ~0.3 s of every `cnnc check`.
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True)


def parse(text: str, path: str) -> tuple[st.SourceFile | None, list[Diagnostic]]:
    """Parse one file. On a syntax error, returns no tree and one diagnostic."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as failure:
        return None, [_syntax_diagnostic(failure, text, path)]
    try:
        return _ToSyntaxTree(path).transform(tree), []
    except VisitError as failure:
        if isinstance(failure.orig_exc, _NumberTooLarge):
            return None, [failure.orig_exc.diagnostic]
        if isinstance(failure.orig_exc, RecursionError):
            return None, [too_deep(path)]
        raise
    except RecursionError:
        return None, [too_deep(path)]


def too_deep(path: str) -> Diagnostic:
    return error(SYNTAX_ERROR, "the spec nests expressions too deeply to process", Span.point(path, 1, 1),
                 "split long arithmetic with constants: `const A = ...`")


@dataclass(frozen=True)
class _ElsePart:
    """The statements after `else`, until the enclosing If takes them."""

    body: tuple[st.Statement, ...]


class _NumberTooLarge(Exception):
    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _syntax_diagnostic(failure: UnexpectedInput, text: str, path: str) -> Diagnostic:
    line, column = _position(failure, text)
    span = Span.point(path, line, column)
    found = _describe_found(failure)
    label = _label(failure, text)
    expected = _describe_expected(failure, text)
    notes = [f"expected {expected}"] if expected and label not in COMPLETE_LABELS else []
    hint = _hint(failure)
    if hint:
        notes.append(hint)
    if isinstance(failure, UnexpectedToken) and not _at_end(failure):
        span = Span(path, line, column, line, column + max(1, len(str(failure.token))))
    if _at_end(failure):
        message = label or "unexpected end of file"
    else:
        message = f"{label}; found {found}" if label else f"unexpected {found}"
    return error(SYNTAX_ERROR, message, span, *notes)


def _position(failure: UnexpectedInput, text: str) -> tuple[int, int]:
    if _at_end(failure):
        lines = text.splitlines() or [""]
        return len(lines), len(lines[-1]) + 1
    return max(1, failure.line), max(1, failure.column)


def _describe_found(failure: UnexpectedInput) -> str:
    if isinstance(failure, UnexpectedCharacters):
        return f"character {failure.char!r}"
    if _at_end(failure):
        return "end of file"
    assert isinstance(failure, UnexpectedToken)  # lark's third kind, after characters and the end
    token = failure.token
    kind = {"NAME": "name", "NUMBER": "number", "STRING": "string"}.get(token.type)
    return f"{kind} '{token}'" if kind else f"'{token}'"


def _at_end(failure: UnexpectedInput) -> bool:
    return isinstance(failure, UnexpectedEOF) or isinstance(failure, UnexpectedToken) and failure.token.type == "$END"


def _label(failure: UnexpectedInput, text: str) -> str | None:
    """Name the mistake from what precedes the error, else from lark's labelled examples."""
    if _at_end(failure):
        closes_block = "RBRACE" in getattr(failure, "expected", ())
        if closes_block:
            return "the file ended before a '}' closed it"
        return "the file ended in the middle of a statement"
    offset = failure.token.start_pos if isinstance(failure, UnexpectedToken) else failure.pos_in_stream
    before = _strip_comments(text[:offset]).rstrip()
    expected = set(getattr(failure, "expected", None) or getattr(failure, "allowed", None) or ())
    token = getattr(failure, "token", None)
    if before.endswith("->"):
        return "'->' must be followed by a layer"
    if isinstance(token, Token) and token.type == "COMPARE" and token == ">" and before.endswith("-"):
        return ARROW_IN_VALUE
    if isinstance(token, Token) and token.type == "COMPARE":
        return CHAINED_COMPARISON
    if isinstance(token, Token) and token.type == "IF" and "IF" not in expected:
        return BARE_CONDITIONAL
    if token == "{" and before.split()[-1:] == ["else"]:
        return STRAY_ELSE
    if before.endswith("=") and not before.endswith("=="):
        return "'=' must be followed by a value"
    unclosed = _unclosed(before, "(", ")")
    if unclosed and "RPAR" in expected:
        line, column = unclosed
        token_line = failure.line
        if token_line > line or getattr(failure, "token", None) == "}":
            return f"unclosed '(' from line {line}, column {column}: a ')' is missing"
        token = getattr(failure, "token", None)
        if "COMMA" in expected and isinstance(token, Token) and token.type in ("NAME", "NUMBER", "STRING"):
            return "missing ',' between arguments"
    if isinstance(failure, UnexpectedCharacters):
        return None
    try:
        return failure.match_examples(_lark().parse, LABELLED_EXAMPLES, use_accepts=True)
    except UnexpectedInput:
        return None


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.split("\n"))


def _unclosed(text: str, opening: str, closing: str) -> tuple[int, int] | None:
    """The line and column of the innermost `opening` bracket that `text` leaves open, if any."""
    open_at: list[tuple[int, int]] = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        for column, char in enumerate(line, start=1):
            if char == opening:
                open_at.append((line_number, column))
            elif char == closing and open_at:
                open_at.pop()
    return open_at[-1] if open_at else None


def _describe_expected(failure: UnexpectedInput, text: str) -> str:
    expected = set(getattr(failure, "expected", None) or getattr(failure, "allowed", None) or ())
    # LALR states are shared between brackets: only mention a ']' that would close something, and
    # not the optional `if`, `and`, `or` that could extend a complete argument.
    offset = failure.token.start_pos if isinstance(failure, UnexpectedToken) else failure.pos_in_stream
    if offset is not None and not _unclosed(_strip_comments(text[:offset]), "[", "]"):
        expected.discard("RSQB")
    if expected & {"RPAR", "RSQB", "COMMA"}:
        expected -= {"IF", "AND", "OR"}
    words = sorted({_token_word(name) for name in expected if not name.startswith("__IGNORE")})
    operators = [w for w in words if w.strip("'") in {"+", "-", "*", "/", "//", "%", "**"}]
    if len(operators) > 2:
        words = [w for w in words if w not in operators] + ["an operator"]
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return "one of " + ", ".join(words[:-1]) + " or " + words[-1]


@cache
def _terminal_patterns() -> dict[str, str]:
    return {t.name: t.pattern.value for t in _lark().terminals if t.pattern.type == "str"}


def _token_word(name: str) -> str:
    if name in TOKEN_WORDS:
        return TOKEN_WORDS[name]
    pattern = _terminal_patterns().get(name)
    return f"'{pattern}'" if pattern else name.lower()


def _hint(failure: UnexpectedInput) -> str | None:
    token = getattr(failure, "token", None)
    if isinstance(token, Token) and token.type == "NAME" and token[:1] == "x" and token[1:].isdigit():
        return "sizes are not written as 5x5: use kernel=5 for a square kernel or kernel=(5, 3) for height, width"
    return None


def _span(path: str, meta_or_token) -> Span:
    return Span(path, meta_or_token.line, meta_or_token.column, meta_or_token.end_line, meta_or_token.end_column)



def _binary(op: str) -> Callable[[Any, Any, list[Any]], st.BinaryOp]:
    """The transformer rule of a binary operator."""
    def build(self: Any, meta: Any, children: list[Any]) -> st.BinaryOp:
        left, right = children
        return st.BinaryOp(op, left, right, self._s(meta))

    return build

@v_args(meta=True)
class _ToSyntaxTree(Transformer):
    """Builds syntax-tree dataclasses; every node gets the span lark recorded for it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _s(self, meta) -> Span:
        return _span(self.path, meta)

    # expressions
    def number(self, meta, children):
        token = children[-1]
        text = str(token)
        is_float = any(ch in text for ch in ".eE")
        try:
            value = float(text) if is_float else int(text)
        except ValueError:
            value = float("inf")
        if is_float and value == float("inf") or len(text) > 40:
            raise _NumberTooLarge(error(BAD_ARITHMETIC, f"the number {text[:20]}... is too large", self._s(meta)))
        return st.Number(value, self._s(meta))

    def negative_number(self, meta, children):
        number = self.number(meta, children)
        return st.Number(-number.value, number.span)

    def true(self, meta, _children):
        return st.Bool(True, self._s(meta))

    def false(self, meta, _children):
        return st.Bool(False, self._s(meta))

    def string(self, meta, children):
        return st.String(str(children[0])[1:-1], self._s(meta))

    def name(self, meta, children):
        return st.Name(str(children[0]), self._s(meta))

    def call(self, meta, children):
        name, args = children
        return st.Call(str(name), tuple(args or ()), self._s(meta), _span(self.path, name))

    def tuple(self, meta, children):
        return st.TupleValue(tuple(c for c in children if c is not None), self._s(meta))

    def list(self, meta, children):
        return st.TupleValue(tuple(c for c in children if c is not None), self._s(meta))

    def index(self, meta, children):
        target, index = children
        return st.Index(target, index, self._s(meta))

    def compare(self, meta, children):
        left, op, right = children
        return st.Compare(str(op), left, right, self._s(meta))

    def and_(self, meta, children):
        return st.Logic("and", children[0], children[1], self._s(meta))

    def or_(self, meta, children):
        return st.Logic("or", children[0], children[1], self._s(meta))

    def not_(self, meta, children):
        return st.Not(children[0], self._s(meta))

    def conditional(self, meta, children):
        then, condition, otherwise = children
        return st.Conditional(then, condition, otherwise, self._s(meta))

    add, sub, mul, div = _binary("+"), _binary("-"), _binary("*"), _binary("/")
    floordiv, mod, pow = _binary("//"), _binary("%"), _binary("**")

    def neg(self, meta, children):
        return st.Negate(children[0], self._s(meta))

    def args(self, meta, children):
        return tuple(children)

    def positional_arg(self, meta, children):
        return st.Arg(None, children[0], self._s(meta))

    def keyword_arg(self, meta, children):
        keyword, value = children
        return st.Arg(str(keyword), value, self._s(meta))

    # layers and statements
    def bare_layer(self, meta, children):
        span = self._s(meta)
        return st.Call(str(children[0]), (), span, span)

    def call_layer(self, meta, children):
        return self.call(meta, children)

    def targets(self, meta, children):
        return tuple(str(name) for name in children)

    def chain_stmt(self, meta, children):
        targets, *layers = children
        return st.Chain(targets or (), tuple(layers), self._s(meta))

    def const(self, meta, children):
        name, value = children
        return st.Const(str(name), value, self._s(meta))

    def input_decl(self, meta, children):
        name, args = children
        return st.InputDecl(str(name), tuple(args), self._s(meta))

    def output_decl(self, meta, children):
        return st.OutputDecl(tuple(str(name) for name in children), self._s(meta))

    def init_decl(self, meta, children):
        return st.InitDecl(children[0], self._s(meta))

    def repeat(self, meta, children):
        count, index, *body = children
        return st.Repeat(count, str(index) if index is not None else None, tuple(body), self._s(meta))

    def for_stmt(self, meta, children):
        names = tuple(str(c) for c in children if isinstance(c, Token))
        iterable, *body = [c for c in children if not isinstance(c, Token)]
        return st.For(names, iterable, tuple(body), self._s(meta))

    def if_stmt(self, meta, children):
        condition, *then, otherwise = children  # the optional else part is always last (None if absent)
        return st.If(condition, tuple(then), otherwise.body if otherwise else (), self._s(meta))

    def else_if(self, meta, children):
        return _ElsePart(tuple(children))

    def else_body(self, meta, children):
        return _ElsePart(tuple(children))

    # top level
    def param(self, meta, children):
        name, default = children
        return st.Param(str(name), default, self._s(meta))

    def block(self, meta, children):
        name, *rest = children
        params = tuple(c for c in rest if isinstance(c, st.Param))
        body = tuple(c for c in rest if c is not None and not isinstance(c, st.Param))
        return st.Block(str(name), params, body, self._s(meta), _span(self.path, name))

    def model(self, meta, children):
        name, *body = children
        return st.Model(str(name), tuple(body), self._s(meta), _span(self.path, name))

    def include(self, meta, children):
        return st.Include(str(children[0])[1:-1], self._s(meta))

    def setting(self, meta, children):
        key, *values = children
        return st.Setting(str(key), tuple(values), self._s(meta), _span(self.path, key))

    def call_setting(self, meta, children):
        key, args = children
        call = st.Call(str(key), tuple(args or ()), self._s(meta), _span(self.path, key))
        return st.Setting(str(key), (call,), self._s(meta), _span(self.path, key))

    def train(self, meta, children):
        return st.Train(tuple(children), self._s(meta))

    def start(self, meta, children):
        def of(kind):
            return tuple(c for c in children if isinstance(c, kind))

        return st.SourceFile(self.path, of(st.Include), of(st.Const), of(st.Block), of(st.Model), of(st.Train))

