"""Initial weights, in numpy: the one documented source of them for every backend.

`cnnc compile` (no torch) and a fresh PyTorch module built with the same seed hold identical weights.
Which arrays a layer has (names, shapes, initializers, fans) is declared by its op in the registry
(compiler/ops/, `parameters`); names and layouts are PyTorch's state_dict conventions
(`conv1.weight` (filters, in_channels / groups, kh, kw), `bn1.running_var` (C,), ...).
Each array has its own random stream, seeded by (seed, crc32(name)), so adding a layer leaves the
others' initial values unchanged.

Initializers follow Keras's definitions, with fan_in = in_channels / groups * kh * kw (or
in_features) and fan_out = filters * kh * kw (or units):
    glorot_uniform  U(-a, a), a = sqrt(6 / (fan_in + fan_out))            (the default, as in Keras)
    glorot_normal   truncated normal, std = sqrt(2 / (fan_in + fan_out)) / 0.8796
    he_uniform      U(-a, a), a = sqrt(6 / fan_in);   he_normal  std = sqrt(2 / fan_in) / 0.8796
    lecun_uniform   U(-a, a), a = sqrt(3 / fan_in);   lecun_normal  std = sqrt(1 / fan_in) / 0.8796
    normal(std, mean), truncated_normal(std, mean) (cut at 2 std), uniform(limit), constant(value),
    zeros, ones, torch_default (PyTorch's own: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weight and bias)
    dirac(rest)     in each group of filters, the first min(filters, in_channels) / groups filters are
                    identities (1 at the kernel's centre for their own input channel of the group, 0
                    elsewhere: torch.nn.init.dirac_ with groups); the other filters are drawn from `rest`
    whiten(eps, images, rest)   `rest` here; a new training run sets the weight from the training
                    images before its first step (cnnc.training.whiten, `whitening_weights` below)
The 0.8796 corrects the standard deviation lost by cutting the normal at 2 standard deviations.
Biases default to zeros (torch_default's to its own uniform); batch norm starts at weight 1, bias 0, mean 0, variance 1.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np

from cnnc.compiler.arguments import Option
from cnnc.compiler.ir import Graph, Node
from cnnc.compiler.ops import OPS, Param
from cnnc.compiler.ops.initializers import DIRAC, WHITEN
from cnnc.compiler.passes import prune

TRUNCATION_STD_CORRECTION = 0.87962566103423978
DRAW_CHUNK = 1 << 20  # random values drawn at a time (see _drawn)


def parameter_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter and buffer, in graph order."""
    return {name: param.shape for name, param in node_parameters(graph)}


def parameter_roles(graph: Graph) -> dict[str, str]:
    """The role (Param.role: "weight", "bias" or "norm") of every parameter and buffer, by name."""
    return {name: param.role for name, param in node_parameters(graph)}


def initial_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for name, param in node_parameters(graph):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        weights[name] = _initialize(param.init, param.shape, param.fans, rng)
    return weights


def node_parameters(graph: Graph) -> list[tuple[str, Param]]:
    """Every array of every live node (the backends build no others), as the op registry declares it,
    with its state-dict name."""
    return [(f"{node.name}.{param.name}", param) for node in prune(graph).nodes for param in parameters_of(node)]


def parameters_of(node: Node) -> tuple[Param, ...]:
    if node.op == "input":
        return ()
    return OPS[node.op].arrays(node.attrs.as_dict(), node.shape)


def _drawn(shape: tuple[int, ...], draw: Callable[[int], np.ndarray]) -> np.ndarray:
    """A float32 array filled in C order by `draw(n)` (float64 values, n at a time, DRAW_CHUNK at most):
    the values of one `draw(size)` cast to float32, without holding all of them in float64 at once
    (VGG-16's first dense layer would take 0.8 GB, and most of the time, that way)."""
    array = np.empty(shape, np.float32)
    flat = array.reshape(-1)
    for start in range(0, flat.size, DRAW_CHUNK):
        stop = min(start + DRAW_CHUNK, flat.size)
        flat[start:stop] = draw(stop - start)
    return array


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
    """mean + std * a standard normal draw, its values beyond 2 redrawn (all at once, in C order) until
    none is; drawn in chunks as `_drawn` is, with the same values."""
    array = np.empty(shape, np.float32)
    flat = array.reshape(-1)
    beyond: list[np.ndarray] = []
    for start in range(0, flat.size, DRAW_CHUNK):
        values = rng.standard_normal(min(DRAW_CHUNK, flat.size - start))
        flat[start:start + values.size] = mean + std * values
        beyond.append(start + np.flatnonzero(np.abs(values) > 2))
    positions = np.concatenate(beyond) if beyond else np.zeros(0, np.int64)
    while positions.size:
        values = rng.standard_normal(positions.size)
        flat[positions] = mean + std * values
        positions = positions[np.abs(values) > 2]
    return array


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], limit: float) -> np.ndarray:
    return _drawn(shape, lambda count: rng.uniform(-limit, limit, count))


def _dirac(init: Option, shape: tuple[int, ...], fans: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    weight = _initialize(init["rest"], shape, fans, rng)
    filters, per_group_in, height, width = shape
    per_group_out = filters // init["groups"]
    identities = min(per_group_out, per_group_in)
    for group in range(init["groups"]):
        first = group * per_group_out
        weight[first:first + identities] = 0
        weight[np.arange(first, first + identities), np.arange(identities), height // 2, width // 2] = 1
    return weight


_SCHEMES: dict[str, Callable[[Option, tuple[int, ...], tuple[int, int], np.random.Generator], np.ndarray]] = {
    "glorot_uniform": lambda o, s, f, r: _uniform(r, s, math.sqrt(6 / (f[0] + f[1]))),
    "glorot_normal": lambda o, s, f, r: _truncated_normal(
        r, s, 0.0, math.sqrt(2 / (f[0] + f[1])) / TRUNCATION_STD_CORRECTION),
    "he_uniform": lambda o, s, f, r: _uniform(r, s, math.sqrt(6 / f[0])),
    "he_normal": lambda o, s, f, r: _truncated_normal(r, s, 0.0, math.sqrt(2 / f[0]) / TRUNCATION_STD_CORRECTION),
    "lecun_uniform": lambda o, s, f, r: _uniform(r, s, math.sqrt(3 / f[0])),
    "lecun_normal": lambda o, s, f, r: _truncated_normal(
        r, s, 0.0, math.sqrt(1 / f[0]) / TRUNCATION_STD_CORRECTION),
    "normal": lambda o, s, f, r: _drawn(s, lambda count: o["mean"] + o["std"] * r.standard_normal(count)),
    "truncated_normal": lambda o, s, f, r: _truncated_normal(r, s, o["mean"], o["std"]),
    "uniform": lambda o, s, f, r: _uniform(r, s, o["limit"]),
    "constant": lambda o, s, f, r: np.full(s, o["value"], np.float32),
    "zeros": lambda o, s, f, r: np.zeros(s, np.float32),
    "ones": lambda o, s, f, r: np.ones(s, np.float32),
    "torch_default": lambda o, s, f, r: _uniform(r, s, 1 / math.sqrt(f[0])),
    DIRAC: _dirac,
    WHITEN: lambda o, s, f, r: _initialize(o["rest"], s, f, r),
}


def _initialize(init: Option, shape: tuple[int, ...], fans: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A float32 array; each scheme draws in float64 and rounds once (see _drawn)."""
    return _SCHEMES[init.name](init, shape, fans, rng)


def whitening_weights(covariance: np.ndarray, shape: tuple[int, ...], eps: float) -> np.ndarray:
    """The weight (filters, C, kh, kw) of init=whiten from the covariance of the flattened (C, kh, kw)
    patches: its eigenvectors, largest eigenvalue first, each scaled by 1 / sqrt(eigenvalue + eps) (a
    rounding-negative eigenvalue counts as 0) and signed so that its largest entry is positive; with
    twice as many filters as patch dimensions, the negated filters follow (airbench's whitening layer)."""
    filters, dimensions = shape[0], math.prod(shape[1:])
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    values, vectors = eigenvalues[::-1], eigenvectors[:, ::-1].T  # rows, largest eigenvalue first
    largest = np.abs(vectors).argmax(axis=1)
    vectors = vectors * np.sign(vectors[np.arange(dimensions), largest])[:, None]
    scaled = vectors / np.sqrt(np.maximum(values, 0.0) + eps)[:, None]
    if filters == 2 * dimensions:
        scaled = np.concatenate([scaled, -scaled])
    return scaled.reshape(shape).astype(np.float32)
