"""The ONNX backend: the checked IR -> an onnx ModelProto, built directly with `onnx.helper`.

No torch: `cnnc compile SPEC -o model.onnx` needs only numpy and onnx. The graph reads like the spec:
    - the input is named after the spec's input (`image`, float32[N, C, H, W], N symbolic);
    - each layer is one ONNX node named after the layer (`conv1`, `residual_down1.conv3`) whose
      output tensor has the layer's name; a fused activation is a second node `conv1/relu` (the
      first then writes `conv1/preact`); helper nodes and tensors have a `/` in their names, which
      spec names cannot, so they never collide with layers;
    - parameters are initializers named as in PyTorch's state_dict (`conv1.weight`, `bn1.running_var`);
    - dropout and identity emit nothing (inference), `same` padding is explicit (possibly asymmetric)
      pads, and nodes that do not feed the output are left out.
Every model holds the `cnnc.*` metadata_props that the runtime reads (see `metadata_props`).
The ONNX model always computes in float32 (the runtime feeds float32); the weights of float16 or
bfloat16 specs are upcast exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cnnc import __version__
from cnnc.compiler.ir import Graph, Node, Program
from cnnc.compiler.ops import OPS
from cnnc.compiler.ops.pool import adaptive_bins, uniform_window
from cnnc.compiler.passes import decompose, fused_activation, live_nodes, output_kind, prune, with_outputs
from cnnc.constants import DEFAULT_OPSET, MIN_OPSET, PIXEL_SCALE
from cnnc.errors import CnncError, InternalError
from cnnc.files import replacing

NATIVE_GELU_OPSET = 20
NATIVE_HARDSWISH_OPSET = 14
NATIVE_LAYERNORM_OPSET = 17
NATIVE_MISH_OPSET = 18
NATIVE_GROUPNORM_OPSET = 21  # GroupNormalization-18 scales per group, not per channel as PyTorch
BATCH_DIM = "N"
PRODUCER = "cnnc"
# A protobuf message, so a single-file ONNX model, holds at most 2 GiB; keep room for the graph.
MAX_WEIGHT_BYTES = 2**31 - 2**26

# PyTorch's SELU constants (torch.nn.SELU), more digits than ONNX's float32 defaults need.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

METADATA_KEYS = (
    "cnnc.version", "cnnc.model", "cnnc.spec", "cnnc.spec_sha256", "cnnc.labels", "cnnc.input_layout",
    "cnnc.input_shape", "cnnc.preprocess", "cnnc.output", "cnnc.params", "cnnc.dataset", "cnnc.test_accuracy",
)


# --- public API --------------------------------------------------------------------------------------

def max_opset() -> int:
    """The newest opset this onnx package knows."""
    return onnx.defs.onnx_opset_version()


def ir_version_for(opset: int) -> int:
    """The lowest ONNX IR version that can carry `opset` (13, 14 -> 7; 15-18 -> 8; 19, 20 -> 9; ...),
    so that older runtimes load the file; onnx.helper would stamp its own newest IR version."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset():
        raise CnncError(f"ONNX opset must be between {MIN_OPSET} and {max_opset()} "
                        f"(this onnx {onnx.__version__}), got {opset}")


def to_onnx(
    program: Program,
    weights: Mapping[str, np.ndarray] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    outputs: str | None = None,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    test_accuracy: float | None = None,
) -> onnx.ModelProto:
    """The deployable model of a checked program.

    weights: PyTorch state_dict names -> float arrays (a trained model's; extra entries such as
        `num_batches_tracked` are ignored); None: the documented initial weights for `seed`.
    outputs: None (as the spec ends), "logits" or "probabilities" (see compiler.passes.with_outputs).
    labels, preprocess, dataset, test_accuracy: what a trained model's checkpoint adds to the
        metadata (see metadata_props); by default the spec's own.
    """
    check_opset(opset)
    graph = with_outputs(program.graph, outputs)
    weights = _weights(graph, weights, seed)
    lowered = _Lowering(graph, weights, opset).run(expose_layers=False)
    model = _model(graph, lowered, opset)
    meta = metadata_props(program, graph, labels=labels, preprocess=preprocess, dataset=dataset,
                          test_accuracy=test_accuracy)
    helper.set_model_props(model, meta)
    return model


def layer_probe(
    program: Program,
    weights: Mapping[str, np.ndarray] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    outputs: str | None = None,
    seed: int = 0,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A diagnostic model whose graph outputs are every layer's output, and the map from each layer
    name (every node but the input) to its graph output's name: a dropout or identity layer maps to
    the tensor of the layer it passes through. The first graph output is the model's own output."""
    check_opset(opset)
    graph = prune(with_outputs(program.graph, outputs))  # dead layers have no weights to probe with
    weights = _weights(graph, weights, seed)
    lowered = _Lowering(graph, weights, opset).run(expose_layers=True)
    model = _model(graph, lowered, opset)
    layers = {n.name: lowered.tensor_of[n.name] for n in graph.nodes[1:]
              if lowered.tensor_of[n.name] != graph.input.name}
    return model, layers


def compile_to_file(program: Program, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                    outputs: str | None = None, seed: int = 0) -> None:
    """`cnnc compile`: the untrained model (initial weights for `seed`), written atomically."""
    model = to_onnx(program, opset=opset, outputs=outputs, seed=seed)
    save(model, path)


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write the model atomically (see cnnc.files.replacing)."""
    with replacing(path) as temporary:
        temporary.write_bytes(serialize(model))


def metadata_props(
    program: Program,
    graph: Graph | None = None,
    *,
    labels: Sequence[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    test_accuracy: float | None = None,
) -> dict[str, str]:
    """The `cnnc.*` entries, all strings (JSON where structured):
        cnnc.version        the cnnc that wrote the file
        cnnc.model          the spec's model name
        cnnc.spec           the spec's source text; cnnc.spec_sha256 its SHA-256 (of the UTF-8 bytes)
        cnnc.labels         JSON list of class names (given), or class indices "0", "1", ...
        cnnc.input_layout   "NCHW"
        cnnc.input_shape    JSON [C, H, W]
        cnnc.preprocess     JSON {"scale": 1/255, "mean": [...], "std": [...]}: the model takes
                            (pixels * scale - mean) / std per channel; mean [0], std [1] without normalize
        cnnc.output         "logits" or "probabilities" (the graph ends with a softmax)
        cnnc.params         trainable parameters of the exported (live) layers, an integer
        cnnc.dataset        the dataset's name (default: the train section's; left out without one)
        cnnc.test_accuracy  the trained model's test accuracy (given; left out otherwise)
    `graph` is the graph as emitted (after with_outputs); default: the program's. `preprocess`
    ({"scale", "mean", "std"}, a checkpoint's) replaces the spec's normalize.
    """
    graph = graph or program.graph
    classes = graph.output_node.shape[0]
    if labels is None:
        labels = [str(i) for i in range(classes)]
    elif len(labels) != classes:
        raise CnncError(f"{len(labels)} class labels for a model with {classes} outputs")
    scale, mean, std = PIXEL_SCALE, (0.0,), (1.0,)
    if preprocess is not None:
        scale, mean, std = preprocess.get("scale", scale), preprocess["mean"], preprocess["std"]
    elif program.train is not None and program.train.normalize is not None:
        mean, std = program.train.normalize["mean"], program.train.normalize["std"]
    spec = program.spec_text
    props = {
        "cnnc.version": __version__,
        "cnnc.model": graph.name,
        "cnnc.spec": spec,
        "cnnc.spec_sha256": hashlib.sha256(spec.encode("utf-8")).hexdigest(),
        "cnnc.labels": json.dumps([str(label) for label in labels]),
        "cnnc.input_layout": "NCHW",
        "cnnc.input_shape": json.dumps(list(graph.input.shape)),
        "cnnc.preprocess": json.dumps({"scale": float(scale), "mean": [float(m) for m in _seq(mean)],
                                       "std": [float(s) for s in _seq(std)]}),
        "cnnc.output": output_kind(graph),
        "cnnc.params": str(prune(graph).trainable_params),
    }
    if dataset is None and program.train is not None and program.train.dataset is not None:
        dataset = program.train.dataset.name
    if dataset:
        props["cnnc.dataset"] = dataset
    if test_accuracy is not None:
        props["cnnc.test_accuracy"] = json.dumps(float(test_accuracy))
    return props


def _seq(values: Any) -> list:
    if isinstance(values, (int, float, np.floating)):
        return [values]
    return list(np.asarray(values, dtype=np.float64).reshape(-1))


# --- weights -----------------------------------------------------------------------------------------

def _weights(graph: Graph, weights: Mapping[str, Any] | None, seed: int) -> dict[str, np.ndarray]:
    from cnnc.compiler.backends.weights import initial_weights, parameter_shapes

    shapes = parameter_shapes(graph)
    _check_file_limit(sum(4 * math.prod(shape) for shape in shapes.values()))  # before allocating any
    if weights is None:
        return initial_weights(graph, seed)
    arrays: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name not in weights:
            raise CnncError(f"the weights have no '{name}' (the spec's layer needs {_shape_text(shape)})")
        array = np.asarray(weights[name], dtype=np.float32)
        if array.shape != tuple(shape):
            raise CnncError(f"weight '{name}' has shape {_shape_text(array.shape)}, "
                            f"but the spec's layer needs {_shape_text(shape)}")
        arrays[name] = array
    return arrays


def _check_file_limit(total: int) -> None:
    if total > MAX_WEIGHT_BYTES:
        raise CnncError(f"the model's weights take {total / 2**30:.2f} GiB, more than a single ONNX file "
                        f"holds (2 GiB); reduce the model (see `cnnc summary`)")


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


# --- lowering ----------------------------------------------------------------------------------------

@dataclass
class _Lowered:
    nodes: list[onnx.NodeProto]
    initializers: list[TensorProto]
    tensor_of: dict[str, str]          # IR node name -> the ONNX tensor holding its output
    outputs: list[str]                 # graph outputs, the model's own first


@dataclass
class _Lowering:
    graph: Graph
    weights: dict[str, np.ndarray]  # consumed: each array is removed once it is an initializer
    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, TensorProto] = field(default_factory=dict)
    tensor_of: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # of IR nodes and helper tensors

    def run(self, expose_layers: bool) -> _Lowered:
        graph = self.graph
        self.shapes.update((node.name, node.shape) for node in graph.nodes)
        live = {n.name for n in graph.nodes} if expose_layers else live_nodes(graph)
        self.tensor_of[graph.input.name] = graph.input.name
        for node in graph.nodes[1:]:
            if node.name in live:
                self.lower(node)
        output = self.tensor_of[graph.output]
        if output == graph.input.name:  # a model that leaves its input unchanged still needs a node
            self.add("Identity", [output], graph.output, name=graph.output)
            output = self.tensor_of[graph.output] = graph.output
        outputs = [output]
        if expose_layers:
            for node in graph.nodes[1:]:
                tensor = self.tensor_of[node.name]
                if tensor not in outputs and tensor != graph.input.name:
                    outputs.append(tensor)
        return _Lowered(self.nodes, list(self.initializers.values()), dict(self.tensor_of), outputs)

    # helpers

    def add(self, op: str, inputs: Sequence[str], output: str, *, name: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    def initializer(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def scalar(self, name: str, value: float) -> str:
        return self.initializer(f"const/{name}", np.array(value, dtype=np.float32))

    def parameter(self, name: str) -> str:
        if name not in self.initializers:  # the array is let go once converted: the weights are not held twice
            self.initializer(name, self.weights.pop(name))
        return name

    def input_of(self, node: Node, index: int = 0) -> str:
        return self.tensor_of[node.inputs[index]]

    # ops

    def lower(self, node: Node, output: str | None = None) -> str:
        """Emit `node` with its output in the tensor `output` (default: the node's name); returns the
        tensor that holds the node's value (a pass-through layer's is its input's)."""
        output = output or node.name
        lowering = LOWERINGS.get(node.op)
        if lowering is None:
            produced = self._decomposed(node, output)
        else:
            activation = fused_activation(node)
            if activation is None:
                produced = lowering(self, node, output)
            else:
                preact = lowering(self, node, f"{node.name}/preact")
                self.tensor_of[preact], self.shapes[preact] = preact, node.shape
                produced = self.lower(replace(activation, inputs=(preact,)), output)
        self.tensor_of[node.name] = produced
        return produced

    def _decomposed(self, node: Node, output: str) -> str:
        if OPS[node.op].decomposition is None:
            raise InternalError(f"the ONNX backend has no lowering for op '{node.op}' and the op has no decomposition")
        parts = decompose(node, {name: self.shapes[name] for name in node.inputs})
        for part in parts[:-1]:
            self.shapes[part.name] = part.shape
            self.lower(part)
        return self.lower(parts[-1], output)

    def _pass_through(self, node: Node, output: str) -> str:
        """Dropout and identity compute nothing at inference."""
        return self.input_of(node)

    def _global_pool(self, node: Node, output: str) -> str:
        kind = "GlobalAveragePool" if node.op == "global_avgpool" else "GlobalMaxPool"
        if node.attrs["keepdims"]:
            return self.add(kind, [self.input_of(node)], output, name=node.name)
        pooled = self.add(kind, [self.input_of(node)], f"{node.name}/keepdims", name=node.name)
        return self.add("Flatten", [pooled], output, name=f"{node.name}/flatten", axis=1)

    def _flatten(self, node: Node, output: str) -> str:
        return self.add("Flatten", [self.input_of(node)], output, name=node.name, axis=1)

    def _channel_slice(self, node: Node, output: str) -> str:
        starts = self.initializer(f"{node.name}/starts", np.array([node.attrs["start"]], np.int64))
        ends = self.initializer(f"{node.name}/ends", np.array([node.attrs["stop"]], np.int64))
        axes = self.initializer("const/axis_channels", np.array([1], np.int64))
        return self.add("Slice", [self.input_of(node), starts, ends, axes], output, name=node.name)

    def _concat(self, node: Node, output: str) -> str:
        return self.add("Concat", [self.input_of(node, i) for i in range(len(node.inputs))], output,
                        name=node.name, axis=1)

    def _conv(self, node: Node, target: str) -> str:
        attrs = node.attrs
        top, bottom, left, right = attrs["pads"]
        source, strides = self.input_of(node), list(attrs["stride"])
        if tuple(attrs["kernel"]) == (1, 1) and any(attrs["pads"]):
            source, strides = self._pointwise_padding(node, source)
            top = bottom = left = right = 0
        inputs = [source, self.parameter(f"{node.name}.weight")]
        if attrs["bias"]:
            inputs.append(self.parameter(f"{node.name}.bias"))
        extra: dict[str, Any] = {}
        if tuple(attrs["dilation"]) != (1, 1):
            extra["dilations"] = list(attrs["dilation"])
        if attrs["groups"] != 1:
            extra["group"] = attrs["groups"]
        return self.add("Conv", inputs, target, name=node.name, kernel_shape=list(attrs["kernel"]),
                 strides=strides, pads=[top, left, bottom, right], **extra)

    def _pointwise_padding(self, node: Node, source: str) -> tuple[str, list[int]]:
        """A 1x1 convolution's pads as an explicit zero Pad and its stride as a 1x1 MaxPool before
        it (a 1x1 convolution commutes with subsampling): the same values, but engines mishandle the
        Conv form (OpenCV 5.0 leaves the padded border of a 1x1 Conv unwritten; OpenVINO 2026.4
        moves a 1x1 Conv's stride to the layer before it, ignoring the pads). Returns the new source
        and the Conv's strides (1, 1)."""
        top, bottom, left, right = node.attrs["pads"]
        amounts = self.initializer(f"{node.name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        source = self.add("Pad", [source, amounts], f"{node.name}/padded", name=f"{node.name}/pad")
        stride = list(node.attrs["stride"])
        if stride != [1, 1]:
            source = self.add("MaxPool", [source], f"{node.name}/subsampled", name=f"{node.name}/subsample",
                              kernel_shape=[1, 1], strides=stride)
        return source, [1, 1]

    def _dense(self, node: Node, target: str) -> str:
        inputs = [self.input_of(node), self.parameter(f"{node.name}.weight")]
        if node.attrs["bias"]:
            inputs.append(self.parameter(f"{node.name}.bias"))
        return self.add("Gemm", inputs, target, name=node.name, transB=1)

    def _pool(self, node: Node, output: str) -> str:
        """MaxPool / AveragePool in floor mode with pads that give the IR's output size.

        Ceil mode becomes extra padding at the end: exactly the rows and columns that the IR's last
        windows reach beyond the explicit pads (ONNX's shape inference before opset 19 lets a ceil-mode
        window start in the end padding, which PyTorch and the IR do not). Average pooling counts
        the input elements of each window, and with count_pad the explicit padding too, but never
        that ceil-mode overhang: where both matter, an explicit zero Pad goes first.
        Pads as large as the kernel (windows of padding only, which onnxruntime refuses) are lowered
        through an explicit Pad (see _padded_pool)."""
        attrs = node.attrs
        top, bottom, left, right = attrs["pads"]
        _, height, width = self.shapes[node.inputs[0]]
        (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
        end_h = _floor_end_pad(height, kh, sh, top, node.shape[1], bottom)
        end_w = _floor_end_pad(width, kw, sw, left, node.shape[2], right)
        source = self.input_of(node)
        window = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
        if node.op == "avgpool" and attrs["count_pad"] and (end_h > bottom or end_w > right):
            pads = [0, 0, end_h - bottom, end_w - right]
            if not _fits(pads, (kh, kw)):
                return self._padded_pool(node, source, (top, left, end_h, end_w), output)
            padding = self.initializer(f"{node.name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
            source = self.add("Pad", [source, padding], f"{node.name}/padded", name=f"{node.name}/pad")
            return self.add("AveragePool", [source], output, name=node.name, pads=pads, **window)
        pads = [top, left, end_h, end_w]
        if not _fits(pads, (kh, kw)):
            return self._padded_pool(node, source, (top, left, end_h, end_w), output)
        if node.op == "maxpool":  # padding never wins the max
            return self.add("MaxPool", [source], output, name=node.name, pads=pads, **window)
        if attrs["count_pad"] and any(pads):  # the window's sum / the kernel's size
            return self.add("AveragePool", [source], output, name=node.name, pads=pads, count_include_pad=1,
                            **window)
        return self.add("AveragePool", [source], output, name=node.name, pads=pads, **window)  # mean of the inputs

    def _padded_pool(self, node: Node, source: str, pads: tuple[int, int, int, int], output: str) -> str:
        """Pooling whose pads reach a whole kernel: Pad (-inf for max, 0 for average), pool without
        pads, and for the average rescale each window's mean of kh*kw elements to the mean of the
        elements it counts (a constant map; 0/0 = NaN for a window of padding only, as in PyTorch)."""
        attrs = node.attrs
        top, left, bottom, right = pads
        (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
        window = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
        amounts = self.initializer(f"{node.name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        fill = self.scalar("minus_inf" if node.op == "maxpool" else "zero",
                           -np.inf if node.op == "maxpool" else 0.0)
        padded = self.add("Pad", [source, amounts, fill], f"{node.name}/padded", name=f"{node.name}/pad")
        if node.op == "maxpool":
            return self.add("MaxPool", [padded], output, name=node.name, **window)
        _, height, width = self.shapes[node.inputs[0]]
        counted = np.zeros((height + top + bottom, width + left + right))
        if attrs["count_pad"]:
            explicit_top, explicit_bottom, explicit_left, explicit_right = attrs["pads"]
            rows = slice(top - explicit_top, top + height + explicit_bottom)
            counted[rows, left - explicit_left:left + width + explicit_right] = 1
        else:
            counted[top:top + height, left:left + width] = 1
        _, out_h, out_w = node.shape
        counts = np.array([[counted[i * sh:i * sh + kh, j * sw:j * sw + kw].sum() for j in range(out_w)]
                           for i in range(out_h)])
        with np.errstate(divide="ignore"):
            scale = (kh * kw / counts).astype(np.float32).reshape(1, 1, out_h, out_w)
        mean = self.add("AveragePool", [padded], f"{node.name}/window_mean", name=node.name, **window)
        return self.add("Mul", [mean, self.initializer(f"{node.name}/count_scale", scale)], output,
                 name=f"{node.name}/rescale")

    def _batchnorm(self, node: Node, output: str) -> str:
        name, channels = node.name, node.shape[0]
        if node.attrs["affine"]:
            scale, shift = self.parameter(f"{name}.weight"), self.parameter(f"{name}.bias")
        else:  # ONNX needs a scale and a shift: the identity ones
            scale = self.initializer(f"{name}/unit_scale", np.ones(channels, np.float32))
            shift = self.initializer(f"{name}/zero_shift", np.zeros(channels, np.float32))
        inputs = [self.input_of(node), scale, shift, self.parameter(f"{name}.running_mean"),
                  self.parameter(f"{name}.running_var")]
        return self.add("BatchNormalization", inputs, output, name=name, epsilon=float(node.attrs["eps"]))

    def _per_channel(self, tensor: str, rank: int) -> str:
        """A (C,) tensor as (C, 1, 1) against a (N, C, H, W) value (rank 3), or as it is against (N, C)."""
        if rank == 1:
            return tensor
        axes = self.initializer("const/axes_chw", np.array([1, 2], dtype=np.int64))
        layer, parameter = tensor.rsplit(".", 1)  # a parameter `layer.weight`: the node belongs to its layer
        name = f"{layer}/{parameter}_per_channel"
        return self.add("Unsqueeze", [tensor, axes], name, name=name)

    def _normalised(self, node: Node, output: str) -> str:
        """Where a decomposed norm puts its normalised value: the output itself unless affine follows."""
        return f"{node.name}/normalised" if node.attrs["affine"] else output

    def _affine(self, node: Node, normalised: str, output: str) -> str:
        """normalised * weight + bias per channel (affine), else the normalised value (already `output`)."""
        if not node.attrs["affine"]:
            return normalised
        rank = len(node.shape)
        weight = self._per_channel(self.parameter(f"{node.name}.weight"), rank)
        bias = self._per_channel(self.parameter(f"{node.name}.bias"), rank)
        scaled = self.add("Mul", [normalised, weight], f"{node.name}/scaled", name=f"{node.name}/scale")
        return self.add("Add", [scaled, bias], output, name=f"{node.name}/shift")

    def _layernorm(self, node: Node, output: str) -> str:
        """LayerNormalization over the last axis from opset 17 (a (C, H, W) input transposed to put the
        channels last and back); below, the mean and the biased variance over axis 1 with ReduceMean
        (whose axes are an attribute before opset 18, so always here)."""
        name, eps, rank, x = node.name, float(node.attrs["eps"]), len(node.shape), self.input_of(node)
        if self.opset < NATIVE_LAYERNORM_OPSET:
            mean = self.add("ReduceMean", [x], f"{name}/mean", name=f"{name}/mean", axes=[1], keepdims=1)
            centred = self.add("Sub", [x, mean], f"{name}/centred", name=f"{name}/centre")
            square = self.add("Mul", [centred, centred], f"{name}/square", name=f"{name}/square")
            variance = self.add("ReduceMean", [square], f"{name}/variance", name=f"{name}/variance", axes=[1],
                                keepdims=1)
            shifted = self.add("Add", [variance, self.initializer(f"{name}/eps", np.array(eps, np.float32))],
                               f"{name}/variance_eps", name=f"{name}/eps")
            deviation = self.add("Sqrt", [shifted], f"{name}/std", name=f"{name}/std")
            normalised = self.add("Div", [centred, deviation], self._normalised(node, output), name=name)
            return self._affine(node, normalised, output)
        channels = node.shape[0]
        if node.attrs["affine"]:
            scale_shift = [self.parameter(f"{name}.weight"), self.parameter(f"{name}.bias")]
        else:  # ONNX needs a scale: the identity one
            scale_shift = [self.initializer(f"{name}/unit_scale", np.ones(channels, np.float32))]
        if rank == 1:
            return self.add("LayerNormalization", [x, *scale_shift], output, name=name, axis=-1, epsilon=eps)
        last = self.add("Transpose", [x], f"{name}/channels_last", name=f"{name}/to_channels_last", perm=[0, 2, 3, 1])
        normalised = self.add("LayerNormalization", [last, *scale_shift], f"{name}/normalised", name=name, axis=-1,
                              epsilon=eps)
        return self.add("Transpose", [normalised], output, name=f"{name}/to_channels_first", perm=[0, 3, 1, 2])

    def _groupnorm(self, node: Node, output: str) -> str:
        """GroupNormalization from opset 21, where its scale and bias are per channel as in PyTorch (opset
        18's were per group). Otherwise, and for flat inputs, the classic equivalent: reshape to
        (N, groups, rest), InstanceNormalization (per sample and group, biased variance), reshape
        back, then the per-channel weight and bias."""
        name, eps, groups, x = node.name, float(node.attrs["eps"]), node.attrs["groups"], self.input_of(node)
        channels = node.shape[0]
        if len(node.shape) == 1:
            return self._flat_groupnorm(node, output)
        if self.opset >= NATIVE_GROUPNORM_OPSET:
            if node.attrs["affine"]:
                scale, shift = self.parameter(f"{name}.weight"), self.parameter(f"{name}.bias")
            else:
                scale = self.initializer(f"{name}/unit_scale", np.ones(channels, np.float32))
                shift = self.initializer(f"{name}/zero_shift", np.zeros(channels, np.float32))
            return self.add("GroupNormalization", [x, scale, shift], output, name=name, epsilon=eps,
                            num_groups=groups)
        grouped_shape = self.initializer(f"{name}/grouped_shape", np.array([0, groups, -1], np.int64))
        grouped = self.add("Reshape", [x, grouped_shape], f"{name}/grouped", name=f"{name}/group")
        unit = self.initializer(f"{name}/group_scale", np.ones(groups, np.float32))
        zero = self.initializer(f"{name}/group_shift", np.zeros(groups, np.float32))
        normalised = self.add("InstanceNormalization", [grouped, unit, zero], f"{name}/grouped_normalised", name=name,
                              epsilon=eps)
        shape = self.initializer(f"{name}/shape", np.array([0, *node.shape], np.int64))
        ungrouped = self.add("Reshape", [normalised, shape], self._normalised(node, output), name=f"{name}/ungroup")
        return self._affine(node, ungrouped, output)

    def _flat_groupnorm(self, node: Node, output: str) -> str:
        """Group norm of a flat (N, C) value as that of an (N, C, 1, 1) image, flattened back: OpenCV 5.0
        fuses the flat form's Reshape-InstanceNormalization-Reshape-Mul-Add into its GroupNorm layer,
        which refuses inputs of fewer than 3 dimensions."""
        axes = self.initializer("const/axes_hw", np.array([2, 3], dtype=np.int64))
        image = self.add("Unsqueeze", [self.input_of(node), axes], f"{node.name}/image", name=f"{node.name}/to_image")
        self.tensor_of[image], self.shapes[image] = image, (*node.shape, 1, 1)
        as_image = replace(node, inputs=(image,), shape=(*node.shape, 1, 1))
        normalised = self._groupnorm(as_image, f"{node.name}/normalised_image")
        return self.add("Flatten", [normalised], output, name=f"{node.name}/flatten", axis=1)

    def _scale(self, node: Node, output: str) -> str:
        weight = self._per_channel(self.parameter(f"{node.name}.weight"), len(node.shape))
        return self.add("Mul", [self.input_of(node), weight], output, name=node.name)

    def _adaptive_avgpool(self, node: Node, output: str) -> str:
        """AveragePool when every bin along each axis has one length and one stride (sizes that divide,
        and some that do not, such as 5 -> 4); otherwise each resized axis is a MatMul with a constant
        averaging matrix (row i: 1 / len over bin i), width first: (x @ Aw^T), then Ah @ that."""
        _, height, width = self.shapes[node.inputs[0]]
        out_h, out_w = node.attrs["size"]
        rows, columns = uniform_window(height, out_h), uniform_window(width, out_w)
        source = self.input_of(node)
        if rows is not None and columns is not None:
            (kh, sh), (kw, sw) = rows, columns
            return self.add("AveragePool", [source], output, name=node.name, kernel_shape=[kh, kw], strides=[sh, sw])
        if width != out_w:
            across = self.initializer(f"{node.name}/width_bins", _averaging_matrix(width, out_w).T)
            last = height == out_h
            source = self.add("MatMul", [source, across], output if last else f"{node.name}/width_pooled",
                              name=node.name if last else f"{node.name}/width")
        if height != out_h:
            down = self.initializer(f"{node.name}/height_bins", _averaging_matrix(height, out_h))
            source = self.add("MatMul", [down, source], output, name=node.name)
        return source

    def _clip(self, node: Node, output: str, low: float, high: float) -> str:
        return self.add("Clip", [self.input_of(node), self.scalar(f"{low:g}", low), self.scalar(f"{high:g}", high)],
                        output, name=node.name)

    def _hardswish(self, node: Node, output: str) -> str:
        """HardSwish from opset 14 (alpha 1/6, beta 1/2: PyTorch's); below, x * HardSigmoid(x)."""
        if self.opset >= NATIVE_HARDSWISH_OPSET:
            return self._unary("HardSwish", node, output)
        x = self.input_of(node)
        gate = self.add("HardSigmoid", [x], f"{node.name}/gate", name=f"{node.name}/gate", alpha=1 / 6, beta=0.5)
        return self.add("Mul", [x, gate], output, name=node.name)

    def _mish(self, node: Node, output: str) -> str:
        """Mish from opset 18; below, x * tanh(softplus(x))."""
        if self.opset >= NATIVE_MISH_OPSET:
            return self._unary("Mish", node, output)
        x, name = self.input_of(node), node.name
        softplus = self.add("Softplus", [x], f"{name}/softplus", name=f"{name}/softplus")
        gate = self.add("Tanh", [softplus], f"{name}/tanh", name=f"{name}/tanh")
        return self.add("Mul", [x, gate], output, name=name)

    def _elementwise(self, node: Node, output: str) -> str:
        """add / multiply, numpy broadcasting with the batch dimension in front; a flat (C,) operand
        against (C, H, W) is unsqueezed to (C, 1, 1) first, and a 1-channel operand against C > 1
        channels is expanded to C channels (an explicit Expand: OpenCV 5.0 fails on a channel
        broadcast whose other operand comes from a convolution or a pooling). More than two
        operands: left to right."""
        kind = "Add" if node.op == "add" else "Mul"
        channels = node.shape[0]
        operands = []
        for index, source in enumerate(node.inputs):
            tensor = self.tensor_of[source]
            if len(self.shapes[source]) == 1 and len(node.shape) == 3:
                axes = self.initializer("const/axes_hw", np.array([2, 3], dtype=np.int64))
                tensor = self.add("Unsqueeze", [tensor, axes], f"{node.name}/operand{index + 1}",
                                  name=f"{node.name}/unsqueeze{index + 1}")
            if self.shapes[source][0] == 1 and channels > 1:
                shape = np.array([1, channels] + [1] * (len(node.shape) - 1), np.int64)
                target = self.initializer(f"const/expand_{'x'.join(map(str, shape))}", shape)
                tensor = self.add("Expand", [tensor, target], f"{node.name}/expanded{index + 1}",
                                  name=f"{node.name}/expand{index + 1}")
            operands.append(tensor)
        result = operands[0]
        for index, operand in enumerate(operands[1:], start=1):
            last = index == len(operands) - 1
            result = self.add(kind, [result, operand], output if last else f"{node.name}/partial{index}",
                              name=node.name if last else f"{node.name}/{kind.lower()}{index}")
        return result

    def _unary(self, kind: str, node: Node, output: str, **attrs: Any) -> str:
        return self.add(kind, [self.input_of(node)], output, name=node.name, **attrs)

    def _gelu(self, node: Node, out: str) -> str:
        approximate, x, name = node.attrs["approximate"], self.input_of(node), node.name
        if self.opset >= NATIVE_GELU_OPSET and approximate == "none":
            return self.add("Gelu", [x], out, name=name)
        # Below opset 20, and for the tanh approximation at any opset (OpenCV 5.0 ignores Gelu's
        # `approximate` and computes the erf form), PyTorch's formulas:
        #   none  0.5 * x * (1 + erf(x / sqrt(2)))
        #   tanh  0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        if approximate == "tanh":
            # Pow(x, 3), which onnxruntime computes as x * x * x (bit for bit); OpenCV 5.0 crashes
            # on the Mul(Mul(x, x), x) form of this formula
            cube = self.add("Pow", [x, self.scalar("three", 3.0)], f"{name}/x3", name=name)
            scaled_cube = self.add("Mul", [cube, self.scalar("gelu_cubic", 0.044715)], f"{name}/cubic",
                                   name=f"{name}/cubic")
            inner = self.add("Add", [x, scaled_cube], f"{name}/inner", name=f"{name}/inner")
            scaled = self.add("Mul", [inner, self.scalar("sqrt_2_over_pi", math.sqrt(2 / math.pi))],
                              f"{name}/scaled", name=f"{name}/scale")
            shaped = self.add("Tanh", [scaled], f"{name}/tanh", name=f"{name}/tanh")
        else:
            scaled = self.add("Mul", [x, self.scalar("inv_sqrt2", 1 / math.sqrt(2))], f"{name}/scaled", name=name)
            shaped = self.add("Erf", [scaled], f"{name}/erf", name=f"{name}/erf")
        shifted = self.add("Add", [shaped, self.scalar("one", 1.0)], f"{name}/one_plus", name=f"{name}/one_plus")
        gated = self.add("Mul", [x, shifted], f"{name}/gated", name=f"{name}/gate")
        return self.add("Mul", [gated, self.scalar("half", 0.5)], out, name=f"{name}/half")


Lowering = Callable[[_Lowering, Node, str], str]


def _simple(kind: str, **attrs: Any) -> Lowering:
    return lambda lowering, node, output: lowering._unary(kind, node, output, **attrs)


def _conv_transpose(ctx: _Lowering, node: Node, output: str) -> str:
    """ConvTranspose (unchanged in meaning from opset 11 on). The output_padding is folded into the
    end pads (both only move the output's end), so ONNX sees output_padding only where it exceeds the
    end pad. onnxruntime refuses an output_padding as large as the stride, which PyTorch allows below
    the dilation: then the end is extended by a zero Pad and the bias added after it."""
    attrs = node.attrs
    top, bottom, left, right = attrs["pads"]
    ends = (bottom - attrs["output_padding"][0], right - attrs["output_padding"][1])
    extension = [max(-end, 0) for end in ends]
    beyond_stride = any(extra >= s for extra, s in zip(extension, attrs["stride"]))
    inputs = [ctx.input_of(node), ctx.parameter(f"{node.name}.weight")]
    if attrs["bias"] and not beyond_stride:
        inputs.append(ctx.parameter(f"{node.name}.bias"))
    settings: dict[str, Any] = {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["stride"]),
                                "pads": [top, left, max(ends[0], 0), max(ends[1], 0)]}
    if tuple(attrs["dilation"]) != (1, 1):
        settings["dilations"] = list(attrs["dilation"])
    if attrs["groups"] != 1:
        settings["group"] = attrs["groups"]
    if not beyond_stride:
        if any(extension):
            settings["output_padding"] = extension
        return ctx.add("ConvTranspose", inputs, output, name=node.name, **settings)
    full = ctx.add("ConvTranspose", inputs, f"{node.name}/unextended", name=node.name, **settings)
    amounts = ctx.initializer(f"{node.name}/extension", np.array([0, 0, 0, 0, 0, 0, *extension], np.int64))
    if not attrs["bias"]:
        return ctx.add("Pad", [full, amounts], output, name=f"{node.name}/extend")
    extended = ctx.add("Pad", [full, amounts], f"{node.name}/extended", name=f"{node.name}/extend")
    axes = ctx.initializer("const/axes_after_channels", np.array([1, 2], np.int64))
    bias = ctx.add("Unsqueeze", [ctx.parameter(f"{node.name}.bias"), axes], f"{node.name}/bias_chw",
                   name=f"{node.name}/unsqueeze_bias")
    return ctx.add("Add", [extended, bias], output, name=f"{node.name}/bias")


def _upsample(ctx: _Lowering, node: Node, output: str) -> str:
    """Resize with the scales input (roi empty, no sizes, no antialias), one scale for every axis
    (batch and channels 1) at every opset: OpenCV 5.0 refuses Resize-18's `axes` with 2 scales, the
    form that would keep the batch's name through ONNX shape inference. PyTorch's
    nearest is floor of the asymmetric coordinate out / scale; bilinear with align_corners=False is
    half_pixel (equal to pytorch_half_pixel, as no output axis has length 1 unless its input has)."""
    settings: dict[str, Any]
    if node.attrs["mode"] == "nearest":
        settings = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    else:
        settings = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    scales = ctx.initializer(f"{node.name}/scales", np.array([1, 1, *node.attrs["scale"]], np.float32))
    return ctx.add("Resize", [ctx.input_of(node), "", scales], output, name=node.name, **settings)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _pad(ctx: _Lowering, node: Node, output: str) -> str:
    """Pad with pads and value as inputs (since opset 11); reflect is numpy's and PyTorch's (the edge
    is not repeated), edge is replicate."""
    top, bottom, left, right = node.attrs["pads"]
    mode = node.attrs["mode"]
    inputs = [ctx.input_of(node),
              ctx.initializer(f"{node.name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))]
    if mode == "constant":
        inputs.append(ctx.initializer(f"{node.name}/value", np.array(node.attrs["value"], np.float32)))
    return ctx.add("Pad", inputs, output, name=node.name, mode=_PAD_MODES[mode])


def _channel_shuffle(ctx: _Lowering, node: Node, output: str) -> str:
    """Reshape to (N, groups, C / groups, H, W), swap the two channel axes, reshape back; the 0 in
    the shapes copies the symbolic batch."""
    channels, height, width = node.shape
    groups = node.attrs["groups"]
    grouped_shape = ctx.initializer(f"{node.name}/grouped_shape",
                                    np.array([0, groups, channels // groups, height, width], np.int64))
    flat_shape = ctx.initializer(f"{node.name}/shape", np.array([0, channels, height, width], np.int64))
    grouped = ctx.add("Reshape", [ctx.input_of(node), grouped_shape], f"{node.name}/grouped",
                      name=f"{node.name}/group")
    swapped = ctx.add("Transpose", [grouped], f"{node.name}/swapped", name=node.name, perm=[0, 2, 1, 3, 4])
    return ctx.add("Reshape", [swapped, flat_shape], output, name=f"{node.name}/ungroup")


LOWERINGS: dict[str, Lowering] = {
    "conv": _Lowering._conv,
    "dense": _Lowering._dense,
    "maxpool": _Lowering._pool,
    "avgpool": _Lowering._pool,
    "global_avgpool": _Lowering._global_pool,
    "global_maxpool": _Lowering._global_pool,
    "flatten": _Lowering._flatten,
    "channel_slice": _Lowering._channel_slice,
    "batchnorm": _Lowering._batchnorm,
    "dropout": _Lowering._pass_through,
    "identity": _Lowering._pass_through,
    "add": _Lowering._elementwise,
    "multiply": _Lowering._elementwise,
    "concat": _Lowering._concat,
    "conv_transpose": _conv_transpose,
    "upsample": _upsample,
    "pad": _pad,
    "channel_shuffle": _channel_shuffle,
    "layernorm": _Lowering._layernorm,
    "groupnorm": _Lowering._groupnorm,
    "scale": _Lowering._scale,
    "drop_path": _Lowering._pass_through,
    "adaptive_avgpool": _Lowering._adaptive_avgpool,
    "relu6": lambda lowering, node, output: lowering._clip(node, output, 0.0, 6.0),
    "hardsigmoid": _simple("HardSigmoid", alpha=1 / 6, beta=0.5),
    "hardswish": _Lowering._hardswish,
    "mish": _Lowering._mish,
    "relu": _simple("Relu"),
    "leaky_relu": lambda lowering, node, output: lowering._unary("LeakyRelu", node, output,
                                                                 alpha=float(node.attrs["alpha"])),
    "elu": lambda lowering, node, output: lowering._unary("Elu", node, output, alpha=float(node.attrs["alpha"])),
    "selu": _simple("Selu", alpha=SELU_ALPHA, gamma=SELU_SCALE),
    "gelu": _Lowering._gelu,
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "softmax": _simple("Softmax", axis=1),
}


def _averaging_matrix(size: int, output: int) -> np.ndarray:
    """(output, size): row i averages PyTorch's adaptive bin i (see compiler.ops.pool.adaptive_bins)."""
    matrix = np.zeros((output, size), np.float32)
    for row, (start, end) in enumerate(adaptive_bins(size, output)):
        matrix[row, start:end] = 1 / (end - start)
    return matrix


def _floor_end_pad(size: int, kernel: int, stride: int, before: int, output: int, after: int) -> int:
    """The end padding that makes floor-mode pooling produce `output` windows: the explicit `after`
    when it does, else the smallest that does."""
    def windows(end: int) -> int:
        return (size + before + end - kernel) // stride + 1

    if windows(after) == output:
        return after
    needed = max((output - 1) * stride + kernel - size - before, 0)
    if windows(needed) != output:  # pragma: no cover - the IR's sizes always have one
        raise CnncError(f"cannot express a pooling window of {kernel} with stride {stride} over {size} "
                        f"giving {output} outputs in ONNX")
    return needed


def _fits(pads: Sequence[int], kernel: tuple[int, int]) -> bool:
    """onnxruntime's rule: every pad is smaller than the kernel along its axis."""
    top, left, bottom, right = pads
    return max(top, bottom) < kernel[0] and max(left, right) < kernel[1]


def _value_info(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, *shape])


def _model(graph: Graph, lowered: _Lowered, opset: int) -> onnx.ModelProto:
    shape_of: dict[str, tuple[int, ...]] = {}
    for node in graph.nodes:
        shape_of.setdefault(lowered.tensor_of.get(node.name, node.name), node.shape)
    onnx_graph = helper.make_graph(
        lowered.nodes,
        graph.name,
        inputs=[_value_info(graph.input.name, graph.input.shape)],
        outputs=[_value_info(name, shape_of[name]) for name in lowered.outputs],
        initializer=[],
        doc_string=f"cnnc model '{graph.name}'",
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version_for(opset),
        producer_name=PRODUCER,
        producer_version=__version__,
    )
    # Moved in one at a time, since make_graph and make_model each copy what they are given: the
    # weights are held once, not three times (VGG-16's 553 MB).
    lowered.initializers.reverse()
    while lowered.initializers:
        model.graph.initializer.append(lowered.initializers.pop())
    return model
