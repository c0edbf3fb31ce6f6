"""Argument kinds and binding: every call (layer, block, value, train setting) is checked here.

Errors name the argument and echo the value, Keras-style: "conv 'c1': argument 'groups' must divide
the 3 input channels. Received: groups=2".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cnnc.compiler.values import CallValue, Located, Symbol, format_value
from cnnc.dsl.codes import BAD_CALL, MISSING_ARGUMENT, OUT_OF_RANGE, UNKNOWN_ARGUMENT, WRONG_TYPE
from cnnc.dsl.diagnostics import Diagnostic, Span, error


class ArgError(Exception):
    """A value that does not fit its argument; `code` says whether the type or the range is wrong."""

    def __init__(self, message: str, code: str = WRONG_TYPE, notes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.notes = notes


class Kind(Protocol):
    @property
    def description(self) -> str: ...

    def convert(self, value: Any) -> Any: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int:
    minimum: int | None = None
    maximum: int | None = None

    @property
    def description(self) -> str:
        return "an integer" + _range_text(self.minimum, self.maximum)

    def convert(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArgError(f"must be {self.description}")
        _check_range(value, self.minimum, self.maximum, self.description)
        return value


@dataclass(frozen=True)
class Float:
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None  # an exclusive upper bound, e.g. a dropout rate < 1
    above: float | None = None  # an exclusive lower bound, e.g. an epsilon > 0

    @property
    def description(self) -> str:
        text = "a number" + _range_text(self.minimum, self.maximum)
        text += f" above {self.above}" if self.above is not None else ""
        return text + (f" below {self.below}" if self.below is not None else "")

    def convert(self, value: Any) -> float:
        if not _is_number(value):
            raise ArgError(f"must be {self.description}")
        _check_range(value, self.minimum, self.maximum, self.description)
        if self.below is not None and value >= self.below or self.above is not None and value <= self.above:
            raise ArgError(f"must be {self.description}", OUT_OF_RANGE)
        return float(value)


@dataclass(frozen=True)
class Bool:
    description: str = "true or false"

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ArgError("must be true or false")
        return value


@dataclass(frozen=True)
class Text:
    description: str = "a quoted string"

    def convert(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ArgError('must be a quoted string, such as "data/digits"')
        return value


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    @property
    def description(self) -> str:
        return "one of " + ", ".join(self.options)

    def convert(self, value: Any) -> str:
        name = value.name if isinstance(value, Symbol) else value if isinstance(value, str) else None
        if name not in self.options:
            raise ArgError(f"must be {self.description}{_suggestion(name, self.options)}")
        return name


@dataclass(frozen=True)
class Pair:
    """A size for height and width: `3` means (3, 3); `(3, 5)` is height 3, width 5."""

    minimum: int = 1

    @property
    def description(self) -> str:
        return f"an integer >= {self.minimum} or a (height, width) pair of them"

    def convert(self, value: Any) -> tuple[int, int]:
        items = value if isinstance(value, tuple) else (value, value)
        if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ArgError(f"must be {self.description}")
        if min(items) < self.minimum:
            raise ArgError(f"must be {self.description}", OUT_OF_RANGE)
        return items


@dataclass(frozen=True)
class Sizes:
    """A tuple of two or more integers >= 1, such as split's sizes=(16, 48)."""

    description: str = "a tuple of two or more integers >= 1"

    def convert(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, tuple) or len(value) < 2 \
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ArgError(f"must be {self.description}")
        if min(value) < 1:
            raise ArgError(f"must be {self.description}", OUT_OF_RANGE)
        return value


@dataclass(frozen=True)
class Padding:
    """`valid`, `same` (TensorFlow's rule), an integer, (height, width), or (top, bottom, left, right)."""

    description: str = "valid, same, an integer, (height, width) or (top, bottom, left, right)"

    def convert(self, value: Any) -> str | tuple[int, int, int, int]:
        if isinstance(value, Symbol) and value.name == "same":
            return "same"
        if isinstance(value, Symbol) and value.name == "valid":
            return (0, 0, 0, 0)
        items = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items) or len(items) not in (1, 2, 4):
            hint = _suggestion(value.name, ("valid", "same")) if isinstance(value, Symbol) else ""
            raise ArgError(f"must be {self.description}{hint}")
        if min(items) < 0:
            raise ArgError("must not be negative", OUT_OF_RANGE)
        if len(items) == 1:
            return (items[0],) * 4
        if len(items) == 2:
            return (items[0], items[0], items[1], items[1])
        return items


@dataclass(frozen=True)
class Floats:
    """One number, or a tuple of them (per channel)."""

    minimum: float | None = None
    description: str = "a number or a tuple of numbers"

    def convert(self, value: Any) -> tuple[float, ...]:
        items = value if isinstance(value, tuple) else (value,)
        if not items or not all(_is_number(v) for v in items):
            raise ArgError(f"must be {self.description}")
        if self.minimum is not None and min(items) <= self.minimum:
            raise ArgError(f"must be greater than {self.minimum}", OUT_OF_RANGE)
        return tuple(float(v) for v in items)


@dataclass(frozen=True)
class TensorName:
    description: str = "the name of a tensor"

    def convert(self, value: Any) -> str:
        if not isinstance(value, Symbol):
            raise ArgError("must be the name of a tensor defined earlier")
        return value.name


@dataclass(frozen=True)
class Option:
    """A chosen option with its settings, such as `leaky_relu(alpha=0.2)` or `sgd(lr=0.1)`."""

    name: str
    settings: tuple[tuple[str, Any], ...] = ()

    def __getitem__(self, key: str) -> Any:
        return dict(self.settings)[key]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)

    def __str__(self) -> str:
        if not self.settings:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={format_value(v)}" for k, v in self.settings) + ")"


@dataclass(frozen=True)
class OneOf:
    """A named option, possibly with arguments: the options map each name to its argument specs."""

    what: str
    options: Mapping[str, tuple[ArgSpec, ...]] = field(hash=False)

    @property
    def description(self) -> str:
        return f"{self.what}: one of " + ", ".join(self.options)

    def convert(self, value: Any) -> Option:
        args: tuple[Located, ...] = ()
        kwargs: tuple[tuple[str, Located], ...] = ()
        span: Span | None = None
        if isinstance(value, Symbol):
            name = value.name
        elif isinstance(value, CallValue):
            name, args, kwargs, span = value.name, value.args, value.kwargs, value.name_span
        else:
            raise ArgError(f"must be {self.description}")
        if name not in self.options:
            raise ArgError(f"must be {self.description}{_suggestion(name, tuple(self.options))}")
        bound, problems = bind(name, self.options[name], args, kwargs, span)
        if problems:
            raise ArgError(problems[0].message, problems[0].code, problems[0].notes)
        return Option(name, tuple(bound.items()))


REQUIRED = object()


@dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: Any  # a Kind
    default: Any = REQUIRED
    positional: bool = False
    doc: str = ""


def bind(
    what: str,
    specs: Sequence[ArgSpec],
    args: Sequence[Located],
    kwargs: Sequence[tuple[str, Located]],
    call_span: Span | None,
    keyword_spans: Sequence[Span] = (),
) -> tuple[dict[str, Any], list[Diagnostic]]:
    """Match a call's arguments to specs; returns the values (defaults filled in) and problems.
    `keyword_spans`, one per keyword argument where known, locate the argument names themselves
    (an unknown or repeated name is marked there rather than at its value)."""
    problems: list[Diagnostic] = []
    given: dict[str, Located] = {}
    positional_specs = [s for s in specs if s.positional]
    for index, located in enumerate(args):
        if index >= len(positional_specs):
            names = ", ".join(s.name for s in positional_specs) or "none"
            problems.append(error(
                BAD_CALL,
                f"{what} takes {len(positional_specs)} positional argument"
                f"{'' if len(positional_specs) == 1 else 's'} ({names}), but {len(args)} were given",
                located.span,
                "name the others, as in kernel=3",
            ))
            break
        given[positional_specs[index].name] = located
    by_name = {s.name: s for s in specs}
    suggested: set[str] = set()
    for position, (keyword, located) in enumerate(kwargs):
        name_span = keyword_spans[position] if position < len(keyword_spans) else located.span
        if keyword not in by_name:
            matches = difflib.get_close_matches(keyword, by_name, n=1)
            suggested.update(matches)
            notes = [f"did you mean '{m}'?" for m in matches]
            notes.append(f"{what} takes: {', '.join(by_name) or 'no arguments'}")
            problems.append(error(UNKNOWN_ARGUMENT, f"{what} has no argument '{keyword}'", name_span, *notes))
        elif keyword in given:
            problems.append(error(BAD_CALL, f"{what}: argument '{keyword}' is given twice", name_span))
        else:
            given[keyword] = located
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.name in given:
            located = given[spec.name]
            try:
                values[spec.name] = spec.kind.convert(located.value)
            except ArgError as bad:
                received = f"Received: {spec.name}={format_value(located.value)}"
                problems.append(error(bad.code, f"{what}: argument '{spec.name}' {bad}", located.span,
                                      *bad.notes, received))
        elif spec.default is REQUIRED and spec.name in suggested:
            continue  # the misspelt keyword's error already points here
        elif spec.default is REQUIRED:
            usage = ", ".join(s.name for s in specs if s.default is REQUIRED)
            problems.append(error(
                MISSING_ARGUMENT, f"{what} needs the argument '{spec.name}'", call_span,
                f"required: {usage}" + (f"; {spec.name}: {spec.doc}" if spec.doc else ""),
            ))
        else:
            values[spec.name] = spec.default
    return values, problems


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def _check_range(value: float, minimum: float | None, maximum: float | None, description: str) -> None:
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ArgError(f"must be {description}", OUT_OF_RANGE)


def _suggestion(name: str | None, options: Sequence[str]) -> str:
    if not name:
        return ""
    matches = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


