"""Checkpoints that changed after they were written, or that hold plain data of the wrong shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnc.cli import main
from cnnc.errors import CnncError
from cnnc.training.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint

TINY = """model m {
 input glyph(1, 28, 28)
 conv(4, kernel=3, stride=2, padding=same, activation=relu)
 global_avgpool
 dense(2)
}
train { dataset xo; epochs 1; batch 64 }
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("integrity")
    (directory / "tiny.cnn").write_text(TINY)
    done = subprocess.run([sys.executable, "-m", "cnnc", "train", "tiny.cnn", "--limit-train", "128",
                           "--limit-test", "64", "--quiet", "--out", "run"], cwd=directory, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return directory / "run"


def _tensor_offsets(path: Path) -> list[int]:
    """Where the weights' bytes lie in the file (the data/ records of torch's zip)."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        records = [info for info in archive.infolist() if "/data/" in info.filename]
        offsets = []
        for info in records:
            header = path.read_bytes()[info.header_offset:info.header_offset + 30]
            name_length = int.from_bytes(header[26:28], "little")
            extra_length = int.from_bytes(header[28:30], "little")
            start = info.header_offset + 30 + name_length + extra_length
            offsets += range(start, start + info.compress_size, max(1, info.compress_size // 3))
    return offsets


def test_every_flipped_bit_inside_a_tensor_is_detected(run_dir: Path, tmp_path: Path) -> None:
    original = (run_dir / "last.pt").read_bytes()
    offsets = _tensor_offsets(run_dir / "last.pt")
    assert len(offsets) >= 10
    for number, offset in enumerate(offsets[:10]):
        damaged = bytearray(original)
        damaged[offset] ^= 0x10
        path = tmp_path / f"flip{number}.pt"
        path.write_bytes(bytes(damaged))
        with pytest.raises(CnncError, match="fails its CRC-32 check"):
            load_checkpoint(path)


def test_export_refuses_a_corrupted_checkpoint(run_dir: Path, tmp_path: Path, capsys) -> None:
    damaged = bytearray((run_dir / "last.pt").read_bytes())
    damaged[_tensor_offsets(run_dir / "last.pt")[0]] ^= 0x01
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(damaged))
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "fails its CRC-32 check" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def _rewritten(run_dir: Path, tmp_path: Path, **changes) -> Path:
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    raw.update(changes)
    for key in [key for key, value in changes.items() if value is KeyError]:
        del raw[key]
    path = tmp_path / "changed.pt"
    torch.save(raw, path)
    return path


@pytest.mark.parametrize("changes,message", [
    ({"model": [1, 2]}, "its 'model' should be a dict of named tensors, but it holds list [1, 2]"),
    ({"classes": "xo"}, "its 'classes' should be a list of class names, but it holds str 'xo'"),
    ({"input_shape": [1, 28]}, "its 'input_shape' should be [C, H, W]"),
    ({"epoch": "one"}, "its 'epoch' should be a count of epochs"),
    ({"preprocess": {"scale": 1}}, "its 'preprocess' should be {\"scale\", \"mean\", \"std\"}"),
    ({"sources": {"a.cnn": 3}}, "its 'sources' should be a dict of path: text"),
    ({"training": {"optimizer": {}}}, "its 'training' should be None or a dict with optimizer"),
    ({"finished": 1}, "its 'finished' should be true or false"),
])
def test_plain_data_of_the_wrong_shape_is_a_clear_error(changes: dict, message: str, run_dir: Path,
                                                        tmp_path: Path) -> None:
    path = _rewritten(run_dir, tmp_path, **changes)
    with pytest.raises(CnncError) as raised:
        load_checkpoint(path)
    assert "is a damaged cnnc checkpoint: " in str(raised.value) and message in str(raised.value)


def test_a_damaged_training_state_is_a_clear_error_on_resume(run_dir: Path, tmp_path: Path, capsys) -> None:
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    run = tmp_path / "run"
    run.mkdir()
    raw["finished"] = False
    raw["training"]["position"] = {"epochs": 1}
    assert raw["format"] == FORMAT and raw["version"] == FORMAT_VERSION
    torch.save(raw, run / "last.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 1
    assert "is a damaged cnnc checkpoint: its training state cannot be restored" in capsys.readouterr().err


def test_a_stored_spec_path_naming_another_file_is_never_read(run_dir: Path, tmp_path: Path, capsys) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$not-a-real-hash:19000\n")
    path = _rewritten(run_dir, tmp_path, spec_path=str(secret))
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 1
    error = capsys.readouterr().err
    assert "not-a-real-hash" not in error and "the stored sources do not hold the spec" in error
