"""The syntax tree of a .cnn file: frozen dataclasses, each with the span it came from.

This is the shape of what was written, not yet checked: names are unresolved, arithmetic is
unevaluated, and a layer is any call. The compiler turns it into the typed IR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnc.dsl.diagnostics import Span

# Expressions ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    """An identifier: a constant, a block parameter, a tensor, or a symbol such as `same`."""

    name: str
    span: Span


@dataclass(frozen=True)
class BinaryOp:
    op: str  # one of + - * / // % **
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Negate:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Compare:
    op: str  # one of == != < <= > >=
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Logic:
    """`left and right` or `left or right`; the right side is evaluated only when needed."""

    op: str  # "and" or "or"
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Not:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Conditional:
    """`then if condition else otherwise`; only the chosen side is evaluated."""

    then: Expr
    condition: Expr
    otherwise: Expr
    span: Span


@dataclass(frozen=True)
class Index:
    """`target[index]` on a list or tuple."""

    target: Expr
    index: Expr
    span: Span


@dataclass(frozen=True)
class TupleValue:
    """`(a, b)` or `[a, b]`: the language has one sequence type."""

    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Given:
    """A value evaluated already, where the compiler substitutes one into a call: the arguments a
    layer parameter holds (`act=leaky_relu(0.2)`), the slices of a split. `span` is where it was written."""

    value: Any
    span: Span


@dataclass(frozen=True)
class Arg:
    """A call argument; `keyword` is None for a positional one."""

    keyword: str | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    """`name(args)`: a layer, a block instance, or a value such as `normal(std=0.02)`."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


Expr = (Number | Bool | String | Name | BinaryOp | Negate | Compare | Logic | Not | Conditional | Index | TupleValue
        | Call | Given)


# Statements -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Const:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: str
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class OutputDecl:
    names: tuple[str, ...]  # a block may yield several tensors
    span: Span


@dataclass(frozen=True)
class InitDecl:
    value: Expr
    span: Span


@dataclass(frozen=True)
class Chain:
    """`[targets =] layer -> layer -> ...`; a bare layer may also be a tensor reference.

    Several targets (`a, b = split(2)`) take the several results of the chain's last layer.
    """

    targets: tuple[str, ...]
    layers: tuple[Call, ...]
    span: Span

    @property
    def target(self) -> str | None:
        return self.targets[0] if len(self.targets) == 1 else None


@dataclass(frozen=True)
class Repeat:
    count: Expr
    index: str | None
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class For:
    """`for a, b in iterable { body }`: one pass per item, destructured when several names are given."""

    names: tuple[str, ...]
    iterable: Expr
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class If:
    """`if condition { then } else { otherwise }`; `else if` nests another If in `otherwise`."""

    condition: Expr
    then: tuple[Statement, ...]
    otherwise: tuple[Statement, ...]
    span: Span


Statement = Const | InputDecl | OutputDecl | InitDecl | Chain | Repeat | For | If


# Top level --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Block:
    name: str
    params: tuple[Param, ...]
    body: tuple[Statement, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Model:
    name: str
    body: tuple[Statement, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Include:
    path: str
    span: Span


@dataclass(frozen=True)
class Setting:
    """One line of a train section: `key value, value` or `key(args)`."""

    key: str
    values: tuple[Expr, ...]
    span: Span
    key_span: Span


@dataclass(frozen=True)
class Train:
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class SourceFile:
    path: str
    includes: tuple[Include, ...]
    consts: tuple[Const, ...]
    blocks: tuple[Block, ...]
    models: tuple[Model, ...]
    trains: tuple[Train, ...]
