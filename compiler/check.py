"""The front end's entry point: a spec file in, a checked Program and diagnostics out."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cnnc.compiler.elaborate import SPLIT, Elaborator
from cnnc.compiler.ir import Graph, Program
from cnnc.compiler.loader import load
from cnnc.compiler.ops import DEFAULT_WEIGHT_INIT, OPS
from cnnc.compiler.passes import final_softmax
from cnnc.compiler.train_config import TrainConfig, check_train
from cnnc.compiler.values import EvaluationError, Located, evaluate
from cnnc.constants import DATASET_SHAPES
from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import DATASET_CLASSES, DATASET_INPUT, DOUBLE_SOFTMAX, DUPLICATE_NAME, TRAIN_ERROR, WRONG_RANK
from cnnc.dsl.diagnostics import Diagnostic, DiagnosticSink, error, render_all, sort_key, warning
from cnnc.dsl.parser import too_deep
from cnnc.errors import CnncError, UsageError

DEFAULT_MAX_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class CheckResult:
    program: Program | None
    diagnostics: tuple[Diagnostic, ...]
    sources: Mapping[str, str]

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


def check_file(path: str | Path, *, text: str | None = None, sources: Mapping[str, str] | None = None,
               max_params: int = DEFAULT_MAX_PARAMS, check_dataset: bool = True,
               sources_only: bool = False) -> CheckResult:
    """Check a spec file. `text` and `sources` stand in for files on disk (see loader.load).
    `check_dataset=False` skips comparing the model with the train section's dataset (for a command
    told to train on another one)."""
    loaded = load(path, text, sources, sources_only=sources_only)
    sink = DiagnosticSink()
    sink.extend(loaded.diagnostics)
    program = None
    if loaded.main is not None:
        try:
            program = _check_tree(loaded.main, loaded.included, loaded.sources, sink, max_params, check_dataset)
        except RecursionError:
            sink.add(too_deep(loaded.main.path))
    ordered = tuple(sorted(sink.items, key=sort_key))
    return CheckResult(None if sink.has_errors else program, ordered, loaded.sources)


def _check_tree(main: st.SourceFile, included: list[st.SourceFile], sources: Mapping[str, str],
                sink: DiagnosticSink, max_params: int, check_dataset: bool) -> Program | None:
    files = [*included, main]
    constants = _constants(files, sink)
    blocks = _blocks(files, sink)
    for extra in main.models[1:]:
        sink.add(error(DUPLICATE_NAME, f"a spec holds one model; '{extra.name}' is a second", extra.name_span,
                       f"'{main.models[0].name}' is on line {main.models[0].span.line}; put each in its own file"))
    train = _train(main, constants, sink)
    if not main.models:
        return None
    elaborator = Elaborator(constants, blocks, sink, DEFAULT_WEIGHT_INIT)
    graph = elaborator.model(main.models[0], max_params)
    if graph is None:
        return None
    if main.trains:
        _check_training_output(graph, train, main.trains[0], sink, check_dataset)
    return Program(graph, train, dict(sources), elaborator.weight_init)


def _constants(files: list[st.SourceFile], sink: DiagnosticSink) -> dict[str, Located]:
    constants: dict[str, Located] = {}
    for file in files:
        for const in file.consts:
            if const.name in constants:
                sink.add(error(DUPLICATE_NAME, f"constant '{const.name}' is already defined", const.span,
                               f"first defined at {_where(constants[const.name].span)}"))
                continue
            try:
                constants[const.name] = evaluate(const.value, constants)
            except EvaluationError as failure:
                sink.add(failure.diagnostic)
    return constants


def _blocks(files: list[st.SourceFile], sink: DiagnosticSink) -> dict[str, st.Block]:
    blocks: dict[str, st.Block] = {}
    for file in files:
        for block in file.blocks:
            if block.name in OPS or block.name == SPLIT:
                sink.add(error(DUPLICATE_NAME, f"block '{block.name}' has the name of a built-in layer",
                               block.name_span, "choose another name"))
            elif block.name in blocks:
                sink.add(error(DUPLICATE_NAME, f"block '{block.name}' is already defined", block.name_span,
                               f"first defined at {_where(blocks[block.name].span)}"))
            else:
                blocks[block.name] = block
    return blocks


def _train(main: st.SourceFile, constants: Mapping[str, Located], sink: DiagnosticSink) -> TrainConfig | None:
    for extra in main.trains[1:]:
        sink.add(error(DUPLICATE_NAME, "a spec holds one train section; this is a second", extra.span))
    if not main.trains:
        return None
    config, problems = check_train(main.trains[0], constants)
    sink.extend(problems)
    return config


def _check_training_output(graph: Graph, train: TrainConfig | None, section: st.Train, sink: DiagnosticSink,
                           check_dataset: bool = True) -> None:
    output = graph.output_node
    if len(output.shape) != 1:
        sink.add(error(WRONG_RANK, f"the model's output '{output.name}' is {'x'.join(map(str, output.shape))}, "
                                   "but training needs a flat vector of class scores", output.span,
                       "end the model with flatten and dense, or global_avgpool"))
    if train is not None and train.normalize is not None:
        _check_normalize(graph, train, section, sink)
    if train is not None and check_dataset:
        _check_dataset(graph, train, section, sink)
    if train is not None:
        _check_reflections(graph, train, section, sink)
    if train is None or not train.loss.get("from_logits", False):
        return
    softmax_at = final_softmax(graph)
    if softmax_at is not None:
        loss_line = next((s.span.line for s in section.settings if s.key == "loss"), section.span.line)
        sink.add(warning(
            DOUBLE_SOFTMAX, f"the model ends in softmax ('{softmax_at.name}'), and the loss applies softmax again",
            softmax_at.span,
            f"cross_entropy (line {loss_line}) takes logits and applies log-softmax itself; the double softmax "
            "flattens gradients and slows training",
            "remove the softmax (cnnc export can add one for deployment), "
            "or write `loss cross_entropy(from_logits=false)`",
        ))


def _check_dataset(graph: Graph, train: TrainConfig, section: st.Train, sink: DiagnosticSink) -> None:
    """A built-in dataset's images must fit the input, and its classes the output (folder and npz data
    is only known when training reads it)."""
    if train.dataset is None or train.dataset.name not in DATASET_SHAPES:
        return
    name = train.dataset.name
    (image_shape, classes) = DATASET_SHAPES[name]
    setting = next(s for s in section.settings if s.key == "dataset")
    shape, wanted = "x".join(map(str, graph.input.shape)), "x".join(map(str, image_shape))
    if tuple(graph.input.shape) != image_shape:
        sink.add(error(DATASET_INPUT, f"the dataset {name} has {wanted} images, but the model's input "
                                      f"'{graph.input.name}' (line {graph.input.span.line}) takes {shape}",
                       setting.span, f"declare `input {graph.input.name}({', '.join(map(str, image_shape))})`, "
                                     "or train on another dataset"))
    output = graph.output_node
    if len(output.shape) == 1 and output.shape[0] != classes:
        sink.add(error(DATASET_CLASSES, f"the model's output '{output.name}' has {output.shape[0]} values, but "
                                        f"the dataset {name} (line {setting.span.line}) has {classes} classes",
                       output.span, f"end the model with {classes} outputs, for example dense({classes})"))


def _check_normalize(graph: Graph, train: TrainConfig, section: st.Train, sink: DiagnosticSink) -> None:
    channels = graph.input.shape[0]
    span = next(s.span for s in section.settings if s.key == "normalize")
    assert train.normalize is not None
    for key in ("mean", "std"):
        values = train.normalize[key]
        if len(values) not in (1, channels):
            sink.add(error(TRAIN_ERROR, f"normalize {key} has {len(values)} values, but the input has {channels} "
                                   f"channel{'s' if channels > 1 else ''}", span,
                           f"give one value for every channel, or one for all; Received: {key}={values}"))


def _check_reflections(graph: Graph, train: TrainConfig, section: st.Train, sink: DiagnosticSink) -> None:
    """A shift filled by reflection (augment's fill=reflect, tta's translate) mirrors the image at its
    edges, so it must be smaller than the image."""
    if len(graph.input.shape) != 3:
        return
    _, height, width = graph.input.shape
    for key, options in (("augment", train.augment), ("tta", train.tta)):
        setting = next((s for s in section.settings if s.key == key), None)
        if setting is None or len(setting.values) != len(options):
            continue
        for option, expr in zip(options, setting.values, strict=True):
            if option.name not in ("translate", "crop") or option.get("fill", "reflect") != "reflect":
                continue
            pixels = option.get("pixels", option.get("padding"))
            if pixels >= min(height, width):
                sink.add(error(TRAIN_ERROR, f"{key} {option.name}({pixels}) reflects the image at its edges, so it "
                                            f"needs images larger than {pixels} pixels, but the input "
                                            f"'{graph.input.name}' is {height}x{width}", expr.span,
                               "shift by fewer pixels" + (", or fill with zeros" if key == "augment" else "")))


def _where(span) -> str:
    return f"{span.path}:{span.line}"


def spec_path(text: str) -> Path:
    """The spec file a command names, or a usage error when there is no such file."""
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"no such spec file: {text}" if not path.exists() else f"not a file: {text}")
    return path


def load_program(spec: str, max_params: int | None = None, *, check_dataset: bool = True) -> Program:
    """Check a spec for a command that needs its program: print its diagnostics to stderr, raise on errors."""
    result = check_file(spec_path(spec), max_params=max_params or DEFAULT_MAX_PARAMS, check_dataset=check_dataset)
    if result.diagnostics:
        print(render_all(result.diagnostics, result.sources), end="", file=sys.stderr)
    if result.has_errors:
        raise CnncError(f"{spec} has errors (see above)")
    if result.program is None:
        raise CnncError(f"{spec} defines no model (it holds only blocks and constants)")
    return result.program
