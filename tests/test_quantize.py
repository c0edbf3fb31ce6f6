"""`cnnc quantize`: int8 QDQ quantisation of a (tiny, briefly trained) MNIST model behind an accuracy gate."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

torch = pytest.importorskip("torch")

from cnnc.cli import main  # noqa: E402
from cnnc.compiler.backends.onnx import ir_version_for  # noqa: E402
from cnnc.runtime.model import Model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("CNNC_DATA", ROOT.parent / "shared" / "data")) / "mnist"

# Batch norm after a bias-free convolution: what onnxruntime's pre-processing folds away.
TINY = """
model tiny_mnist {
    input image(1, 28, 28)
    conv(8, kernel=3, padding=same, bias=false) -> batchnorm -> relu
    maxpool(2)
    conv(16, kernel=3, activation=relu)
    maxpool(2)
    flatten
    dense(10)
}
train { dataset mnist; optimizer adam(lr=0.003); batch 32; epochs 1; normalize(mean=0.1307, std=0.3081) }
"""
QUICK = ["--data", str(MNIST), "--calibration", "64", "--limit", "400"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("quantize")
    (folder / "tiny.cnn").write_text(TINY)
    run = folder / "run"
    assert main(["train", str(folder / "tiny.cnn"), "--data", str(MNIST), "--limit-train", "1000",
                 "--limit-test", "400", "--quiet", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def quantized(run_dir, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["quantize", str(run_dir), "-o", str(output), *QUICK]) == 0
    return output, out.getvalue()


def test_quantize_writes_an_int8_model_within_the_gate(quantized):
    output, printed = quantized
    model = onnx.load(output)
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "BatchNormalization" not in ops
    assert model.ir_version == ir_version_for(17) and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    # Per-channel weights: the first convolution's weights have one scale per output channel.
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    int8_weights = [name for name, value in weights.items() if value.dtype == np.int8 and value.ndim == 4]
    assert int8_weights
    scales = [node.input[1] for node in model.graph.node
              if node.op_type == "DequantizeLinear" and node.input[0] in int8_weights]
    assert sorted(weights[name].shape for name in scales) == [(8,), (16,)]

    meta = {p.key: p.value for p in model.metadata_props}
    report = json.loads(meta["cnnc.quantization"])
    assert report["test_images"] == 400 and report["calibration_images"] == 64
    assert report["fp32_accuracy"] > 0.5 and report["drop_points"] <= 1.0
    assert report["drop_points"] == pytest.approx((report["fp32_accuracy"] - report["int8_accuracy"]) * 100)
    assert report["int8_bytes"] < report["fp32_bytes"]
    assert set(report["latency_ratio"]) == {"1", "64"} and all(r > 0 for r in report["latency_ratio"].values())
    assert meta["cnnc.labels"] == json.dumps([str(i) for i in range(10)]) and meta["cnnc.dataset"] == "mnist"
    assert f"int8 {report['int8_accuracy']:.4f}" in printed and "latency at batch 64" in printed


def test_the_stored_int8_accuracy_is_what_cnnc_eval_measures(quantized, capsys):
    output, _ = quantized
    report = json.loads({p.key: p.value for p in onnx.load(output).metadata_props}["cnnc.quantization"])
    assert main(["eval", str(output), "--data", str(MNIST), "--limit", "400", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["int8_accuracy"]


def test_an_impossible_gate_refuses_and_writes_nothing(run_dir, tmp_path, capsys):
    output = tmp_path / "never.int8.onnx"
    assert main(["quantize", str(run_dir), "-o", str(output), *QUICK, "--max-drop", "-100"]) == 1
    err = capsys.readouterr().err
    assert "more than the -100 allowed (--max-drop): nothing was written" in err
    assert "accuracy on 400 test images: fp32" in err
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_the_uint8_form_of_the_int8_model(run_dir, quantized, tmp_path, capsys):
    plain_path, _ = quantized
    output = tmp_path / "tiny.int8.u8.onnx"
    assert main(["quantize", str(run_dir), "-o", str(output), *QUICK, "--input", "uint8", "--top-k", "3"]) == 0
    capsys.readouterr()
    deployed = Model.load(output, provider="cpu")
    assert deployed.input_form == "uint8" and deployed.session.get_outputs()[2].name == "top_k_indices"
    files = []
    for index, image in enumerate(np.random.default_rng(3).integers(0, 256, (3, 28, 28), dtype=np.uint8)):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(files[-1])
    answers = []
    for path in (plain_path, output):
        assert main(["predict", str(path), *map(str, files), "--top-k", "3", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert [a["top_k"] for a in answers[0]] == [a["top_k"] for a in answers[1]]


@pytest.mark.parametrize("flags, message", [
    (["--calibration", "0"], "--calibration must be a positive integer, got 0"),
    (["--limit", "0"], "--limit must be a positive integer, got 0"),
    (["--top-k", "0"], "--top-k must be a positive integer, got 0"),
    (["--data", "/nonexistent/mnist"], "--data /nonexistent/mnist does not exist"),
])
def test_usage_errors(run_dir, tmp_path, flags, message, capsys):
    assert main(["quantize", str(run_dir), "-o", str(tmp_path / "x.onnx"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_run_is_a_usage_error(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no such run directory or checkpoint" in capsys.readouterr().err
