"""Highlighting: the Pygments lexer (installed as the `cnn` lexer) and the VS Code TextMate grammar."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnc.compiler.ops import OPS
from cnnc.dsl.parser import parse

pytest.importorskip("pygments")
from pygments.lexers import get_lexer_by_name  # noqa: E402
from pygments.token import Error, Keyword, Name, Operator  # noqa: E402

from cnnc.tools.lexer import keywords, textmate_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "specs").rglob("*.cnn"), *(ROOT / "tests").rglob("*.cnn")])
PARSEABLE = [p for p in SOURCES if parse(p.read_text(encoding="utf-8", errors="replace"), str(p))[0] is not None]


def test_every_parseable_file_is_in_the_corpus() -> None:
    assert len(PARSEABLE) >= 15 and any(p.parent.name == "errors" for p in PARSEABLE)


@pytest.mark.parametrize("path", PARSEABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_token_has_a_type(path: Path) -> None:
    lexer = get_lexer_by_name("cnn")
    text = path.read_text()
    tokens = list(lexer.get_tokens(text))
    assert "".join(value for _, value in tokens) == (text if text.endswith("\n") else text + "\n")
    errors = [(kind, value) for kind, value in tokens if kind in Error]
    assert not errors, errors[:5]


def test_ops_keywords_and_definitions() -> None:
    lexer = get_lexer_by_name("cnn")
    for op in OPS.values():
        tokens = [(kind, value) for kind, value in lexer.get_tokens(op.example) if value.strip()]
        assert (Name.Builtin, op.name) in tokens, op.name
    assert {"model", "block", "repeat", "include", "const", "input", "output", "train", "if", "for"} <= set(keywords())
    tokens = list(lexer.get_tokens('include "a.cnn"\nblock wide(n=2) { repeat n as i { x = relu } }\n'))
    assert (Keyword, "include") in tokens and (Name.Function, "wide") in tokens and (Keyword, "as") in tokens
    assert (Name.Variable, "x") in tokens and (Name, "n") in tokens
    tokens = list(lexer.get_tokens("for c in [8, 16] { if c >= 8 { a, b = split(2) -> conv(max(c, 4), 3) } }\n"))
    assert (Keyword, "for") in tokens and (Keyword, "if") in tokens and (Operator, ">=") in tokens
    assert (Name.Builtin, "split") in tokens and (Name.Builtin.Pseudo, "max") in tokens


def test_pygmentize_finds_the_lexer() -> None:
    run = subprocess.run([sys.executable, "-m", "pygments", "-l", "cnn", "-f", "html", str(ROOT / "specs/xo.cnn")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert '<span class="nb">conv</span>' in run.stdout and '<span class="kd">model</span>' in run.stdout
    guessed = subprocess.run([sys.executable, "-m", "pygments", "-N", "net.cnn"], capture_output=True, text=True)
    assert guessed.stdout.strip() == "cnn"


def test_textmate_grammar_is_generated() -> None:
    committed = (ROOT / "editors/vscode/syntaxes/cnn.tmLanguage.json").read_text()
    regenerate = "python -m cnnc.tools.lexer > editors/vscode/syntaxes/cnn.tmLanguage.json"
    assert committed == textmate_json(), f"regenerate it: {regenerate}"
    grammar = json.loads(committed)
    ops_rule = next(p for p in grammar["patterns"] if p.get("name") == "support.function.op.cnn")
    assert all(op in ops_rule["match"] for op in OPS)


def test_vscode_extension_files() -> None:
    folder = ROOT / "editors/vscode"
    manifest = json.loads((folder / "package.json").read_text())
    [language] = manifest["contributes"]["languages"]
    assert language["extensions"] == [".cnn"] and (folder / language["configuration"]).is_file()
    [grammar] = manifest["contributes"]["grammars"]
    assert (folder / grammar["path"]).is_file() and grammar["scopeName"] == "source.cnn"
    assert json.loads((folder / "language-configuration.json").read_text())["comments"]["lineComment"] == "#"
    assert '"lsp"' in (folder / "extension.js").read_text() and (folder / "README.md").is_file()
