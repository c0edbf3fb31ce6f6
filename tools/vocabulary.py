"""The words of the language for the editor tools, never listed by hand: the keywords the grammar
(dsl/cnn.lark) spells out, the layers of the op registry (and `split`), and the evaluator's helper
functions. Nothing here imports an editor library."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from cnnc.compiler.arguments import ArgSpec
from cnnc.compiler.elaborate import SPLIT, SPLIT_ARGS
from cnnc.compiler.ops import OPS
from cnnc.compiler.values import HELPERS, SHAPE_QUERIES

CONSTANTS = ("true", "false")
SPLIT_DOC = "the input's channels in parts (equal, or of the given sizes), one result each: `a, b = split(2)`"


@cache
def keywords() -> tuple[str, ...]:
    """Every word the grammar spells out as a literal ("model", "repeat", "if", ...), but true and false."""
    grammar = resources.files("cnnc.dsl").joinpath("cnn.lark").read_text(encoding="utf-8")
    words = set(re.findall(r'"([A-Za-z_]+)"', re.sub(r"^\s*//[^\n]*", "", grammar, flags=re.MULTILINE)))
    return tuple(sorted(words - set(CONSTANTS)))


def layers() -> dict[str, tuple[str, tuple[ArgSpec, ...]]]:
    """Each layer-like name with its doc and arguments: the op registry, and split."""
    found = {name: (op.doc, op.args) for name, op in OPS.items()}
    found[SPLIT] = (SPLIT_DOC, SPLIT_ARGS)
    return dict(sorted(found.items()))


def helpers() -> tuple[str, ...]:
    """The functions arguments may call: min, max, range, channels(x), ..."""
    return tuple(sorted([*HELPERS, *SHAPE_QUERIES]))
