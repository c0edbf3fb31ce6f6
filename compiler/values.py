"""Evaluating argument expressions: integer arithmetic, constants, symbols and value calls."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import BAD_ARITHMETIC, UNDEFINED_NAME
from cnnc.dsl.diagnostics import Diagnostic, Span, error


@dataclass(frozen=True)
class Symbol:
    """An identifier that is not a constant: an option such as `same`, or a tensor name."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class CallValue:
    """A call used as a value, such as `normal(std=0.02)` or `sgd(lr=0.1)`, with evaluated args."""

    name: str
    args: tuple[Located, ...]
    kwargs: tuple[tuple[str, Located], ...]
    name_span: Span

    def __str__(self) -> str:
        parts = [str(a.value) for a in self.args] + [f"{k}={v.value}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


Value = int | float | bool | str | Symbol | CallValue | tuple


@dataclass(frozen=True)
class Located:
    """A value with the span of the expression it came from."""

    value: Value
    span: Span


class EvaluationError(Exception):
    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


_ARITHMETIC = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "%": operator.mod,
    "//": operator.floordiv,
}


def evaluate(expr: st.Expr, constants: Mapping[str, Located]) -> Located:
    """Evaluate an expression; names that are not constants become symbols."""
    if isinstance(expr, st.Number | st.Bool | st.String):
        return Located(expr.value, expr.span)
    if isinstance(expr, st.Name):
        bound = constants.get(expr.name)
        return Located(bound.value, expr.span) if bound else Located(Symbol(expr.name), expr.span)
    if isinstance(expr, st.TupleValue):
        return Located(tuple(evaluate(item, constants).value for item in expr.items), expr.span)
    if isinstance(expr, st.Call):
        return Located(_evaluate_call(expr, constants), expr.span)
    if isinstance(expr, st.Negate):
        operand = _number(evaluate(expr.operand, constants), "-")
        return Located(-operand, expr.span)
    return Located(_binary(expr, constants), expr.span)


def _evaluate_call(expr: st.Call, constants: Mapping[str, Located]) -> CallValue:
    args = tuple(evaluate(a.value, constants) for a in expr.args if a.keyword is None)
    kwargs = tuple((a.keyword, evaluate(a.value, constants)) for a in expr.args if a.keyword is not None)
    return CallValue(expr.name, args, kwargs, expr.name_span)


def _binary(expr: st.BinaryOp, constants: Mapping[str, Located]) -> int | float:
    left = _number(evaluate(expr.left, constants), expr.op)
    right = _number(evaluate(expr.right, constants), expr.op)
    if expr.op in {"/", "//", "%"} and right == 0:
        raise EvaluationError(error(BAD_ARITHMETIC, f"division by zero in '{expr.op}'", expr.span))
    if expr.op == "/":
        exact = isinstance(left, int) and isinstance(right, int) and left % right == 0
        return left // right if exact else left / right
    if expr.op == "**":
        if isinstance(right, int) and right < 0 or abs(right) > 64:
            raise EvaluationError(error(BAD_ARITHMETIC, f"exponent {right} is out of range (0 to 64)", expr.span))
        return left**right
    result = _ARITHMETIC[expr.op](left, right)
    if isinstance(result, float) and not math.isfinite(result):
        raise EvaluationError(error(BAD_ARITHMETIC, "the arithmetic overflows", expr.span))
    return result


def _number(located: Located, op: str) -> int | float:
    value = located.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, Symbol):
            raise EvaluationError(
                error(UNDEFINED_NAME, f"'{value.name}' is not a defined constant or parameter", located.span)
            )
        raise EvaluationError(
            error(BAD_ARITHMETIC, f"'{op}' needs numbers, but this is {describe(value)}", located.span)
        )
    return value


def describe(value: Value) -> str:
    """How a value reads in a message: `the name 'same'`, `the number 2.5`, ..."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, Symbol):
        return f"the name '{value.name}'"
    if isinstance(value, CallValue):
        return f"the call {value}"
    return f"the tuple {format_value(value)}"


def format_value(value: Value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
