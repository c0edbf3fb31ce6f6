"""The front end's commands: exit codes, output, JSON, import isolation, packaging."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cnnc.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.cnn"))

# Each tutorial spec's published parameter count (the table of the front-end issue).
PUBLISHED_PARAMS = {
    "keras_mnist": 62_346,
    "tf_mnist_deep": 1_378_698,
    "tf_mnist_5x5": 3_199_106,
    "lenet_selu": 176_286,
    "cifar10": 1_250_858,
}


@pytest.fixture(autouse=True)
def _from_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_every_spec_checks_clean() -> None:
    assert main(["check", *map(str, SPECS)]) == 0


@pytest.mark.parametrize("name,params", PUBLISHED_PARAMS.items())
def test_summary_reproduces_the_published_parameter_counts(name: str, params: int, capsys) -> None:
    assert main(["summary", f"specs/{name}.cnn", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trainable_params"] == params
    assert summary["total_params"] == params + summary["non_trainable_params"]


def test_keras_mnist_shapes(capsys) -> None:
    main(["summary", "specs/keras_mnist.cnn", "--json"])
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [tuple(layer["output_shape"]) for layer in layers] == [
        (1, 28, 28), (32, 24, 24), (32, 12, 12), (64, 8, 8), (64, 4, 4), (1024,), (10,)]
    assert [layer["params"] for layer in layers if layer["params"]] == [832, 51_264, 10_250]


def test_text_summary_shows_the_totals(capsys) -> None:
    main(["summary", "specs/lenet_selu_bn.cnn"])
    out = capsys.readouterr().out
    assert "trainable parameters                          229,918" in out
    assert "non-trainable values                          768" in out


def test_tf_deep_same_pooling_takes_7_to_4(capsys) -> None:
    main(["summary", "specs/tf_mnist_deep.cnn", "--json"])
    layers = {layer["name"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["maxpool3"]["output_shape"] == [128, 4, 4]
    assert layers["flatten1"]["output_shape"] == [2048]


def test_errors_exit_1_and_are_rendered(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.cnn"
    spec.write_text("model bad {\n    input image(1, 4, 4)\n    conv(8, kernel=5)\n}\n")
    assert main(["check", str(spec)]) == 1
    out = capsys.readouterr().out
    assert f"{spec}:3:5: error[E010]" in out
    assert "    conv(8, kernel=5)\n  |     ^^^^^^^^^^^^^^^^^" in out


def test_check_json(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.cnn"
    spec.write_text("model bad {\n    input image(1, 28, 28)\n    maxpol(2)\n}\n")
    assert main(["check", "--json", str(spec)]) == 1
    [diagnostic] = json.loads(capsys.readouterr().out)
    assert diagnostic["code"] == "E002" and diagnostic["line"] == 3 and diagnostic["column"] == 5
    assert "did you mean 'maxpool'?" in diagnostic["notes"]


def test_usage_errors_exit_2(capsys) -> None:
    assert main(["check", "no/such/spec.cnn"]) == 2
    assert "no such spec file: no/such/spec.cnn" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["summary"])
    assert exit_.value.code == 2


def test_summary_of_a_spec_with_errors_exits_1(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "bad.cnn"
    spec.write_text("model bad { input image(1, 28, 28) dense(10) }\n")
    assert main(["summary", str(spec)]) == 1
    assert "has errors" in capsys.readouterr().err


def test_undecodable_bytes_are_a_diagnostic(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "binary.cnn"
    spec.write_bytes(b"model m { input image(1, 28, 28) \xff\xfe }")
    assert main(["check", str(spec)]) == 1
    assert "error[E001]" in capsys.readouterr().out


def test_max_params_flag(capsys) -> None:
    assert main(["check", "--max-params", "100000", "specs/tf_mnist_5x5.cnn"]) == 1
    assert "3,199,106 parameters" in capsys.readouterr().out


def test_emit_ir(capsys) -> None:
    assert main(["compile", "specs/keras_mnist.cnn", "--emit", "ir"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph keras_mnist(%image: float32[N, 1, 28, 28]) -> float32[N, 10] {")
    assert "return %dense1" in out


def test_checking_imports_no_torch_nor_onnx() -> None:
    code = (
        "import sys\n"
        "from cnnc.cli import main\n"
        f"code = main(['check', {str(SPECS[0])!r}, 'specs/resnet_cifar.cnn'])\n"
        "loaded = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_wheel_installs_everything_under_cnnc(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("cnnc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"cnnc", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for module in ("cnnc/dsl/cnn.lark", "cnnc/compiler/check.py", "cnnc/runtime/__init__.py", "cnnc/cli.py"):
        assert module in names


@pytest.mark.parametrize("expression", ["1+" * 5000 + "1", "(" * 3000 + "1" + ")" * 3000])
def test_pathologically_deep_expressions_are_a_diagnostic(expression: str, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "deep.cnn"
    spec.write_text(f"model m {{ input x(1, 8, 8) conv({expression}, 3) }}")
    code = main(["check", str(spec)])
    out = capsys.readouterr().out
    assert code in (0, 1) and "Traceback" not in out
    if code == 1:
        assert "error[E001]: the spec nests too deeply to process" in out or "nest more than 100 levels" in out
