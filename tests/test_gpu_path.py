"""The GPU path, as far as a CPU can check it: losses read every N steps (CUDA's way, forced here by
CNNC_TEST_SYNC_EVERY) give exactly what one read per step gives, through interruptions, torchrun and
non-finite losses; --cuda-graphs is refused where it cannot apply. tests/test_cuda.py runs the rest
on a CUDA machine (bench/gpu_check.sh)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_train_cli import (
    RESUMABLE,
    RESUMABLE_FLAGS,
    SMALL_XO,
    XO_SPEC,
    assert_same_weights,
    cnnc,
    weights,
    write_spec,
    xo_variant,
)

from cnnc.cli import main
from cnnc.training.checkpoint import load_checkpoint
from cnnc.training.reporting import _TqdmBar
from cnnc.training.trainer import SIGNAL_AT_STEP_ENV, SYNC_EVERY_ENV, EpochTotals, PendingLosses, sync_interval


def test_pending_losses_add_up_as_one_read_per_step_would() -> None:
    losses = [0.1, 2.5, 1e-8, 3.25, float("nan"), 0.5, float("inf")]
    sizes = [32, 32, 32, 32, 32, 32, 17]
    pending = PendingLosses(first_step=3)
    for loss, size in zip(losses, sizes):
        pending.add(torch.tensor(loss, dtype=torch.float32), size)
    totals = EpochTotals.zero(torch.device("cpu"))
    assert pending.read(totals) == (7, pytest.approx(float("nan"), nan_ok=True))  # step 3 + the 5th loss
    expected = 0.0
    for loss, size in zip(losses, sizes):
        expected += torch.tensor(loss, dtype=torch.float32).item() * size
    assert math.isnan(totals.loss_sum) and math.isnan(expected)
    assert (pending.first_step, pending.losses, pending.sizes) == (10, [], [])
    finite = PendingLosses(first_step=0)
    for loss in (0.3, 0.7):
        finite.add(torch.tensor(loss), 10)
    totals = EpochTotals.zero(torch.device("cpu"))
    assert finite.read(totals) is None
    assert totals.loss_sum == torch.tensor(0.3).item() * 10 + torch.tensor(0.7).item() * 10
    assert finite.read(totals) is None and finite.first_step == 2  # nothing pending: nothing read


def test_the_read_interval_is_one_on_cpu_and_sparse_on_cuda(monkeypatch) -> None:
    monkeypatch.delenv(SYNC_EVERY_ENV, raising=False)
    assert sync_interval(torch.device("cpu")) == 1
    assert sync_interval(torch.device("cuda", 0)) > 1
    monkeypatch.setenv(SYNC_EVERY_ENV, "7")
    assert sync_interval(torch.device("cpu")) == 7


def test_the_bar_jumps_to_the_steps_done() -> None:
    bar = _TqdmBar(total=20, done=3, description="epoch 1/1")
    try:
        bar.update(8, 0.25, 0.5)
        assert bar.bar.n == 8 and "loss 0.2500  acc 50.00%" in str(bar.bar.postfix)
        bar.update(20, 0.125, 0.75)
        assert bar.bar.n == 20
    finally:
        bar.close()


def test_sparse_reads_interrupt_resume_and_log_exactly_as_reads_every_step(tmp_path) -> None:
    """INT after global step 27 is step 11 of epoch 2: no read point when reading every 5 steps, so the
    stop itself reads; the resumed run ends bit-identical to an uninterrupted one read every step."""
    spec = write_spec(tmp_path, RESUMABLE)
    reference = cnnc(["train", str(spec), *RESUMABLE_FLAGS, "--out", "reference"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    sparse = {SYNC_EVERY_ENV: "5"}
    stopped = cnnc(["train", str(spec), *RESUMABLE_FLAGS, "--out", "run"], tmp_path,
                   {**sparse, SIGNAL_AT_STEP_ENV: "INT:27"})
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stdout.strip().startswith("interrupted at epoch 2, step 11: saved run/last.pt")
    resumed = cnnc(["train", "--resume", "run", "--quiet"], tmp_path, sparse)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    ours = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    theirs = (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()
    for mine, reference_record in zip(ours, theirs, strict=True):
        mine, reference_record = json.loads(mine), json.loads(reference_record)
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "test_accuracy"):
            assert mine.get(key) == reference_record.get(key), key


@pytest.mark.parametrize("every", ["1", "3", "100"])
def test_a_non_finite_loss_names_its_own_step_however_rarely_losses_are_read(every: str, tmp_path, monkeypatch,
                                                                             capsys) -> None:
    # Epoch 1 trains normally; from epoch 2 the step schedule multiplies the rate by 1e30: the first
    # step of epoch 2 blows the weights up, so the second step's loss is the first non-finite one.
    monkeypatch.setenv(SYNC_EVERY_ENV, every)
    train = "dataset xo\n epochs 3\n batch 32\n optimizer sgd(lr=0.01)\n schedule step(1, gamma=1e30)"
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, train))
    assert main(["train", str(spec), "--limit-train", "256", "--limit-test", "64", "--quiet",
                 "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "the training loss became nan at epoch 2, step 2 of 8; training stopped. The last good checkpoint " \
           "(after epoch 1) is kept." in error
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.epoch == 1 and all(torch.isfinite(t).all() for t in checkpoint.model_state.values())


def test_torchrun_processes_agree_to_stop_where_they_read(tmp_path, capsys) -> None:
    """Reading every 4 steps of 6, a stop asked after step 2 of epoch 2 waits for the read at step 4; the
    resumed run still trains as one process does."""
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 2\n batch 64\n validation 0.25"))
    flags = ["--limit-train", "512", "--limit-test", "128", "--json", "--out", "run"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnc"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", SYNC_EVERY_ENV: "4"}
    stopped = subprocess.run([*torchrun, "train", str(spec), *flags], cwd=tmp_path, capture_output=True, text=True,
                             env={**environment, SIGNAL_AT_STEP_ENV: "INT:8"}, timeout=300)
    assert stopped.returncode != 0
    checkpoint = load_checkpoint(tmp_path / "run")
    assert (checkpoint.epoch, checkpoint.step_in_epoch) == (1, 4)
    resumed = subprocess.run([*torchrun, "train", "--resume", "run", "--json"], cwd=tmp_path, capture_output=True,
                             text=True, env=environment, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert main(["train", str(spec), *flags[:-1], str(tmp_path / "single")]) == 0
    capsys.readouterr()
    single, distributed = weights(tmp_path / "single"), weights(tmp_path / "run")
    for name in single:
        torch.testing.assert_close(distributed[name], single[name], rtol=1e-4, atol=1e-5)


def test_cuda_graphs_are_refused_where_they_cannot_apply(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(XO_SPEC), "--device", "cpu", "--cuda-graphs"]) == 2
    assert capsys.readouterr().err.strip() == "cnnc train: error: --cuda-graphs needs CUDA; this run is on the CPU"
    assert main(["train", "--resume", "somewhere", "--cuda-graphs"]) == 2
    assert "drop --cuda-graphs" in capsys.readouterr().err
    if not torch.cuda.is_available():  # auto picked the CPU: the input (this machine) is wrong, not the usage
        assert main(["train", str(XO_SPEC), "--cuda-graphs", "--quiet"]) == 1
        assert "--cuda-graphs needs CUDA; this run is on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# torch.compile's own imports touch torch.jit's deprecated script_method
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_cuda_graphs_run_continues_on_the_cpu_saying_so(tmp_path, capsys) -> None:
    """A run trained with --cuda-graphs (settings edited here: this machine has no CUDA) resumes on a CPU
    with torch.compile alone, and says so."""
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 1\n batch 64"))
    assert main(["train", str(spec), "--limit-train", "128", "--limit-test", "64", "--quiet", "--compile",
                 "--out", str(tmp_path / "run")]) == 0
    path = tmp_path / "run" / "last.pt"
    contents = torch.load(path, weights_only=True)
    contents["settings"]["execution"]["cuda_graphs"] = True
    torch.save(contents, path)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    assert ("was trained with --cuda-graphs, which needs CUDA: continuing on the CPU with torch.compile alone"
            in capsys.readouterr().err)
    resumed = load_checkpoint(tmp_path / "run")
    assert resumed.settings["execution"]["cuda_graphs"] is False and resumed.settings["execution"]["compile"] is True
