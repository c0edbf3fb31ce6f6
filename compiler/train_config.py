"""The `train { ... }` section: its settings, their kinds and defaults, validated into TrainConfig.

The checker validates; the training stage (cnnc.training) gives the settings effect.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from cnnc.compiler.arguments import (
    ArgError,
    ArgSpec,
    Bool,
    Choice,
    Float,
    Floats,
    Int,
    Kind,
    OneOf,
    Option,
    Text,
)
from cnnc.compiler.values import EvaluationError, Located, evaluate, format_value
from cnnc.constants import BUILT_IN_DATASETS, PATH_DATASETS
from cnnc.dsl import syntax_tree as st
from cnnc.dsl.codes import BAD_CALL, TRAIN_ERROR
from cnnc.dsl.diagnostics import Diagnostic, error

LR = ArgSpec("lr", Float(minimum=0), 0.01, positional=True)
WEIGHT_DECAY = ArgSpec("weight_decay", Float(minimum=0), 0.0)
# Every optimizer's per-group settings; parameter roles come from the op registry (Param.role).
PARAMETER_GROUPS = (
    ArgSpec("norm_bias_decay", Bool(), True, doc="false: weight decay skips biases and norm layers' parameters"),
    ArgSpec("bias_lr", Float(minimum=0), 1.0, doc="the learning rate's multiplier for biases and norm shifts"),
)

DATASETS = OneOf("a dataset", {
    **{name: () for name in BUILT_IN_DATASETS},
    **{name: (ArgSpec("path", Text(), positional=True),) for name in PATH_DATASETS},
})

OPTIMIZERS = OneOf("an optimizer", {
    "sgd": (LR, ArgSpec("momentum", Float(minimum=0, maximum=1), 0.0), ArgSpec("nesterov", Bool(), False),
            WEIGHT_DECAY, *PARAMETER_GROUPS),
    "rmsprop": (ArgSpec("lr", Float(minimum=0), 0.001, positional=True),
                ArgSpec("rho", Float(minimum=0, maximum=1), 0.9, doc="the decay of the squared-gradient average"),
                ArgSpec("momentum", Float(minimum=0, maximum=1), 0.0),
                ArgSpec("eps", Float(minimum=0), 1e-7),
                ArgSpec("eps_inside_sqrt", Bool(), False, doc="TensorFlow 1's placement of epsilon"),
                ArgSpec("centered", Bool(), False), WEIGHT_DECAY, *PARAMETER_GROUPS),
    "adam": (ArgSpec("lr", Float(minimum=0), 0.001, positional=True), ArgSpec("beta1", Float(0, 1), 0.9),
             ArgSpec("beta2", Float(0, 1), 0.999), ArgSpec("eps", Float(minimum=0), 1e-8), WEIGHT_DECAY,
             *PARAMETER_GROUPS),
    "adamw": (ArgSpec("lr", Float(minimum=0), 0.001, positional=True), ArgSpec("beta1", Float(0, 1), 0.9),
              ArgSpec("beta2", Float(0, 1), 0.999), ArgSpec("eps", Float(minimum=0), 1e-8),
              ArgSpec("weight_decay", Float(minimum=0), 0.01), *PARAMETER_GROUPS),
})

SCHEDULES = OneOf("a learning-rate schedule", {
    "constant": (),
    "step": (ArgSpec("every", Int(minimum=1), positional=True, doc="epochs between decays"),
             ArgSpec("gamma", Float(minimum=0), 0.1)),
    "exponential": (ArgSpec("gamma", Float(minimum=0), 0.95, positional=True),),
    "cosine": (ArgSpec("min_lr", Float(minimum=0), 0.0),),
    "onecycle": (ArgSpec("max_lr", Float(minimum=0), positional=True),
                 ArgSpec("pct_start", Float(minimum=0, maximum=1), 0.3)),
    "linear": (ArgSpec("max_lr", Float(minimum=0), positional=True),
               ArgSpec("pct_start", Float(minimum=0, maximum=1), 0.25),
               ArgSpec("final", Float(minimum=0), 0.0, doc="the rate at the last step")),
})

LOSSES = OneOf("a loss", {
    "cross_entropy": (ArgSpec("label_smoothing", Float(minimum=0, below=1), 0.0),
                      ArgSpec("from_logits", Bool(), True,
                              doc="false when the model ends in softmax and outputs probabilities")),
})

FILL = ArgSpec("fill", Choice(("zeros", "reflect")), "zeros", doc="what the pixels moved in take")

AUGMENTATIONS = OneOf("an augmentation", {
    "translate": (ArgSpec("pixels", Int(minimum=1), positional=True), FILL),
    "crop": (ArgSpec("padding", Int(minimum=1), positional=True), FILL),
    "hflip": (ArgSpec("alternate", Bool(), False, doc="mirror each image in every other epoch"),),
    "vflip": (),
    "cutout": (ArgSpec("size", Int(minimum=1), positional=True),),
})

EARLY_STOPPING = OneOf("early stopping", {
    "early_stopping": (ArgSpec("patience", Int(minimum=1), 5, positional=True),
                       ArgSpec("metric", Choice(("val_accuracy", "val_loss")), "val_accuracy"),
                       ArgSpec("min_delta", Float(minimum=0), 0.0),
                       ArgSpec("restore_best", Bool(), True)),
})

TEST_TIME_AUGMENTATIONS = OneOf("a test-time augmentation", {
    "hflip": (),
    "translate": (ArgSpec("pixels", Int(minimum=1), positional=True),),
})

EMA = OneOf("a weight average", {
    "ema": (ArgSpec("decay", Float(minimum=0, below=1), 0.99),
            ArgSpec("start", Int(minimum=0), 0, doc="epochs before the average starts"),
            ArgSpec("every", Int(minimum=1), 1, doc="steps between updates")),
})

LOOKAHEAD = OneOf("lookahead", {
    "lookahead": (ArgSpec("k", Int(minimum=1), 5, doc="steps between synchronisations"),
                  ArgSpec("alpha", Float(minimum=0, maximum=1), 0.5),
                  ArgSpec("ramp", Float(minimum=0), 0.0,
                          doc="alpha after step s: 1 - (1 - alpha) * (s / total steps) ** ramp; 0: alpha throughout")),
})

NORMALIZE = OneOf("a normalisation", {
    "normalize": (ArgSpec("mean", Floats(), positional=True), ArgSpec("std", Floats(minimum=0), positional=True)),
})


@dataclass(frozen=True)
class TrainConfig:
    """What a train section asks for, every default filled in. Images are scaled to [0, 1] first."""

    dataset: Option | None = None
    batch_size: int = 32
    epochs: int = 10
    optimizer: Option = Option("sgd", (("lr", 0.01), ("momentum", 0.0), ("nesterov", False), ("weight_decay", 0.0)))
    schedule: Option = Option("constant")
    warmup_epochs: int = 0
    loss: Option = Option("cross_entropy", (("label_smoothing", 0.0), ("from_logits", True)))
    augment: tuple[Option, ...] = ()
    seed: int = 0
    validation: float = 0.0
    early_stopping: Option | None = None
    clip_grad_norm: float | None = None
    normalize: Option | None = None
    tta: tuple[Option, ...] = ()
    ema: Option | None = None
    lookahead: Option | None = None
    eval_every: int = 1


# What a run records of the settings added with test-time augmentation, weight averaging and
# parameter groups is left out while they keep their defaults, so that the record (settings.json)
# of a run that does not use them is what it was before they existed.
QUIET_SETTINGS: Mapping[str, object] = {"tta": (), "ema": None, "lookahead": None, "eval_every": 1}
QUIET_ARGUMENTS: Mapping[str, object] = {"norm_bias_decay": True, "bias_lr": 1.0, "alternate": False, "fill": "zeros"}


@dataclass(frozen=True)
class _Setting:
    field: str
    kind: Kind
    many: bool = False


SETTINGS: Mapping[str, _Setting] = {
    "dataset": _Setting("dataset", DATASETS),
    "batch": _Setting("batch_size", Int(minimum=1)),
    "epochs": _Setting("epochs", Int(minimum=1)),
    "optimizer": _Setting("optimizer", OPTIMIZERS),
    "schedule": _Setting("schedule", SCHEDULES),
    "warmup": _Setting("warmup_epochs", Int(minimum=0)),
    "loss": _Setting("loss", LOSSES),
    "augment": _Setting("augment", AUGMENTATIONS, many=True),
    "seed": _Setting("seed", Int(minimum=0)),
    "validation": _Setting("validation", Float(minimum=0, below=1)),
    "early_stopping": _Setting("early_stopping", EARLY_STOPPING),
    "clip_grad": _Setting("clip_grad_norm", Float(minimum=0)),
    "normalize": _Setting("normalize", NORMALIZE),
    "tta": _Setting("tta", TEST_TIME_AUGMENTATIONS, many=True),
    "ema": _Setting("ema", EMA),
    "lookahead": _Setting("lookahead", LOOKAHEAD),
    "eval_every": _Setting("eval_every", Int(minimum=1)),
}


def check_train(section: st.Train, constants: Mapping[str, Located]) -> tuple[TrainConfig, list[Diagnostic]]:
    values: dict[str, object] = {}
    problems: list[Diagnostic] = []
    seen: dict[str, st.Setting] = {}
    for setting in section.settings:
        if setting.key not in SETTINGS:
            hint = [f"did you mean '{m}'?" for m in difflib.get_close_matches(setting.key, SETTINGS, n=1)]
            problems.append(error(TRAIN_ERROR, f"unknown train setting '{setting.key}'", setting.key_span,
                                  *hint, f"settings: {', '.join(SETTINGS)}"))
            continue
        if setting.key in seen:
            problems.append(error(BAD_CALL, f"train setting '{setting.key}' is given twice", setting.key_span,
                                  f"first given on line {seen[setting.key].span.line}"))
            continue
        seen[setting.key] = setting
        converted = _convert(setting, SETTINGS[setting.key], constants, problems)
        if converted is not None:
            values[SETTINGS[setting.key].field] = converted
    config = TrainConfig(**values)  # type: ignore[arg-type]  # each value converted by its field's kind
    problems += _cross_checks(config, section, seen)
    return config, problems


def _convert(setting: st.Setting, spec: _Setting, constants, problems: list[Diagnostic]):
    if len(setting.values) > 1 and not spec.many:
        problems.append(error(TRAIN_ERROR, f"train setting '{setting.key}' takes one value, "
                                           f"but {len(setting.values)} were given", setting.span))
        return None
    results = []
    for expr in setting.values:
        try:
            located = evaluate(expr, constants)
            results.append(spec.kind.convert(located.value))
        except EvaluationError as bad:
            problems.append(bad.diagnostic)
        except ArgError as bad:
            problems.append(error(bad.code, f"train setting '{setting.key}' {bad}", expr.span, *bad.notes,
                                  f"Received: {setting.key} {format_value(located.value)}"))
    if len(results) != len(setting.values):
        return None
    return tuple(results) if spec.many else results[0]


def _cross_checks(config: TrainConfig, section: st.Train, seen: Mapping[str, st.Setting]) -> list[Diagnostic]:
    problems = []
    if config.early_stopping is not None and config.validation == 0:
        problems.append(error(
            TRAIN_ERROR, "early_stopping watches a validation metric, but there is no validation split",
            seen["early_stopping"].span, "add, for example, `validation 0.1` to hold out 10% of the training set",
        ))
    if config.eval_every > 1 and config.validation == 0:
        problems.append(error(
            TRAIN_ERROR, "eval_every says how often the validation split is evaluated, but there is none",
            seen["eval_every"].span, "add, for example, `validation 0.1` to hold out 10% of the training set",
        ))
    if config.ema is not None and config.lookahead is not None:
        problems.append(error(
            TRAIN_ERROR, "ema and lookahead both decide which weights are evaluated; choose one",
            seen["lookahead"].span, f"ema is given on line {seen['ema'].span.line}",
        ))
    if "tta" in seen and len(config.tta) == len(seen["tta"].values):
        problems += _repeated_views(config.tta, seen["tta"])
    if "dataset" not in seen:
        problems.append(error(TRAIN_ERROR, "the train section needs a dataset", section.span,
                              f"for example `dataset mnist`; options: {', '.join(DATASETS.options)}"))
    return problems




def _repeated_views(views: tuple[Option, ...], setting: st.Setting) -> list[Diagnostic]:
    """Each test-time augmentation may be listed once (the views they make are fixed: see the docs)."""
    problems: list[Diagnostic] = []
    first: dict[str, str] = {}
    for view, expr in zip(views, setting.values, strict=True):
        if view.name in first:
            problems.append(error(BAD_CALL, f"tta lists {view.name} twice", expr.span,
                                  f"first listed as {first[view.name]}"))
        else:
            first[view.name] = str(view)
    return problems
