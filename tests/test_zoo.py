"""The model zoo (specs/zoo/): torchvision's ImageNet classifiers with torchvision's exact parameter
counts and published multiply-accumulates, each compiling to an ONNX model that onnxruntime runs and
lowering to a PyTorch module that trains; and the CIFAR-10 adaptations, whose train sections check
and whose modules train on real CIFAR-10 images.

The published figures and their sources are in tests/zoo_reference.py."""

from __future__ import annotations

import functools
import json
import os
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from test_onnx_support import ort_session
from zoo_reference import CIFAR, REFERENCE, Published

from cnnc.cli import main
from cnnc.compiler.backends import onnx as onnx_backend
from cnnc.compiler.backends.pytorch import build_module
from cnnc.compiler.backends.weights import initial_weights
from cnnc.compiler.check import CheckResult, check_file
from cnnc.compiler.ir import Program
from cnnc.compiler.passes import dead_nodes

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "specs" / "zoo"
SPECS = sorted(path.stem for path in ZOO.glob("*.cnn"))
PRESENT = [name for name in sorted(REFERENCE) if (ZOO / f"{name}.cnn").exists()]
# More than a few seconds each on two cores (ONNX files of 100-550 MB, or over 4 GMACs a sample).
SLOW = {"vgg16", "vgg16_bn", "alexnet", "inception_v3", "resnet50", "convnext_tiny"}


def marked(names) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in names]


@functools.cache
def checked(name: str) -> CheckResult:
    return check_file(ZOO / f"{name}.cnn")


def program(name: str) -> Program:
    result = checked(name)
    assert result.program is not None, [str(d) for d in result.diagnostics]
    return result.program


def test_every_zoo_spec_has_a_published_reference_and_every_reference_a_spec():
    assert set(SPECS) == set(REFERENCE) | CIFAR


@pytest.mark.parametrize("name", PRESENT)
def test_checks_with_only_the_diagnostics_its_header_explains(name):
    codes = {d.code for d in checked(name).diagnostics}
    assert codes == set(REFERENCE[name].warnings), [str(d) for d in checked(name).diagnostics]


@pytest.mark.parametrize("name", PRESENT)
def test_trainable_parameters_are_torchvisions_exactly(name):
    assert program(name).graph.trainable_params == REFERENCE[name].params


@pytest.mark.parametrize("name", PRESENT)
def test_macs_are_the_published_gflops(name):
    published = REFERENCE[name]
    ours = Decimal(program(name).graph.total_macs) / Decimal(10) ** 9
    assert abs(ours - Decimal(published.gflops)) <= published.macs_tolerance(), (ours, published.gflops)


def test_the_tolerance_is_half_a_unit_of_the_last_digit_or_half_a_percent():
    assert Published(1, "0.057", "", "").macs_tolerance() == Decimal("0.0005")
    assert Published(1, "15.47", "", "").macs_tolerance() == Decimal("0.07735")
    assert Published(1, "4.089", "", "").macs_tolerance() == Decimal("0.020445")


def image_batch(program: Program, batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, *program.graph.input.shape)).astype(np.float32)


@pytest.fixture(scope="module", params=marked(PRESENT))
def zoo_model(request) -> tuple[str, Program, dict[str, np.ndarray]]:
    """(name, program, its documented initial weights), made once per model for the ONNX and the
    PyTorch tests: pytest runs a model's tests together and drops its weights before the next's."""
    name = request.param
    return name, program(name), initial_weights(program(name).graph, seed=0)


def test_compiles_to_onnx_that_onnxruntime_runs(zoo_model):
    name, checked_program, weights = zoo_model
    model = onnx_backend.to_onnx(checked_program, weights)
    [logits] = ort_session(model).run(None, {model.graph.input[0].name: image_batch(checked_program, 1)})
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all()


def train_step(module: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """One SGD step; the loss, and the largest change of any trainable weight."""
    before = [p.detach().clone() for p in module.parameters()]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    module.train()
    loss = torch.nn.functional.cross_entropy(module(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    change = max(float((p.detach() - b).abs().max()) for p, b in zip(module.parameters(), before))
    return loss.item(), change


def test_pytorch_module_holds_the_published_live_parameters_and_trains_a_step(zoo_model):
    name, checked_program, weights = zoo_model
    torch.manual_seed(0)
    module = build_module(checked_program.graph, weights=weights)
    published = REFERENCE[name]
    assert sum(node.params for node in dead_nodes(checked_program.graph)) == published.unused_params
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == published.params - published.unused_params
    images = torch.from_numpy(image_batch(checked_program, 2))
    loss, change = train_step(module, images, torch.tensor([3, 997]))
    assert np.isfinite(loss)
    assert change > 0


# --- CIFAR-10 adaptations ---------------------------------------------------------------------------

CIFAR10 = Path(os.environ.get("CNNC_DATA") or SHARED_DATA) / "cifar-10"
CIFAR_PRESENT = [name for name in sorted(CIFAR) if (ZOO / f"{name}.cnn").exists()]


@pytest.mark.parametrize("name", CIFAR_PRESENT)
def test_cifar_spec_checks_cleanly_and_trains_on_cifar10(name):
    assert checked(name).diagnostics == (), [str(d) for d in checked(name).diagnostics]
    train = program(name).train
    assert train is not None and train.dataset.name == "cifar10"
    assert program(name).graph.input.shape == (3, 32, 32)
    assert program(name).graph.num_classes == 10


@pytest.mark.parametrize("name", CIFAR_PRESENT)
def test_cifar_spec_trains_with_its_own_train_section_on_real_cifar10(name, tmp_path, capsys):
    """`cnnc train` as a user runs it (normalize, augmentation, optimizer from the spec), on 64 real
    images for one epoch. The shared data is always present here and in CI: its absence fails."""
    assert (CIFAR10 / "test_batch.bin.gz").exists(), f"no CIFAR-10 under {CIFAR10}"
    arguments = ["train", str(ZOO / f"{name}.cnn"), "--data", str(CIFAR10), "--epochs", "1", "--limit-train", "64",
                 "--limit-test", "32", "--batch-size", "32", "--json", "--out", str(tmp_path / "run")]
    assert main(arguments) == 0
    events = {event["event"]: event for event in map(json.loads, capsys.readouterr().out.splitlines())}
    assert events["start"]["train_examples"] == 64 and events["done"]["test_examples"] == 32
    assert np.isfinite(events["epoch"]["train_loss"]) and np.isfinite(events["test"]["test_loss"])
