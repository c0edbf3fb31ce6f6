"""Evaluating expressions: arithmetic, comparisons and logic, lists and indexing, constants, symbols,
value calls, the integer helpers (min, max, round, make_divisible, ...) and shape queries."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import (
    BAD_ARITHMETIC,
    BAD_CALL,
    BAD_CONDITION,
    BAD_INDEX,
    MISSING_ARGUMENT,
    OUT_OF_RANGE,
    UNDEFINED_NAME,
    UNKNOWN_ARGUMENT,
    WRONG_TYPE,
)
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

_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

MAX_ITEMS = 1024  # the longest list range() builds, as repeat's largest count
Shapes = Mapping[str, "tuple[int, ...] | None"]  # tensor name -> shape (None: unknown after an error)


def evaluate(expr: st.Expr, constants: Mapping[str, Located], tensors: Shapes | None = None) -> Located:
    """Evaluate an expression; names that are not constants become symbols.

    `tensors` gives the shapes that `channels(x)`, `height(x)` and `width(x)` read; where there
    are none (file-level constants, the train section) those calls are errors.
    Raises EvaluationError, or UnknownShape when a shape query meets a tensor whose shape is unknown
    because of an error already reported.
    """
    return _Evaluator(constants, tensors).run(expr)


class UnknownShape(Exception):
    """A shape query on a tensor that an earlier error left without a shape: nothing new to report."""


class _Evaluator:
    def __init__(self, constants: Mapping[str, Located], tensors: Shapes | None) -> None:
        self.constants = constants
        self.tensors = tensors

    def run(self, expr: st.Expr) -> Located:
        if isinstance(expr, st.Given):
            return Located(expr.value, expr.span)
        if isinstance(expr, st.Number | st.Bool | st.String):
            return Located(expr.value, expr.span)
        if isinstance(expr, st.Name):
            bound = self.constants.get(expr.name)
            if bound is None and self.tensors is not None and expr.name in self.tensors \
                    and self.tensors[expr.name] is None:
                raise UnknownShape(expr.name)  # a tensor an error left unknown: its uses stay silent
            return Located(bound.value, expr.span) if bound else Located(Symbol(expr.name), expr.span)
        if isinstance(expr, st.TupleValue):
            return Located(tuple(self.run(item).value for item in expr.items), expr.span)
        if isinstance(expr, st.Call):
            return Located(self._call(expr), expr.span)
        if isinstance(expr, st.Negate):
            operand = _number(self.run(expr.operand), "-")
            return Located(-operand, expr.span)
        if isinstance(expr, st.Compare):
            return Located(self._compare(expr), expr.span)
        if isinstance(expr, st.Logic):
            return Located(self._logic(expr), expr.span)
        if isinstance(expr, st.Not):
            return Located(not self.condition(expr.operand, "not"), expr.span)
        if isinstance(expr, st.Conditional):
            chosen = expr.then if self.condition(expr.condition, "if") else expr.otherwise
            return Located(self.run(chosen).value, expr.span)
        if isinstance(expr, st.Index):
            return Located(self._index(expr), expr.span)
        return Located(self._binary(expr), expr.span)

    def condition(self, expr: st.Expr, where: str) -> bool:
        located = self.run(expr)
        value = located.value
        if not isinstance(value, bool):
            _reject_symbol(located)
            raise EvaluationError(error(BAD_CONDITION, f"'{where}' needs true or false, but this is {describe(value)}",
                                        located.span, "compare it to get one, as in `stride == 1`"))
        return value

    def _call(self, expr: st.Call) -> Value:
        if expr.name in SHAPE_QUERIES:
            return self._shape_query(expr)
        if expr.name in HELPERS:
            return HELPERS[expr.name](_HelperCall(expr, self))
        args = tuple(self.run(a.value) for a in expr.args if a.keyword is None)
        kwargs = tuple((a.keyword, self.run(a.value)) for a in expr.args if a.keyword is not None)
        return CallValue(expr.name, args, kwargs, expr.name_span)

    def _shape_query(self, expr: st.Call) -> int:
        axis = SHAPE_QUERIES[expr.name]
        if len(expr.args) != 1 or expr.args[0].keyword is not None or not isinstance(expr.args[0].value, st.Name):
            raise EvaluationError(error(WRONG_TYPE, f"{expr.name}() takes one tensor name, as in {expr.name}(in)",
                                        expr.span))
        name = expr.args[0].value
        if self.tensors is None or name.name not in self.tensors:
            where = "defined here" if self.tensors is not None else "(there are none outside a model or block)"
            raise EvaluationError(error(UNDEFINED_NAME, f"'{name.name}' is not a tensor {where}", name.span,
                                        f"{expr.name}() reads the shape of a tensor of the model or block"))
        shape = self.tensors[name.name]
        if shape is None:
            raise UnknownShape(name.name)
        if axis >= len(shape):
            raise EvaluationError(error(WRONG_TYPE, f"{expr.name}() needs a feature map, but '{name.name}' is a flat "
                                                    f"vector of {shape[0]}", name.span,
                                        "a flat vector has channels() only"))
        return shape[axis]

    def _compare(self, expr: st.Compare) -> bool:
        left, right = self.run(expr.left), self.run(expr.right)
        if expr.op in _ORDERING:
            return _ORDERING[expr.op](_number(left, expr.op, BAD_CONDITION), _number(right, expr.op, BAD_CONDITION))
        if _kind(left.value) != _kind(right.value):
            for side in (left, right):
                _reject_symbol(side)
            raise EvaluationError(error(BAD_CONDITION, f"'{expr.op}' compares {describe(left.value)} with "
                                                       f"{describe(right.value)}: they can never be equal", expr.span))
        return (left.value == right.value) == (expr.op == "==")

    def _logic(self, expr: st.Logic) -> bool:
        left = self.condition(expr.left, expr.op)
        if left == (expr.op == "or"):
            return left
        return self.condition(expr.right, expr.op)

    def _index(self, expr: st.Index) -> Value:
        target, index = self.run(expr.target), self.run(expr.index)
        items = target.value
        what = f"'{expr.target.name}'" if isinstance(expr.target, st.Name) else "this"
        if not isinstance(items, tuple):
            _reject_symbol(target)
            raise EvaluationError(error(BAD_INDEX, f"cannot index {describe(items)}: only lists and tuples have items",
                                        target.span))
        if not isinstance(index.value, int) or isinstance(index.value, bool):
            _reject_symbol(index)
            raise EvaluationError(error(BAD_INDEX, f"an index must be an integer, but this is {describe(index.value)}",
                                        index.span))
        if not -len(items) <= index.value < len(items):
            valid = f"0 to {len(items) - 1}, or -{len(items)} to -1" if items else "none: it is empty"
            raise EvaluationError(error(BAD_INDEX, f"index {index.value} is out of range: {what} has "
                                                   f"{len(items)} item{'' if len(items) == 1 else 's'}",
                                        index.span, f"valid indices: {valid}"))
        return items[index.value]

    def _binary(self, expr: st.BinaryOp) -> int | float:
        left = _number(self.run(expr.left), expr.op)
        right = _number(self.run(expr.right), expr.op)
        if expr.op in {"/", "//", "%"} and right == 0:
            raise EvaluationError(error(BAD_ARITHMETIC, f"division by zero in '{expr.op}'", expr.span))
        if expr.op == "/":
            exact = isinstance(left, int) and isinstance(right, int) and left % right == 0
            return left // right if exact else left / right
        if expr.op == "**":
            if isinstance(right, int) and right < 0 or abs(right) > 64:
                raise EvaluationError(error(BAD_ARITHMETIC, f"exponent {right} is out of range (0 to 64)", expr.span))
            return left**right
        return _finite(_ARITHMETIC[expr.op](left, right), expr.span)


def _finite(result: int | float, span: Span) -> int | float:
    if isinstance(result, float) and not math.isfinite(result):
        raise EvaluationError(error(BAD_ARITHMETIC, "the arithmetic overflows", span))
    return result


def _kind(value: Value) -> str:
    """Values of one kind can be compared with == and !=; a number is never equal to a name."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Symbol | CallValue):
        return "option"
    return type(value).__name__


def _reject_symbol(located: Located) -> None:
    """A bare name where a value was needed is most likely a constant that is not defined."""
    if isinstance(located.value, Symbol):
        raise EvaluationError(
            error(UNDEFINED_NAME, f"'{located.value.name}' is not a defined constant or parameter", located.span)
        )


def _number(located: Located, op: str, code: str = BAD_ARITHMETIC) -> int | float:
    value = located.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        _reject_symbol(located)
        raise EvaluationError(error(code, f"'{op}' needs numbers, but this is {describe(value)}", located.span))
    return value


# --- helpers: integer arithmetic for stage tables ---------------------------------------------------

class _HelperCall:
    """One call of a helper, its arguments evaluated and matched to the helper's parameter names."""

    def __init__(self, expr: st.Call, evaluator: _Evaluator) -> None:
        self.expr = expr
        self.name = expr.name
        self.positional = [evaluator.run(a.value) for a in expr.args if a.keyword is None]
        self.keywords = {a.keyword: (evaluator.run(a.value), a.span) for a in expr.args if a.keyword is not None}

    def bind(self, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Located]:
        names = required + optional
        if len(self.positional) > len(names):
            raise self._error(BAD_CALL, f"{self.name}() takes at most {len(names)} argument"
                                        f"{'' if len(names) == 1 else 's'} ({', '.join(names)}), "
                                        f"but {len(self.positional)} were given", self.positional[len(names)].span)
        bound = dict(zip(names, self.positional))
        for keyword, (located, span) in self.keywords.items():
            if keyword not in names:
                raise self._error(UNKNOWN_ARGUMENT, f"{self.name}() has no argument '{keyword}'", span,
                                  f"{self.name}() takes: {', '.join(names)}")
            if keyword in bound:
                raise self._error(BAD_CALL, f"{self.name}(): argument '{keyword}' is given twice", span)
            bound[keyword] = located
        for name in required:
            if name not in bound:
                raise self._error(MISSING_ARGUMENT, f"{self.name}() needs the argument '{name}'", self.expr.span,
                                  f"usage: {self.name}({', '.join(required)})")
        return bound

    def values(self) -> list[Located]:
        """The arguments of a helper that takes any number of them, or one list of them."""
        if self.keywords:
            keyword, (_, span) = next(iter(self.keywords.items()))
            raise self._error(UNKNOWN_ARGUMENT, f"{self.name}() takes no named arguments", span)
        only = self.positional[0] if len(self.positional) == 1 else None
        if only is not None and isinstance(only.value, tuple):
            return [Located(item, only.span) for item in only.value]
        return self.positional

    def number(self, name: str, located: Located) -> int | float:
        value = located.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            _reject_symbol(located)
            raise self._wrong(name, located, "a number", WRONG_TYPE)
        return value

    def integer(self, name: str, located: Located, minimum: int | None = None) -> int:
        value = located.value
        limit = f"an integer >= {minimum}" if minimum is not None else "an integer"
        if isinstance(value, bool) or not isinstance(value, int):
            _reject_symbol(located)
            raise self._wrong(name, located, limit, WRONG_TYPE)
        if minimum is not None and value < minimum:
            raise self._wrong(name, located, limit, OUT_OF_RANGE)
        return value

    def _wrong(self, name: str, located: Located, kind: str, code: str) -> EvaluationError:
        return self._error(code, f"{self.name}(): argument '{name}' must be {kind}", located.span,
                           f"Received: {name}={format_value(located.value)}")

    def _error(self, code: str, message: str, span: Span, *notes: str) -> EvaluationError:
        return EvaluationError(error(code, message, span, *notes))


def _extreme(pick):
    def helper(call: _HelperCall) -> int | float:
        items = call.values()
        if not items:
            raise call._error(MISSING_ARGUMENT, f"{call.name}() needs at least one number", call.expr.span)
        numbers: list[int | float] = []
        for item in items:
            if isinstance(item.value, bool) or not isinstance(item.value, int | float):
                _reject_symbol(item)
                raise call._error(WRONG_TYPE, f"{call.name}() needs numbers, but this is {describe(item.value)}",
                                  item.span)
            numbers.append(item.value)
        return pick(numbers)

    return helper


def _rounding(rule):
    def helper(call: _HelperCall) -> int:
        value = call.number("x", call.bind(("x",))["x"])
        if not math.isfinite(value):
            raise call._error(OUT_OF_RANGE, f"{call.name}() of {value} is not a number", call.expr.span)
        return int(rule(value))

    return helper


def _abs(call: _HelperCall) -> int | float:
    return abs(call.number("x", call.bind(("x",))["x"]))


def _len(call: _HelperCall) -> int:
    located = call.bind(("items",))["items"]
    if not isinstance(located.value, tuple):
        _reject_symbol(located)
        raise call._error(WRONG_TYPE, "len(): argument 'items' must be a list or tuple", located.span,
                          f"Received: items={format_value(located.value)}")
    return len(located.value)


def _range(call: _HelperCall) -> tuple[int, ...]:
    bound = call.bind(("start",), ("stop",))
    start = call.integer("start", bound["start"])
    if "stop" in bound:
        stop = call.integer("stop", bound["stop"])
    else:
        start, stop = 0, start
    if stop - start > MAX_ITEMS:
        raise call._error(OUT_OF_RANGE, f"range() builds at most {MAX_ITEMS} items, this would be {stop - start}",
                          call.expr.span)
    return tuple(range(start, stop))


def _make_divisible(call: _HelperCall) -> int:
    """torchvision's _make_divisible: round to the nearest multiple, never more than 10% down."""
    bound = call.bind(("value", "divisor"), ("min_value",))
    value = call.number("value", bound["value"])
    divisor = call.integer("divisor", bound["divisor"], minimum=1)
    minimum = call.integer("min_value", bound["min_value"], minimum=1) if "min_value" in bound else divisor
    if not math.isfinite(value) or abs(value) > 2**53:
        raise call._error(OUT_OF_RANGE, "make_divisible(): argument 'value' is too large", bound["value"].span,
                          f"Received: value={format_value(value)}")
    result = max(minimum, int(value + divisor / 2) // divisor * divisor)
    if result < 0.9 * value:
        result += divisor
    return result


HELPERS = {
    "min": _extreme(min),
    "max": _extreme(max),
    "abs": _abs,
    "round": _rounding(round),
    "floor": _rounding(math.floor),
    "ceil": _rounding(math.ceil),
    "len": _len,
    "range": _range,
    "make_divisible": _make_divisible,
}
SHAPE_QUERIES = {"channels": 0, "height": 1, "width": 2}


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
