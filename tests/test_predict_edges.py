"""`cnnc predict`, `eval` and `bench` at the edges: 16-bit and float images, resizing, directories,
unreadable files among good ones, stated colour conversion, foreign ONNX outputs, huge inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from cnnc.cli import main
from cnnc.errors import CnncError
from cnnc.runtime import Model

ROOT = Path(__file__).resolve().parents[1]
SPEC = "model m {\n input x(1, 8, 8)\n flatten\n dense(2)\n}\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("predict")
    (directory / "m.cnn").write_text(SPEC)
    assert main(["compile", str(directory / "m.cnn"), "-o", str(directory / "m.onnx")]) == 0
    return directory / "m.onnx"


def grey(path: Path, size: int = 8, value: int = 200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_a_16_bit_png_reads_as_its_8_bit_equivalent(model_path: Path, tmp_path: Path) -> None:
    model = Model.load(model_path, provider="cpu")
    values = np.zeros((8, 8), np.uint16)
    values[2:6, 2:6] = 65535
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    Image.fromarray((values // 257).astype(np.uint8)).save(tmp_path / "eight.png")
    sixteen = model.preprocess([str(tmp_path / "sixteen.png")])
    eight = model.preprocess([str(tmp_path / "eight.png")])
    assert np.array_equal(sixteen, eight) and sixteen.max() == 1.0


def test_a_float_tiff_is_refused(model_path: Path, tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(CnncError, match="floating-point pixels"):
        Model.load(model_path, provider="cpu").classify([str(tmp_path / "float.tif")])


def test_colour_conversion_is_stated(model_path: Path, tmp_path: Path, capsys) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Model.load(model_path, provider="cpu").classify([str(tmp_path / "colour.png")])
    assert any("RGB" in str(w.message) and "grayscale" in str(w.message) for w in caught)
    assert main(["predict", str(model_path), str(tmp_path / "colour.png")]) == 0
    assert "colour.png is RGB: converted to grayscale" in capsys.readouterr().err


def test_predict_resizes_when_asked(model_path: Path, tmp_path: Path, capsys) -> None:
    large = grey(tmp_path / "large.png", size=32)
    assert main(["predict", str(model_path), str(large)]) == 1
    assert "resize it first" in capsys.readouterr().err
    assert main(["predict", str(model_path), str(large), "--resize"]) == 0
    out = capsys.readouterr()
    assert str(large) in out.out and "resized from 32x32 to 8x8" in out.err


def test_predict_takes_directories_and_labels_the_rest_after_a_bad_file(model_path: Path, tmp_path: Path,
                                                                         capsys) -> None:
    grey(tmp_path / "images" / "a.png")
    grey(tmp_path / "images" / "sub" / "b.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    single = grey(tmp_path / "c.png")
    assert main(["predict", str(model_path), str(tmp_path / "images"), str(single)]) == 1
    out, err = capsys.readouterr()
    labelled = [line.split()[0] for line in out.splitlines()]
    assert labelled == [str(tmp_path / "images" / "a.png"), str(tmp_path / "images" / "sub" / "b.png"), str(single)]
    assert "broken.png" in err and "notes.txt" not in err and "Traceback" not in err


def test_an_empty_directory_is_a_usage_error(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(model_path), str(tmp_path / "empty")]) == 2


def _foreign(path: Path, output_shape: list[int]) -> Path:
    """A model whose one input is [N, 1, 8, 8] and whose output has `output_shape` (an Identity or Reshape)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    if len(output_shape) == 4:
        nodes = [helper.make_node("Identity", ["x"], ["y"])]
        initializers = []
    else:
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
        initializers = [helper.make_tensor("shape", TensorProto.INT64, [len(output_shape)], output_shape)]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "foreign", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("shape", [[-1], [1, 1, 8, 8]])
def test_a_foreign_model_of_the_wrong_output_rank_is_a_clear_error(shape: list[int], tmp_path: Path,
                                                                   capsys) -> None:
    path = _foreign(tmp_path / "foreign.onnx", shape)
    image = grey(tmp_path / "a.png")
    assert main(["predict", str(path), str(image)]) == 1
    err = capsys.readouterr().err
    assert f"outputs a {len(shape)}-dimensional tensor" in err and "Traceback" not in err
    assert main(["eval", str(path), "--dataset", "xo", "--limit", "4"]) == 1
    assert "dimensional tensor" in capsys.readouterr().err


def test_bench_refuses_a_huge_declared_input_with_the_memory_figure(tmp_path: Path, capsys) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 100000, 100000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    mean = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    model = helper.make_model(helper.make_graph([mean], "huge", [x], [y], [axes]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "huge.onnx")
    assert main(["bench", str(tmp_path / "huge.onnx"), "--batch-sizes", "1"]) == 1
    err = capsys.readouterr().err
    assert "needs 139.7 GiB of input" in err and "Traceback" not in err  # 3e10 pixels: uint8 + float32
