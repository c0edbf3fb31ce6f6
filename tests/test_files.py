"""The files the user names with -o: links, standard output, devices and pipes, unwritable places."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import onnx
import pytest

from cnnc.cli import main
from cnnc.errors import CnncError
from cnnc.files import check_writable, remove_stale_temporaries, replacing

ROOT = Path(__file__).resolve().parent.parent
SPEC = str(ROOT / "specs" / "xo.cnn")


def test_writing_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "models" / "real.onnx"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "current.onnx"
    link.symlink_to(target)
    assert main(["compile", SPEC, "-o", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    onnx.checker.check_model(onnx.load(target))


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "model.ir"
    link.symlink_to(tmp_path / "target.ir")
    assert main(["compile", SPEC, "--emit", "ir", "-o", str(link)]) == 0
    assert link.is_symlink() and (tmp_path / "target.ir").read_text().startswith("graph")


def test_replacing_a_regular_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    target.chmod(0o640)
    assert main(["compile", SPEC, "-o", str(target)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() != b"old"


@pytest.mark.parametrize("output", ["-", "/dev/stdout"])
def test_dash_and_dev_stdout_write_onnx_to_standard_output(output: str, tmp_path: Path) -> None:
    redirected = tmp_path / "out.onnx"
    with redirected.open("wb") as sink:
        done = subprocess.run([sys.executable, "-m", "cnnc", "compile", SPEC, "-o", output], stdout=sink,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    onnx.checker.check_model(onnx.load(redirected))
    assert not list(Path("/dev").glob(".stdout.*.tmp"))


def test_dash_writes_ir_text_to_a_pipe() -> None:
    done = subprocess.run([sys.executable, "-m", "cnnc", "compile", SPEC, "--emit", "ir", "-o", "-"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("graph"), done.stderr


def test_a_named_pipe_is_streamed_to_and_stays_a_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert main(["compile", SPEC, "--emit", "ir", "-o", str(fifo)]) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert received and received[0].startswith(b"graph")


def test_a_failed_writer_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]


def test_binary_output_to_a_terminal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with pytest.raises(CnncError, match="binary file to the terminal"):
        check_writable("-", binary=True)
    check_writable("-", binary=False)


def test_unwritable_outputs_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_file").write_text("x")
    for output, message in ((str(tmp_path / "a_file" / "m.onnx"), "is not a directory"),
                            (str(tmp_path), "it is a directory"),
                            ("/sys/cnnc-test/m.onnx", "cannot write")):
        assert main(["compile", SPEC, "-o", output]) == 1
        assert message in capsys.readouterr().err
    # checked before the spec is even read: a broken spec is not reported
    broken = tmp_path / "broken.cnn"
    broken.write_text("model {")
    assert main(["compile", str(broken), "-o", "/sys/cnnc-test/m.onnx"]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_compile_opset_out_of_range_is_a_usage_error_either_way(tmp_path: Path) -> None:
    assert main(["compile", SPEC, "-o", str(tmp_path / "m.onnx"), "--opset", "12"]) == 2
    assert main(["compile", SPEC, "-o", str(tmp_path / "m.onnx"), "--opset", "99"]) == 2


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.{dead_pid}.0123abcd.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}.0123abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def test_writing_a_file_removes_what_a_killed_writer_left_of_it(tmp_path: Path) -> None:
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    leftover = tmp_path / f".m.onnx.{dead_pid}.0123abcd.tmp"
    other = tmp_path / f".other.onnx.{dead_pid}.0123abcd.tmp"
    leftover.write_bytes(b"half")
    other.write_bytes(b"half")
    assert main(["compile", SPEC, "-o", str(tmp_path / "m.onnx")]) == 0
    assert not leftover.exists() and other.exists()
