"""Syntax tree -> checked IR: resolves constants, blocks, repeats and names; infers every shape.

Errors do not stop the walk: a layer whose shape cannot be known is marked unknown, its dependents
are skipped quietly, and the rest of the file is still checked, so one run reports every error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cnnc.compiler import passes
from cnnc.compiler.arguments import REQUIRED, ArgError, ArgSpec, Option, bind
from cnnc.compiler.ir import Attrs, Graph, Node
from cnnc.compiler.ops import INITIALIZER, INPUT_ARGS, OPS, Field, OpDef, ShapeError, TensorInfo, default_bias_init
from cnnc.compiler.ops.core import window_field
from cnnc.compiler.values import EvaluationError, Located, evaluate
from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import (
    BAD_INPUT,
    BAD_REPEAT,
    DUPLICATE_NAME,
    MISSING_ARGUMENT,
    MODEL_TOO_LARGE,
    RECURSIVE_BLOCK,
    RESERVED_NAME,
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
BLOCK_INPUT = "in"


@dataclass(frozen=True)
class Tensor:
    """A value flowing through the body while it is elaborated; `shape` None means unknown (an error)."""

    node: str
    shape: tuple[int, ...] | None
    origin: str            # the layer that last changed the shape, for messages
    origin_line: int
    formulas: tuple[str, str] | None
    field: Field

    def info(self) -> TensorInfo:
        assert self.shape is not None
        return TensorInfo(self.origin, self.shape, self.origin_line, self.formulas)


@dataclass
class Scope:
    prefix: str
    constants: dict[str, Located]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    current: Tensor | None = None
    output: Tensor | None = None
    counters: dict[str, int] = field(default_factory=dict)
    reserved: set[str] = field(default_factory=set)
    blocks_open: tuple[str, ...] = ()
    context: tuple[str, ...] = ()     # notes added to each diagnostic, e.g. which block instance
    suffix: str = ""                  # repeat iteration, for names assigned inside a repeat


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

    # --- entry ------------------------------------------------------------------------------------

    def model(self, model: st.Model, max_params: int) -> Graph | None:
        scope = Scope("", dict(self.constants), reserved=_assigned_names(model.body))
        errors_before = sum(d.is_error for d in self.sink.items)
        self.has_input = any(isinstance(s, st.InputDecl) for s in model.body)
        self.weight_init = self._model_init(model.body, scope) or self.weight_init
        self._body(model.body, scope)
        inputs = [n for n in self.nodes.values() if n is not None and n.op == "input"]
        if not self.has_input:
            self._error(scope, BAD_INPUT, f"model '{model.name}' has no input",
                        model.name_span, "declare one first, as in `input image(1, 28, 28)`")
            return None
        output = scope.output or scope.current
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
                if located is not None:
                    chosen = self._convert(INITIALIZER, located, "init", scope) or chosen
        return chosen

    # --- statements -------------------------------------------------------------------------------

    def _body(self, body: Iterable[st.Statement], scope: Scope) -> None:
        for statement in body:
            if isinstance(statement, st.Const):
                self._const(statement, scope)
            elif isinstance(statement, st.InputDecl):
                self._input(statement, scope)
            elif isinstance(statement, st.OutputDecl):
                scope.output = self._lookup(statement.name, statement.span, scope)
            elif isinstance(statement, st.Repeat):
                self._repeat(statement, scope)
            elif isinstance(statement, st.Chain):
                self._chain(statement, scope)

    def _const(self, const: st.Const, scope: Scope) -> None:
        if const.name in scope.constants and const.name not in self.constants or const.name in scope.tensors:
            self._error(scope, DUPLICATE_NAME, f"'{const.name}' is already defined", const.span)
            return
        located = self._evaluate(const.value, scope)
        if located is not None:
            scope.constants[const.name] = located

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
            return
        count = located.value
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_REPEAT:
            self._error(scope, BAD_REPEAT, f"repeat needs a count from 1 to {MAX_REPEAT}", repeat.count.span,
                        f"Received: repeat {count}")
            return
        for index in range(count):
            inner = Scope(scope.prefix, {**scope.constants}, {**scope.tensors}, scope.current, None, scope.counters,
                          scope.reserved, scope.blocks_open, scope.context, f"{scope.suffix}_{index + 1}")
            if repeat.index:
                inner.constants[repeat.index] = Located(index, repeat.span)
            self._body(repeat.body, inner)
            scope.current = inner.current

    def _chain(self, chain: st.Chain, scope: Scope) -> None:
        running = scope.current
        for position, call in enumerate(chain.layers):
            last = position == len(chain.layers) - 1
            target = chain.target if last else None
            if not call.args and call.name in scope.tensors:
                if position > 0:
                    self._error(scope, UNKNOWN_LAYER, f"'{call.name}' is a tensor, not a layer", call.span,
                                "a tensor name can only start a chain, as in `x -> relu`")
                    return
                running = scope.tensors[call.name]
                if target:
                    self._bind_name(target, running, chain.span, scope)
                continue
            running = self._layer(call, running, position > 0, target, scope)
            if running is None:
                return
        scope.current = running

    def _layer(self, call: st.Call, running: Tensor | None, chained: bool, target: str | None,
               scope: Scope) -> Tensor | None:
        if call.name in OPS:
            op = OPS[call.name]
            name = self._node_name(target, call.name, call.span, scope)
            if name is None:
                return None
            inputs = self._merge_inputs(call, running, chained, scope) if op.is_merge else [running]
            if inputs is None:
                return None
            if any(i is None for i in inputs):
                if not self.has_input:
                    return None  # the model-level "has no input" error covers it
                self._error(scope, BAD_INPUT, f"{call.name} has no input: nothing comes before it", call.span,
                            "declare the model's input first, as in `input image(1, 28, 28)`")
                return None
            tensor = self._apply(op, call, inputs, name, scope)
            if target:
                scope.tensors[target] = tensor
            return tensor
        if call.name in self.blocks:
            return self._instantiate(self.blocks[call.name], call, running, target, scope)
        self._unknown_layer(call, scope)
        return None

    # --- ops --------------------------------------------------------------------------------------

    def _apply(self, op: OpDef, call: st.Call, inputs: list[Tensor], name: str, scope: Scope) -> Tensor:
        args = () if op.is_merge else call.args
        bound = self._bind(f"{op.name} '{name}'", op.args, args, call.span, scope)
        unknown = Tensor(name, None, name, call.span.line, None, inputs[0].field)
        for tensor in inputs:
            self.consumers[tensor.node] = self.consumers.get(tensor.node, 0) + 1
        if bound is None or any(t.shape is None for t in inputs):
            self.nodes[name] = None
            return unknown
        label = f"{op.name} '{name}'"
        try:
            inferred = op.infer(label, bound, tuple(t.info() for t in inputs))
        except ShapeError as failure:
            self._error(scope, failure.code, str(failure), call.span, *failure.notes)
            self.nodes[name] = None
            return unknown
        for message, notes in inferred.warnings:
            self.sink.add(warning(UNREAD_INPUT, message, call.span, *notes, *scope.context))
        attrs = {**bound, **inferred.attrs}
        if "init" in op.arg_names:
            attrs["init"] = attrs["init"] or self.weight_init
            attrs["bias_init"] = attrs["bias_init"] or default_bias_init(attrs["init"])
        input_shapes = tuple(t.shape for t in inputs if t.shape is not None)
        arrays = op.parameters(attrs, inferred.shape)
        field_ = op.field(attrs, tuple(t.field for t in inputs), input_shapes)
        keeps_shape = not op.is_merge and inferred.shape == inputs[0].shape and op.field is not window_field
        formulas = inferred.formulas or (inputs[0].formulas if keeps_shape else None)
        node = Node(name, op.name, tuple(t.node for t in inputs), Attrs.of(attrs), inferred.shape,
                    sum(a.size for a in arrays if a.trainable), sum(a.size for a in arrays if not a.trainable),
                    op.macs(attrs, input_shapes, inferred.shape), field_.size, call.span, formulas)
        self.nodes[name] = node
        origin = (inputs[0].origin, inputs[0].origin_line) if keeps_shape else (name, call.span.line)
        return Tensor(name, inferred.shape, *origin, node.formulas, field_)

    def _merge_inputs(self, call: st.Call, running: Tensor | None, chained: bool,
                      scope: Scope) -> list[Tensor] | None:
        explicit: list[Tensor] = []
        for arg in call.args:
            if arg.keyword is not None or not isinstance(arg.value, st.Name):
                self._error(scope, WRONG_TYPE, f"{call.name} takes tensor names, as in {call.name}(a, b)", arg.span)
                return None
            tensor = self._lookup(arg.value.name, arg.span, scope)
            if tensor is None:
                return None
            explicit.append(tensor)
        inputs = [running, *explicit] if chained or len(explicit) == 1 else explicit
        if len(inputs) < 2:
            self._error(scope, MISSING_ARGUMENT, f"{call.name} needs at least two inputs", call.span,
                        f"name them, as in {call.name}(a, b), or chain one in: a -> {call.name}(b)")
            return None
        return inputs

    # --- blocks -----------------------------------------------------------------------------------

    def _instantiate(self, block: st.Block, call: st.Call, running: Tensor | None, target: str | None,
                     scope: Scope) -> Tensor | None:
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
        constants = {**self.constants, **{k: v if isinstance(v, Located) else Located(v, call.span)
                                           for k, v in bound.items()}}
        note = f"in block '{block.name}', instantiated as '{name}' on line {call.span.line}"
        inner = Scope(f"{name}.", constants, {BLOCK_INPUT: running}, running, None, {}, _assigned_names(block.body),
                      (*scope.blocks_open, block.name), (*scope.context, note))
        self._body(block.body, inner)
        result = inner.output or inner.current
        if result is not None and target:
            scope.tensors[target] = result
        return result

    # --- names ------------------------------------------------------------------------------------

    def _node_name(self, target: str | None, base: str, span: Span, scope: Scope) -> str | None:
        if target is not None:
            if target in OPS or target == BLOCK_INPUT:
                self._error(scope, DUPLICATE_NAME, f"'{target}' cannot name a tensor: it is a layer name", span)
                return None
            if target in RESERVED_NAMES or target.startswith("_"):
                self._error(scope, RESERVED_NAME, f"'{target}' cannot name a layer: PyTorch modules set an attribute "
                            "of that name while training", span, "names starting with '_', and 'training', are "
                            "reserved; choose another name")
                return None
            name = f"{scope.prefix}{target}{scope.suffix}"
            if name in self.nodes or target in scope.tensors:
                line = self.nodes[name].span.line if self.nodes.get(name) else None
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

    def _bind_name(self, target: str, tensor: Tensor, span: Span, scope: Scope) -> None:
        if target in scope.tensors:
            self._error(scope, DUPLICATE_NAME, f"'{target}' is already defined", span)
        else:
            scope.tensors[target] = tensor

    def _lookup(self, name: str, span: Span, scope: Scope) -> Tensor | None:
        if name in scope.tensors:
            return scope.tensors[name]
        candidates = list(scope.tensors)
        notes = [f"did you mean '{m}'?" for m in difflib.get_close_matches(name, candidates, n=1)]
        if candidates:
            notes.append(f"defined here: {', '.join(candidates)}")
        self._error(scope, UNDEFINED_NAME, f"'{name}' is not defined", span, *notes)
        return None

    def _unknown_layer(self, call: st.Call, scope: Scope) -> None:
        choices = [*OPS, *self.blocks, *scope.tensors]
        notes = [f"did you mean '{m}'?" for m in difflib.get_close_matches(call.name, choices, n=1, cutoff=0.6)]
        if not call.args and not notes:
            notes.append("if it is a tensor, define it first with `name = ...`")
        notes.append("layers: " + ", ".join(OPS))
        self._error(scope, UNKNOWN_LAYER, f"unknown layer '{call.name}'", call.name_span, *notes)

    # --- values -----------------------------------------------------------------------------------

    def _evaluate(self, expr: st.Expr, scope: Scope) -> Located | None:
        try:
            return evaluate(expr, scope.constants)
        except EvaluationError as failure:
            self._add(failure.diagnostic, scope)
            return None

    def _convert(self, kind: Any, located: Located, what: str, scope: Scope) -> Any:
        try:
            return kind.convert(located.value)
        except ArgError as bad:
            self._error(scope, bad.code, f"{what} {bad}", located.span, *bad.notes)
            return None

    def _bind(self, what: str, specs: tuple[ArgSpec, ...], args: tuple[st.Arg, ...], span: Span, scope: Scope,
              evaluate_defaults: bool = False) -> dict[str, Any] | None:
        positional, keywords, ok = [], [], True
        for arg in args:
            located = self._evaluate(arg.value, scope)
            if located is None:
                ok = False
            elif arg.keyword is None:
                positional.append(located)
            else:
                keywords.append((arg.keyword, located))
        if not ok:
            return None  # the expression's own error says what is wrong
        if evaluate_defaults:
            specs = tuple(self._default(spec, scope) for spec in specs)
        values, problems = bind(what, specs, positional, keywords, span)
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
        self.sink.add(replace(diagnostic, notes=(*diagnostic.notes, *scope.context)))

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


def _assigned_names(body: Iterable[st.Statement]) -> set[str]:
    names: set[str] = set()
    for statement in body:
        if isinstance(statement, st.Chain) and statement.target:
            names.add(statement.target)
        elif isinstance(statement, st.Repeat):
            names |= _assigned_names(statement.body)
    return names


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
