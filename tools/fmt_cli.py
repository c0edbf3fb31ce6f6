"""`cnnc fmt PATH...`: rewrite files in place, or with --check/--diff only report what would change."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from cnnc.compiler.loader import read_text
from cnnc.errors import CnncError, UsageError
from cnnc.files import replacing
from cnnc.tools.fmt import format_text


def run(paths: list[str], check: bool = False, diff: bool = False) -> int:
    if paths == ["-"]:
        sys.stdout.write(format_text(sys.stdin.read(), "<stdin>"))
        return 0
    files = _files(paths)
    changed, broken = [], []
    for path in files:
        text = read_text(path)
        try:
            formatted = format_text(text, str(path))
        except CnncError as problem:
            print(problem, file=sys.stderr)
            broken.append(path)
            continue
        if formatted == text:
            continue
        changed.append(path)
        if diff:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                                       f"{path} (as written)", f"{path} (formatted)"))
        if not (check or diff):
            with replacing(path) as temporary:
                temporary.write_text(formatted, encoding="utf-8")
    verb = "would be reformatted" if check or diff else "reformatted"
    for path in changed:
        print(f"{path}: {verb}", file=sys.stderr)
    unchanged = len(files) - len(changed) - len(broken)
    print(f"{len(changed)} file{'s' * (len(changed) != 1)} {verb}, {unchanged} unchanged"
          + (f", {len(broken)} that do not parse" if broken else ""), file=sys.stderr)
    return 1 if broken or (check and changed) else 0


def _files(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found += sorted(path.rglob("*.cnn"))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {text}")
    return found
