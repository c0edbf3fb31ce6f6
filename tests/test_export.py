"""`cnnc export`: a trained checkpoint to ONNX behind the parity gate, and what happens when it fails."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_onnx_support import ROOT, max_error, run_ort

torch = pytest.importorskip("torch")

from cnnc.cli import main  # noqa: E402
from cnnc.compiler.check import check_file  # noqa: E402
from cnnc.export import exporter  # noqa: E402
from cnnc.export.exporter import ParityError, export_checkpoint  # noqa: E402


def make_run(run_dir, spec_path, seed=3, classes=None, dataset="xo", test_accuracy=0.96):
    """A run directory with a last.pt as training writes it, holding perturbed weights (random batch-norm
    statistics too, so that every parameter matters)."""
    from cnnc.compiler.backends.pytorch import build_module
    from cnnc.training.checkpoint import load_checkpoint, save_checkpoint

    result = check_file(spec_path)
    program = result.program
    state = build_module(program.graph, seed=seed).state_dict()
    generator = torch.Generator().manual_seed(seed)
    for name, value in state.items():
        if name.endswith("running_var"):
            state[name] = torch.rand(value.shape, generator=generator) + 0.5
        elif name.endswith(("running_mean", ".bias")):
            state[name] = torch.randn(value.shape, generator=generator) * 0.1
    run_dir.mkdir(parents=True, exist_ok=True)
    classes = classes or [f"class{i}" for i in range(program.graph.num_classes)]
    channels = program.graph.input.shape[0]
    save_checkpoint({
        "model": state, "model_name": program.graph.name, "spec_path": str(spec_path),
        "sources": dict(result.sources), "classes": classes, "input_shape": list(program.graph.input.shape),
        "preprocess": {"scale": 1 / 255, "mean": [0.5] * channels, "std": [0.25] * channels},
        "dataset": dataset, "settings": {}, "epoch": 3, "finished": True, "test_accuracy": test_accuracy,
    }, run_dir / "last.pt")
    return load_checkpoint(run_dir)


@pytest.fixture(scope="module")
def xo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "xo"
    return run_dir, make_run(run_dir, ROOT / "specs" / "xo.cnn", classes=["x", "o"])


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "resnet"
    return run_dir, make_run(run_dir, ROOT / "specs" / "resnet_cifar.cnn", dataset="cifar10", test_accuracy=0.9)


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def torch_output(checkpoint, x, outputs=None):
    from cnnc.compiler.backends.pytorch import build_module
    from cnnc.compiler.passes import with_outputs

    graph = with_outputs(exporter.program_of(checkpoint).graph, outputs)
    with torch.no_grad():
        return build_module(graph, weights=checkpoint.model_state).eval()(torch.from_numpy(x)).numpy()


def test_export_writes_a_model_that_matches_pytorch(xo_run, tmp_path, capsys):
    run_dir, checkpoint = xo_run
    output = tmp_path / "xo.onnx"
    assert main(["export", str(run_dir), "-o", str(output)]) == 0
    err = capsys.readouterr().err
    assert "max abs diff" in err and "max rel diff" in err and "within tolerance 0.0001" in err
    assert f"wrote {output}" in err
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    meta = metadata(output)
    assert json.loads(meta["cnnc.labels"]) == ["x", "o"]
    assert (meta["cnnc.dataset"], json.loads(meta["cnnc.test_accuracy"])) == ("xo", 0.96)
    assert json.loads(meta["cnnc.preprocess"]) == {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    assert meta["cnnc.spec"] == (ROOT / "specs" / "xo.cnn").read_text()
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    assert max_error(run_ort(model, x)[0], torch_output(checkpoint, x)) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xo.onnx"]


def test_export_options_and_the_runtime_reading_the_result(xo_run, tmp_path, capsys):
    from cnnc.runtime.model import Model

    run_dir, checkpoint = xo_run
    output = tmp_path / "p.onnx"
    assert main(["export", str(run_dir / "last.pt"), "-o", str(output), "--outputs", "probabilities",
                 "--opset", "13", "--tolerance", "1e-3"]) == 0
    assert "within tolerance 0.001" in capsys.readouterr().err
    model = onnx.load(output)
    assert model.opset_import[0].version == 13 and model.ir_version == 7
    loaded = Model.load(output, provider="cpu")
    assert loaded.output_kind == "probabilities" and loaded.labels == ("x", "o")
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x), torch_output(checkpoint, x, "probabilities"), atol=1e-6)


def test_export_uses_the_sources_stored_in_the_checkpoint(tmp_path, capsys):
    spec = tmp_path / "tiny.cnn"
    spec.write_text("model tiny {\n input image(1, 6, 6)\n conv(2, kernel=3, padding=same) -> global_avgpool\n"
                    " dense(3)\n}\n")
    run_dir = tmp_path / "run"
    make_run(run_dir, spec)
    stored = spec.read_text()
    spec.write_text("model tiny {\n input image(1, 6, 6)\n flatten -> dense(7)\n}\n")  # edited since training
    assert main(["export", str(run_dir), "-o", str(tmp_path / "t.onnx")]) == 0
    assert metadata(tmp_path / "t.onnx")["cnnc.spec"] == stored
    spec.unlink()  # gone altogether
    assert main(["export", str(run_dir), "-o", str(tmp_path / "t2.onnx")]) == 0


def corrupt(weight: str):
    """The test hook: add 0.5 to one element of a weight of every ONNX model the export builds."""
    def tamper(model: onnx.ModelProto) -> None:
        for initializer in model.graph.initializer:
            if initializer.name == weight:
                array = numpy_helper.to_array(initializer).copy()
                array.flat[0] += 0.5
                initializer.CopyFrom(numpy_helper.from_array(array, weight))
                return
        raise AssertionError(f"no initializer {weight}")
    return tamper


@pytest.mark.parametrize("run, weight, layer", [
    ("resnet_run", "residual_down1.conv3.weight", "residual_down1.conv3"),
    ("resnet_run", "residual2.main.running_var", "residual2.main"),
    ("xo_run", "dense1.bias", "dense1"),
])
def test_a_corrupted_weight_fails_the_gate_naming_its_layer(run, weight, layer, request, tmp_path):
    run_dir, checkpoint = request.getfixturevalue(run)
    output = tmp_path / "model.onnx"
    output.write_bytes(b"an older export")
    with pytest.raises(ParityError) as failure:
        export_checkpoint(checkpoint, output, tamper=corrupt(weight))
    report = failure.value.report
    assert not report.passed and report.failing_batch == 1
    assert report.first_divergence.layer == layer
    assert f"the first layer whose outputs diverge is '{layer}'" in str(failure.value)
    assert output.read_bytes() == b"an older export"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left


def test_a_failing_gate_exits_1_and_writes_nothing(xo_run, tmp_path, monkeypatch, capsys):
    run_dir, _ = xo_run
    monkeypatch.setattr(exporter, "export_checkpoint",
                        functools.partial(exporter.export_checkpoint, tamper=corrupt("conv2.weight")))
    assert main(["export", str(run_dir), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "EXCEEDS tolerance" in err and "'conv2' (conv at " in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_the_gate_reports_layers_that_agree_yet_add_up_when_the_tolerance_is_below_rounding(xo_run, tmp_path):
    _, checkpoint = xo_run
    with pytest.raises(ParityError) as failure:
        export_checkpoint(checkpoint, tmp_path / "m.onnx", tolerance=1e-12)
    assert "EXCEEDS tolerance 1e-12" in str(failure.value)
    assert list(tmp_path.iterdir()) == []


def test_usage_and_input_errors(xo_run, tmp_path, capsys):
    run_dir, _ = xo_run
    output = str(tmp_path / "m.onnx")
    assert main(["export", str(tmp_path / "missing"), "-o", output]) == 2
    assert main(["export", str(run_dir), "-o", str(tmp_path / "no" / "m.onnx")]) == 2
    assert main(["export", str(run_dir), "-o", output, "--opset", "12"]) == 2
    assert main(["export", str(run_dir), "-o", output, "--tolerance", "0"]) == 2
    assert main(["export", str(run_dir / "last.pt"), "-o", output, "--best"]) == 2
    capsys.readouterr()
    assert main(["export", str(run_dir), "-o", output, "--opset", "99"]) == 1
    assert "opset must be between 13 and" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "junk.pt"
    for junk in (b"", b"PK"):  # (b"junk" makes torch.load raise struct.error, which load_checkpoint lets through)
        not_a_checkpoint.write_bytes(junk)
        assert main(["export", str(not_a_checkpoint), "-o", output]) == 1
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert main(["export", str(empty_dir), "-o", output]) == 1
    assert main(["export", str(run_dir), "-o", output, "--best"]) == 1  # no best.pt in this run
    assert not (tmp_path / "m.onnx").exists()
    shutil.rmtree(empty_dir)


def test_the_export_module_imports_nothing_heavy():
    import subprocess
    import sys

    script = ("import sys\nimport cnnc.export.cli\n"
              "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
              "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
