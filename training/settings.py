"""What a run trains with: the spec's train section, changed by command-line overrides.

The overrides are stored in the run's checkpoint, so that --resume re-derives exactly the same
settings from the stored spec sources.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cnnc.compiler.arguments import Option
from cnnc.compiler.train_config import QUIET_ARGUMENTS, QUIET_SETTINGS, TrainConfig

PATH_DATASETS = ("folder", "npz")  # datasets whose argument is the path of the user's data


@dataclass(frozen=True)
class Overrides:
    """Command-line changes to the train section (None: as the spec says)."""

    dataset: str | None = None
    data: str | None = None  # the data directory, or the folder/.npz path of folder and npz
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Overrides:
        return Overrides(**data)


def effective_config(config: TrainConfig, overrides: Overrides) -> TrainConfig:
    """The train section with the overrides applied (the dataset's path aside: see data.py)."""
    changes: dict[str, Any] = {}
    if overrides.dataset is not None:
        changes["dataset"] = Option(overrides.dataset)
    for field in ("epochs", "batch_size", "seed"):
        if getattr(overrides, field) is not None:
            changes[field] = getattr(overrides, field)
    if overrides.lr is not None:
        changes["optimizer"] = with_setting(config.optimizer, "lr", overrides.lr)
    return dataclasses.replace(config, **changes)


def with_setting(option: Option, key: str, value: Any) -> Option:
    settings = dict(option.settings)
    settings[key] = value
    return Option(option.name, tuple(settings.items()))


def config_to_json(config: TrainConfig) -> dict[str, Any]:
    """The settings as JSON, options written as in a spec (`sgd(lr=0.01, momentum=0.9, ...)`); the
    settings and arguments of QUIET_SETTINGS and QUIET_ARGUMENTS only when they are not their defaults."""
    def plain(value: Any) -> Any:
        if isinstance(value, Option):
            return str(Option(value.name, tuple((key, item) for key, item in value.settings
                                                if key not in QUIET_ARGUMENTS or item != QUIET_ARGUMENTS[key])))
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        return value

    return {field.name: plain(getattr(config, field.name)) for field in dataclasses.fields(config)
            if field.name not in QUIET_SETTINGS or getattr(config, field.name) != QUIET_SETTINGS[field.name]}
