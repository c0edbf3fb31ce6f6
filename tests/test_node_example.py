"""examples/node: a Node.js client (onnxruntime-node, pngjs) gives the labels and scores `cnnc predict` gives.

The example is installed with `npm ci` from its package-lock.json (the npm registry is reachable in CI).
ONNXRUNTIME_NODE_INSTALL=skip keeps onnxruntime-node's install script from downloading its CUDA
libraries from NuGet, outside the registry. Skipped, saying so, only where node or npm is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_export import make_run
from test_onnx_support import ROOT

torch = pytest.importorskip("torch")

from cnnc.cli import main  # noqa: E402
from cnnc.export.exporter import export_checkpoint  # noqa: E402

EXAMPLE = ROOT / "examples" / "node"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed: the Node.js example cannot be checked here",
)


@pytest.fixture(scope="module")
def installed() -> None:
    environment = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Grayscale and RGB models in the uint8 form: ending in probabilities with top-k outputs, and
    ending in logits without (the client then ranks and applies softmax itself)."""
    folder = tmp_path_factory.mktemp("node")
    made = {}
    for spec, dataset, k in (("xo", "xo", 2), ("resnet_cifar", "cifar10", 3)):
        checkpoint = make_run(folder / spec, ROOT / "specs" / f"{spec}.cnn", dataset=dataset)
        made[spec] = folder / f"{spec}.onnx"
        export_checkpoint(checkpoint, made[spec], outputs="probabilities", input_form="uint8", top_k=k)
        made[f"{spec}-logits"] = folder / f"{spec}-logits.onnx"
        export_checkpoint(checkpoint, made[f"{spec}-logits"], outputs="logits", input_form="uint8")
        made[f"{spec}-float"] = folder / f"{spec}-float.onnx"
        export_checkpoint(checkpoint, made[f"{spec}-float"])
    return made


def images(folder, size: int, modes: tuple[str, ...]) -> list[str]:
    """PNG files of random pixels in each Pillow mode (L, RGB, RGBA): the client must convert as Pillow does."""
    rng = np.random.default_rng(size)
    paths = []
    for mode in modes:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
        path = folder / f"{mode}-{size}.png"
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
        paths.append(str(path))
    return paths


def node(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(EXAMPLE / "classify.js"), *arguments], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("spec, size", [("xo", 28), ("resnet_cifar", 32)])
def test_node_prints_what_cnnc_predict_prints(installed, models, spec, size, tmp_path, capsys):
    files = images(tmp_path, size, ("L", "RGB", "RGBA"))
    done = node(str(models[spec]), *files, "--top-k", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert main(["predict", str(models[spec]), *files, "--top-k", "2", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert json.loads(done.stdout) == expected  # labels and scores, exactly

    text = node(str(models[spec]), *files, "--top-k", "2")
    assert main(["predict", str(models[spec]), *files, "--top-k", "2"]) == 0
    assert text.stdout == capsys.readouterr().out


def test_node_ranks_logits_itself(installed, models, tmp_path, capsys):
    files = images(tmp_path, 32, ("RGB", "L"))
    done = node(str(models["resnet_cifar-logits"]), *files, "--top-k", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert main(["predict", str(models["resnet_cifar-logits"]), *files, "--top-k", "4", "--json"]) == 0
    expected, found = json.loads(capsys.readouterr().out), json.loads(done.stdout)
    assert [[t["label"] for t in p["top_k"]] for p in found] == [[t["label"] for t in p["top_k"]] for p in expected]
    # float64 softmax in JavaScript, float32 in numpy
    np.testing.assert_allclose([[t["score"] for t in p["top_k"]] for p in found],
                               [[t["score"] for t in p["top_k"]] for p in expected], rtol=1e-6)


def test_node_explains_a_float_model_and_a_wrong_size(installed, models, tmp_path):
    files = images(tmp_path, 28, ("L",))
    done = node(str(models["xo-float"]), *files)
    assert done.returncode == 1 and "takes normalised float32 input; export it with" in done.stderr
    done = node(str(models["resnet_cifar"]), *files)
    assert done.returncode == 1 and "is 28x28 (height x width) but the model takes 32x32 images" in done.stderr
