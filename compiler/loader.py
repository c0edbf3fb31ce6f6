"""Reading a spec and the files it includes, with include cycles and missing files diagnosed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import INCLUDE_CYCLE, INCLUDE_ERROR
from cnnc.dsl.diagnostics import Diagnostic, error
from cnnc.dsl.parser import parse


@dataclass
class LoadedSpec:
    main: st.SourceFile | None
    included: list[st.SourceFile] = field(default_factory=list)  # dependencies first
    sources: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def read_text(path: Path) -> str:
    """A file's text; undecodable bytes become U+FFFD so that they reach the parser as errors."""
    return path.read_bytes().decode("utf-8", errors="replace")


def load(path: str | Path, text: str | None = None, sources: Mapping[str, str] | None = None) -> LoadedSpec:
    """Parse `path` and, recursively, its includes.

    `text` replaces the main file's contents; `sources` maps display paths (as diagnostics show
    them, e.g. "specs/lib/blocks.cnn") to texts used instead of reading those files, so that a
    spec saved with a checkpoint is checked again exactly as it was, wherever it is now.
    """
    loaded = LoadedSpec(None)
    saved = dict(sources or {})
    display = str(path)
    source = text if text is not None else saved[display] if display in saved else read_text(Path(path))
    loaded.main = _parse_into(loaded, display, source)
    if loaded.main is not None:
        _follow_includes(loaded, loaded.main, Path(path).resolve(), (Path(path).resolve(),), set(), saved)
    return loaded


def _parse_into(loaded: LoadedSpec, display: str, text: str) -> st.SourceFile | None:
    loaded.sources[display] = text
    tree, problems = parse(text, display)
    loaded.diagnostics += problems
    return tree


def _follow_includes(loaded: LoadedSpec, tree: st.SourceFile, real: Path, stack: tuple[Path, ...],
                     done: set[Path], saved: Mapping[str, str]) -> None:
    for include in tree.includes:
        target = (real.parent / include.path).resolve()
        display = _display_path(tree.path, include.path)
        if target in stack:
            chain = " -> ".join(p.name for p in (*stack[stack.index(target):], target))
            loaded.diagnostics.append(error(INCLUDE_CYCLE, f"include cycle: {chain}", include.span,
                                            "a file cannot include itself, directly or through others"))
            continue
        if target in done:
            continue
        done.add(target)
        if display in saved:
            child = _parse_into(loaded, display, saved[display])
        elif not target.is_file():
            loaded.diagnostics.append(error(INCLUDE_ERROR, f'cannot include "{include.path}": no such file',
                                            include.span, f"looked for {_shown(target)}"))
            continue
        else:
            child = _parse_into(loaded, display, read_text(target))
        if child is None:
            continue
        _follow_includes(loaded, child, target, (*stack, target), done, saved)
        for model in child.models:
            loaded.diagnostics.append(error(INCLUDE_ERROR, f"included file {display} defines model '{model.name}'",
                                            model.name_span, "included files share blocks and constants only"))
        loaded.included.append(child)


def _shown(path: Path) -> str:
    """A path relative to the working directory where it lies below it, so messages stay short."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _display_path(including: str, included: str) -> str:
    parent = Path(including).parent
    return str(parent / included) if str(parent) != "." else included
