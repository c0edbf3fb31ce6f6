"""`cnnc fmt`: one canonical layout for .cnn files.

The formatter owns the horizontal layout and the author owns the line breaks (as gofmt does):
each line is re-indented (four spaces per open brace, four more for a line that continues a
statement), the spaces between tokens are canonical (`a = b`, `x -> y`, `f(a, b=1)`, `a * -b`,
`{ x }`), a comment stays on its line and at its column where the code leaves room, and so does a
statement after `;` (aligned columns stay aligned), `;` at the end of a line goes, runs of blank
lines become one, and none are kept after `{`, before `}` or at the ends of the file. It changes
only whitespace and line-ending semicolons; every result is parsed again and must give the same
syntax tree, with the same comments, or nothing is written.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from cnnc.dsl.diagnostics import render_all
from cnnc.dsl.parser import _lark, parse
from cnnc.errors import CnncError, InternalError
from cnnc.tools.vocabulary import keywords

INDENT = "    "
TOKEN = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"[^"\n]*")
  | (?P<number>(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<operator>->|\*\*|//|==|!=|<=|>=|[-+*/%=<>])
  | (?P<punctuation>[(){}\[\],;])
  | (?P<newline>\n)
  | (?P<space>[ \t\f\v]+)
  | (?P<other>.)
""", re.VERBOSE)
KEYWORDS = frozenset(keywords())
BINARY = frozenset({"->", "**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "<", ">", "and", "or"})
OPENERS, CLOSERS = frozenset("(["), frozenset(")]")
# A line that starts with one of these continues the statement above; so does the line after one
# that ends with one of CONTINUED_BY.
CONTINUES = BINARY
CONTINUED_BY = BINARY | {"=", ",", "not"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    offset: int
    column: int   # 0-based, in its line of the original text


def format_text(text: str, path: str = "<text>") -> str:
    """The canonical layout of `text`; a CnncError if it does not parse."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    tree, problems = parse(text, path)
    if tree is None:
        raise CnncError(f"{path} does not parse, so it cannot be formatted:\n" + render_all(problems, {path: text}))
    formatted = _layout(text)
    _check_same(text, formatted, path)
    return formatted


def _tokens(text: str) -> list[Token]:
    return [Token(match.lastgroup or "other", match.group(), match.start(),
                  match.start() - (text.rfind("\n", 0, match.start()) + 1)) for match in TOKEN.finditer(text)]


def _unary_minuses(text: str) -> frozenset[int]:
    """Offsets of the '-' signs that negate (as opposed to subtract), from the parse tree."""
    tree = _lark().parse(text)
    return frozenset(node.meta.start_pos for node in tree.iter_subtrees()
                     if node.data in ("neg", "negative_number") and not node.meta.empty)


def _lines(tokens: list[Token]) -> list[list[Token]]:
    lines: list[list[Token]] = [[]]
    for token in tokens:
        if token.kind == "newline":
            lines.append([])
        elif token.kind != "space":
            lines[-1].append(token)
    return lines


def _layout(text: str) -> str:
    unary = _unary_minuses(text)
    depth = 0
    brackets: list[int | None] = []  # per open bracket, the column its contents align to (None: hanging)
    last: Token | None = None        # the last code token of the lines so far
    out: list[str] = []
    pending_blank = False
    for line in _lines(_tokens(text)):
        code = [t for t in line if t.kind != "comment"]
        while code and code[-1].text == ";":
            code.pop()
        comment = line[-1] if line and line[-1].kind == "comment" else None
        if not code and comment is None:
            pending_blank = bool(out)
            continue
        leading_closers = next((i for i, t in enumerate(code) if t.text != "}"), len(code))
        continuing = bool(code) and last is not None and leading_closers == 0 and (
            bool(brackets) or code[0].text in CONTINUES or last.text in CONTINUED_BY)
        if brackets and brackets[-1] is not None and (continuing or not code):
            indent = " " * brackets[-1]
        elif brackets and code and code[0].text in CLOSERS:
            indent = INDENT * depth    # a hanging bracket closes where its statement starts
        else:
            indent = INDENT * (max(0, depth - leading_closers) + (1 if continuing or brackets else 0))
        if pending_blank and not (out and out[-1].rstrip().endswith("{")) and not (code and code[0].text == "}"):
            out.append("")
        pending_blank = False
        out.append(_with_comment(indent + _join(code, unary, brackets, len(indent)), comment))
        for token in code:
            depth = max(0, depth + {"{": 1, "}": -1}.get(token.text, 0))
        last = code[-1] if code else last
    return "\n".join(out).rstrip("\n") + "\n" if out else ""


def _join(code: list[Token], unary: frozenset[int], brackets: list[int | None], start: int) -> str:
    """A line's code tokens with canonical spaces. Updates `brackets`: an opening bracket followed by
    more of its line aligns the lines it continues onto with what follows it (PEP 8's visual indent)."""
    parts: list[str] = []
    width = start
    for index, token in enumerate(code):
        if index and code[index - 1].text == ";":
            gap = max(1, token.column - width)   # a statement after `;` keeps its column where there is room
            parts.append(" " * gap)
            width += gap
        elif index and _spaced(code[index - 1], token, unary, len(brackets)):
            parts.append(" ")
            width += 1
        parts.append(token.text)
        width += len(token.text)
        if token.text in OPENERS:
            brackets.append(width if index + 1 < len(code) else None)
        elif token.text in CLOSERS and brackets:
            brackets.pop()
    return "".join(parts)


def _spaced(left: Token, right: Token, unary: frozenset[int], brackets: int) -> bool:
    """Whether a space separates two neighbouring tokens; `brackets` counts the brackets open at `right`."""
    if left.text in OPENERS or right.text in CLOSERS or right.text in (",", ";"):
        return False
    if left.text in (",", ";"):
        return True
    if left.text == "-" and left.offset in unary:
        return False
    if "=" in (left.text, right.text):
        return brackets == 0    # `kernel=3` and `stride=2` inside a call; `x = ...` outside
    if right.text in OPENERS:
        # a call or an index (`f(x)`, `xs[0]`), except after a keyword or an operator (`if (a)`, `in [1, 2]`)
        return not (left.kind in ("name", "string") and left.text not in KEYWORDS or left.text in CLOSERS)
    return True


def _with_comment(code: str, comment: Token | None) -> str:
    """A comment after code keeps its column where the code leaves room for it."""
    if comment is None:
        return code.rstrip()
    body = comment.text.rstrip()
    if not code.strip():
        return code + body
    return code + " " * max(2, comment.column - len(code)) + body


# --- safety ------------------------------------------------------------------------------------------

def _check_same(original: str, formatted: str, path: str) -> None:
    before, _ = parse(original, path)
    after, problems = parse(formatted, path)
    if after is None or _plain(before) != _plain(after) or _comments(original) != _comments(formatted):
        detail = "; ".join(p.message for p in problems) or "the syntax tree or the comments changed"
        raise InternalError(f"formatting {path} would change its meaning ({detail}); nothing was written")


def _plain(value: Any) -> Any:
    """A syntax tree without its source positions."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, *(_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                                        if not f.name.endswith("span") and f.name != "path"))
    if isinstance(value, tuple | list):
        return tuple(_plain(v) for v in value)
    return value


def _comments(text: str) -> list[str]:
    return [t.text.rstrip() for t in _tokens(text) if t.kind == "comment"]
