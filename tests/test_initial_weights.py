"""Initial weights (compiler/backends/weights.py): each initializer's values are those of its
definition drawn in one go, although big arrays are drawn a chunk at a time; float32 throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnc.compiler.arguments import Option
from cnnc.compiler.backends import weights
from cnnc.compiler.backends.weights import TRUNCATION_STD_CORRECTION, _initialize

SHAPE = (37, 5, 3, 3)  # 1,665 values: with 7-value chunks, a last chunk of 6
FANS = (45, 333)


def one_draw(name: str, option: Option, rng: np.random.Generator) -> np.ndarray:
    """The module docstring's definitions, each drawn as one float64 array and then rounded."""
    fan_in, fan_out = FANS
    uniform_limits = {"glorot_uniform": math.sqrt(6 / (fan_in + fan_out)), "he_uniform": math.sqrt(6 / fan_in),
                      "lecun_uniform": math.sqrt(3 / fan_in), "torch_default": 1 / math.sqrt(fan_in),
                      "uniform": option.get("limit")}
    normal_stds = {"glorot_normal": math.sqrt(2 / (fan_in + fan_out)), "he_normal": math.sqrt(2 / fan_in),
                   "lecun_normal": math.sqrt(1 / fan_in)}
    if name in uniform_limits:
        limit = uniform_limits[name]
        return rng.uniform(-limit, limit, SHAPE).astype(np.float32)
    if name == "normal":
        return (option["mean"] + option["std"] * rng.standard_normal(SHAPE)).astype(np.float32)
    if name in normal_stds or name == "truncated_normal":
        mean = option["mean"] if name == "truncated_normal" else 0.0
        std = option["std"] if name == "truncated_normal" else normal_stds[name] / TRUNCATION_STD_CORRECTION
        values = rng.standard_normal(SHAPE)
        beyond = np.abs(values) > 2
        while beyond.any():
            values[beyond] = rng.standard_normal(int(beyond.sum()))
            beyond = np.abs(values) > 2
        return (mean + std * values).astype(np.float32)
    raise AssertionError(name)


OPTIONS = [Option("glorot_uniform"), Option("he_uniform"), Option("lecun_uniform"), Option("torch_default"),
           Option("uniform", (("limit", 0.3),)), Option("normal", (("std", 0.5), ("mean", 0.1))),
           Option("glorot_normal"), Option("he_normal"), Option("lecun_normal"),
           Option("truncated_normal", (("std", 2.0), ("mean", -1.0)))]


@pytest.mark.parametrize("chunk", [7, 1 << 20])
@pytest.mark.parametrize("option", OPTIONS, ids=str)
def test_chunked_draws_give_the_values_of_one_draw(option: Option, chunk: int, monkeypatch) -> None:
    monkeypatch.setattr(weights, "DRAW_CHUNK", chunk)
    drawn = _initialize(option, SHAPE, FANS, np.random.default_rng([4, 2]))
    expected = one_draw(option.name, option, np.random.default_rng([4, 2]))
    assert drawn.dtype == np.float32 and drawn.shape == SHAPE
    np.testing.assert_array_equal(drawn, expected)


def test_truncated_normals_stay_within_two_standard_deviations_of_their_mean(monkeypatch) -> None:
    monkeypatch.setattr(weights, "DRAW_CHUNK", 1000)
    option = Option("truncated_normal", (("std", 2.0), ("mean", -1.0)))
    values = _initialize(option, (100, 100, 5), FANS, np.random.default_rng(0))
    assert values.min() >= -5.0 and values.max() <= 3.0
    # a normal cut at 2 standard deviations keeps 0.8796 of its standard deviation
    assert values.std() == pytest.approx(2.0 * TRUNCATION_STD_CORRECTION, rel=0.01)


@pytest.mark.parametrize("option", [Option("constant", (("value", 0.1),)), Option("zeros"), Option("ones")], ids=str)
def test_constant_initializers_are_float32(option: Option) -> None:
    values = _initialize(option, SHAPE, FANS, np.random.default_rng(0))
    expected = {"constant": np.float32(0.1), "zeros": 0.0, "ones": 1.0}[option.name]
    assert values.dtype == np.float32 and (values == expected).all()
