"""`cnnc predict`, `cnnc eval`, `cnnc bench`, and examples/embed_classifier.py."""

from __future__ import annotations

import json
import subprocess
import sys
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

import cnnc.datasets
from cnnc.cli import main
from cnnc.datasets import Dataset
from cnnc.runtime import Model

REPOSITORY = Path(__file__).resolve().parents[1]
XO_LABELS = ["x", "o"]


@pytest.fixture(scope="module")
def xo_proto():
    """An untrained model shaped for the xo dataset: 1 x 28 x 28 in, 2 classes out."""
    return classifier(channels=1, size=28, classes=2, metadata=cnnc_metadata(1, 28, XO_LABELS))


@pytest.fixture(scope="module")
def xo_model(xo_proto, tmp_path_factory) -> Path:
    return save(xo_proto, tmp_path_factory.mktemp("models") / "xo.onnx")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [write_png(folder / f"glyph{index}.png", image[0]) for index, image in enumerate(random_images(3, size=28))]


def expected_labels(proto, paths: list[Path]) -> list[str]:
    pixels = np.stack([np.asarray(Image.open(path))[None] for path in paths])
    return [XO_LABELS[index] for index in reference_output(proto, reference_preprocess(pixels)).argmax(axis=1)]


# --- predict -----------------------------------------------------------------------------------


def test_predict_prints_one_line_per_image(xo_proto, xo_model, pngs, capsys):
    assert main(["predict", str(xo_model), *map(str, pngs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pngs)
    for line, path, label in zip(lines, pngs, expected_labels(xo_proto, pngs)):
        name, printed_label, score = line.split()
        assert (name, printed_label) == (str(path), label)
        assert score.startswith("(") and 0.5 <= float(score.strip("()")) <= 1


def test_predict_top_k_in_human_output(xo_model, pngs, capsys):
    assert main(["predict", str(xo_model), str(pngs[0]), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert "top 2: " in line
    assert {"x", "o"} <= set(line.replace(",", " ").split())


def test_predict_json(xo_proto, xo_model, pngs, capsys):
    assert main(["predict", str(xo_model), *map(str, pngs), "--json", "--top-k", "5", "--provider", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["input"] for result in results] == [str(path) for path in pngs]
    assert [result["label"] for result in results] == expected_labels(xo_proto, pngs)
    for result in results:
        assert set(result) == {"input", "label", "score", "top_k"}
        assert len(result["top_k"]) == 2  # capped at the class count
        assert result["top_k"][0] == {"label": result["label"], "score": result["score"]}
        assert sum(entry["score"] for entry in result["top_k"]) == pytest.approx(1.0, rel=1e-5)


def test_predict_missing_model_is_a_usage_error(tmp_path, pngs, capsys):
    assert main(["predict", str(tmp_path / "nothing.onnx"), str(pngs[0])]) == 2
    assert "cnnc predict: error: model file" in capsys.readouterr().err


def test_predict_missing_image_is_a_usage_error(xo_model, tmp_path, capsys):
    assert main(["predict", str(xo_model), str(tmp_path / "missing.png")]) == 2
    assert f"image file {tmp_path / 'missing.png'} does not exist" in capsys.readouterr().err


def test_predict_wrong_image_size_is_an_input_error(xo_model, tmp_path, capsys):
    small = write_png(tmp_path / "small.png", np.zeros((8, 8), np.uint8))
    assert main(["predict", str(xo_model), str(small)]) == 1
    assert "is 8x8 (height x width) but the model takes 28x28 images" in capsys.readouterr().err


def test_predict_invalid_model_is_an_input_error(tmp_path, pngs, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    assert main(["predict", str(junk), str(pngs[0])]) == 1
    assert "is not a valid ONNX model" in capsys.readouterr().err


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="CUDA is available")
def test_predict_on_missing_cuda_is_an_input_error(xo_model, pngs, capsys):
    assert main(["predict", str(xo_model), str(pngs[0]), "--provider", "cuda"]) == 1
    assert "CUDAExecutionProvider is not available" in capsys.readouterr().err


def test_predict_rejects_a_bad_top_k(xo_model, pngs):
    with pytest.raises(SystemExit) as exited:
        main(["predict", str(xo_model), str(pngs[0]), "--top-k", "0"])
    assert exited.value.code == 2


# --- eval --------------------------------------------------------------------------------------


def fake_test_set(monkeypatch, images: np.ndarray, labels: np.ndarray, classes=tuple(XO_LABELS)) -> list[tuple]:
    """Make load_dataset return these images; returns the calls it received."""
    calls = []

    def load_dataset(name, split, data_dir=None, download=False, download_hint=None):
        calls.append((name, split, data_dir))
        return Dataset(name, split, np.ascontiguousarray(images), labels.astype(np.int64), classes)

    monkeypatch.setattr(cnnc.datasets, "load_dataset", load_dataset)
    return calls


def test_eval_counts_correct_predictions(xo_model, monkeypatch, capsys):
    images = random_images(40, size=28)
    predicted = Model.load(xo_model).classify(images)
    labels = np.array([XO_LABELS.index(prediction.label) for prediction in predicted])
    labels[:10] = 1 - labels[:10]  # a quarter wrong
    calls = fake_test_set(monkeypatch, images, labels)
    assert main(["eval", str(xo_model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"accuracy": 0.75, "n": 40}
    assert calls == [("xo", "test", None)]  # the dataset named in the model's metadata


def test_eval_limit_dataset_and_data(xo_model, monkeypatch, tmp_path, capsys):
    images = random_images(30, size=28)
    predicted = Model.load(xo_model).classify(images)
    labels = np.array([XO_LABELS.index(prediction.label) for prediction in predicted])
    calls = fake_test_set(monkeypatch, images, labels)
    assert main(["eval", str(xo_model), "--dataset", "npz", "--data", str(tmp_path), "--limit", "12"]) == 0
    assert capsys.readouterr().out.startswith("accuracy 1.0000 on 12 npz test images")
    assert calls == [("npz", "test", tmp_path)]


def test_eval_on_the_xo_dataset(xo_proto, xo_model, capsys):
    assert main(["eval", str(xo_model), "--dataset", "xo", "--limit", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    test_set = cnnc.datasets.load_dataset("xo", "test").subset(50)
    predicted = reference_output(xo_proto, reference_preprocess(test_set.images)).argmax(axis=1)
    assert result == {"accuracy": pytest.approx(float((predicted == test_set.labels).mean())), "n": 50}


def test_eval_rejects_a_dataset_of_another_shape(xo_model, monkeypatch, capsys):
    fake_test_set(monkeypatch, random_images(5, channels=3, size=32), np.zeros(5))
    assert main(["eval", str(xo_model)]) == 1
    assert "xo has 3x32x32 images (C x H x W) but" in capsys.readouterr().err


def test_eval_rejects_a_dataset_with_other_classes(xo_model, monkeypatch, capsys):
    fake_test_set(monkeypatch, random_images(5, size=28), np.zeros(5), classes=("a", "b", "c"))
    assert main(["eval", str(xo_model)]) == 1
    assert "xo has 3 classes but" in capsys.readouterr().err


def test_eval_needs_a_dataset_name(tmp_path, capsys):
    unnamed = save(classifier(size=28, classes=2), tmp_path / "unnamed.onnx")
    assert main(["eval", str(unnamed)]) == 2
    assert "does not name the dataset it was trained on; pass --dataset" in capsys.readouterr().err


def test_eval_missing_data_is_a_usage_error(xo_model, tmp_path, capsys):
    assert main(["eval", str(xo_model), "--dataset", "mnist", "--data", str(tmp_path / "nowhere")]) == 2
    assert "--data" in capsys.readouterr().err


# --- bench -------------------------------------------------------------------------------------


def test_bench_json(xo_model, capsys):
    arguments = ["bench", str(xo_model), "--batch-sizes", "1,4", "--iterations", "5", "--warmup", "1", "--json"]
    assert main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provider"] == "cpu"
    assert (report["iterations"], report["warmup"]) == (5, 1)
    assert [result["batch_size"] for result in report["results"]] == [1, 4]
    for result in report["results"]:
        assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
        assert result["images_per_s"] > 0


def test_bench_table(xo_model, capsys):
    assert main(["bench", str(xo_model), "--batch-sizes", "2", "--iterations", "3", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 timed runs per batch size after 0 warm-up runs" in lines[0]
    assert lines[1].split() == ["batch", "p50", "ms", "p90", "ms", "p99", "ms", "images/s"]
    assert lines[2].split()[0] == "2"


@pytest.mark.parametrize("sizes", ["0", "1,x", ""])
def test_bench_rejects_bad_batch_sizes(xo_model, sizes):
    with pytest.raises(SystemExit) as exited:
        main(["bench", str(xo_model), "--batch-sizes", sizes])
    assert exited.value.code == 2


def test_bench_missing_model_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nothing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the embedding example ---------------------------------------------------------------------


def test_embed_classifier_example(xo_proto, xo_model, pngs):
    script = REPOSITORY / "examples" / "embed_classifier.py"
    completed = subprocess.run(
        [sys.executable, str(script), str(xo_model), *map(str, pngs)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    header, *lines = completed.stdout.splitlines()
    assert "classes: x, o" in header
    for line, path, label in zip(lines, pngs, expected_labels(xo_proto, pngs), strict=True):
        assert line.startswith(f"{path}: {label} (")


def test_embed_classifier_example_reports_errors(tmp_path):
    script = REPOSITORY / "examples" / "embed_classifier.py"
    completed = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "missing.onnx"), "x.png"], capture_output=True, text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert "does not exist" in completed.stderr
