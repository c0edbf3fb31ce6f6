"""`cnnc train` end to end: the run directory, output modes, exact resume after SIGKILL and Ctrl-C,
non-finite losses, early stopping, real MNIST, torchrun, and a message for every bad input.

Runs are tiny (a few hundred images, 1-3 epochs) to keep the suite fast on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnc.cli import main
from cnnc.training.checkpoint import load_checkpoint
from cnnc.training.trainer import SIGNAL_AT_STEP_ENV

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
XO_SPEC = ROOT / "specs" / "xo.cnn"

# Every source of randomness at once: dropout, batch norm, augmentation, a validation split, warm-up
# and a schedule, so that an inexact resume shows in the weights.
RESUMABLE = """
model tiny {
    input glyph(1, 28, 28)
    conv(8, kernel=3, stride=2, padding=same, bias=false) -> batchnorm -> relu
    conv(16, kernel=3, stride=2, padding=same, activation=relu)
    trunk = dropout(0.2)
    branch = conv(16, kernel=3, padding=same) -> drop_path(0.5)   # stochastic depth: torch's generator, per sample
    add(trunk, branch)
    global_avgpool
    dense(2)
}
train {
    dataset xo
    optimizer sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.0005)
    schedule cosine
    warmup 1
    batch 32
    epochs 3
    loss cross_entropy(label_smoothing=0.1)
    augment translate(2), hflip, cutout(6)
    validation 0.2
    early_stopping(patience=5, metric=val_loss)
    clip_grad 1.0
    normalize(mean=0.2, std=0.3)
    seed 4
}
"""
RESUMABLE_FLAGS = ["--limit-train", "640", "--limit-test", "200", "--quiet"]  # 16 steps per epoch


def write_spec(directory: Path, text: str, name: str = "tiny.cnn") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def xo_variant(model: str, train: str = "dataset xo\n epochs 1\n batch 64") -> str:
    return f"model m {{\n input glyph(1, 28, 28)\n {model}\n}}\ntrain {{\n {train}\n}}\n"


SMALL_XO = "conv(4, kernel=3, stride=2, padding=same, activation=relu)\n global_avgpool\n dense(2)"


def cnnc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir).model_state


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"weights differ: {different}"


# --- a complete run ------------------------------------------------------------------------------------

def test_xo_trains_into_a_complete_run_directory(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(XO_SPEC), "--limit-train", "2000", "--limit-test", "300"]) == 0
    out, err = capsys.readouterr()
    run_dir = next((tmp_path / "runs").iterdir())
    assert run_dir.name.startswith("xo-")
    assert "device: cpu (auto: " in err and "\r" not in err  # the note; no bar without a terminal
    assert [line.split("  ")[0] for line in out.splitlines()[1:4]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    final = out.splitlines()[-1]
    assert final.startswith("test accuracy ") and f"run directory: {run_dir.relative_to(tmp_path)}" in final

    expected = {"spec", "settings.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png",
                "confusion_matrix.png", "confusion_matrix.json"}
    assert expected <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "spec" / "xo.cnn").read_text() == XO_SPEC.read_text()
    assert (run_dir / "spec" / "xo.ir").exists()
    settings = json.loads((run_dir / "settings.json").read_text())
    assert settings["train"]["optimizer"].startswith("adam(lr=0.01")
    assert settings["overrides"]["limit_train"] == 2000 and settings["data"]["train_examples"] == 1800

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records[:-1]] == [1, 2, 3]
    for record in records[:-1]:
        assert set(record) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                               "images_per_second"}
        assert 0 <= record["train_accuracy"] <= 1 and 0 <= record["val_accuracy"] <= 1
    test = records[-1]
    assert test["test_examples"] == 300 and test["test_accuracy"] > 0.9
    assert f"{test['test_accuracy']:.2%}" in final

    confusion = json.loads((run_dir / "confusion_matrix.json").read_text())
    assert confusion["classes"] == ["x", "o"] and sum(map(sum, confusion["matrix"])) == 300
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.finished and checkpoint.test_accuracy == test["test_accuracy"]
    assert checkpoint.classes == ("x", "o") and checkpoint.sources[str(XO_SPEC)] == XO_SPEC.read_text()
    assert checkpoint.program().graph.name == "xo"


def test_json_mode_prints_one_object_per_event(tmp_path, capsys) -> None:
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 2\n batch 64"))
    assert main(["train", str(spec), "--json", "--limit-train", "256", "--limit-test", "64",
                 "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["note", "start", "epoch", "epoch", "test", "done"]
    assert events[1]["train_examples"] == 256 and events[1]["steps_per_epoch"] == 4
    assert events[-1]["test_examples"] == 64 and err == ""


def test_an_npz_dataset_is_found_relative_to_the_spec(tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "specs" / "data"
    data.mkdir(parents=True)
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.savez(data / "tiny.npz", x=images, y=np.arange(40) % 3, classes=np.array(["a", "b", "c"]))
    model = "conv(4, kernel=3, padding=same, activation=relu)\n global_avgpool\n dense(3)"
    spec = tmp_path / "specs" / "tiny.cnn"
    spec.write_text(f'model m {{\n input x(1, 8, 8)\n {model}\n}}\n'
                    'train { dataset npz("data/tiny.npz"); epochs 1 }\n')
    monkeypatch.chdir(tmp_path)
    assert main(["train", "specs/tiny.cnn", "--no-channels-last", "--quiet", "--out", "run"]) == 0
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["data"]["classes"] == ["a", "b", "c"] and settings["data"]["test_examples"] == 40
    assert settings["execution"]["channels_last"] is False
    assert "on 40 images" in capsys.readouterr().out


def test_mnist_subset_with_a_softmax_model(tmp_path, capsys) -> None:
    """keras_mnist ends in softmax with from_logits=false: its loss comes from the logits."""
    arguments = ["train", str(ROOT / "specs" / "keras_mnist.cnn"), "--data", str(MNIST), "--epochs", "1",
                 "--limit-train", "512", "--limit-test", "200", "--batch-size", "16", "--lr", "0.05", "--json",
                 "--out", str(tmp_path / "r")]
    assert main(arguments) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["test_examples"] == 200 and done["test_accuracy"] > 0.3  # chance is 0.1
    settings = json.loads((tmp_path / "r" / "settings.json").read_text())
    assert settings["train"]["optimizer"].startswith("sgd(lr=0.05")


# --- exact resume ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(the spec, a run of it from start to end)."""
    directory = tmp_path_factory.mktemp("reference")
    spec = write_spec(directory, RESUMABLE)
    done = cnnc(["train", str(spec), *RESUMABLE_FLAGS, "--out", "run"], directory)
    assert done.returncode == 0, done.stderr
    return spec, directory / "run"


def test_resume_after_sigkill_gives_bit_identical_weights(uninterrupted, tmp_path) -> None:
    spec, reference = uninterrupted
    killed = cnnc(["train", str(spec), *RESUMABLE_FLAGS, "--out", "run"], tmp_path, {SIGNAL_AT_STEP_ENV: "KILL:20"})
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "run").epoch == 1  # killed in epoch 2: the last checkpoint is epoch 1's
    resumed = cnnc(["train", "--resume", "run", "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"epoch": 2,') == 1  # redone, logged once


def test_ctrl_c_saves_mid_epoch_and_resume_continues_exactly(uninterrupted, tmp_path) -> None:
    spec, reference = uninterrupted
    stopped = cnnc(["train", str(spec), *RESUMABLE_FLAGS, "--out", "run"], tmp_path, {SIGNAL_AT_STEP_ENV: "INT:27"})
    assert stopped.returncode != 0
    assert stopped.stdout.strip() == ("interrupted at epoch 2, step 11: saved run/last.pt; "
                                      "continue with: cnnc train --resume run")
    checkpoint = load_checkpoint(tmp_path / "run")
    assert (checkpoint.epoch, checkpoint.step_in_epoch, checkpoint.finished) == (1, 11, False)
    resumed = cnnc(["train", "--resume", "run"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run after epoch 1, step 11" in resumed.stderr
    assert_same_weights(reference, tmp_path / "run")
    reference_metrics = (reference / "metrics.jsonl").read_text().splitlines()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    for ours, theirs in zip(metrics, reference_metrics, strict=True):
        ours, theirs = json.loads(ours), json.loads(theirs)
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "test_accuracy"):
            assert ours.get(key) == theirs.get(key), key
    again = cnnc(["train", "--resume", "run"], tmp_path)
    assert again.returncode == 0 and "run has already finished: test accuracy" in again.stdout


# --- things going wrong -----------------------------------------------------------------------------

def test_a_diverging_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys) -> None:
    # Epoch 1 trains normally; from epoch 2 the step schedule multiplies the rate by 1e30.
    train = "dataset xo\n epochs 3\n batch 64\n optimizer sgd(lr=0.01)\n schedule step(1, gamma=1e30)"
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, train))
    assert main(["train", str(spec), "--limit-train", "256", "--limit-test", "64", "--quiet",
                 "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "cnnc train: error: the training loss became nan at epoch 2, step " in error
    assert "The last good checkpoint (after epoch 1) is kept. Try a lower learning rate (now 0.01)" in error
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.epoch == 1 and all(torch.isfinite(t).all() for t in checkpoint.model_state.values())


def test_early_stopping_restores_the_best_weights(tmp_path, capsys) -> None:
    # min_delta is unreachable: epoch 1 stays the best, so patience 1 stops after epoch 2.
    train = ("dataset xo\n epochs 4\n batch 64\n validation 0.25\n"
             " early_stopping(patience=1, metric=val_loss, min_delta=100)")
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, train))
    assert main(["train", str(spec), "--limit-train", "256", "--limit-test", "64", "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "early stopping after epoch 2: val_loss has not improved for 1 epochs" in err
    assert "restored the weights of epoch 1" in err and "(stopped early" in out
    assert_same_weights(tmp_path / "run", tmp_path / "run" / "best.pt")
    test = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert (test["model_epoch"], test["epochs_trained"]) == (1, 2)
    assert load_checkpoint(tmp_path / "run" / "best.pt").test_accuracy == test["test_accuracy"]


def test_the_best_weights_are_restored_when_patience_never_runs_out(tmp_path, capsys) -> None:
    train = ("dataset xo\n epochs 2\n batch 64\n validation 0.25\n"
             " early_stopping(patience=5, metric=val_accuracy, min_delta=2)")
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, train))
    assert main(["train", str(spec), "--limit-train", "256", "--limit-test", "64", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    assert "after 2 epochs (finished" in capsys.readouterr().out
    assert_same_weights(tmp_path / "run", tmp_path / "run" / "best.pt")
    assert load_checkpoint(tmp_path / "run").epoch == 1


# --- bad input: every one with its message ---------------------------------------------------------

BAD_USAGE = [
    ([], "give a SPEC to train, or --resume RUN_DIR to continue a run (not both)"),
    (["SPEC", "--resume", "somewhere"], "give a SPEC to train, or --resume RUN_DIR to continue a run (not both)"),
    (["--resume", "somewhere", "--epochs", "3", "--lr", "0.1"],
     "--resume continues a run with its own settings; drop --lr"),
    (["--resume", "somewhere", "--out", "x"], "--resume continues a run with its own settings; drop --out"),
    (["missing.cnn"], "no such spec file: missing.cnn"),
    (["SPEC", "--device", "cpu", "--bf16"], "--bf16 needs CUDA; this run is on the CPU"),
    (["SPEC", "--out", "occupied"], "--out occupied already exists and is not an empty directory: "
                                    "continue that run with --resume occupied, or choose another --out"),
]


@pytest.mark.parametrize("arguments,message", BAD_USAGE, ids=[m[:40] for _, m in BAD_USAGE])
def test_usage_errors_exit_2_with_a_message(arguments: list[str], message: str, tmp_path, monkeypatch,
                                            capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file").write_text("")
    arguments = [str(XO_SPEC) if a == "SPEC" else a for a in arguments]
    assert main(["train", *arguments]) == 2
    assert capsys.readouterr().err.strip() == f"cnnc train: error: {message}"


@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "argument --epochs: must be 1 or more, got 0"),
    ("--batch-size", "many", "argument --batch-size: must be an integer, got 'many'"),
    ("--lr", "-1", "argument --lr: must be a number above 0, got -1"),
    ("--seed", "-2", "argument --seed: must be 0 or more, got -2"),
    ("--device", "tpu", "argument --device: invalid choice: 'tpu'"),
])
def test_bad_flag_values_are_named(flag: str, value: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(XO_SPEC), flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


BAD_INPUT = [
    ("model m {\n input x(1, 28, 28)\n flatten\n dense(2)\n}\n", [], "SPEC has no train section: add one"),
    ("model m {\n input x(1, 28, 28)\n conv(4, kernel=40)\n}\ntrain { dataset xo }\n", [],
     "SPEC has errors (see above)"),
    (xo_variant("flatten\n dense(3)"), [], "error[E032]: the model's output 'dense1' has 3 values, but the "
                                            "dataset xo (line 7) has 2 classes"),
    ("model m {\n input x(3, 32, 32)\n flatten\n dense(2)\n}\ntrain { dataset xo }\n", [],
     "error[E031]: the dataset xo has 1x28x28 images, but the model's input 'x' (line 2) takes 3x32x32"),
    (xo_variant("flatten\n dense(2)"), ["--dataset", "cifar10", "--no-download"],
     "model 'm' takes 1x28x28 images, but cifar10"),
    (xo_variant("flatten\n dense(2)", "dataset xo\n normalize(mean=(0.1, 0.2), std=0.3)"), [],
     "normalize mean has 2 values, but the input has 1 channel"),
    (xo_variant("flatten\n dense(2)"), ["--dataset", "mnits"], "unknown dataset 'mnits'"),
    (xo_variant("flatten\n dense(2)"), ["--dataset", "folder"], "the folder dataset needs a path: give --data PATH"),
    (xo_variant("flatten\n dense(10)"), ["--dataset", "mnist", "--data", "NOWHERE", "--no-download"], "NOWHERE"),
    (xo_variant("flatten\n dense(2)"), ["--device", "cuda"], "--device cuda: CUDA is not available"),
]


@pytest.mark.parametrize("text,flags,message", BAD_INPUT, ids=[m[:40] for _, _, m in BAD_INPUT])
def test_input_errors_exit_1_with_a_message(text: str, flags: list[str], message: str, tmp_path, monkeypatch,
                                            capsys) -> None:
    if "--device" in flags and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, text)
    flags = [str(tmp_path / "nowhere") if f == "NOWHERE" else f for f in flags]
    assert main(["train", str(spec), "--quiet", *flags]) == 1
    error = capsys.readouterr().err
    expected = message.replace("SPEC", str(spec)).replace("NOWHERE", str(tmp_path / "nowhere"))
    assert "cnnc train: error: " in error and expected in error
    assert not (tmp_path / "runs").exists()  # nothing is written before the input is known to be good


@pytest.mark.parametrize("setup,message", [
    ("empty", "RUN is not a cnnc run directory: it has no last.pt"),
    ("corrupt", "RUN/last.pt cannot be read as a checkpoint: it is truncated, corrupt or not a PyTorch file"),
    ("foreign", "RUN/last.pt is not a cnnc checkpoint (it holds a dict with keys weights)"),
])
def test_resume_refuses_what_is_not_a_run(setup: str, message: str, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    if setup != "nothing":
        run.mkdir()
    if setup == "corrupt":
        (run / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    if setup == "foreign":
        torch.save({"weights": torch.zeros(2)}, run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 1
    assert f"cnnc train: error: {message.replace('RUN', str(run))}" in capsys.readouterr().err


def test_torch_is_not_imported_to_parse_the_command_line() -> None:
    probe = ("import argparse, sys\nfrom cnnc.training.cli import add_commands\n"
             "parser = argparse.ArgumentParser()\nadd_commands(parser.add_subparsers())\n"
             "parser.parse_args(['train', 'x.cnn', '--epochs', '2'])\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# --- torchrun --------------------------------------------------------------------------------------

# `cnnc train` under torchrun, then what is left: a process group that DistributedDataParallel kept alive
# past destroy_process_group made gloo abort the interpreter's exit now and then (SIGABRT).
LEFT_NOTHING_HOLDING_THE_GROUP = """
import gc, sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from cnnc.cli import main
code = main(sys.argv[1:])
alive = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
assert not alive and not dist.is_initialized(), alive
print("nothing holds the process group", flush=True)
sys.exit(code)
"""


def test_torchrun_with_two_processes_trains_and_resumes(tmp_path, capsys) -> None:
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 2\n batch 64\n validation 0.25"))
    flags = ["--limit-train", "512", "--limit-test", "128", "--json", "--out", "run"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    torchrun = [*launcher, "-m", "cnnc"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    checked = write_spec(tmp_path, LEFT_NOTHING_HOLDING_THE_GROUP, "check_main.py")
    stopped = subprocess.run([*launcher, str(checked), "train", str(spec), *flags], cwd=tmp_path,
                             capture_output=True, text=True, env={**environment, SIGNAL_AT_STEP_ENV: "INT:8"},
                             timeout=300)
    assert stopped.returncode != 0
    assert stopped.stdout.count("nothing holds the process group") == 2, stopped.stdout
    checkpoint = load_checkpoint(tmp_path / "run")
    assert (checkpoint.epoch, checkpoint.step_in_epoch) == (1, 2)  # 6 steps per epoch: stopped in epoch 2
    assert len(checkpoint.training["processes"]) == 2
    resumed = subprocess.run([*torchrun, "train", "--resume", "run", "--json"], cwd=tmp_path, capture_output=True,
                             text=True, env=environment, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines()]  # rank 0 alone reports
    assert [e["event"] for e in events].count("done") == 1
    assert next(e for e in events if e["event"] == "start")["processes"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records] == [1, 2, None] and records[-1]["test_examples"] == 128

    # Two processes of 32 images each average to the gradient of one of 64: the same training.
    assert main(["train", str(spec), *flags[:-1], str(tmp_path / "single")]) == 0
    capsys.readouterr()
    single, distributed = weights(tmp_path / "single"), weights(tmp_path / "run")
    for name in single:
        torch.testing.assert_close(distributed[name], single[name], rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_nodes(arguments: list[str], cwd: Path, environment: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """The same `cnnc` command on two "nodes" (two torchrun launches of one process each) that meet at a
    c10d rendezvous on 127.0.0.1, as two machines would at their first node's address."""
    endpoint = f"127.0.0.1:{_free_port()}"
    launches = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                          "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                          "--rdzv_id=cnnc-test", "-m", "cnnc", *arguments],
                         cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    results = []
    for launch in launches:
        stdout, stderr = launch.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(launch.args, launch.returncode, stdout, stderr))
    return results


def test_two_nodes_train_and_resume_as_one_node_does(tmp_path, capsys) -> None:
    spec = write_spec(tmp_path, xo_variant(SMALL_XO, "dataset xo\n epochs 2\n batch 64\n validation 0.25"))
    flags = ["--limit-train", "512", "--limit-test", "128", "--json", "--out", "run"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    stopped = _two_nodes(["train", str(spec), *flags], tmp_path, {**environment, SIGNAL_AT_STEP_ENV: "INT:8"})
    assert all(result.returncode != 0 for result in stopped)
    checkpoint = load_checkpoint(tmp_path / "run")
    assert (checkpoint.epoch, checkpoint.step_in_epoch) == (1, 2)
    assert len(checkpoint.training["processes"]) == 2
    resumed = _two_nodes(["train", "--resume", "run", "--json"], tmp_path, environment)
    assert [result.returncode for result in resumed] == [0, 0], resumed[0].stderr + resumed[1].stderr
    events = [json.loads(line) for result in resumed for line in result.stdout.splitlines()]
    assert [e["event"] for e in events].count("done") == 1  # only the first node's rank 0 reports

    assert main(["train", str(spec), *flags[:-1], str(tmp_path / "single")]) == 0
    capsys.readouterr()
    single, distributed = weights(tmp_path / "single"), weights(tmp_path / "run")
    for name in single:
        torch.testing.assert_close(distributed[name], single[name], rtol=1e-4, atol=1e-5)
