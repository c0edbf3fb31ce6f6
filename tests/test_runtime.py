"""cnnc.runtime.Model: loading, providers, predict/classify, input validation, threads, imports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image
from test_runtime_support import (
    classifier,
    cnnc_metadata,
    random_images,
    reference_output,
    reference_preprocess,
    save,
    write_png,
)

from cnnc.errors import CnncError
from cnnc.runtime import Model, Prediction, ProviderFallbackWarning
from cnnc.runtime.images import ImageConversion

LABELS = ["x", "o", "blank"]


@pytest.fixture(scope="module")
def gray_proto():
    return classifier(channels=1, metadata=cnnc_metadata(1, 8, LABELS))


@pytest.fixture(scope="module")
def gray_path(gray_proto, tmp_path_factory) -> Path:
    return save(gray_proto, tmp_path_factory.mktemp("models") / "gray.onnx")


@pytest.fixture(scope="module")
def gray(gray_path) -> Model:
    return Model.load(gray_path, provider="cpu")


@pytest.fixture(scope="module")
def rgb_proto():
    return classifier(channels=3, classes=4, metadata=cnnc_metadata(3, 8, ["a", "b", "c", "d"]), input_name="pixels",
                      seed=3)


@pytest.fixture(scope="module")
def rgb(rgb_proto, tmp_path_factory) -> Model:
    return Model.load(save(rgb_proto, tmp_path_factory.mktemp("models") / "rgb.onnx"), provider="cpu")


def softmax(logits: np.ndarray) -> np.ndarray:
    exps = np.exp(logits.astype(np.float64))
    return exps / exps.sum(axis=1, keepdims=True)


# --- loading ---------------------------------------------------------------------------------


def test_load_reads_the_signature_and_metadata(gray, gray_path):
    assert gray.provider == "cpu"
    assert gray.input_name == "image"
    assert gray.input_shape == (1, 8, 8)
    assert gray.labels == ("x", "o", "blank")
    assert gray.output_kind == "logits"
    assert gray.metadata["cnnc.dataset"] == "xo"
    assert gray.path == str(gray_path)


def test_input_name_comes_from_the_session(rgb):
    assert rgb.input_name == "pixels"
    assert rgb.input_shape == (3, 8, 8)


def test_auto_runs_on_what_is_really_there(gray_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        model = Model.load(gray_path)
    expected = "cuda" if "CUDAExecutionProvider" in model.session.get_providers() else "cpu"
    assert model.provider == expected


def test_threads_and_optimization_reach_the_session(gray_path):
    model = Model.load(gray_path, provider="cpu", threads=2, optimization="basic")
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"provider": "tpu"}, "provider must be one of auto, cpu, cuda, not 'tpu'"),
        ({"optimization": "max"}, "optimization must be one of disable, basic, extended, all"),
        ({"threads": 0}, "threads must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_load_arguments(gray_path, arguments, message):
    with pytest.raises(CnncError, match=message):
        Model.load(gray_path, **arguments)


def test_missing_file(tmp_path):
    with pytest.raises(CnncError, match=r"model file .*nothing\.onnx does not exist"):
        Model.load(tmp_path / "nothing.onnx")


def test_directory(tmp_path):
    with pytest.raises(CnncError, match="is not a file"):
        Model.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not a model", b"\x08\x07\x12\x05cnnc"])
def test_non_onnx_file(tmp_path, content):
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(CnncError, match=r"junk\.onnx is not a valid ONNX model: .+"):
        Model.load(path)


def test_truncated_file(gray_path, tmp_path):
    path = tmp_path / "truncated.onnx"
    content = gray_path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CnncError, match="is not a valid ONNX model"):
        Model.load(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cnnc.labels", "[1, 2", "'cnnc.labels' is not valid JSON"),
        ("cnnc.labels", '["x", "o"]', "'cnnc.labels' names 2 classes but the model outputs 3"),
        ("cnnc.input_shape", "[3, 8, 8]", r"'cnnc.input_shape' \[3, 8, 8\] contradicts the graph's input shape"),
        ("cnnc.output", "scores", "'cnnc.output' must be one of logits, probabilities"),
        ("cnnc.preprocess", '{"mean": [0.1, 0.2]}', "mean has 2 values but the model takes 1 channels"),
        ("cnnc.preprocess", '{"std": [0]}', "has a std of 0"),
    ],
)
def test_malformed_metadata_is_named(tmp_path, key, value, message):
    metadata = cnnc_metadata(1, 8, LABELS) | {key: value}
    path = save(classifier(metadata=metadata), tmp_path / "bad_metadata.onnx")
    with pytest.raises(CnncError, match=message):
        Model.load(path)


def test_model_without_metadata_uses_documented_defaults(tmp_path):
    proto = classifier(channels=1, classes=3)
    model = Model.load(save(proto, tmp_path / "plain.onnx"))
    assert model.metadata == {}
    assert model.labels == ("0", "1", "2")
    assert model.output_kind == "logits"
    images = random_images(4)
    expected_input = (images / 255.0).astype(np.float32)
    np.testing.assert_allclose(model.preprocess(images), expected_input, rtol=1e-6)
    np.testing.assert_allclose(model.predict(expected_input), reference_output(proto, expected_input),
                               rtol=1e-4, atol=1e-5)
    best = model.classify(images)[0]
    assert best.label in model.labels


def test_model_that_is_not_an_image_classifier(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    refused = r"one float input of shape \[N, C, H, W\], found x: tensor\(float\) \['N', 10\]"
    with pytest.raises(CnncError, match=refused):
        Model.load(save(proto, tmp_path / "flat.onnx"))


# --- providers ---------------------------------------------------------------------------------

needs_cpu_only_build = pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="this onnxruntime has CUDA"
)


@needs_cpu_only_build
def test_cuda_without_cuda_is_an_error_naming_what_is_missing(gray_path):
    with pytest.raises(CnncError) as raised:
        Model.load(gray_path, provider="cuda")
    message = str(raised.value)
    assert "CUDAExecutionProvider is not available in this onnxruntime build" in message
    assert f"onnxruntime {onnxruntime.__version__}" in message
    assert "CPUExecutionProvider" in message
    assert "install onnxruntime-gpu" in message


@needs_cpu_only_build
def test_cuda_fallback_warns_once_and_runs_on_cpu(gray_path):
    with pytest.warns(ProviderFallbackWarning, match="running on the CPU instead") as caught:
        model = Model.load(gray_path, provider="cuda", fallback=True)
    assert len(caught) == 1
    assert caught[0].filename == __file__  # points at the caller's line
    assert model.provider == "cpu"
    model.predict(np.zeros((2, 1, 8, 8), np.float32))


@needs_cpu_only_build
def test_cuda_listed_but_not_loadable_is_caught(gray_path, monkeypatch):
    # As when onnxruntime-gpu is installed without matching CUDA libraries: the provider is listed,
    # but the session silently runs on the CPU.
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # onnxruntime's own complaint
        with pytest.raises(CnncError, match="lists CUDAExecutionProvider but could not load it"):
            Model.load(gray_path, provider="cuda")
        assert Model.load(gray_path, provider="auto").provider == "cpu"


def test_cuda_session_that_fails_to_start_is_caught(gray_path, tmp_path, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real_session = onnxruntime.InferenceSession

    def session(path, sess_options=None, providers=()):
        if "CUDAExecutionProvider" in providers:
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real_session(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with pytest.raises(CnncError, match="could not start CUDAExecutionProvider: libcudnn.so.9: cannot open"):
        Model.load(gray_path, provider="cuda")
    with pytest.warns(ProviderFallbackWarning, match="libcudnn"):
        assert Model.load(gray_path, provider="cuda", fallback=True).provider == "cpu"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    with pytest.raises(CnncError, match="is not a valid ONNX model"):  # the model's fault, not CUDA's
        Model.load(junk, provider="cuda")


def test_io_binding_path_gives_the_same_results(gray):
    # The path taken on CUDA; onnxruntime's IO binding works on CPU sessions too, so test it here.
    as_if_on_cuda = dataclasses.replace(gray, provider="cuda")
    batch = reference_preprocess(random_images(5))
    np.testing.assert_allclose(as_if_on_cuda.predict(batch), gray.predict(batch), rtol=1e-6)


# --- predict and probabilities ------------------------------------------------------------------


def test_predict_matches_the_reference_evaluator(gray, gray_proto):
    batch = reference_preprocess(random_images(6))
    np.testing.assert_allclose(gray.predict(batch), reference_output(gray_proto, batch), rtol=1e-4, atol=1e-5)


def test_predict_rgb(rgb, rgb_proto):
    batch = reference_preprocess(random_images(5, channels=3))
    output = rgb.predict(batch)
    assert output.shape == (5, 4)
    np.testing.assert_allclose(output, reference_output(rgb_proto, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("count", [1, 3, 7, 10])
def test_predict_splits_batches_larger_than_batch_size(gray_path, gray, count):
    small_batches = Model.load(gray_path, provider="cpu", batch_size=3)
    batch = reference_preprocess(random_images(count))
    np.testing.assert_allclose(small_batches.predict(batch), gray.predict(batch), rtol=1e-6)


def test_predict_casts_other_float_dtypes(gray):
    batch = reference_preprocess(random_images(3))
    expected = gray.predict(batch)
    np.testing.assert_allclose(gray.predict(batch.astype(np.float64)), expected, rtol=1e-6)
    np.testing.assert_allclose(gray.predict(batch.astype(np.float16)), expected, rtol=1e-2, atol=1e-2)


def test_predict_accepts_non_contiguous_batches(gray):
    batch = reference_preprocess(random_images(4))
    transposed_twice = np.ascontiguousarray(batch.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not transposed_twice.flags.c_contiguous
    np.testing.assert_allclose(gray.predict(transposed_twice), gray.predict(batch), rtol=1e-6)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            np.zeros((4, 3, 8, 8), np.float32),
            r"expected a batch of shape \(N, 1, 8, 8\), received \(4, 3, 8, 8\): 3 channels where the model takes 1",
        ),
        (np.zeros((4, 1, 9, 8), np.float32), r"received \(4, 1, 9, 8\): 9x8 images where the model takes 8x8"),
        (np.zeros((1, 8, 8), np.float32),
         r"received \(1, 8, 8\): 3 dimensions instead of 4 \(one image\? add a batch axis"),
        (np.zeros((8, 8), np.float32), r"received \(8, 8\): 2 dimensions instead of 4"),
        (np.zeros((0, 1, 8, 8), np.float32), r"received \(0, 1, 8, 8\): the batch is empty"),
        (np.zeros((2, 1, 8, 8), np.uint8), "received dtype uint8; for uint8 images use classify()"),
        (np.zeros((2, 1, 8, 8), np.int64), "received dtype int64"),
    ],
)
def test_predict_rejects_wrong_input(gray, batch, message):
    with pytest.raises(CnncError, match=message):
        gray.predict(batch)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_rejects_non_finite_values(gray, bad):
    batch = np.zeros((3, 1, 8, 8), np.float32)
    batch[2, 0, 5, 1] = bad
    with pytest.raises(CnncError, match=r"NaN or infinite values \(the first at index \(2, 0, 5, 1\)"):
        gray.predict(batch)


def test_predict_accepts_huge_finite_values_whose_sum_overflows(gray):
    batch = np.full((2, 1, 8, 8), 3e38, np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(batch.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no overflow warning either
        assert gray.predict(batch).shape[0] == 2


def test_predict_takes_non_contiguous_and_other_float_batches(gray):
    batch = reference_preprocess(random_images(6))
    expected = gray.predict(batch)
    np.testing.assert_array_equal(gray.predict(batch[::-1])[::-1], expected)  # a view with negative strides
    np.testing.assert_array_equal(gray.predict(np.asfortranarray(batch)), expected)
    np.testing.assert_array_equal(gray.predict(batch.astype(np.float64)), expected)
    np.testing.assert_array_equal(gray.predict(batch.astype(">f4")), expected)  # big-endian: converted


@pytest.mark.parametrize("layout", ["contiguous", "view"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_path_of_predict_rejects_non_finite_values(gray, layout, bad):
    batch = reference_preprocess(random_images(4))
    batch[3, 0, 7, 7] = bad
    if layout == "view":
        batch = batch[::-1]  # now at index 0: a non-contiguous batch takes the same check
    with pytest.raises(CnncError, match="NaN or infinite values"):
        gray.predict(batch)


@pytest.mark.parametrize("size", [*range(1, 70), 784, 3072, 196608])
def test_the_finiteness_check_finds_nan_and_infinities_anywhere(size):
    """Every position of short arrays (SIMD kernels treat the tail apart), spread positions of long ones."""
    from cnnc.runtime.model import all_finite

    values = np.random.default_rng(size).uniform(-3e38, 3e38, size).astype(np.float32)
    assert all_finite(values)
    positions = range(size) if size < 100 else np.random.default_rng(0).choice(size, 50, replace=False)
    for position in positions:
        for bad in (np.nan, np.inf, -np.inf):
            broken = values.copy()
            broken[position] = bad
            assert not all_finite(broken), (size, position, bad)
    both = values.copy()
    both[[0, -1]] = (np.inf, -np.inf)  # inf + -inf is NaN: still caught
    assert not all_finite(both)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_predict_checks_what_it_runs_after_the_cast(gray):
    """A float64 value beyond float32's range becomes inf in the batch that would run: rejected."""
    batch = np.zeros((1, 1, 8, 8), np.float64)
    batch[0, 0, 3, 3] = 1e300
    with pytest.raises(CnncError, match=r"NaN or infinite values \(the first at index \(0, 0, 3, 3\): inf\)"):
        gray.predict(batch)


def test_probabilities_apply_softmax_to_logits(gray):
    batch = reference_preprocess(random_images(5))
    probabilities = gray.probabilities(batch)
    np.testing.assert_allclose(probabilities, softmax(gray.predict(batch)), rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_probabilities_leave_probability_outputs_alone(tmp_path):
    metadata = cnnc_metadata(1, 8, LABELS, output="probabilities")
    model = Model.load(save(classifier(metadata=metadata, softmax=True), tmp_path / "softmax.onnx"))
    assert model.output_kind == "probabilities"
    batch = reference_preprocess(random_images(5))
    np.testing.assert_array_equal(model.probabilities(batch), model.predict(batch))


def test_softmax_is_stable_for_large_logits():
    from cnnc.runtime.model import softmax as runtime_softmax

    probabilities = runtime_softmax(np.array([[1000.0, 0.0, -1000.0]], np.float32))
    np.testing.assert_allclose(probabilities, [[1.0, 0.0, 0.0]], atol=1e-7)


# --- preprocess and classify -------------------------------------------------------------------


def test_preprocess_follows_the_metadata(gray):
    images = random_images(5)
    np.testing.assert_allclose(gray.preprocess(images), reference_preprocess(images), rtol=1e-5, atol=1e-6)
    assert gray.preprocess(images).dtype == np.float32


def test_per_channel_mean_and_std(tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    preprocess = json.dumps({"scale": 1 / 255, "mean": mean, "std": std})
    metadata = cnnc_metadata(3, 8, ["a", "b", "c"]) | {"cnnc.preprocess": preprocess}
    model = Model.load(save(classifier(channels=3, metadata=metadata), tmp_path / "rgb.onnx"))
    images = random_images(2, channels=3)
    expected = (images / 255.0 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    np.testing.assert_allclose(model.preprocess(images), expected, rtol=1e-5, atol=1e-6)


def check_predictions(model: Model, predictions: list[Prediction], images_nchw: np.ndarray, names: list[str]) -> None:
    """Each prediction agrees with probabilities() on the same images."""
    probabilities = model.probabilities(model.preprocess(images_nchw))
    assert [prediction.input for prediction in predictions] == names
    for prediction, row in zip(predictions, probabilities):
        best = int(row.argmax())
        assert prediction.label == model.labels[best]
        assert prediction.score == pytest.approx(float(row[best]), rel=1e-6)
        assert prediction.top_k[0] == (prediction.label, prediction.score)


def test_classify_forms_of_grayscale_arrays(gray):
    images = random_images(4)
    names = ["#0", "#1", "#2", "#3"]
    check_predictions(gray, gray.classify(images), images, names)  # N x C x H x W
    check_predictions(gray, gray.classify(images[:, 0]), images, names)  # N x H x W
    check_predictions(gray, gray.classify(images.transpose(0, 2, 3, 1)), images, names)  # N x H x W x C
    check_predictions(gray, gray.classify(list(images[:, 0])), images, names)  # list of H x W
    check_predictions(gray, gray.classify(images[0, 0]), images[:1], ["#0"])  # one H x W
    check_predictions(gray, gray.classify(images[0].transpose(1, 2, 0)), images[:1], ["#0"])  # one H x W x 1


def test_classify_forms_of_rgb_arrays(rgb):
    images = random_images(3, channels=3)
    names = ["#0", "#1", "#2"]
    channels_last = images.transpose(0, 2, 3, 1)
    check_predictions(rgb, rgb.classify(images), images, names)
    check_predictions(rgb, rgb.classify(channels_last), images, names)
    check_predictions(rgb, rgb.classify(list(channels_last)), images, names)
    check_predictions(rgb, rgb.classify(channels_last[1]), images[1:2], ["#0"])


def test_classify_files_and_arrays_mixed(gray, tmp_path):
    images = random_images(3)
    paths = [write_png(tmp_path / f"digit{index}.png", image[0]) for index, image in enumerate(images)]
    check_predictions(gray, gray.classify(paths), images, [str(path) for path in paths])
    check_predictions(gray, gray.classify(str(paths[0])), images[:1], [str(paths[0])])
    mixed = gray.classify([paths[0], images[1, 0], str(paths[2])])
    check_predictions(gray, mixed, images, [str(paths[0]), "#1", str(paths[2])])


def test_classify_converts_files_to_the_model_colour_mode(gray, rgb, tmp_path):
    rgb_pixels = random_images(1, channels=3)[0].transpose(1, 2, 0)
    path = write_png(tmp_path / "colour.png", rgb_pixels)
    as_gray = np.asarray(Image.fromarray(rgb_pixels).convert("L"))
    with pytest.warns(ImageConversion, match="is RGB: converted to grayscale for this 1-channel model"):
        check_predictions(gray, gray.classify(path), as_gray[None, None], [str(path)])
    gray_path = write_png(tmp_path / "gray.png", rgb_pixels[..., 0])
    as_rgb = np.repeat(rgb_pixels[None, ..., :1], 3, axis=-1).transpose(0, 3, 1, 2)
    with pytest.warns(ImageConversion, match="is grayscale: converted to RGB for this 3-channel model"):
        check_predictions(rgb, rgb.classify(gray_path), as_rgb, [str(gray_path)])


def test_classify_top_k_is_ranked_and_capped(gray):
    images = random_images(2)
    predictions = gray.classify(images, top_k=2)
    for prediction in predictions:
        assert len(prediction.top_k) == 2
        assert prediction.top_k[0][1] >= prediction.top_k[1][1]
    everything = gray.classify(images, top_k=10)[0]
    assert sorted(label for label, _ in everything.top_k) == sorted(LABELS)
    assert sum(score for _, score in everything.top_k) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 8, 8), np.float32), r"has dtype float32, but images must be uint8 .* \(x \* 255\)\.round\(\)"),
        (np.zeros((8, 8, 3), np.uint8),
         r"image #0 has 3 channels \(RGB\) but the model takes 1 channel \(grayscale\); .*convert\('L'\)"),
        (np.zeros((2, 9, 9), np.uint8), r"is 9x9 \(height x width\) but the model takes 8x8 images; resize it first"),
        ([np.zeros((8, 8), np.uint8), np.zeros((7, 8), np.uint8)],
         r"image #1 is 7x8 \(height x width\) but the model takes 8x8"),
        ([], "no images given"),
        (42, "expected image file paths or uint8 image arrays, received int"),
        ([np.zeros((1, 1, 8, 8), np.uint8)],
         r"image #0 must be an image file path or a uint8 array of shape \(H, W\) or \(H, W, C\)"),
    ],
)
def test_classify_rejects_wrong_images(gray, images, message):
    with pytest.raises(CnncError, match=message):
        gray.classify(images)


def test_classify_rejects_grayscale_for_an_rgb_model(rgb):
    with pytest.raises(CnncError, match=r"has 1 channel \(grayscale\) but the model takes 3 channels \(RGB\)"):
        rgb.classify(np.zeros((2, 8, 8), np.uint8))


def test_classify_names_the_file_with_the_wrong_size(gray, tmp_path):
    path = write_png(tmp_path / "big.png", np.zeros((28, 20), np.uint8))
    with pytest.raises(CnncError, match=r"image .*big\.png is 28x20 \(height x width\) but the model takes 8x8 images"):
        gray.classify([path])


def test_classify_unreadable_files(gray, tmp_path):
    with pytest.raises(CnncError, match=r"image file .*missing\.png does not exist"):
        gray.classify(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(CnncError, match=r"cannot read image .*notes\.png: "):
        gray.classify(text)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_classify_rejects_bad_top_k(gray, top_k):
    with pytest.raises(CnncError, match="top_k must be a positive int"):
        gray.classify(random_images(1), top_k=top_k)


# --- concurrency and imports -------------------------------------------------------------------


def test_one_model_serves_many_threads(gray_path):
    model = Model.load(gray_path, provider="cpu", batch_size=4)
    batches = [reference_preprocess(random_images(count, seed=count)) for count in range(1, 17)]
    sequential = [model.predict(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(model.predict, batches * 4))
    for expected, got in zip(sequential * 4, concurrent):
        np.testing.assert_array_equal(got, expected)
    images = random_images(8)
    expected_labels = [prediction.label for prediction in model.classify(images, top_k=3)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: [p.label for p in model.classify(images, top_k=3)], range(32)))
    assert all(labels == expected_labels for labels in results)


def run_python(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_the_runtime_needs_no_compiler_dependencies(gray_path, tmp_path):
    png = write_png(tmp_path / "digit.png", random_images(1)[0, 0])
    code = f"""
import sys
import numpy as np
import cnnc.runtime
from cnnc.runtime import Model
model = Model.load({str(gray_path)!r})
model.predict(np.zeros((2, 1, 8, 8), np.float32))
model.classify([{str(png)!r}], top_k=2)
print(sorted(name for name in ("torch", "lark", "onnx") if name in sys.modules))
"""
    assert run_python(code).strip() == "[]"


def test_the_runtime_cli_module_imports_only_the_standard_library():
    code = """
import sys
import cnnc.runtime
import cnnc.runtime.cli
print(sorted(name for name in ("numpy", "onnxruntime", "PIL", "torch", "lark", "onnx") if name in sys.modules))
"""
    assert run_python(code).strip() == "[]"
