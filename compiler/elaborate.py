"""Syntax tree -> checked IR: resolves constants, blocks, loops, conditionals and names; infers every shape.

Errors do not stop the walk: a layer whose shape cannot be known is marked unknown, its dependents
are skipped quietly, and the rest of the file is still checked, so one run reports every error.
An error inside a block is reported once, however many times the block is used.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cnnc.compiler import passes
from cnnc.compiler.arguments import REQUIRED, ArgError, ArgSpec, Int, Option, Sizes, bind
from cnnc.compiler.ir import Attrs, Graph, Node
from cnnc.compiler.ops import INITIALIZER, INPUT_ARGS, OPS, Field, OpDef, ShapeError, TensorInfo, default_bias_init
from cnnc.compiler.ops.core import TRAINABLE, window_field
from cnnc.compiler.ops.initializers import LAYER_INITIALIZERS, with_rest
from cnnc.compiler.values import (
    HELPERS,
    SHAPE_QUERIES,
    CallValue,
    EvaluationError,
    Located,
    Symbol,
    UnknownShape,
    describe,
    evaluate,
    format_value,
)
from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import (
    BAD_CONDITION,
    BAD_INPUT,
    BAD_LOOP,
    BAD_REPEAT,
    BAD_WEIGHTS,
    DUPLICATE_NAME,
    MISSING_ARGUMENT,
    MODEL_TOO_LARGE,
    NOT_A_LAYER,
    OUT_OF_RANGE,
    RECURSIVE_BLOCK,
    RESERVED_NAME,
    RESULT_COUNT,
    UNDEFINED_NAME,
    UNKNOWN_LAYER,
    UNREAD_INPUT,
    UNUSED_OUTPUT,
    WRONG_TYPE,
)
from cnnc.dsl.diagnostics import Diagnostic, DiagnosticSink, Span, error, warning

# A layer is a PyTorch submodule of its name; torch assigns these attributes of every module at run time.
RESERVED_NAMES = frozenset({"training"})
MAX_REPEAT = 1024
# Statements (layers, constants, repeat iterations) a model may expand to through repeats and blocks:
# far beyond real networks (ResNet-152 has about 500 layers), small enough to check in a second.
MAX_EXPANDED = 20_000


class _TooLarge(Exception):
    """The expansion limit was reached: checking stops with this diagnostic."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic
BLOCK_INPUT = "in"
SPLIT = "split"
CHANNEL_SLICE = "channel_slice"
SPLIT_ARGS = (
    ArgSpec("parts", Int(minimum=1), None, positional=True, doc="the number of equal parts"),
    ArgSpec("sizes", Sizes(), None, doc="the channels of each part"),
)
MAX_LISTED_USES = 8  # instances named in the note of an error that several block instances share


@dataclass(frozen=True)
class Tensor:
    """A value flowing through the body while it is elaborated; `shape` None means unknown (an error)."""

    node: str
    shape: tuple[int, ...] | None
    origin: str            # the layer that last changed the shape, for messages
    origin_line: int
    formulas: tuple[str, str] | None
    field: Field

    def info(self, from_input: bool = False) -> TensorInfo:
        assert self.shape is not None
        return TensorInfo(self.origin, self.shape, self.origin_line, self.formulas, self.node, from_input)


Result = Tensor | tuple[Tensor, ...]  # a layer's output; a block with `output a, b` or split give several


@dataclass
class Scope:
    """The names of one model or block body. Loop passes and if branches share it (see _pass)."""

    prefix: str
    constants: dict[str, Located]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    current: Tensor | None = None
    output: Result | None = None
    counters: dict[str, int] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)
    blocks_open: tuple[str, ...] = ()
    context: tuple[str, ...] = ()     # notes added to each diagnostic, e.g. which block instance
    suffix: str = ""                  # loop pass, for names assigned inside a repeat or for
    pass_names: set[str] | None = None  # names assigned in this loop pass; None outside loops
    use: str = ""                     # this block instance and the model line that made it, for notes
    use_line: int = 0


@dataclass
class _SharedError:
    """An error inside a block, reported once: where it sits in the sink, and the instances that hit it."""

    index: int
    first: Diagnostic
    uses: list[str]


class _ShapeView(Mapping):
    """Tensor name -> shape, read by channels(x), height(x) and width(x), without copying the scope."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self.tensors = tensors

    def __getitem__(self, name: str) -> tuple[int, ...] | None:
        return self.tensors[name].shape

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class Elaborator:
    def __init__(self, constants: Mapping[str, Located], blocks: Mapping[str, st.Block], sink: DiagnosticSink,
                 weight_init: Option) -> None:
        self.constants = dict(constants)
        self.blocks = dict(blocks)
        self.sink = sink
        self.weight_init = weight_init
        self.nodes: dict[str, Node | None] = {}
        self.has_input = False
        self.consumers: dict[str, int] = {}
        self.shared_errors: dict[tuple, _SharedError] = {}
        self.expanded = 0  # statements elaborated so far, repeats and blocks expanded (see MAX_EXPANDED)

    # --- entry ------------------------------------------------------------------------------------

    def model(self, model: st.Model, max_params: int) -> Graph | None:
        scope = Scope("", dict(self.constants), reserved=_assigned_names(model.body))
        errors_before = sum(d.is_error for d in self.sink.items)
        self.has_input = any(isinstance(s, st.InputDecl) for s in model.body)
        self.weight_init = self._model_init(model.body, scope) or self.weight_init
        try:
            self._body(model.body, scope)
        except _TooLarge as limit:
            self.sink.add(limit.diagnostic)
            return None
        inputs = [n for n in self.nodes.values() if n is not None and n.op == "input"]
        if not self.has_input:
            self._error(scope, BAD_INPUT, f"model '{model.name}' has no input",
                        model.name_span, "declare one first, as in `input image(1, 28, 28)`")
            return None
        output = scope.output if isinstance(scope.output, Tensor) else scope.current  # never a tuple: see _output
        if output is None or output.shape is None or sum(d.is_error for d in self.sink.items) > errors_before:
            return None
        if output.node == inputs[0].name:
            where = next((s.span for s in model.body if isinstance(s, st.OutputDecl)), model.name_span)
            self._error(scope, BAD_INPUT, f"model '{model.name}' outputs its input unchanged: it computes nothing",
                        where, "add layers after the input, or make a layer the output")
            return None
        graph = Graph(model.name, tuple(n for n in self.nodes.values() if n is not None), output.node,
                      inputs[0].attrs["dtype"], model.span.path)
        self._warn_unused(graph)
        total = graph.trainable_params + graph.non_trainable_params
        if total > max_params:
            self._error(scope, MODEL_TOO_LARGE,
                        f"model '{model.name}' has {total:,} parameters ({total * 4 / 2**30:.1f} GiB as float32), "
                        f"over the limit of {max_params:,}", model.name_span,
                        "the largest layers: " + ", ".join(
                            f"{n.name} {n.params:,}" for n in sorted(graph.nodes, key=lambda n: -n.params)[:3]
                            if n.params),
                        "if this is intended, raise the limit with --max-params")
            return None
        return graph

    def _model_init(self, body: Iterable[st.Statement], scope: Scope) -> Option | None:
        chosen = None
        for statement in body:
            if isinstance(statement, st.InitDecl):
                located = self._evaluate(statement.value, scope)
                if located is None:
                    continue
                converted = self._convert(INITIALIZER, located, "init", scope)
                if converted is not None and converted.name in LAYER_INITIALIZERS:
                    self._error(scope, BAD_WEIGHTS, f"init {converted.name} initialises one layer, not the model",
                                located.span, f"write init={converted.name} on the layer it is for")
                else:
                    chosen = converted or chosen
        return chosen

    # --- statements -------------------------------------------------------------------------------

    def _body(self, body: Iterable[st.Statement], scope: Scope) -> None:
        for statement in body:
            self._count(1, statement.span, scope)
            if isinstance(statement, st.Const):
                self._const(statement, scope)
            elif isinstance(statement, st.InputDecl):
                self._input(statement, scope)
            elif isinstance(statement, st.OutputDecl):
                self._output(statement, scope)
            elif isinstance(statement, st.Repeat):
                self._repeat(statement, scope)
            elif isinstance(statement, st.For):
                self._for(statement, scope)
            elif isinstance(statement, st.If):
                self._if(statement, scope)
            elif isinstance(statement, st.Chain):
                self._chain(statement, scope)

    def _const(self, const: st.Const, scope: Scope) -> None:
        if const.name in scope.constants and const.name not in self.constants or const.name in scope.tensors:
            self._error(scope, DUPLICATE_NAME, f"'{const.name}' is already defined", const.span)
            return
        located = self._evaluate(const.value, scope)
        if located is not None:
            scope.constants[const.name] = located

    def _output(self, decl: st.OutputDecl, scope: Scope) -> None:
        found = [self._lookup(name, decl.span, scope) or _unknown(name, decl.span) for name in decl.names]
        if len(found) > 1 and not scope.blocks_open:
            self._error(scope, RESULT_COUNT, f"a model has one output, but {len(found)} are named", decl.span,
                        "only a block may yield several tensors")
            scope.output = _unknown(decl.names[0], decl.span)
            return
        scope.output = found[0] if len(found) == 1 else tuple(found)

    def _input(self, decl: st.InputDecl, scope: Scope) -> None:
        if scope.blocks_open:
            self._error(scope, BAD_INPUT, "a block cannot declare an input", decl.span,
                        f"inside a block, its input is called '{BLOCK_INPUT}'")
            return
        if any(n is not None and n.op == "input" for n in self.nodes.values()):
            self._error(scope, BAD_INPUT, "a model has exactly one input; this is a second", decl.span)
            return
        bound = self._bind("input", INPUT_ARGS, decl.args, decl.span, scope)
        if bound is None:
            self.nodes[decl.name] = None
            scope.tensors[decl.name] = scope.current = Tensor(decl.name, None, decl.name, decl.span.line, None,
                                                              Field.pixel())
            return
        shape = (bound["channels"], bound["height"], bound["width"])
        node = Node(decl.name, "input", (), Attrs.of({"dtype": bound["dtype"]}), shape, 0, 0, 0, (1, 1), decl.span)
        self.nodes[decl.name] = node
        tensor = Tensor(decl.name, shape, decl.name, decl.span.line, None, Field.pixel())
        scope.tensors[decl.name] = scope.current = tensor

    def _repeat(self, repeat: st.Repeat, scope: Scope) -> None:
        located = self._evaluate(repeat.count, scope)
        if located is None:
            self._skip(repeat.body, repeat.span, scope)
            return
        count = located.value
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_REPEAT:
            self._error(scope, BAD_REPEAT, f"repeat needs a count from 0 to {MAX_REPEAT}", repeat.count.span,
                        f"Received: repeat {format_value(count)}")
            self._skip(repeat.body, repeat.span, scope)
            return
        before = self.expanded
        for index in range(count):
            self._foresee(index, count, before, repeat.count.span, scope, "repeat")
            bindings = {repeat.index: Located(index, repeat.span)} if repeat.index else {}
            self._pass(repeat.body, index, bindings, scope, repeat.span)

    def _for(self, loop: st.For, scope: Scope) -> None:
        located = self._evaluate(loop.iterable, scope)
        rows = self._rows(loop, located, scope) if located is not None else None
        if rows is None:
            self._skip(loop.body, loop.span, scope)
            return
        before = self.expanded
        for index, row in enumerate(rows):
            self._foresee(index, len(rows), before, loop.iterable.span, scope, "for")
            values = (row,) if len(loop.names) == 1 else row
            bindings = {name: Located(value, loop.iterable.span) for name, value in zip(loop.names, values)}
            self._pass(loop.body, index, bindings, scope, loop.span)

    def _rows(self, loop: st.For, located: Located, scope: Scope) -> tuple | None:
        """The items a for loop walks, each checked to unpack into the loop's names."""
        duplicates = sorted({n for n in loop.names if loop.names.count(n) > 1})
        if duplicates:
            self._error(scope, DUPLICATE_NAME, f"the loop names '{duplicates[0]}' twice", loop.span)
            return None
        rows = located.value
        if not isinstance(rows, tuple):
            self._error(scope, BAD_LOOP, f"for needs a list or tuple to walk, but this is {describe(rows)}",
                        located.span, "write a list, as in `for c in [16, 32, 64]`, or use repeat N")
            return None
        if len(loop.names) == 1:
            return rows
        for index, row in enumerate(rows):
            if not isinstance(row, tuple) or len(row) != len(loop.names):
                size = f"{len(row)} values" if isinstance(row, tuple) else "a single value"
                self._error(scope, BAD_LOOP, f"item {index} of the list is {format_value(row)}, {size}, but the loop "
                                             f"unpacks {len(loop.names)}: {', '.join(loop.names)}", located.span,
                            "every item needs one value for each name")
                return None
        return rows

    def _pass(self, body: tuple[st.Statement, ...], index: int, bindings: Mapping[str, Located], scope: Scope,
              span: Span) -> None:
        """One pass of a loop body. It shares the tensors of the enclosing body, so a name assigned in
        one pass is visible in the next and after the loop; its constants and loop variables are its own.
        """
        self._count(1, span, scope)
        saved = scope.constants, scope.suffix, scope.pass_names
        scope.constants = {**scope.constants, **bindings}
        scope.suffix = f"{scope.suffix}_{index + 1}"
        scope.pass_names = set()
        self._body(body, scope)
        scope.constants, scope.suffix, scope.pass_names = saved

    def _if(self, statement: st.If, scope: Scope) -> None:
        located = self._evaluate(statement.condition, scope)
        if located is not None and not isinstance(located.value, bool):
            self._error(scope, BAD_CONDITION, f"if needs true or false, but this is {describe(located.value)}",
                        located.span, "compare it to get one, as in `stride == 1`")
            located = None
        if located is None:
            self._skip((*statement.then, *statement.otherwise), statement.span, scope)
            return
        self._body(statement.then if located.value else statement.otherwise, scope)

    def _skip(self, body: tuple[st.Statement, ...], span: Span, scope: Scope) -> None:
        """A body not elaborated because of an error: its names exist, with unknown shapes, so that
        later uses stay silent."""
        for name in _assigned_names(body):
            if name not in scope.tensors:
                scope.tensors[name] = _unknown(name, span)
        scope.current = _unknown("", span)

    def _foresee(self, index: int, passes: int, before: int, span: Span, scope: Scope, what: str) -> None:
        """After a loop's first pass, whose size tells what the others will add: stop before they expand
        if they would pass MAX_EXPANDED."""
        if index == 1:
            per_pass = self.expanded - before
            self._count(0, span, scope, f"a {what} of {passes:,} passes, {per_pass:,} each",
                        coming=(passes - 1) * per_pass)

    def _count(self, statements: int, span: Span, scope: Scope, what: str = "", coming: int = 0) -> None:
        """Account for `statements` about to be elaborated (and `coming` ones foreseen); past
        MAX_EXPANDED, stop checking."""
        self.expanded += statements
        if self.expanded + coming > MAX_EXPANDED:
            because = f" ({what})" if what else ""
            raise _TooLarge(error(
                MODEL_TOO_LARGE, f"the model expands to more than {MAX_EXPANDED:,} layers and statements{because}",
                span, "repeats and blocks multiply what they contain; real networks have a few hundred layers",
                *scope.context))

    def _chain(self, chain: st.Chain, scope: Scope) -> None:
        running: Result | None = scope.current
        for position, call in enumerate(chain.layers):
            last = position == len(chain.layers) - 1
            targets = chain.targets if last else ()
            if isinstance(running, tuple):
                self._several_results(chain.layers[position - 1], len(running), call.span, scope)
                self._fail(chain, scope)
                return
            if not call.args and call.name in scope.tensors:
                if position > 0:
                    self._error(scope, UNKNOWN_LAYER, f"'{call.name}' is a tensor, not a layer", call.span,
                                "a tensor name can only start a chain, as in `x -> relu`")
                    self._fail(chain, scope)
                    return
                running = scope.tensors[call.name]
                continue
            running = self._layer(call, running, position > 0, targets, scope)
            if running is None:
                self._fail(chain, scope)
                return
        if running is None or not self._assign(chain, running, scope):
            self._fail(chain, scope)
            return
        if isinstance(running, Tensor):
            scope.current = running

    def _assign(self, chain: st.Chain, result: Result, scope: Scope) -> bool:
        """Bind the chain's names to its result; False (after an error) when they do not match."""
        last = chain.layers[-1]
        results = result if isinstance(result, tuple) else (result,)
        if len(chain.targets) != len(results) and (chain.targets or len(results) > 1):
            if len(results) > 1:
                self._several_results(last, len(results), last.span, scope, chain.targets)
            else:
                self._error(scope, RESULT_COUNT, f"'{last.name}' gives one tensor, but {len(chain.targets)} names "
                                                 "are assigned", chain.span)
            return False
        for target, tensor in zip(chain.targets, results):
            if not self._may_assign(target, chain.span, scope):  # an op named after it passed this check already
                return False
            scope.tensors[target] = tensor
            if scope.pass_names is not None:
                scope.pass_names.add(target)
        return True

    def _several_results(self, call: st.Call, count: int, span: Span, scope: Scope,
                         targets: tuple[str, ...] = ()) -> None:
        names = ", ".join(f"t{i}" for i in range(1, count + 1))
        given = {0: "no names are assigned", 1: "1 name is assigned"}.get(len(targets),
                                                                          f"{len(targets)} names are assigned")
        self._error(scope, RESULT_COUNT, f"'{call.name}' gives {count} tensors, but {given}", span,
                    f"assign one name to each, as in `{names} = {call.name}(...)`, then chain from them")

    def _fail(self, chain: st.Chain, scope: Scope) -> None:
        """A chain that failed: its names and the running tensor become unknown, so later uses are silent."""
        for target in chain.targets:
            if target not in scope.tensors or scope.pass_names is not None and target not in scope.pass_names:
                scope.tensors[target] = _unknown(target, chain.span)
        scope.current = _unknown("", chain.span)

    def _layer(self, call: st.Call, running: Tensor | None, chained: bool, targets: tuple[str, ...],
               scope: Scope) -> Result | None:
        if call.name in scope.constants:
            substituted = self._layer_parameter(call, scope)
            if substituted is None:
                return None
            call = substituted
        target = targets[0] if len(targets) == 1 else None
        if call.name == SPLIT:
            return self._split(call, running, targets, scope)
        if call.name in OPS:
            op = OPS[call.name]
            if len(targets) > 1:
                self._error(scope, RESULT_COUNT, f"'{call.name}' gives one tensor, but {len(targets)} names are "
                                                 "assigned", call.span)
                return None
            name = self._node_name(target, call.name, call.span, scope)
            if name is None:
                return None
            inputs = self._merge_inputs(call, running, chained, scope) if op.is_merge else [running]
            if inputs is None:
                return None
            present = [tensor for tensor in inputs if tensor is not None]
            if len(present) < len(inputs):
                if not self.has_input:
                    return None  # the model-level "has no input" error covers it
                self._error(scope, BAD_INPUT, f"{call.name} has no input: nothing comes before it", call.span,
                            "declare the model's input first, as in `input image(1, 28, 28)`")
                return None
            return self._apply(op, call, present, name, scope)
        if call.name in self.blocks:
            return self._instantiate(self.blocks[call.name], call, running, target, scope)
        self._unknown_layer(call, scope)
        return None

    def _layer_parameter(self, call: st.Call, scope: Scope) -> st.Call | None:
        """A constant or block parameter used as a layer (`act` with act=relu or leaky_relu(0.2)): the
        call of the layer it holds, its arguments first, then those written here."""
        held = scope.constants[call.name]
        value = held.value
        layer = value.name if isinstance(value, Symbol | CallValue) else None
        if layer is not None and layer not in OPS and layer not in self.blocks and layer != SPLIT:
            self._unknown_layer(replace(call, name=layer, name_span=held.span), scope,
                                f"passed as '{call.name}', which line {call.span.line} uses as a layer")
            return None
        if isinstance(value, Symbol):
            return st.Call(value.name, call.args, call.span, call.name_span)
        if isinstance(value, CallValue):
            given = tuple(st.Arg(None, st.Given(a.value, a.span), a.span) for a in value.args)
            given += tuple(st.Arg(keyword, st.Given(a.value, a.span), a.span) for keyword, a in value.kwargs)
            return st.Call(value.name, given + call.args, call.span, call.name_span)
        self._error(scope, NOT_A_LAYER, f"'{call.name}' is {describe(value)}, not a layer", call.name_span,
                    "a constant or parameter used as a layer must hold one, as in act=relu or act=leaky_relu(0.2)")
        return None

    def _split(self, call: st.Call, running: Tensor | None, targets: tuple[str, ...],
               scope: Scope) -> tuple[Tensor, ...] | None:
        """`a, b = split(2)` or `split(sizes=(16, 48))`: one channel_slice node per part, named after its target."""
        bound = self._bind("split", SPLIT_ARGS, call.args, call.span, scope)
        if bound is None:
            return None
        if (bound["parts"] is None) == (bound["sizes"] is None):
            self._error(scope, MISSING_ARGUMENT, "split needs either a number of equal parts or sizes", call.span,
                        "as in `a, b = split(2)` or `a, b = split(sizes=(16, 48))`")
            return None
        count = bound["parts"] or len(bound["sizes"])
        if len(targets) != count:
            self._several_results(call, count, call.span, scope, targets)
            return None
        if running is None:
            self._error(scope, BAD_INPUT, "split has no input: nothing comes before it", call.span)
            return None
        if running.shape is None:
            return None
        sizes = self._split_sizes(bound, running.shape[0], running, call, scope)
        if sizes is None:
            return None
        results, start = [], 0
        for target, size in zip(targets, sizes):
            name = self._node_name(target, CHANNEL_SLICE, call.span, scope)
            if name is None:
                return None
            bounds = (("start", start), ("stop", start + size))
            args = tuple(st.Arg(keyword, st.Given(value, call.span), call.span) for keyword, value in bounds)
            results.append(self._apply(OPS[CHANNEL_SLICE], replace(call, name=CHANNEL_SLICE, args=args), [running],
                                       name, scope))
            start += size
        return tuple(results)

    def _split_sizes(self, bound: Mapping[str, Any], channels: int, running: Tensor, call: st.Call,
                     scope: Scope) -> tuple[int, ...] | None:
        source = f"the {channels} channels of '{running.origin}' (line {running.origin_line})"
        if bound["parts"] is not None:
            parts = bound["parts"]
            if channels % parts:
                self._error(scope, OUT_OF_RANGE, f"split: {parts} equal parts must divide {source}", call.span,
                            f"Received: parts={parts}; give sizes=(...) for unequal parts")
                return None
            return (channels // parts,) * parts
        sizes = bound["sizes"]
        if sum(sizes) != channels:
            self._error(scope, OUT_OF_RANGE, f"split: the sizes must add up to {source}", call.span,
                        f"Received: sizes={format_value(sizes)}, which add up to {sum(sizes)}")
            return None
        return sizes

    # --- ops --------------------------------------------------------------------------------------

    def _apply(self, op: OpDef, call: st.Call, inputs: list[Tensor], name: str, scope: Scope) -> Tensor:
        args = () if op.is_merge else self._without_misplaced_trainable(op, call.args, name, scope)
        bound = self._bind(f"{op.name} '{name}'", op.args, args, call.span, scope)
        unknown = Tensor(name, None, name, call.span.line, None, inputs[0].field)
        for tensor in inputs:
            self.consumers[tensor.node] = self.consumers.get(tensor.node, 0) + 1
        if bound is None or any(t.shape is None for t in inputs):
            self.nodes[name] = None
            return unknown
        label = f"{op.name} '{name}'"
        try:
            inferred = op.infer(label, bound, tuple(t.info(self._is_input(t)) for t in inputs))
        except ShapeError as failure:
            self._error(scope, failure.code, str(failure), call.span, *failure.notes)
            self.nodes[name] = None
            return unknown
        for message, notes in inferred.warnings:
            self.sink.add(warning(UNREAD_INPUT, message, call.span, *notes, *scope.context))
        attrs = {**bound, **inferred.attrs}
        if "bias_init" in op.arg_names:  # the weighted layers; `scale`'s `init` is a number
            attrs["init"] = with_rest(attrs["init"] or self.weight_init, self.weight_init)
            attrs["bias_init"] = attrs["bias_init"] or default_bias_init(attrs["init"])
        input_shapes = tuple(t.shape for t in inputs if t.shape is not None)
        arrays = op.arrays(attrs, inferred.shape)
        if not attrs.get(TRAINABLE.name, True) and not any(a.trainable for a in op.parameters(attrs, inferred.shape)):
            held = ", ".join(a.name for a in arrays)
            self._error(scope, BAD_WEIGHTS, f"{label}: trainable=false freezes nothing: the layer has no trainable "
                                            "parameters", call.span,
                        f"it holds only {held}: statistics, which no optimizer trains" if held else
                        "with affine=false it has no parameters at all")
            self.nodes[name] = None
            return unknown
        field_ = op.field(attrs, tuple(t.field for t in inputs), input_shapes)
        keeps_shape = not op.is_merge and inferred.shape == inputs[0].shape and op.field is not window_field
        formulas = inferred.formulas or (inputs[0].formulas if keeps_shape else None)
        node = Node(name, op.name, tuple(t.node for t in inputs), Attrs.of(attrs), inferred.shape,
                    sum(a.size for a in arrays if a.trainable), sum(a.size for a in arrays if not a.trainable),
                    op.macs(attrs, input_shapes, inferred.shape), field_.size, call.span, formulas)
        self.nodes[name] = node
        origin = (inputs[0].origin, inputs[0].origin_line) if keeps_shape else (name, call.span.line)
        return Tensor(name, inferred.shape, *origin, node.formulas, field_)

    def _is_input(self, tensor: Tensor) -> bool:
        node = self.nodes.get(tensor.node)
        return node is not None and node.op == "input"

    def _without_misplaced_trainable(self, op: OpDef, args: tuple[st.Arg, ...], name: str,
                                     scope: Scope) -> tuple[st.Arg, ...]:
        """The call's arguments, less a `trainable=` given to a layer without parameters (an error)."""
        if TRAINABLE.name in op.arg_names:
            return args
        for arg in args:
            if arg.keyword == TRAINABLE.name:
                weighted = ", ".join(o.name for o in OPS.values() if TRAINABLE.name in o.arg_names)
                self._error(scope, BAD_WEIGHTS, f"{op.name} '{name}' has no parameters, so trainable= has nothing "
                                                "to freeze", _keyword_span(arg),
                            f"trainable= belongs to the layers with parameters: {weighted}")
        return tuple(arg for arg in args if arg.keyword != TRAINABLE.name)

    def _merge_inputs(self, call: st.Call, running: Tensor | None, chained: bool,
                      scope: Scope) -> list[Tensor | None] | None:
        explicit: list[Tensor] = []
        for arg in call.args:
            if arg.keyword is not None or not isinstance(arg.value, st.Name):
                self._error(scope, WRONG_TYPE, f"{call.name} takes tensor names, as in {call.name}(a, b)", arg.span)
                return None
            tensor = self._lookup(arg.value.name, arg.span, scope)
            if tensor is None:
                return None
            explicit.append(tensor)
        inputs: list[Tensor | None] = [running, *explicit] if chained or len(explicit) == 1 else list(explicit)
        if len(inputs) < 2:
            self._error(scope, MISSING_ARGUMENT, f"{call.name} needs at least two inputs", call.span,
                        f"name them, as in {call.name}(a, b), or chain one in: a -> {call.name}(b)")
            return None
        return inputs

    # --- blocks -----------------------------------------------------------------------------------

    def _instantiate(self, block: st.Block, call: st.Call, running: Tensor | None, target: str | None,
                     scope: Scope) -> Result | None:
        if block.name in scope.blocks_open:
            cycle = " -> ".join((*scope.blocks_open[scope.blocks_open.index(block.name):], block.name))
            self._error(scope, RECURSIVE_BLOCK, f"block '{block.name}' calls itself: {cycle}", call.span,
                        "blocks cannot be recursive; use repeat to stack copies")
            return None
        if running is None:
            self._error(scope, BAD_INPUT, f"block '{block.name}' has no input: nothing comes before it", call.span)
            return None
        name = self._node_name(target, block.name, call.span, scope)
        if name is None:
            return None
        specs = tuple(
            ArgSpec(p.name, _AnyValue(), REQUIRED if p.default is None else p.default, positional=True)
            for p in block.params
        )
        bound = self._bind(f"block '{block.name}'", specs, call.args, call.span, scope, evaluate_defaults=True)
        if bound is None:
            return None
        # Each argument keeps the span it was written at, so that errors about it point there.
        positional = [a for a in call.args if a.keyword is None]
        spans = {p.name: a.value.span for p, a in zip(block.params, positional)}
        spans.update({a.keyword: a.value.span for a in call.args if a.keyword is not None})
        constants = {**self.constants, **{k: v if isinstance(v, Located) else Located(v, spans.get(k, call.span))
                                           for k, v in bound.items()}}
        note = f"in block '{block.name}', instantiated as '{name}' on line {call.span.line}"
        line = scope.use_line or call.span.line
        inner = Scope(f"{name}.", constants, {BLOCK_INPUT: running}, running, None, {}, _assigned_names(block.body),
                      (*scope.blocks_open, block.name), (*scope.context, note), use=f"'{name}' (line {line})",
                      use_line=line)
        self._body(block.body, inner)
        return inner.output or inner.current

    # --- names ------------------------------------------------------------------------------------

    def _node_name(self, target: str | None, base: str, span: Span, scope: Scope) -> str | None:
        if target is not None:
            if not self._may_assign(target, span, scope):
                return None
            if target in RESERVED_NAMES or target.startswith("_"):
                self._error(scope, RESERVED_NAME, f"'{target}' cannot name a layer: PyTorch modules set an attribute "
                            "of that name while training", span, "names starting with '_', and 'training', are "
                            "reserved; choose another name")
                return None
            name = f"{scope.prefix}{target}{scope.suffix}"
            if name in self.nodes:
                existing = self.nodes[name]
                line = existing.span.line if existing else None
                where = f" (first defined on line {line})" if line else ""
                self._error(scope, DUPLICATE_NAME, f"'{target}' is already defined{where}", span,
                            "each tensor name is assigned once")
                return None
            return name
        count = scope.counters.get(base, 0)
        while True:
            count += 1
            name = f"{scope.prefix}{base}{count}"
            if name not in self.nodes and f"{base}{count}" not in scope.reserved:
                scope.counters[base] = count
                return name

    def _may_assign(self, target: str, span: Span, scope: Scope) -> bool:
        """Whether `target` may name a tensor here: once per body, or once per pass of a loop body."""
        if target in OPS or target == BLOCK_INPUT:
            self._error(scope, DUPLICATE_NAME, f"'{target}' cannot name a tensor: it is a layer name", span)
            return False
        if target not in scope.tensors:
            return True
        if scope.pass_names is None:
            node = self.nodes.get(scope.tensors[target].node)
            where = f" (first defined on line {node.span.line})" if node else ""
            self._error(scope, DUPLICATE_NAME, f"'{target}' is already defined{where}", span,
                        "each tensor name is assigned once")
            return False
        if target in scope.pass_names:
            self._error(scope, DUPLICATE_NAME, f"'{target}' is already assigned in this pass of the loop", span,
                        "a loop body may assign a name again in each pass, but once per pass")
            return False
        return True

    def _lookup(self, name: str, span: Span, scope: Scope) -> Tensor | None:
        if name in scope.tensors:
            return scope.tensors[name]
        candidates = list(scope.tensors)
        notes = [f"did you mean '{m}'?" for m in difflib.get_close_matches(name, candidates, n=1)]
        if candidates:
            notes.append(f"defined here: {', '.join(candidates)}")
        self._error(scope, UNDEFINED_NAME, f"'{name}' is not defined", span, *notes)
        return None

    def _unknown_layer(self, call: st.Call, scope: Scope, *context: str) -> None:
        layers = [*OPS, SPLIT]
        choices = [*layers, *self.blocks, *scope.tensors]
        notes = [f"did you mean '{m}'?" for m in difflib.get_close_matches(call.name, choices, n=1, cutoff=0.6)]
        if call.name in HELPERS or call.name in SHAPE_QUERIES:
            notes.append(f"{call.name}() computes a number: name it with `const value = {call.name}(...)`")
        elif not call.args and not notes and not context:
            notes.append("if it is a tensor, define it first with `name = ...`")
        notes.append("layers: " + ", ".join(layers))
        self._error(scope, UNKNOWN_LAYER, f"unknown layer '{call.name}'", call.name_span, *context, *notes)

    # --- values -----------------------------------------------------------------------------------

    def _evaluate(self, expr: st.Expr, scope: Scope) -> Located | None:
        try:
            return evaluate(expr, scope.constants, _ShapeView(scope.tensors))
        except EvaluationError as failure:
            self._add(failure.diagnostic, scope)
            return None
        except UnknownShape:
            return None  # the error that left the tensor without a shape is reported already

    def _convert(self, kind: Any, located: Located, what: str, scope: Scope) -> Any:
        try:
            return kind.convert(located.value)
        except ArgError as bad:
            self._error(scope, bad.code, f"{what} {bad}", located.span, *bad.notes)
            return None

    def _bind(self, what: str, specs: tuple[ArgSpec, ...], args: tuple[st.Arg, ...], span: Span, scope: Scope,
              evaluate_defaults: bool = False) -> dict[str, Any] | None:
        positional, keywords, ok = [], [], True
        keyword_spans: list[Span] = []
        for arg in args:
            located = self._evaluate(arg.value, scope)
            if located is None:
                ok = False
            elif arg.keyword is None:
                positional.append(located)
            else:
                keywords.append((arg.keyword, located))
                keyword_spans.append(_keyword_span(arg))
        if not ok:
            return None  # the expression's own error says what is wrong
        if evaluate_defaults:
            specs = tuple(self._default(spec, scope) for spec in specs)
        values, problems = bind(what, specs, positional, keywords, span, keyword_spans)
        for problem in problems:
            self._add(problem, scope)
        return None if problems else values

    def _default(self, spec: ArgSpec, scope: Scope) -> ArgSpec:
        if spec.default is REQUIRED:
            return spec
        located = self._evaluate(spec.default, Scope("", dict(self.constants)))
        return replace(spec, default=located)

    # --- diagnostics ------------------------------------------------------------------------------

    def _error(self, scope: Scope, code: str, message: str, span: Span | None, *notes: str) -> None:
        self._add(error(code, message, span, *notes), scope)

    def _add(self, diagnostic: Diagnostic, scope: Scope) -> None:
        located = replace(diagnostic, notes=(*diagnostic.notes, *scope.context))
        if not scope.blocks_open:
            self.sink.add(located)
            return
        # The same error in another instance of a block: one diagnostic, its instances listed in a note.
        key = (diagnostic.severity, diagnostic.code, diagnostic.span,
               *(_without_prefix(text, scope.prefix) for text in (diagnostic.message, *diagnostic.notes)))
        shared = self.shared_errors.get(key)
        if shared is None:
            self.shared_errors[key] = _SharedError(len(self.sink.items), located, [scope.use])
            self.sink.add(located)
            return
        shared.uses.append(scope.use)
        others = shared.uses[1:]
        listed = ", ".join(others[:MAX_LISTED_USES]) + (
            f", and {len(others) - MAX_LISTED_USES} more" if len(others) > MAX_LISTED_USES else "")
        note = f"the same error in {len(others)} more instance{'' if len(others) == 1 else 's'}: {listed}"
        self.sink.items[shared.index] = replace(shared.first, notes=(*shared.first.notes, note))

    def _warn_unused(self, graph: Graph) -> None:
        needed = passes.live_nodes(graph)
        for node in passes.dead_nodes(graph):
            if self.consumers.get(node.name):
                continue
            upstream = _dead_upstream(node, graph, needed)
            notes = [f"the model's output is '{graph.output}' (line {graph.output_node.span.line})"]
            if upstream:
                notes.append("so these feed nothing either: " + ", ".join(upstream))
            notes.append("remove it, or use it (e.g. `output name`, or name it in a later chain)")
            self.sink.add(warning(UNUSED_OUTPUT, f"the output of {node.op} '{node.name}' is never used",
                                  node.span, *notes))


class _AnyValue:
    """A block parameter: any value; the layers it is passed to check it."""

    description = "any value"

    def convert(self, value: Any) -> Located:
        return value


def _keyword_span(arg: st.Arg) -> Span:
    """Where the name of a keyword argument is written (an argument's span starts with it)."""
    assert arg.keyword is not None
    start = arg.span
    return Span(start.path, start.line, start.column, start.line, start.column + len(arg.keyword))


def _assigned_names(body: Iterable[st.Statement]) -> set[str]:
    names: set[str] = set()
    for statement in body:
        if isinstance(statement, st.Chain):
            names.update(statement.targets)
        elif isinstance(statement, st.Repeat | st.For):
            names |= _assigned_names(statement.body)
        elif isinstance(statement, st.If):
            names |= _assigned_names((*statement.then, *statement.otherwise))
    return names


def _unknown(name: str, span: Span) -> Tensor:
    """A tensor whose shape an error made unknown: whatever uses it is skipped without a new error."""
    return Tensor(name, None, name, span.line, None, Field.pixel())


def _without_prefix(text: str, prefix: str) -> str:
    """A message with one block instance's node prefix removed, to compare it with another instance's."""
    return re.sub(f"'{re.escape(prefix)}", "'", text)


def _dead_upstream(node: Node, graph: Graph, needed: frozenset[str]) -> list[str]:
    found: list[str] = []
    frontier = list(node.inputs)
    while frontier:
        name = frontier.pop()
        producer = graph.node(name)
        if name in needed or name in found or producer.op == "input":
            continue
        found.append(name)
        frontier.extend(producer.inputs)
    return sorted(found)
