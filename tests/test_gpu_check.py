"""bench/gpu_check.sh, the GPU path's one prepared check, run in its CPU form (as CI can): every part
runs and reports what the GPU machine's run would report, from tiny inputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from bench_scripts import load_bench_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

TINY_SPEC = """model tiny {
    input image(3, 32, 32)
    conv(8, kernel=3, stride=2, padding=same, activation=relu)
    global_avgpool
    dense(10)
}
train { dataset npz("tiny.npz"); batch 64; epochs 3 }
"""


def test_the_cpu_form_of_every_part_runs_and_reports(tmp_path) -> None:
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x=images, y=np.arange(300) % 10, classes=np.array(list("abcdefghij")))
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY_SPEC)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--cpu", "--out", str(out), "--spec", str(spec)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["parts"]
    assert summary["mode"] == "cpu" and {name: part["status"] for name, part in parts.items()} == dict.fromkeys(
        ("env", "cuda_tests", "ort", "airbench"), "pass")
    assert parts["env"]["device"] is None and parts["env"]["torch"]

    tests = parts["cuda_tests"]  # collected, and skipped without CUDA
    assert tests["tests"] >= 5 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0
    assert "skipped" in (out / "cuda_tests.log").read_text()

    ort = parts["ort"]
    assert (ort["reference"], ort["candidate"]) == ("cpu/all", "cpu/disable")
    assert [model["model"] for model in ort["models"]] == ["mnist_fast", "xo"]
    for model in ort["models"]:
        assert model["agree"] and model["max_abs_difference"] < 1e-3 and model["same_argmax"] == 1.0
        assert set(model["milliseconds"]) == {"1", "8"} and all(ms > 0 for pair in model["milliseconds"].values()
                                                                   for ms in pair)

    run = parts["airbench"]["runs"]["eager"]
    events = [json.loads(line) for line in (out / "airbench-eager.log").read_text().splitlines()
              if line.startswith("{")]
    finished = next(event for event in events if event["event"] == "done")
    assert run["test_accuracy"] == finished["test_accuracy"] and run["epochs"] == 1  # --epochs 1 in the CPU form
    assert run["reached_target"] is (finished["test_accuracy"] >= 0.94)
    assert 0 < run["step_seconds"] <= run["epoch_seconds"] <= run["wall_seconds"]
    table = (out / "summary.md").read_text()
    assert "| airbench | pass |" in table and "cpu/all vs cpu/disable: 2 models agree" in table


def test_run_figures_add_up_the_steps_and_estimate_warm_epochs(tmp_path) -> None:
    gpu_check = load_bench_script("gpu_check")
    times = ((1, 10.0), (2, 2.0), (3, 3.0))  # (epoch, seconds of steps) for 1000 images
    epochs = [{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
               "lr": 0.1, "seconds": s + 0.5, "images_per_second": 1000 / s} for e, s in times]
    test = {"test_loss": 0.3, "test_accuracy": 0.9412, "test_examples": 10000, "model_epoch": 3, "epochs_trained": 3}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in [*epochs, test]))
    (tmp_path / "settings.json").write_text(json.dumps({"data": {"train_examples": 1000}}))
    figures = gpu_check._run_figures(tmp_path, 0.94)
    assert figures["reached_target"] is True and figures["test_accuracy"] == 0.9412
    assert figures["step_seconds"] == 15.0 and figures["epoch_seconds"] == 16.5
    assert figures["first_epoch_step_seconds"] == 10.0 and figures["warm_estimate_seconds"] == 7.5  # median 2.5 x 3
    assert gpu_check._run_figures(tmp_path, 0.95)["reached_target"] is False


def test_missing_cifar_files_are_named(tmp_path) -> None:
    gpu_check = load_bench_script("gpu_check")
    folder = tmp_path / "cifar-10"
    folder.mkdir()
    for name in ("data_batch_1.bin.gz", "data_batch_2.bin", "data_batch_3.bin.gz", "data_batch_4.bin.gz"):
        (folder / name).write_bytes(b"")
    assert gpu_check._missing_cifar(tmp_path) == ["data_batch_5.bin", "test_batch.bin"]
    assert gpu_check._missing_cifar(folder) == ["data_batch_5.bin", "test_batch.bin"]
