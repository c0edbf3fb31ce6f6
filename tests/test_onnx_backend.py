"""The ONNX backend's graphs: valid, shape-exact, readable, reproducible, with the runtime's metadata."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_onnx_support import ROOT, SPECS, inferred_shapes, program_of, run_ort, spec_program, spec_texts

from cnnc.compiler.backends import onnx as backend
from cnnc.compiler.backends.weights import parameter_shapes
from cnnc.compiler.passes import dead_nodes, final_softmax, prune, with_outputs

# Op types a cnnc graph may contain; notably no Transpose, Shape, Gather, Reshape, Cast or Constant.
ALLOWED_OPS = {
    "Conv", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "BatchNormalization",
    "Relu", "LeakyRelu", "Elu", "Selu", "Gelu", "Sigmoid", "Tanh", "Softmax", "Erf", "Mul", "Add", "Concat",
    "Unsqueeze", "Pad", "Identity", "Clip", "HardSigmoid", "HardSwish", "Mish", "Softplus", "LayerNormalization",
    "GroupNormalization", "InstanceNormalization", "ReduceMean", "Sub", "Div", "Sqrt", "Reshape", "Transpose",
    "MatMul", "Resize", "ConvTranspose", "Slice", "Pow", "Expand",
}


def check_model(model: onnx.ModelProto, graph) -> None:
    """The checker (full), strict shape inference, and every layer's inferred shape = the IR's."""
    onnx.checker.check_model(model, full_check=True)
    shapes = inferred_shapes(model)
    tensors = {o for n in model.graph.node for o in n.output} | {graph.input.name}
    # Resize scales every axis (OpenCV refuses Resize-18's axes) and shape inference renames the batch (N * 1.0)
    unnamed_batch = any(n.op_type == "Resize" for n in model.graph.node)
    for node in graph.nodes:
        if node.name in tensors:
            batch, *rest = shapes[node.name]
            assert rest == list(node.shape), node.name
            assert batch == "N" or unnamed_batch and isinstance(batch, str), (node.name, batch)


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_checks_and_infers_the_irs_shapes(spec, opset):
    program = spec_program(spec)
    model = backend.to_onnx(program, opset=opset)
    check_model(model, program.graph)
    assert model.opset_import[0].version == opset
    assert model.ir_version == backend.ir_version_for(opset)
    # every layer on the way to the output is a tensor of that name (dropout, drop_path and identity pass
    # theirs on);
    # dead layers are left out
    tensors = {o for n in model.graph.node for o in n.output}
    for node in prune(program.graph).nodes[1:]:
        passes_through = backend.LOWERINGS.get(node.op) is backend._Lowering._pass_through
        assert node.name in tensors or passes_through, node.name
    assert not tensors & {node.name for node in dead_nodes(program.graph)}


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(spec=spec_texts(), opset=st.sampled_from([13, 17, 20]))
def test_generated_specs_check_and_infer_the_irs_shapes(spec, opset):
    program = program_of(spec)
    assert program is not None, spec
    for outputs in (None, "logits", "probabilities"):
        graph = with_outputs(program.graph, outputs)
        check_model(backend.to_onnx(program, opset=opset, outputs=outputs), graph)
    probe, layers = backend.layer_probe(program, opset=opset)
    check_model(probe, program.graph)


@pytest.mark.parametrize("opset", range(13, 23))
def test_ir_version_is_the_lowest_the_opset_needs(opset):
    expected = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}[opset]
    model = backend.to_onnx(spec_program("specs/xo.cnn"), opset=opset)
    assert model.ir_version == expected
    onnx.checker.check_model(model, full_check=True)


def test_every_opset_from_13_to_the_newest_onnx_knows_is_valid_and_runs_up_to_onnxruntimes():
    import onnxruntime as ort

    program = program_of("""model m {
        input image(2, 6, 6)
        features = conv(4, kernel=3, padding=same, activation=gelu) -> batchnorm -> maxpool(2, padding=same)
        gate = global_avgpool -> dense(4, activation=silu)
        multiply(features, gate)
        flatten -> dense(3, activation=softmax)
    }""")
    assert program is not None
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    reference = None
    for opset in range(13, backend.max_opset() + 1):
        model = backend.to_onnx(program, opset=opset)
        onnx.checker.check_model(model, full_check=True)
        try:
            y = run_ort(model, x)[0]
        except ort.capi.onnxruntime_pybind11_state.Fail as error:  # newer than this onnxruntime
            assert "opset" in str(error).lower() and opset > 21, error
            continue
        reference = y if reference is None else reference
        np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-6)


def test_opset_outside_the_range_is_an_input_error():
    from cnnc.errors import CnncError

    for opset in (12, backend.max_opset() + 1):
        with pytest.raises(CnncError, match="opset"):
            backend.to_onnx(spec_program("specs/xo.cnn"), opset=opset)


# --- readability -------------------------------------------------------------------------------------

def compact(model: onnx.ModelProto) -> list[str]:
    return [f"{n.op_type} {n.name}: {', '.join(n.input)} -> {', '.join(n.output)}" for n in model.graph.node]


def test_a_small_graph_reads_like_its_spec():
    model = backend.to_onnx(spec_program("specs/keras_mnist.cnn"))
    assert compact(model) == [
        "Conv conv1: image, conv1.weight, conv1.bias -> conv1/preact",
        "Relu conv1/relu: conv1/preact -> conv1",
        "MaxPool maxpool1: conv1 -> maxpool1",
        "Conv conv2: maxpool1, conv2.weight, conv2.bias -> conv2/preact",
        "Relu conv2/relu: conv2/preact -> conv2",
        "MaxPool maxpool2: conv2 -> maxpool2",
        "Flatten flatten1: maxpool2 -> flatten1",
        "Gemm dense1: flatten1, dense1.weight, dense1.bias -> dense1/preact",
        "Softmax dense1/softmax: dense1/preact -> dense1",
    ]
    assert [i.name for i in model.graph.initializer] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "dense1.weight", "dense1.bias"]
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "image" and graph_output.name == "dense1"
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 28, 28]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    gemm = model.graph.node[7]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute} == {"transB": 1}


@pytest.mark.parametrize("spec", SPECS)
def test_names_follow_the_spec_and_no_op_is_noise(spec):
    program = spec_program(spec)
    model = backend.to_onnx(program)
    layers = {n.name for n in program.graph.nodes}
    parameters = set(parameter_shapes(program.graph))
    for node in model.graph.node:
        assert node.op_type in ALLOWED_OPS, node.op_type
        assert node.name in layers or node.name.split("/")[0] in layers, node.name
    for initializer in model.graph.initializer:
        assert initializer.name in parameters or "/" in initializer.name, initializer.name
    assert parameters <= {i.name for i in model.graph.initializer}  # every parameter is used by name
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)


def test_resnet_keeps_dotted_block_names_and_asymmetric_same_pads():
    model = backend.to_onnx(spec_program("specs/resnet_cifar.cnn"))
    conv = next(n for n in model.graph.node if n.name == "residual_down1.conv1")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    # 32x32, kernel 3, stride 2, TF same: 1 row/column of padding, at the bottom/right
    assert attributes == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1]}
    assert "residual_down1.shortcut.running_var" in {i.name for i in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "Identity"]


def test_dropout_and_unused_layers_emit_nothing():
    program = program_of("""model m {
        input image(1, 4, 4)
        unused = conv(2, kernel=1)
        x = image -> dropout(0.5) -> flatten -> dropout(0.2) -> dense(2)
        output x
    }""")
    assert compact(backend.to_onnx(program)) == [
        "Flatten flatten1: image -> flatten1", "Gemm x: flatten1, x.weight, x.bias -> x"]


def test_a_model_that_passes_its_input_through_still_has_a_node():
    program = program_of("model m {\n input image(3, 2, 2)\n dropout(0.5)\n}")
    model = backend.to_onnx(program)
    onnx.checker.check_model(model, full_check=True)
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    np.testing.assert_array_equal(run_ort(model, x)[0], x)


# --- outputs: logits or probabilities ----------------------------------------------------------------

def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_logits_strips_a_fused_final_softmax():
    program = spec_program("specs/keras_mnist.cnn")
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    default, logits = backend.to_onnx(program), backend.to_onnx(program, outputs="logits")
    assert [n.op_type for n in logits.graph.node][-1] == "Gemm"
    assert "Softmax" not in {n.op_type for n in logits.graph.node}
    metadata = {p.key: p.value for p in logits.metadata_props}
    assert metadata["cnnc.output"] == "logits"
    assert {p.key: p.value for p in default.metadata_props}["cnnc.output"] == "probabilities"
    np.testing.assert_allclose(softmax(run_ort(logits, x)[0]), run_ort(default, x)[0], rtol=1e-5, atol=1e-7)
    # probabilities does not add a second softmax
    assert compact(backend.to_onnx(program, outputs="probabilities")) == compact(default)


def test_logits_strips_a_softmax_layer_behind_dropout_and_flatten():
    program = program_of("""model m {
        input image(2, 3, 3)
        flatten -> dense(4) -> softmax -> dropout(0.1) -> flatten
    }""")
    assert final_softmax(program.graph).name == "softmax1"
    model = backend.to_onnx(program, outputs="logits")
    assert [n.op_type for n in model.graph.node] == ["Flatten", "Gemm", "Flatten"]
    check_model(model, with_outputs(program.graph, "logits"))


def test_probabilities_appends_a_named_softmax():
    program = spec_program("specs/xo.cnn")
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    model = backend.to_onnx(program, outputs="probabilities")
    last = model.graph.node[-1]
    assert (last.op_type, last.name, list(last.input), list(last.output)) == (
        "Softmax", "probabilities", ["dense1"], ["probabilities"])
    assert model.graph.output[0].name == "probabilities"
    assert {p.key: p.value for p in model.metadata_props}["cnnc.output"] == "probabilities"
    np.testing.assert_allclose(run_ort(model, x)[0], softmax(run_ort(backend.to_onnx(program), x)[0]), rtol=1e-5)
    # a layer already named `probabilities` is not clobbered
    taken = program_of("model m {\n input image(1, 2, 2)\n flatten\n probabilities = dense(3)\n}")
    assert with_outputs(taken.graph, "probabilities").output == "probabilities2"


# --- metadata ----------------------------------------------------------------------------------------

def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_metadata_holds_exactly_the_runtimes_keys():
    program = spec_program("specs/resnet_cifar.cnn")
    meta = metadata(backend.to_onnx(program))
    assert set(meta) == set(backend.METADATA_KEYS) - {"cnnc.test_accuracy"}
    spec_text = (ROOT / "specs" / "resnet_cifar.cnn").read_text()
    assert meta["cnnc.spec"] == spec_text
    assert meta["cnnc.spec_sha256"] == hashlib.sha256(spec_text.encode()).hexdigest()
    assert meta["cnnc.model"] == "resnet_cifar"
    assert json.loads(meta["cnnc.labels"]) == [str(i) for i in range(10)]
    assert meta["cnnc.input_layout"] == "NCHW"
    assert json.loads(meta["cnnc.input_shape"]) == [3, 32, 32]
    assert json.loads(meta["cnnc.preprocess"]) == {
        "scale": 1 / 255, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}
    assert meta["cnnc.output"] == "logits"
    assert int(meta["cnnc.params"]) == program.graph.trainable_params
    assert meta["cnnc.dataset"] == "cifar10"


def test_metadata_defaults_and_a_trained_models_entries():
    program = program_of("model m {\n input image(1, 2, 2)\n flatten -> dense(3)\n}")
    meta = metadata(backend.to_onnx(program))
    assert "cnnc.dataset" not in meta and "cnnc.test_accuracy" not in meta
    assert json.loads(meta["cnnc.preprocess"]) == {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    trained = metadata(backend.to_onnx(program, labels=["a", "b", "c"], dataset="xo", test_accuracy=0.975,
                                       preprocess={"scale": 1 / 255, "mean": [0.5], "std": [0.25]}))
    assert set(trained) == set(backend.METADATA_KEYS)
    assert json.loads(trained["cnnc.labels"]) == ["a", "b", "c"]
    assert (trained["cnnc.dataset"], json.loads(trained["cnnc.test_accuracy"])) == ("xo", 0.975)
    assert json.loads(trained["cnnc.preprocess"])["mean"] == [0.5]


def test_metadata_is_what_the_runtime_reads(tmp_path):
    from cnnc.runtime.model import Model

    path = tmp_path / "xo.onnx"
    backend.compile_to_file(spec_program("specs/xo.cnn"), path)
    model = Model.load(path, provider="cpu")
    assert model.labels == ("0", "1") and model.output_kind == "logits" and model.input_shape == (1, 28, 28)
    assert model.metadata["cnnc.dataset"] == "xo"


# --- reproducibility and the command line -------------------------------------------------------------

def test_same_inputs_give_byte_identical_files(tmp_path):
    from cnnc.cli import main

    spec = str(ROOT / "specs" / "se_cifar.cnn")
    for name in ("a.onnx", "b.onnx"):
        assert main(["compile", spec, "-o", str(tmp_path / name), "--seed", "3"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert main(["compile", spec, "-o", str(tmp_path / "c.onnx"), "--seed", "4"]) == 0
    assert (tmp_path / "c.onnx").read_bytes() != (tmp_path / "a.onnx").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_compile_needs_no_torch(tmp_path):
    output = tmp_path / "m.onnx"
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now fails\n"
        "from cnnc.cli import main\n"
        f"code = main(['compile', {str(ROOT / 'specs' / 'resnet_cifar.cnn')!r}, '-o', {str(output)!r},"
        " '--outputs', 'probabilities', '--opset', '13'])\n"
        "assert sys.modules['torch'] is None\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    assert metadata(model)["cnnc.output"] == "probabilities"


def test_compile_cli_errors(tmp_path, capsys):
    from cnnc.cli import main

    spec = str(ROOT / "specs" / "xo.cnn")
    assert main(["compile", spec, "-o", str(tmp_path / "m.onnx"), "--opset", "12"]) == 2
    assert main(["compile", spec, "-o", str(tmp_path / "m.onnx"), "--opset", "99"]) == 2
    assert "opset must be between 13 and" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("not a directory")
    assert main(["compile", spec, "-o", str(tmp_path / "a_file" / "m.onnx")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_specs_deploy_in_float32(dtype):
    """The runtime feeds float32; the weights of a float16/bfloat16 spec upcast exactly."""
    program = program_of(f"model m {{\n input image(1, 4, 4, dtype={dtype})\n flatten -> dense(3)\n}}")
    model = backend.to_onnx(program)
    check_model(model, program.graph)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT}


def test_weights_beyond_a_single_files_2_gib_are_refused_before_allocating():
    from cnnc.errors import CnncError

    program = program_of("model m {\n input image(3, 40, 50)\n flatten -> dense(100000)\n}")  # 600M weights
    with pytest.raises(CnncError, match="2.24 GiB, more than a single ONNX file holds"):
        backend.to_onnx(program)


def test_compile_creates_the_output_directory(tmp_path):
    from cnnc.cli import main

    target = tmp_path / "new" / "dir" / "xo.onnx"
    assert main(["compile", str(ROOT / "specs" / "xo.cnn"), "-o", str(target)]) == 0
    assert target.stat().st_size > 0


def test_the_layer_probe_covers_the_live_layers_of_a_spec_with_dead_ones():
    program = spec_program("tests/specs/dead_layers.cnn")
    probe, layers = backend.layer_probe(program)
    assert set(layers) == {node.name for node in prune(program.graph).nodes[1:]}
    onnx.checker.check_model(probe, full_check=True)


PEAK_MEMORY = """
import os, resource, sys
from cnnc.compiler.backends.onnx import compile_to_file
from cnnc.compiler.check import check_file
program = check_file("big.cnn", text="model big {\\n input image(1, 64, 64)\\n flatten\\n dense(8192)\\n}\\n").program
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
compile_to_file(program, sys.argv[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / os.path.getsize(sys.argv[1]))
"""


def test_compiling_holds_the_weights_about_three_times_at_most(tmp_path) -> None:
    # A 134 MB dense layer: the weights once in the model, and the file's bytes, which protobuf's
    # serialisation holds twice for a moment. Copying them into the graph and then the model, as
    # onnx.helper's make_graph and make_model do, held them four times.
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(tmp_path / "big.onnx")],
                            capture_output=True, text=True, timeout=300, check=True)
    assert float(result.stdout) < 3.5
