"""Deployment forms of `cnnc export`: uint8 pixel input with the preprocessing in the graph, top-k
outputs; the runtime, predict, eval and bench on them; and the same answers from OpenCV DNN and OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image
from test_export import make_run
from test_onnx_support import ROOT

torch = pytest.importorskip("torch")

from cnnc.cli import main  # noqa: E402
from cnnc.compiler.backends.onnx import ir_version_for  # noqa: E402
from cnnc.export.exporter import ParityError, export_checkpoint  # noqa: E402
from cnnc.runtime.model import Model  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """xo (grayscale, 2 classes) and resnet_cifar (RGB, 10 classes, per-channel normalisation), each
    exported as a float model and as a uint8 model with top-k outputs (k = 2 and 3), both ending in
    probabilities."""
    folder = tmp_path_factory.mktemp("deploy")
    models = {}
    for spec, dataset, k in (("xo", "xo", 2), ("resnet_cifar", "cifar10", 3)):
        run_dir = folder / spec
        checkpoint = make_run(run_dir, ROOT / "specs" / f"{spec}.cnn", dataset=dataset)
        if spec == "resnet_cifar":  # distinct statistics per channel, so that a channel mix-up shows
            checkpoint.preprocess.update(mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])
        float_path, uint8_path = folder / f"{spec}.onnx", folder / f"{spec}.u8.onnx"
        export_checkpoint(checkpoint, float_path, outputs="probabilities")
        export_checkpoint(checkpoint, uint8_path, outputs="probabilities", input_form="uint8", top_k=k)
        models[spec] = (run_dir, float_path, uint8_path)
    return models


def pixels(model: Model, count: int, seed: int = 0) -> np.ndarray:
    """Random uint8 images, N x H x W x C."""
    channels, height, width = model.input_shape
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, channels), dtype=np.uint8)


@pytest.mark.parametrize("spec", ["xo", "resnet_cifar"])
def test_the_uint8_model_computes_exactly_what_the_float_model_computes(exported, spec):
    _, float_path, uint8_path = exported[spec]
    float_model, uint8_model = Model.load(float_path, provider="cpu"), Model.load(uint8_path, provider="cpu")
    assert (float_model.input_form, uint8_model.input_form) == ("float32", "uint8")
    assert uint8_model.input_shape == float_model.input_shape
    images = pixels(float_model, 9)
    batch = uint8_model.preprocess(images)
    assert batch.dtype == np.uint8 and np.array_equal(batch, images)  # NHWC pixels, untouched
    expected = float_model.predict(float_model.preprocess(images))
    np.testing.assert_array_equal(uint8_model.predict(batch), expected)  # the same float32 operations
    float_predictions = float_model.classify(images, top_k=3)
    assert uint8_model.classify(images, top_k=3) == float_predictions


@pytest.mark.parametrize("spec", ["xo", "resnet_cifar"])
def test_the_graph_and_metadata_of_the_uint8_form(exported, spec):
    _, float_path, uint8_path = exported[spec]
    model = onnx.load(uint8_path)
    (pixels_input,) = model.graph.input
    assert pixels_input.name == "pixels" and pixels_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    channels, height, width = json.loads({p.key: p.value for p in model.metadata_props}["cnnc.input_shape"])
    dims = [d.dim_value or d.dim_param for d in pixels_input.type.tensor_type.shape.dim]
    assert dims == ["N", height, width, channels]
    meta = {p.key: p.value for p in model.metadata_props}
    assert (meta["cnnc.input"], meta["cnnc.input_layout"]) == ("uint8", "NHWC")
    assert meta["cnnc.top_k"] == ("2" if spec == "xo" else "3")
    assert [o.name for o in model.graph.output][1:] == ["top_k_scores", "top_k_indices"]
    # onnxruntime bindings that apps ship are older than this onnx: the IR version stays the opset's minimum.
    assert model.ir_version == ir_version_for(17) == 8
    onnx.checker.check_model(model, full_check=True)


def test_top_k_outputs_are_the_best_scores_best_first(exported):
    _, _, uint8_path = exported["resnet_cifar"]
    model = Model.load(uint8_path, provider="cpu")
    images = pixels(model, 16, seed=5)
    scores, top_scores, top_indices = model.session.run(None, {model.input_name: images})
    assert top_indices.dtype == np.int64 and top_scores.shape == top_indices.shape == (16, 3)
    np.testing.assert_array_equal(top_indices, np.argsort(-scores, axis=1, kind="stable")[:, :3])
    np.testing.assert_array_equal(top_scores, np.take_along_axis(scores, top_indices, axis=1))


def test_the_runtime_names_what_a_uint8_model_takes(exported):
    from cnnc.errors import CnncError

    _, _, uint8_path = exported["xo"]
    model = Model.load(uint8_path, provider="cpu")
    with pytest.raises(CnncError, match=r"takes uint8 pixels \(N, H, W, C\), received dtype float32"):
        model.predict(np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(CnncError, match=r"expected a batch of shape \(N, 28, 28, 1\), received \(1, 1, 28, 28\)"):
        model.predict(np.zeros((1, 1, 28, 28), np.uint8))


def test_metadata_that_contradicts_the_graph_is_an_error(exported, tmp_path):
    from cnnc.errors import CnncError

    _, float_path, _ = exported["xo"]
    model = onnx.load(float_path)
    model.metadata_props.add(key="cnnc.input", value="uint8")
    onnx.save(model, tmp_path / "liar.onnx")
    with pytest.raises(CnncError, match=r"expected a model with one uint8 input of shape \[N, H, W, C\], found glyph"):
        Model.load(tmp_path / "liar.onnx", provider="cpu")
    model.metadata_props[-1].value = "int4"
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(CnncError, match="'cnnc.input' must be one of float32, uint8, not 'int4'"):
        Model.load(tmp_path / "odd.onnx", provider="cpu")


def test_predict_eval_and_bench_handle_both_forms(exported, tmp_path, capsys):
    run_dir, float_path, uint8_path = exported["resnet_cifar"]
    model = Model.load(float_path, provider="cpu")
    files = []
    for index, image in enumerate(pixels(model, 3, seed=2)):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(files[-1])
    answers = []
    for path in (float_path, uint8_path):
        assert main(["predict", str(path), *map(str, files), "--top-k", "3", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] == answers[1] and len(answers[0]) == 3

    xo_run, xo_float, xo_uint8 = exported["xo"]
    accuracies = []
    for path in (xo_float, xo_uint8):
        assert main(["eval", str(path), "--limit", "64", "--json"]) == 0
        accuracies.append(json.loads(capsys.readouterr().out))
    assert accuracies[0] == accuracies[1] and accuracies[0]["n"] == 64

    assert main(["bench", str(xo_uint8), "--batch-sizes", "1,4", "--iterations", "3", "--warmup", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [result["batch_size"] for result in report["results"]] == [1, 4]
    assert all(result["p50_ms"] > 0 for result in report["results"])


def test_the_export_command_writes_the_deployment_forms(exported, tmp_path, capsys):
    run_dir, _, _ = exported["xo"]
    output = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "-o", str(output), "--input", "uint8", "--top-k", "2"]) == 0
    assert "input uint8, outputs logits, top 2 outputs" in capsys.readouterr().err
    assert Model.load(output, provider="cpu").input_form == "uint8"
    assert main(["export", str(run_dir), "-o", str(tmp_path / "k.onnx"), "--top-k", "3"]) == 1
    assert "top-k 3 is more than the model's 2 classes" in capsys.readouterr().err
    assert not (tmp_path / "k.onnx").exists()
    assert main(["export", str(run_dir), "-o", str(tmp_path / "z.onnx"), "--top-k", "0"]) == 2
    assert "--top-k must be a positive integer, got 0" in capsys.readouterr().err


def test_the_parity_gate_covers_the_in_graph_preprocessing(exported, tmp_path):
    run_dir, _, _ = exported["resnet_cifar"]
    from cnnc.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run_dir)

    def wrong_std(model):  # the green channel's std off by 1% (the float probe of a diagnosis has none)
        from onnx import numpy_helper

        for index, tensor in enumerate(model.graph.initializer):
            if tensor.name.endswith("/std"):
                values = numpy_helper.to_array(tensor).copy()
                values[0, 1] *= 1.01
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
                return

    with pytest.raises(ParityError, match="in-graph preprocessing of the uint8 input"):
        export_checkpoint(checkpoint, tmp_path / "bad.onnx", input_form="uint8", tamper=wrong_std)
    assert not (tmp_path / "bad.onnx").exists()


def test_the_parity_gate_checks_the_top_k_outputs(exported, tmp_path):
    run_dir, _, _ = exported["resnet_cifar"]
    from cnnc.training.checkpoint import load_checkpoint

    def smallest(model):
        top_k = next(node for node in model.graph.node if node.op_type == "TopK")
        next(a for a in top_k.attribute if a.name == "largest").i = 0

    with pytest.raises(ParityError, match="top-k outputs are wrong: the top-k scores are not the k highest"):
        export_checkpoint(load_checkpoint(run_dir), tmp_path / "bad.onnx", top_k=3, tamper=smallest)
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("spec", ["xo", "resnet_cifar"])
def test_opencv_dnn_and_openvino_give_the_same_answers(exported, spec):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a dev dependency")
    openvino = pytest.importorskip("openvino", reason="openvino is a dev dependency")
    _, float_path, uint8_path = exported[spec]
    model = Model.load(uint8_path, provider="cpu")
    images = pixels(model, 5, seed=9)
    expected = model.session.run(None, {model.input_name: images})
    names = [output.name for output in model.session.get_outputs()]
    net = cv2.dnn.readNetFromONNX(str(uint8_path))
    net.setInput(images)
    found_cv = list(net.forward(names))  # by name: OpenCV 4 lists its outputs in another order
    # OpenCV 4 computes in float32, the top-k indices too (OpenCV 5 returns int64); they must be whole numbers.
    assert np.array_equal(found_cv[2], np.round(found_cv[2]))
    found_cv[2] = found_cv[2].astype(np.int64)
    # f32 as the docs say: on a CPU with bf16 units (AMX, AVX-512 BF16) OpenVINO's default is bf16
    compiled = openvino.Core().compile_model(str(uint8_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    results = compiled(images)
    found_ov = [results[output] for output in compiled.outputs]
    for found in (found_cv, found_ov):
        scores, top_scores, top_indices = found
        np.testing.assert_allclose(scores, expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(top_indices, expected[2])  # the same labels, in the same order
        np.testing.assert_allclose(top_scores, expected[1], rtol=1e-4, atol=1e-5)
