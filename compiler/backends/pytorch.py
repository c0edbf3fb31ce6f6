"""Lower a checked graph to a PyTorch module with exactly the IR's semantics.

    module = build_module(program.graph, seed=0)      # weights from compiler.backends.weights
    logits_or_probabilities = module(images)          # images: float (N, C, H, W)
    every_layer = module.forward_all(images)          # {node name: its output}

Conventions:
- State-dict names are the node names, nested at their dots: the conv `residual_down1.conv3` owns
  `residual_down1.conv3.weight`. Batch norm keeps `weight`, `bias`, `running_mean` and
  `running_var` only (no `num_batches_tracked`), so the buffers are exactly the IR's
  non-trainable parameters and the state dict matches `initial_weights` key for key.
- An array the op registry declares untrained (`trainable=false`, batchnorm's `scale=false`) is a
  parameter with requires_grad False: it stays in the state dict and `parameters()`, but receives no
  gradient, and training gives the optimizer only the parameters that require one.
- Parameters are float32 whatever the spec's input dtype: training runs in float32, optionally
  under autocast (bf16); the dtype is a deployment setting of the ONNX backend.
- Padding follows the IR's resolved `pads` (top, bottom, left, right), asymmetric where TensorFlow's
  `same` puts the odd row at the bottom. Max pooling pads with -inf, so padding never wins. Average
  pooling divides by the number of input elements in the window, or with count_pad=true by the input
  and padding elements; the rows and columns a ceil-mode window reaches beyond the padding are never
  counted (as in PyTorch and ONNX).
- Each op is lowered by its entry in `LOWERINGS`, or else through its decomposition into other ops
  (compiler.ops); a fused `activation=` is the activation op's own lowering, applied in place.
- What the graph ends with is decided before lowering (compiler.passes.with_outputs): training with
  `cross_entropy(from_logits=false)` builds the graph without its final softmax.
- Without gradients (evaluation), `forward` runs an activation in place when no later step reads its
  input: the same values, no new tensor (a new one per ReLU made mnist_fast's test evaluation take
  360,000 page faults and twice the time in 5 of 9 processes). Never on the caller's input, nor on
  memory that another live value shares; `forward_all` keeps every value.
The module works in either memory format: convert it and its inputs with
`.to(memory_format=torch.channels_last)` (the trainer does); flatten still reads channel-major.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnc.compiler.backends.weights import initial_weights, node_parameters
from cnnc.compiler.ir import Graph, Node
from cnnc.compiler.ops import OPS
from cnnc.compiler.passes import decompose, fused_activation, prune
from cnnc.errors import CnncError, InternalError

Pads = tuple[int, int, int, int]  # top, bottom, left, right, as in the IR
WeightSource = Mapping[str, "np.ndarray | Tensor"]


def build_module(graph: Graph, *, seed: int = 0, weights: WeightSource | None = None) -> CnncModule:
    """The graph as a CnncModule holding `weights` (default: `initial_weights(graph, seed)`)."""
    module = CnncModule(graph)
    load_weights(module, initial_weights(graph, seed) if weights is None else weights)
    return module


def load_weights(module: CnncModule, weights: WeightSource) -> None:
    """Copy every parameter and buffer from `weights` (numpy arrays or tensors), by state-dict name."""
    expected = module.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    wrong_shape = [
        f"{name} {tuple(weights[name].shape)} (the model's is {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in weights and tuple(weights[name].shape) != tuple(tensor.shape)
    ]
    if missing or unexpected or wrong_shape:
        problems = [f"{label}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                    if names]
        raise CnncError(f"the weights do not fit model '{module.graph.name}': " + "; ".join(problems))
    with torch.no_grad():
        for name, tensor in expected.items():
            value = weights[name]
            tensor.copy_(torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value)


# --- layers ------------------------------------------------------------------------------------------

class Conv(nn.Conv2d):
    """nn.Conv2d with the IR's explicit, possibly asymmetric, padding."""

    def __init__(self, node: Node) -> None:
        attrs = node.attrs
        top, bottom, left, right = attrs["pads"]
        symmetric = top == bottom and left == right
        super().__init__(
            attrs["in_channels"], attrs["filters"], attrs["kernel"], stride=attrs["stride"],
            padding=(top, left) if symmetric else 0, dilation=attrs["dilation"], groups=attrs["groups"],
            bias=attrs["bias"],
        )
        # F.pad costs a copy, so only the asymmetric pads (TF 'same' with an even total) take it.
        self.explicit_pad = None if symmetric else (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        if self.explicit_pad is not None:
            x = F.pad(x, self.explicit_pad)
        return super().forward(x)


class Dense(nn.Linear):
    def __init__(self, node: Node) -> None:
        super().__init__(node.attrs["in_features"], node.attrs["units"], bias=node.attrs["bias"])


class BatchNorm(nn.Module):
    """Batch norm over channels of (N, C, H, W) or features of (N, C), without num_batches_tracked."""

    def __init__(self, channels: int, momentum: float, eps: float, affine: bool) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None
        self.running_mean: Tensor
        self.running_var: Tensor
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f"{len(self.running_mean)}, momentum={self.momentum}, eps={self.eps}, affine={self.weight is not None}"


class LayerNorm(nn.LayerNorm):
    """Layer norm over the channels at each position of (N, C, H, W) (ConvNeXt's LayerNorm2d), or over
    the features of (N, C): the normalised axis goes last, where F.layer_norm works."""

    def __init__(self, channels: int, eps: float, affine: bool) -> None:
        super().__init__(channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Scale(nn.Module):
    """A learnable per-channel multiplier (layer scale); `weight` starts at the spec's `init`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.weight if x.dim() == 2 else self.weight[:, None, None])


class DropPath(nn.Module):
    """Stochastic depth, torchvision's StochasticDepth(mode="row"): while training, each sample is zeroed
    with probability `rate` and the others scaled by 1 / (1 - rate); the identity in eval mode. The
    draws come from torch's global generator, which checkpoints save and restore."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0:
            return x
        keep = 1 - self.rate
        noise = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * noise.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


@dataclass(frozen=True)
class _Window:
    """A pooling window over height and width, and what it must produce: the IR's output size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: Pads
    ceil_mode: bool
    input_size: tuple[int, int]
    output_size: tuple[int, int]

    @staticmethod
    def of(node: Node, input_shape: tuple[int, ...]) -> _Window:
        attrs = node.attrs
        (_, in_height, in_width), (_, out_height, out_width) = input_shape, node.shape
        return _Window(attrs["kernel"], attrs["stride"], attrs["pads"], attrs["ceil_mode"],
                       (in_height, in_width), (out_height, out_width))

    def native(self, pads_counted: bool) -> tuple[tuple[int, int], bool] | None:
        """(padding, ceil_mode) with which torch's own pooling computes exactly these windows, or None.

        Torch pads symmetrically, at most half the kernel, and rounds the output up or down. When the
        padding is not averaged (max pooling, or count_pad=false), only the windows' positions and
        number matter, so torch may pad the end differently from the IR: with the same leading
        padding and the same output size, every window reads the same input elements. That covers
        TF 'same' padding whose extra row is at the end (e.g. 7 -> 4 with a 2x2 window)."""
        top, bottom, left, right = self.pads
        if top > self.kernel[0] // 2 or left > self.kernel[1] // 2:
            return None
        if pads_counted:
            symmetric = top == bottom and left == right
            return ((top, left), self.ceil_mode) if symmetric else None
        for ceil_mode in (False, True):
            sizes = [_torch_pooled_size(size, k, s, before, ceil_mode)
                     for size, k, s, before in zip(self.input_size, self.kernel, self.stride, (top, left))]
            if tuple(sizes) == tuple(self.output_size):
                return (top, left), ceil_mode
        return None

    def full_pads(self) -> tuple[int, int, int, int]:
        """F.pad's (left, right, top, bottom) that let floor-mode pooling give the IR's output size:
        the explicit pads plus, at the end, whatever a ceil-mode window reaches beyond them."""
        top, bottom, left, right = self.pads
        extra = [max((out - 1) * s + k - (size + before + after), 0)
                 for out, s, k, size, before, after in zip(self.output_size, self.stride, self.kernel,
                                                           self.input_size, (top, left), (bottom, right))]
        return left, right + extra[1], top, bottom + extra[0]


def _torch_pooled_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Torch's pooling output size: the last window must start inside the input or the leading padding."""
    span = size + 2 * padding - kernel
    output = (-(-span // stride) if ceil_mode else span // stride) + 1
    return output - 1 if ceil_mode and (output - 1) * stride >= size + padding else output


class MaxPool(nn.Module):
    def __init__(self, window: _Window) -> None:
        super().__init__()
        self.window = window
        self.native = window.native(pads_counted=False)

    def forward(self, x: Tensor) -> Tensor:
        w = self.window
        if self.native is not None:
            padding, ceil_mode = self.native
            return F.max_pool2d(x, w.kernel, w.stride, padding, ceil_mode=ceil_mode)
        return F.max_pool2d(F.pad(x, w.full_pads(), value=float("-inf")), w.kernel, w.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.window.kernel}, stride={self.window.stride}, pads={self.window.pads}"


class AvgPool(nn.Module):
    def __init__(self, window: _Window, count_pad: bool) -> None:
        super().__init__()
        self.window, self.count_pad = window, count_pad
        self.native = window.native(pads_counted=count_pad)

    def forward(self, x: Tensor) -> Tensor:
        w = self.window
        if self.native is not None:
            padding, ceil_mode = self.native
            return F.avg_pool2d(x, w.kernel, w.stride, padding, ceil_mode=ceil_mode, count_include_pad=self.count_pad)
        # The mean over the counted elements: the zero-padded window sum divided by the pooled mask
        # that is one on every counted element (both averaged over the full kernel, which cancels).
        sums = F.avg_pool2d(F.pad(x, w.full_pads()), w.kernel, w.stride)
        return sums / F.avg_pool2d(self._mask(x), w.kernel, w.stride)

    def _mask(self, x: Tensor) -> Tensor:
        w = self.window
        left, right, top, bottom = w.full_pads()
        ones = x.new_ones((1, 1, *w.input_size))
        if not self.count_pad:
            return F.pad(ones, (left, right, top, bottom))
        explicit_top, explicit_bottom, explicit_left, explicit_right = w.pads
        counted = F.pad(ones, (explicit_left, explicit_right, explicit_top, explicit_bottom), value=1.0)
        return F.pad(counted, (0, right - explicit_right, 0, bottom - explicit_bottom))

    def extra_repr(self) -> str:
        w = self.window
        return f"kernel={w.kernel}, stride={w.stride}, pads={w.pads}, count_pad={self.count_pad}"


# --- the lowering table ------------------------------------------------------------------------------

Function = Callable[..., Tensor]
Shapes = tuple[tuple[int, ...], ...]
# A lowering turns a node (and its inputs' shapes) into what computes it: a module, registered under
# the node's name so that its parameters get the node's state-dict names, or a plain function.
Lowering = Callable[[Node, Shapes], Function]


# An activation: (node, in_place) -> what computes it. With in_place=True, the form that writes into its
# input (the same kernel, so the same values), or None where there is none. Without gradients, forward
# runs that form on a value no later step reads (see CnncModule.forward): no new tensor, one pass less
# over memory.
Activation = Callable[[Node, bool], "Function | None"]

_ACTIVATIONS: dict[str, Activation] = {
    "relu": lambda n, in_place: partial(F.relu, inplace=in_place),
    "leaky_relu": lambda n, in_place: partial(F.leaky_relu, negative_slope=n.attrs["alpha"], inplace=in_place),
    "elu": lambda n, in_place: partial(F.elu, alpha=n.attrs["alpha"], inplace=in_place),
    "selu": lambda n, in_place: partial(F.selu, inplace=in_place),
    "gelu": lambda n, in_place: None if in_place else partial(F.gelu, approximate=n.attrs["approximate"]),
    "silu": lambda n, in_place: partial(F.silu, inplace=in_place),
    "sigmoid": lambda n, in_place: torch.sigmoid_ if in_place else torch.sigmoid,
    "tanh": lambda n, in_place: torch.tanh_ if in_place else torch.tanh,
    "softmax": lambda n, in_place: None if in_place else partial(F.softmax, dim=1),
    "identity": lambda n, in_place: None if in_place else _identity,
    "relu6": lambda n, in_place: partial(F.relu6, inplace=in_place),
    "hardsigmoid": lambda n, in_place: partial(F.hardsigmoid, inplace=in_place),
    "hardswish": lambda n, in_place: partial(F.hardswish, inplace=in_place),
    "mish": lambda n, in_place: partial(F.mish, inplace=in_place),
}


def _lowering(activation: Activation) -> Lowering:
    def lower(node: Node, shapes: Shapes) -> Function:
        function = activation(node, False)
        assert function is not None  # every activation has a form that returns a new tensor
        return function
    return lower


def _global_avgpool(keepdims: bool, x: Tensor) -> Tensor:
    return x.mean((2, 3), keepdim=keepdims)


def _global_maxpool(keepdims: bool, x: Tensor) -> Tensor:
    return x.amax((2, 3), keepdim=keepdims)


def _flatten(x: Tensor) -> Tensor:
    return torch.flatten(x, 1)


def _channel_slice(start: int, stop: int, x: Tensor) -> Tensor:
    return x[:, start:stop]


def _as_feature_map(x: Tensor) -> Tensor:
    """A flat (N, C) as (N, C, 1, 1), to broadcast against (N, C, H, W)."""
    return x[:, :, None, None]


def _merge(combine: Callable[[Tensor, Tensor], Tensor], expand: tuple[bool, ...], *inputs: Tensor) -> Tensor:
    result = _as_feature_map(inputs[0]) if expand[0] else inputs[0]
    for tensor, flat_against_map in zip(inputs[1:], expand[1:]):
        result = combine(result, _as_feature_map(tensor) if flat_against_map else tensor)
    return result


def _elementwise(combine: Callable[[Tensor, Tensor], Tensor]) -> Lowering:
    def lower(node: Node, shapes: Shapes) -> Function:
        expand = tuple(len(shape) == 1 and len(node.shape) == 3 for shape in shapes)
        return partial(_merge, combine, expand)
    return lower


def _concat(*inputs: Tensor) -> Tensor:
    return torch.cat(inputs, dim=1)


def _identity(x: Tensor) -> Tensor:
    return x


class ConvTranspose(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (its parameters and layout) with the IR's pads and output_padding: PyTorch's
    own padding where the pads are symmetric, else the full transposed convolution cropped by the pads
    and extended by the output_padding (rows that only the bias reaches), which is what PyTorch computes."""

    def __init__(self, node: Node) -> None:
        attrs = node.attrs
        top, bottom, left, right = attrs["pads"]
        symmetric = top == bottom and left == right
        extra_h, extra_w = attrs["output_padding"]
        super().__init__(
            attrs["in_channels"], attrs["filters"], attrs["kernel"], stride=attrs["stride"],
            padding=(top, left) if symmetric else 0, output_padding=(extra_h, extra_w) if symmetric else 0,
            groups=attrs["groups"], bias=attrs["bias"], dilation=attrs["dilation"],
        )
        self.crop = None if symmetric else (-left, extra_w - right, -top, extra_h - bottom)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if self.crop is None:
            return super().forward(x)
        full = F.conv_transpose2d(x, self.weight, None, self.stride, 0, 0, self.groups, self.dilation)
        cropped = F.pad(full, self.crop)  # negative amounts crop
        return cropped if self.bias is None else cropped + self.bias[:, None, None]


def _upsample(node: Node) -> Function:
    """Integer scales: nearest takes input floor(out / scale); bilinear is align_corners=False."""
    mode = node.attrs["mode"]
    return partial(F.interpolate, scale_factor=tuple(float(s) for s in node.attrs["scale"]), mode=mode,
                   align_corners=False if mode == "bilinear" else None)


def _pad(node: Node) -> Function:
    top, bottom, left, right = node.attrs["pads"]
    mode = node.attrs["mode"]
    if mode == "constant":
        return partial(F.pad, pad=(left, right, top, bottom), mode="constant", value=node.attrs["value"])
    return partial(F.pad, pad=(left, right, top, bottom), mode=mode)


def _channel_shuffle(groups: int, x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


LOWERINGS: dict[str, Lowering] = {
    "conv": lambda node, shapes: Conv(node),
    "dense": lambda node, shapes: Dense(node),
    "batchnorm": lambda node, shapes: BatchNorm(node.shape[0], node.attrs["momentum"], node.attrs["eps"],
                                                node.attrs["affine"]),
    "dropout": lambda node, shapes: nn.Dropout(node.attrs["rate"]),
    "layernorm": lambda node, shapes: LayerNorm(node.shape[0], node.attrs["eps"], node.attrs["affine"]),
    "groupnorm": lambda node, shapes: nn.GroupNorm(node.attrs["groups"], node.shape[0], node.attrs["eps"],
                                                   node.attrs["affine"]),
    "scale": lambda node, shapes: Scale(node.shape[0]),
    "drop_path": lambda node, shapes: DropPath(node.attrs["rate"]),
    "adaptive_avgpool": lambda node, shapes: partial(F.adaptive_avg_pool2d, output_size=node.attrs["size"]),
    "maxpool": lambda node, shapes: MaxPool(_Window.of(node, shapes[0])),
    "avgpool": lambda node, shapes: AvgPool(_Window.of(node, shapes[0]), node.attrs["count_pad"]),
    "global_avgpool": lambda node, shapes: partial(_global_avgpool, node.attrs["keepdims"]),
    "global_maxpool": lambda node, shapes: partial(_global_maxpool, node.attrs["keepdims"]),
    "flatten": lambda node, shapes: _flatten,
    "channel_slice": lambda node, shapes: partial(_channel_slice, node.attrs["start"], node.attrs["stop"]),
    "add": _elementwise(torch.add),
    "multiply": _elementwise(torch.mul),
    "concat": lambda node, shapes: _concat,
    "conv_transpose": lambda node, shapes: ConvTranspose(node),
    "upsample": lambda node, shapes: _upsample(node),
    "pad": lambda node, shapes: _pad(node),
    "channel_shuffle": lambda node, shapes: partial(_channel_shuffle, node.attrs["groups"]),
    **{op: _lowering(activation) for op, activation in _ACTIVATIONS.items()},
}


# --- the module --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Step:
    """One call of the forward pass: `function(*values[inputs])` is stored at `values[output]`."""

    function: Function
    inputs: tuple[int, ...]
    output: int
    release: tuple[int, ...] = ()  # values no later step reads, freed to save memory
    in_place: Function | None = None  # the same computation written into its input, which no later step reads


class CnncModule(nn.Module):
    """A checked graph as a module: `forward`, `forward_all`, and the `graph` it came from.

    Only the layers that reach the output are built (compiler.passes.prune), as in ONNX."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        live = prune(graph)
        self._slots = {node.name: index for index, node in enumerate(live.nodes)}
        self._shapes = {node.name: node.shape for node in live.nodes}
        steps: list[_Step] = []
        for node in live.nodes[1:]:
            steps += self._lower(node)
        self._output = self._slots[graph.output]
        self._steps = _with_releases(steps, self._output)
        self._layers = {name: self._slots[name] for name in (n.name for n in live.nodes)}
        frozen = {name for name, param in node_parameters(graph) if not param.trainable}
        for name, parameter in self.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """The graph's output. Without gradients (evaluation), an activation whose input no later step
        reads overwrites it, unless that tensor shares memory with `x` or another live value (a view)."""
        return self._run(self._steps, x)

    def folded(self) -> Callable[[Tensor], Tensor]:
        """The forward pass for evaluation, with each batch norm that alone reads a convolution's output
        folded into that convolution: its weights scaled and a bias added, from the weights and running
        statistics as they are now. One pass over the activations less per batch norm (mnist_fast's
        test evaluation on a CPU: 10-20% less time); the outputs equal `forward`'s up to float rounding.
        2x2 max pools with stride 2 take the maxima of pairs (see _max_of_pairs).
        Only in eval mode and without gradients; take it again once the weights have changed."""
        if self.training or torch.is_grad_enabled():
            raise InternalError("CnncModule.folded() is for evaluation: call it in eval mode without gradients")
        return partial(self._run, _pairwise_max_pools(_fold_batch_norms(self._steps)))

    def _run(self, steps: list[_Step], x: Tensor) -> Tensor:
        values: list[Tensor | None] = [None] * len(self._slots)
        values[0] = x
        in_place = not torch.is_grad_enabled()
        for step in steps:
            inputs = [values[i] for i in step.inputs]
            if in_place and step.in_place is not None and _owns_memory(step.inputs[0], values, x):
                values[step.output] = step.in_place(inputs[0])
            else:
                values[step.output] = step.function(*inputs)
            for index in step.release:
                values[index] = None
        return values[self._output]  # type: ignore[return-value]

    def forward_all(self, x: Tensor) -> dict[str, Tensor]:
        """Every live node's output (the input included), by node name, for layer-by-layer comparison;
        a layer with a fused activation gives the activation's output."""
        values: list[Tensor | None] = [None] * len(self._slots)
        values[0] = x
        for step in self._steps:
            values[step.output] = step.function(*(values[i] for i in step.inputs))
        return {name: values[index] for name, index in self._layers.items()}  # type: ignore[misc]

    def _slot(self, name: str) -> int:
        return self._slots.setdefault(name, len(self._slots))

    def _lower(self, node: Node) -> list[_Step]:
        """The steps of one node: its lowering and then its fused activation, or else its decomposition."""
        lowering = LOWERINGS.get(node.op)
        if lowering is None:
            if OPS[node.op].decomposition is None:
                raise InternalError(f"the PyTorch backend has no lowering for op '{node.op}' and the op "
                                    "has no decomposition")
            parts = decompose(node, {name: self._shapes[name] for name in node.inputs})
            self._shapes.update((part.name, part.shape) for part in parts)
            return [step for part in parts for step in self._lower(part)]
        function = lowering(node, tuple(self._shapes[name] for name in node.inputs))
        if isinstance(function, nn.Module):
            self._attach(node.name, function)
        output = self._slot(node.name)
        in_place = _ACTIVATIONS[node.op](node, True) if node.op in _ACTIVATIONS else None
        steps = [_Step(function, tuple(self._slots[name] for name in node.inputs), output, in_place=in_place)]
        activation = fused_activation(node)
        if activation is not None:  # computed in place of the layer's own value
            activation_steps = self._lower(replace(activation, name=node.name, inputs=(node.name,)))
            steps += activation_steps
        return steps

    def _attach(self, dotted_name: str, layer: nn.Module) -> None:
        """Register `layer` under its node name, nesting at the dots, so state-dict keys read
        `block1.conv2.weight`. Written into `_modules` directly: any name the checker accepts
        works, `forward` or `half` included, since the forward pass never looks layers up by attribute."""
        *parents, leaf = dotted_name.split(".")
        owner: nn.Module = self
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = owner._modules[part] = nn.Module()
            owner = child
        owner._modules[leaf] = layer


def _with_releases(steps: list[_Step], output: int) -> list[_Step]:
    """The steps with, on each, the values that no later step reads (never the output), and an
    in-place form kept only where the step's input is such a value (never the graph's input)."""
    last_use: dict[int, int] = {}
    for position, step in enumerate(steps):
        for index in step.inputs:
            last_use[index] = position
    releases: dict[int, list[int]] = {}
    for index, position in last_use.items():
        if index != output and steps[position].output != index:
            releases.setdefault(position, []).append(index)

    def overwritable(position: int, step: _Step) -> bool:
        value = step.inputs[0]
        return value != 0 and (value in releases.get(position, ()) or value == step.output)

    return [replace(step, release=tuple(releases.get(position, ())),
                    in_place=step.in_place if step.in_place is not None and overwritable(position, step) else None)
            for position, step in enumerate(steps)]


def _fold_batch_norms(steps: list[_Step]) -> list[_Step]:
    """The steps with each batch norm whose input only it reads, and a Conv wrote, folded into that
    Conv's step: the Conv's step writes the batch norm's output, and the batch norm's step goes."""
    producers = {step.output: position for position, step in enumerate(steps)}
    readers = Counter(value for step in steps for value in step.inputs)
    folded = list(steps)
    dropped: set[int] = set()
    for position, step in enumerate(steps):
        value = step.inputs[0]
        if not isinstance(step.function, BatchNorm) or readers[value] != 1 or value not in step.release:
            continue  # not a batch norm, or its input is read elsewhere too, or is the graph's output
        source = producers.get(value)
        conv = steps[source].function if source is not None else None
        if source is None or not isinstance(conv, Conv):
            continue
        folded[source] = replace(steps[source], function=_conv_with_batch_norm(conv, step.function), output=step.output)
        dropped.add(position)
    return [step for position, step in enumerate(folded) if position not in dropped]


def _conv_with_batch_norm(conv: Conv, norm: BatchNorm) -> Function:
    """conv followed by norm in eval mode, as one convolution (its weights in conv.weight's memory format)."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=memory_format_of(conv.weight))

    def forward(x: Tensor) -> Tensor:
        if conv.explicit_pad is not None:
            x = F.pad(x, conv.explicit_pad)
        return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)

    return forward


def _pairwise_max_pools(steps: list[_Step]) -> list[_Step]:
    """The steps with each 2x2 max pool of stride 2 without padding computed by _max_of_pairs."""
    return [replace(step, function=_max_of_pairs) if _halves(step.function) else step for step in steps]


def _halves(function: Function) -> bool:
    """Whether `function` is a 2x2 max pool of stride 2 without padding, an odd last row or column unread."""
    if not isinstance(function, MaxPool):
        return False
    window = function.window
    return (window.kernel == window.stride == (2, 2) and window.pads == (0, 0, 0, 0)
            and window.output_size == (window.input_size[0] // 2, window.input_size[1] // 2))


def _max_of_pairs(x: Tensor) -> Tensor:
    """A 2x2 max pool of stride 2 (an odd last row or column left out) as the maxima of rows' pairs and
    then of columns' pairs, on a CPU: the same values as F.max_pool2d, which on these two cores took
    1.5-3x as long on NHWC batches of small images and 4-9x on NCHW ones (equal on large images, where
    both wait on memory). Elsewhere (CUDA), F.max_pool2d."""
    if x.device.type != "cpu":
        return F.max_pool2d(x, 2)
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def memory_format_of(tensor: Tensor) -> torch.memory_format:
    """channels_last for an NHWC tensor (as the trainer makes the module's weights and batches), else
    the default: what a tensor derived from it should be made contiguous in."""
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _owns_memory(slot: int, values: list[Tensor | None], graph_input: Tensor) -> bool:
    """Whether the tensor in `slot` shares its memory with no other live value and not with the graph's
    input (the caller's): a view's producer (flatten, channel_slice, identity) may still be read."""
    tensor = values[slot]
    assert tensor is not None  # a step's input is live
    address = tensor.untyped_storage().data_ptr()
    others = (value for index, value in enumerate(values) if index != slot and value is not None)
    return address != 0 and all(other.untyped_storage().data_ptr() != address for other in (graph_input, *others))
