"""`cnnc fmt`: the canonical layout, idempotent and safe (the same syntax tree and comments) over every
spec, every golden input that parses and a corpus of fuzz mutations; --check, --diff, in place, stdin."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from fuzzing import mutate
from test_goldens import split_cases

from cnnc.cli import main
from cnnc.dsl.parser import parse
from cnnc.errors import CnncError, InternalError
from cnnc.tools import fmt
from cnnc.tools.fmt import format_text

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "specs").rglob("*.cnn"), *(ROOT / "tests" / "specs").rglob("*.cnn"),
                  *(ROOT / "tests" / "errors").rglob("*.cnn")])
# Every file, and every `# case:` of the golden error inputs, that parses.
TEXTS = {str(p.relative_to(ROOT)): p.read_text() for p in SOURCES}
TEXTS |= {f"{p.relative_to(ROOT)}: {title}": text for p in SOURCES if p.parent.name == "errors"
          for title, text in split_cases(p.read_text())}
PARSEABLE = {name: text for name, text in TEXTS.items() if parse(text, name)[0] is not None}
FUZZ_ROUNDS = 250


def _assert_safe_and_idempotent(text: str, path: str) -> str:
    formatted = format_text(text, path)
    assert format_text(formatted, path) == formatted
    before, after = parse(text.replace("\r\n", "\n"), path)[0], parse(formatted, path)[0]
    assert before is not None and after is not None
    assert fmt._plain(before) == fmt._plain(after)
    assert fmt._comments(text) == fmt._comments(formatted)
    assert all(line == line.rstrip() and "\t" not in line for line in formatted.split("\n"))
    assert "\n\n\n" not in formatted and not formatted.endswith("\n\n")
    assert formatted == "" or formatted.endswith("\n")
    return formatted


def test_the_corpus_holds_every_kind_of_file() -> None:
    assert any(name.startswith("specs/lib/") for name in PARSEABLE)
    assert sum(": " in name for name in PARSEABLE) >= 20     # golden error cases that parse


@pytest.mark.parametrize("name", PARSEABLE)
def test_every_file_formats_safely(name: str) -> None:
    _assert_safe_and_idempotent(PARSEABLE[name], name)


@pytest.mark.parametrize("name", PARSEABLE)
def test_indentation_is_the_formatters(name: str) -> None:
    """Lines stripped of their indentation (all but those with a comment after code, whose comment
    column the formatter keeps) come back exactly as the formatted file."""
    lines = PARSEABLE[name].split("\n")
    flat = "\n".join(line if "#" in line.split('"')[-1] and not line.lstrip().startswith("#") else line.lstrip()
                     for line in lines)
    assert format_text(flat, name) == format_text(PARSEABLE[name], name)


def test_fuzz_mutations_that_parse_format_safely() -> None:
    rng = random.Random(11)
    texts = list(PARSEABLE.values())
    formatted = 0
    for _ in range(FUZZ_ROUNDS):
        text = mutate(rng.choice(texts), rng)
        tree, _ = parse(text, "fuzz.cnn")
        if tree is not None:
            _assert_safe_and_idempotent(text, "fuzz.cnn")
            formatted += 1
    assert formatted >= FUZZ_ROUNDS // 10


def test_the_repository_specs_are_formatted() -> None:
    assert main(["fmt", "--check", str(ROOT / "specs")]) == 0


MESSY = """

# a comment at the top
const  WIDTH=16;;
block b( filters,stride = 2 ){
  main=conv(filters ,kernel=3,stride=stride)->relu           # keeps its column
      ->conv(filters, kernel = (3,5), padding=( 1, 1 ),init=normal(std = -0.5*2))



  add( main , in )
}
model m {
input image(1,28,28)
        # an own-line comment
  const K = -WIDTH+2 ; x=image   ->  b(WIDTH)  # short
  a1 = image -> relu;      b1 = a1->relu
  a22 = image -> relu;     b22 = a22 -> relu
  conv(filters=8,
       kernel=3) -> relu
  dense(10,
    activation = softmax)
}
train { dataset mnist
lr -0.5 }
"""

CANONICAL = """# a comment at the top
const WIDTH = 16
block b(filters, stride=2) {
    main = conv(filters, kernel=3, stride=stride) -> relu    # keeps its column
        -> conv(filters, kernel=(3, 5), padding=(1, 1), init=normal(std=-0.5 * 2))

    add(main, in)
}
model m {
    input image(1, 28, 28)
    # an own-line comment
    const K = -WIDTH + 2; x = image -> b(WIDTH)  # short
    a1 = image -> relu;    b1 = a1 -> relu
    a22 = image -> relu;   b22 = a22 -> relu
    conv(filters=8,
         kernel=3) -> relu
    dense(10,
          activation=softmax)
}
train { dataset mnist
    lr -0.5 }
"""


def test_the_canonical_layout() -> None:
    assert _assert_safe_and_idempotent(MESSY, "messy.cnn") == CANONICAL
    assert format_text(MESSY.replace("\n", "\r\n"), "messy.cnn") == CANONICAL


def test_a_file_that_does_not_parse_is_an_error() -> None:
    with pytest.raises(CnncError, match=r"(?s)does not parse.*error\[E001\]"):
        format_text("model m { conv(3 }\n", "bad.cnn")


def test_a_layout_that_changes_the_meaning_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fmt, "_layout", lambda text: text.replace("relu", "selu"))
    with pytest.raises(InternalError, match="would change its meaning"):
        format_text("model m { relu }\n", "m.cnn")
    monkeypatch.setattr(fmt, "_layout", lambda text: text.replace("# note", "# other"))
    with pytest.raises(InternalError):
        format_text("model m { relu }  # note\n", "m.cnn")
    spec = tmp_path / "m.cnn"
    spec.write_text("model m {\nrelu }  # note\n")
    assert main(["fmt", str(spec)]) == 3
    assert spec.read_text() == "model m {\nrelu }  # note\n"


def test_check_diff_and_in_place(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "specs"
    (folder / "lib").mkdir(parents=True)
    messy, tidy, broken = folder / "messy.cnn", folder / "lib" / "tidy.cnn", folder / "broken.cnn"
    messy.write_text(MESSY)
    tidy.write_text(CANONICAL)
    assert main(["fmt", "--check", str(tidy)]) == 0
    assert main(["fmt", "--check", str(folder)]) == 1
    assert f"{messy}: would be reformatted" in capsys.readouterr().err
    assert main(["fmt", "--diff", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"+++ {messy} (formatted)" in out and "+const WIDTH = 16" in out and "-const  WIDTH=16;;" in out
    assert messy.read_text() == MESSY
    assert main(["fmt", str(folder)]) == 0
    assert messy.read_text() == CANONICAL and tidy.read_text() == CANONICAL
    assert main(["fmt", "--check", str(folder)]) == 0
    broken.write_text("model m { conv(3 }\n")
    assert main(["fmt", str(folder)]) == 1
    assert "error[E001]" in capsys.readouterr().err and broken.read_text() == "model m { conv(3 }\n"
    assert main(["fmt", str(tmp_path / "missing.cnn")]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO(MESSY))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == CANONICAL
