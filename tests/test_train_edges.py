"""`cnnc train` when the world around it fails: unwritable places, a full disk, a deleted or read-only
run directory, a run killed before its first checkpoint, and left-over temporary files."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cnnc.training.checkpoint as checkpoint_module
from cnnc.cli import main
from cnnc.training.checkpoint import load_checkpoint
from cnnc.training.trainer import SIGNAL_AT_STEP_ENV, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = """model m {
 input glyph(1, 28, 28)
 conv(4, kernel=3, stride=2, padding=same, activation=relu)
 global_avgpool
 dense(2)
}
train { dataset xo; epochs EPOCHS; batch 64 }
"""
FLAGS = ["--limit-train", "128", "--limit-test", "64", "--quiet"]


def tiny_spec(directory: Path, epochs: int = 2) -> Path:
    path = directory / "tiny.cnn"
    path.write_text(TINY.replace("EPOCHS", str(epochs)))
    return path


def cnnc(args: list[str], cwd: Path, env: dict[str, str] | None = None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **options)


def test_an_unwritable_out_fails_at_once_before_the_data_is_read(tmp_path: Path, capsys) -> None:
    spec = tiny_spec(tmp_path)
    # mnist from an empty data directory would fail on the data: the output is checked first
    assert main(["train", str(spec), "--dataset", "mnist", "--data", str(tmp_path), "--no-download",
                 "--out", "/sys/cnnc-run"]) == 1
    error = capsys.readouterr().err
    assert "cannot write /sys/cnnc-run/last.pt" in error and "mnist" not in error


def test_a_permission_denied_out_fails_at_once(tmp_path: Path, capsys) -> None:
    """Root ignores permission bits, so as root the directory is made immutable (chattr +i) instead."""
    locked = tmp_path / "locked"
    locked.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(locked)], check=True)
    else:
        locked.chmod(0o555)
    try:
        assert main(["train", str(tiny_spec(tmp_path)), "--out", str(locked / "run")]) == 1
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)
    error = capsys.readouterr().err
    reason = "Operation not permitted" if as_root else "Permission denied"
    assert f"cannot write {locked / 'run' / 'last.pt'}: {reason}" in error
    assert not (locked / "run").exists()


def _fail_second_checkpoint(monkeypatch: pytest.MonkeyPatch, failure) -> None:
    """The first checkpoint is written; the second one's file fails as `failure` says."""
    calls = []

    def opening(path, mode="r", *args, **kwargs):
        if mode == "xb":
            calls.append(path)
            if len(calls) == 2:
                return failure(path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", opening, raising=False)


def test_a_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_last_good_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # /dev/full fails every write with ENOSPC, as a full disk does
    _fail_second_checkpoint(monkeypatch, lambda path: open("/dev/full", "wb"))  # noqa: SIM115 - the writer closes it
    run = tmp_path / "run"
    assert main(["train", str(tiny_spec(tmp_path)), *FLAGS, "--out", str(run)]) == 1
    error = capsys.readouterr().err
    assert f"cannot write {run / 'last.pt'}: no space left on the device; the previous last.pt is unchanged" in error
    assert load_checkpoint(run).epoch == 1
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_a_read_only_filesystem_mid_run_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys) -> None:
    def read_only(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    _fail_second_checkpoint(monkeypatch, read_only)
    run = tmp_path / "run"
    assert main(["train", str(tiny_spec(tmp_path)), *FLAGS, "--out", str(run)]) == 1
    assert "the filesystem is read-only; the previous last.pt is unchanged" in capsys.readouterr().err
    assert load_checkpoint(run).epoch == 1


def test_a_run_directory_deleted_mid_run_is_reported_not_recreated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys) -> None:
    run = tmp_path / "run"
    checkpoint_epoch = Trainer._checkpoint_epoch

    def then_delete(self, record):
        checkpoint_epoch(self, record)
        shutil.rmtree(run)

    monkeypatch.setattr(Trainer, "_checkpoint_epoch", then_delete)
    assert main(["train", str(tiny_spec(tmp_path, epochs=3)), *FLAGS, "--out", str(run)]) == 1
    assert f"cannot write to the run directory {run}" in capsys.readouterr().err
    assert not run.exists()


def test_a_run_killed_before_its_first_checkpoint_can_be_restarted_in_place(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    killed = cnnc(["train", str(spec), *FLAGS, "--out", "run"], tmp_path, {SIGNAL_AT_STEP_ENV: "KILL:1"})
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "run" / "last.pt").exists()
    resumed = cnnc(["train", "--resume", "run"], tmp_path)
    assert resumed.returncode == 1
    assert f"run stopped before its first checkpoint, so there is nothing to resume; start it again with: " \
           f"cnnc train {spec} --out run" in resumed.stderr
    restarted = cnnc(["train", str(spec), *FLAGS, "--out", "run"], tmp_path)
    assert restarted.returncode == 0, restarted.stderr
    assert load_checkpoint(tmp_path / "run").finished


def test_resume_removes_temporary_files_left_by_a_killed_writer(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    stopped = cnnc(["train", str(spec), *FLAGS, "--out", "run"], tmp_path, {SIGNAL_AT_STEP_ENV: "KILL:3"})
    assert stopped.returncode == -signal.SIGKILL
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True).stdout)
    leftover = tmp_path / "run" / f".last.pt.{dead_pid}.0badf00d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    resumed = cnnc(["train", "--resume", "run", "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not leftover.exists()


def test_resume_of_a_missing_run_is_a_usage_error_like_export(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert main(["export", str(tmp_path / "missing"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "no such run directory or checkpoint" in capsys.readouterr().err


# --- datasets: downloaded on first use, or refused with --no-download ---------------------------------

MNIST_SPEC = TINY.replace("dataset xo; epochs EPOCHS", "dataset mnist; epochs 1").replace("dense(2)", "dense(10)")


def test_train_downloads_a_missing_standard_dataset_on_first_use(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    shared = Path(os.environ["CNNC_DATA"]) / "mnist"
    mirror = tmp_path / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        shutil.copy(shared / f"{name}.gz", mirror)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "mirror"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "m.cnn").write_text(MNIST_SPEC)
        cache = tmp_path / "cache"
        env = {"CNNC_DATA": "", "XDG_CACHE_HOME": str(cache), "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1",
               "CNNC_DATASET_MIRROR": f"http://127.0.0.1:{server.server_address[1]}"}
        refused = cnnc(["train", "m.cnn", *FLAGS, "--no-download", "--out", "r1"], tmp_path, env)
        assert refused.returncode == 1
        assert "Or run cnnc train without --no-download to fetch them" in refused.stderr
        assert " --download" not in refused.stderr  # train has no such flag
        done = cnnc(["train", "m.cnn", "--limit-train", "128", "--limit-test", "64", "--out", "r2"], tmp_path, env)
        assert done.returncode == 0, done.stderr
        assert "downloading train-images-idx3-ubyte.gz (9.5 MiB)" in done.stderr  # one line, not a bar
        kept = sorted(p.name for p in (cache / "cnnc" / "mnist").iterdir())
        assert kept == sorted(p.name.removesuffix(".gz") for p in mirror.iterdir())  # decompressed, each verified
    finally:
        server.shutdown()
        server.server_close()
