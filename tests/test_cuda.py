"""The GPU path on a CUDA device: exact resume, no per-step synchronisation, bf16, channels-last,
torch.compile and CUDA graphs. bench/gpu_check.sh runs these on the GPU machine (`pytest -m cuda`),
with CNNC_REQUIRE_CUDA=1 so that a missing device fails them instead of skipping them. Where there is
no CUDA (CI) they are skipped; tests/test_gpu_path.py checks on the CPU what can be checked there."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from test_train_cli import RESUMABLE, RESUMABLE_FLAGS, SMALL_XO, XO_SPEC, weights, write_spec, xo_variant

from cnnc.cli import main
from cnnc.training.distributed import World
from cnnc.training.plotter import Plots
from cnnc.training.reporting import Console
from cnnc.training.run import TrainRequest, _start
from cnnc.training.settings import Overrides
from cnnc.training.trainer import CUDA_SYNC_EVERY, SIGNAL_AT_STEP_ENV

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def cuda() -> None:
    if torch.cuda.is_available():
        return
    if os.environ.get("CNNC_REQUIRE_CUDA") == "1":
        pytest.fail("CNNC_REQUIRE_CUDA=1 but torch sees no CUDA device")
    pytest.skip("needs a CUDA device (bench/gpu_check.sh runs these on one)")


def assert_close_weights(a: Path, b: Path, tolerance: float) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name].float(), second[name].float(), rtol=tolerance, atol=tolerance,
                                   msg=lambda text, name=name: f"{name}: {text}")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_cuda_run_interrupted_and_resumed_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, capsys) -> None:
    """Exact up to the nondeterminism of some cuDNN kernels (atomic adds in backward passes). In this
    process, to spare the GPU machine's time two starts of torch and CUDA."""
    spec = write_spec(tmp_path, RESUMABLE)
    flags = [*RESUMABLE_FLAGS, "--device", "cuda"]
    assert main(["train", str(spec), *flags, "--out", str(tmp_path / "reference")]) == 0
    monkeypatch.setenv(SIGNAL_AT_STEP_ENV, "INT:27")
    assert main(["train", str(spec), *flags, "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().out.strip().endswith(
        f"interrupted at epoch 2, step 11: saved {tmp_path / 'run' / 'last.pt'}; "
        f"continue with: cnnc train --resume {tmp_path / 'run'}")
    monkeypatch.delenv(SIGNAL_AT_STEP_ENV)
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_close_weights(tmp_path / "reference", tmp_path / "run", 1e-4)
    for ours, theirs in zip(metrics(tmp_path / "run"), metrics(tmp_path / "reference"), strict=True):
        for key in ("train_loss", "val_loss", "test_loss"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key


def synchronisations(arguments: list[str]) -> int:
    """How many synchronising CUDA calls a `cnnc train` run makes (torch's sync debug mode counts the
    reads of device values and the blocking copies)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["train", *arguments]) == 0
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(warning.message) for warning in caught)


def test_cuda_steps_read_the_device_once_per_interval_not_once_per_step(tmp_path, capsys) -> None:
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 1\n batch 32\n optimizer sgd(lr=0.05)"))
    common = [str(spec), "--device", "cuda", "--limit-test", "64", "--quiet"]
    few = synchronisations([*common, "--limit-train", "256", "--out", str(tmp_path / "few")])     # 8 steps
    many = synchronisations([*common, "--limit-train", "1024", "--out", str(tmp_path / "many")])  # 32 steps
    capsys.readouterr()
    assert few > 0  # the count works: the epoch's own reads are there
    # 24 more steps: one more read (at step 16) with CUDA_SYNC_EVERY = 16, not one or two per step
    assert many - few <= 24 // CUDA_SYNC_EVERY + 1, (few, many)


def test_bf16_autocast_changes_the_arithmetic_not_the_learning(tmp_path, capsys) -> None:
    common = [str(XO_SPEC), "--device", "cuda", "--limit-train", "2000", "--limit-test", "300", "--quiet"]
    assert main(["train", *common, "--out", str(tmp_path / "fp32")]) == 0
    assert main(["train", *common, "--bf16", "--out", str(tmp_path / "bf16")]) == 0
    capsys.readouterr()
    for run in ("fp32", "bf16"):
        assert metrics(tmp_path / run)[-1]["test_accuracy"] > 0.85, run  # chance: 0.5
    settings = json.loads((tmp_path / "bf16" / "settings.json").read_text())
    assert settings["execution"]["bf16"] is True
    fp32, bf16 = weights(tmp_path / "fp32"), weights(tmp_path / "bf16")
    assert any(not torch.equal(fp32[name], bf16[name]) for name in fp32)  # bfloat16 really ran


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_data_lives_on_the_device_in_the_asked_memory_format(channels_last: bool, tmp_path) -> None:
    request = TrainRequest(spec=str(XO_SPEC), out=str(tmp_path / "run"), device="cuda", channels_last=channels_last,
                           overrides=Overrides(limit_train=256, limit_test=64, epochs=1), mode="quiet")
    session = _start(request, "cuda", World(), Console("quiet"))
    trainer = session.trainer
    assert trainer.train_data.images.device.type == "cuda" and trainer.train_data.labels.device.type == "cuda"
    batch = trainer.preparer(trainer.train_data.images[:8], train=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert batch.is_cuda and batch.is_contiguous(memory_format=memory_format)
    kernels = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=memory_format) for p in kernels)
    assert session.run(Plots()) == 0


def test_compile_and_cuda_graphs_train_as_eager_does(tmp_path, capsys) -> None:
    from torch._dynamo.utils import counters

    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 1\n batch 32\n optimizer sgd(lr=0.05)"))
    common = [str(spec), "--device", "cuda", "--limit-train", "272", "--limit-test", "64"]  # 8 batches + 1 short
    assert main(["train", *common, "--quiet", "--out", str(tmp_path / "eager")]) == 0
    assert main(["train", *common, "--quiet", "--compile", "--out", str(tmp_path / "compiled")]) == 0
    capsys.readouterr()
    counters.clear()
    assert main(["train", *common, "--cuda-graphs", "--out", str(tmp_path / "graphs")]) == 0  # text: notes show
    assert "without CUDA graphs" not in capsys.readouterr().err
    assert counters["inductor"]["cudagraph_skips"] == 0
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] > 0  # graphs were recorded
    settings = json.loads((tmp_path / "graphs" / "settings.json").read_text())
    assert settings["execution"]["cuda_graphs"] is True and settings["execution"]["compile"] is True
    for run in ("compiled", "graphs"):
        assert_close_weights(tmp_path / "eager", tmp_path / run, 1e-4)
