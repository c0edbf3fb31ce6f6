"""Hostile inputs: specs, data files, images, checkpoints and ONNX files built to break cnnc.

Every case must end in a clean error (exit 1, a message, no traceback), in bounded CPU time and memory.
The cases run in groups, each group in one subprocess (tests/hostile_harness.py) so that torch is
imported once: the whole suite stays within a minute. Memory is bounded twice: RLIMIT_AS caps the
subprocess (a runaway allocation fails there instead of exhausting the machine), and each case's
peak resident memory (ru_maxrss, read after it) must stay within CASE_MIB of the warmed-up baseline.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("hostile_harness.py")
CASE_MIB = 300          # what one case may add to the baseline's peak memory
CASE_CPU_SECONDS = 20   # the CPU time one case may take (CPU, not wall: the machine's load does not count)
GIB = 1 << 30

XO_SPEC = "model m {\n input glyph(1, 28, 28)\n flatten\n dense(2)\n}\ntrain { dataset xo; epochs 1 }\n"
MNIST_SPEC = "model m {\n input digit(1, 28, 28)\n flatten\n dense(10)\n}\ntrain { dataset mnist; epochs 1 }\n"
MODEL = "model m {\n input x(1, 8, 8)\n flatten\n dense(2)\n}\n"


# --- builders: each writes its hostile file(s) under `d` and returns the cnnc command line ---------------

def spec_case(text: str, name: str = "hostile.cnn") -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        (d / name).write_text(text)
        return ["check", str(d / name)]
    return build


def many_errors(lines: int) -> str:
    return "model m {\n input x(1, 8, 8)\n" + " conv(4, kernl=3)\n" * lines + "}\n"


def doubling_blocks(levels: int) -> str:
    blocks = ["block b0() { identity }"]
    blocks += [f"block b{i}() {{\n a = in -> b{i - 1}\n c = in -> b{i - 1}\n add(a, c)\n}}"
               for i in range(1, levels + 1)]
    return "\n".join(blocks) + f"\nmodel m {{\n input x(1, 8, 8)\n b{levels}\n flatten\n}}\n"


def chained_blocks(levels: int) -> str:
    blocks = ["block b0() { identity }"] + [f"block b{i}() {{ b{i - 1} }}" for i in range(1, levels + 1)]
    return "\n".join(blocks) + f"\nmodel m {{\n input x(1, 8, 8)\n b{levels}\n flatten\n}}\n"


SPEC_CASES: dict[str, Callable[[Path], list[str]]] = {
    "repeat-1024-cubed": spec_case("model m {\n input x(1, 8, 8)\n"
                                   " repeat 1024 { repeat 1024 { repeat 1024 { identity } } }\n flatten\n}\n"),
    "blocks-doubling-40-times": spec_case(doubling_blocks(40)),
    "blocks-chained-3000-deep": spec_case(chained_blocks(3000)),
    "power-tower": spec_case("const A = ((((10 ** 64) ** 64) ** 64) ** 64) ** 64\n" + MODEL),
    "float-overflow": spec_case("const A = 1e300 ** 2\n" + MODEL),
    "huge-literal": spec_case(f"const A = {'9' * 100_000}\n" + MODEL),
    "braces-3000-deep": spec_case("model m {\n input x(1, 8, 8)\n" + "repeat 1 {\n" * 3000 + "identity\n"
                                  + "}\n" * 3000 + "}\n"),
    "parentheses-100000-deep": spec_case("const A = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n" + MODEL),
    "operators-20000-long": spec_case("const A = " + "1+" * 20_000 + "1\n" + MODEL),
    "include-etc-passwd": spec_case('include "/etc/passwd"\n' + MODEL),
    "include-proc-environ": spec_case('include "/proc/self/environ"\n' + MODEL),
    "include-name-too-long": spec_case(f'include "{"n" * 5000}.cnn"\n' + MODEL),
    "include-path-too-long": spec_case(f'include "{"/".join(["d" * 250] * 40)}.cnn"\n' + MODEL),
    "errors-5000-lines": spec_case(many_errors(5_000)),  # linear rendering: tests/test_diagnostics_edges.py
    "binary-garbage": spec_case(bytes(range(256)).decode("latin-1") * 64),
}


def _train(d: Path, spec: str, *flags: str) -> list[str]:
    (d / "spec.cnn").write_text(spec)
    return ["train", str(d / "spec.cnn"), "--no-download", "--quiet", "--out", str(d / "run"), *flags]


def gzip_bomb(d: Path) -> list[str]:
    """An MNIST folder whose training images inflate to 256 MiB of zeros (the real file is 47 MB)."""
    data = d / "mnist"
    data.mkdir()
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with open(data / "train-images-idx3-ubyte.gz", "wb") as sink:
        for _ in range(256):
            sink.write(compressor.compress(chunk))
        sink.write(compressor.flush())
    shared = Path(os.environ["CNNC_DATA"]) / "mnist"
    shutil.copy(shared / "train-labels-idx1-ubyte.gz", data)
    return _train(d, MNIST_SPEC, "--data", str(data))


def npz_with(arrays: dict[str, np.ndarray]) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        np.savez(d / "data.npz", **arrays)
        return _train(d, XO_SPEC, "--dataset", "npz", "--data", str(d / "data.npz"))
    return build


def npz_declaring(shape: tuple[int, ...]) -> Callable[[Path], list[str]]:
    """A 2 KB npz whose x header declares `shape` (713 TiB for (2**40 * 713,))."""
    def build(d: Path) -> list[str]:
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
        header["shape"] = shape
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, header)
        with zipfile.ZipFile(d / "data.npz", "w") as archive:
            archive.writestr("x.npy", buffer.getvalue() + bytes(1024))
            labels = io.BytesIO()
            np.save(labels, np.zeros(4, np.int64))
            archive.writestr("y.npy", labels.getvalue())
        return _train(d, XO_SPEC, "--dataset", "npz", "--data", str(d / "data.npz"))
    return build


def npz_zip_bomb(d: Path) -> list[str]:
    """A member that deflates 512 MiB of zeros into half a megabyte."""
    with zipfile.ZipFile(d / "data.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
            header["shape"] = (512 << 20,)
            np.lib.format.write_array_header_1_0(member, header)
            chunk = bytes(1 << 20)
            for _ in range(512):
                member.write(chunk)
        labels = io.BytesIO()
        np.save(labels, np.zeros(4, np.int64))
        archive.writestr("y.npy", labels.getvalue())
    return _train(d, XO_SPEC, "--dataset", "npz", "--data", str(d / "data.npz"))


def png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def folder_of(width: int, height: int) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        for label in ("x", "o"):
            png_header_only(d / "images" / label / "0.png", width, height)
            png_header_only(d / "images" / label / "1.png", width, height)
        return _train(d, XO_SPEC, "--dataset", "folder", "--data", str(d / "images"))
    return build


def folder_of_floats(d: Path) -> list[str]:
    from PIL import Image

    for label in ("x", "o"):
        (d / "images" / label).mkdir(parents=True)
        for index in range(2):
            Image.fromarray(np.full((28, 28), 0.5, np.float32)).save(d / "images" / label / f"{index}.png.tif")
            (d / "images" / label / f"{index}.png.tif").rename(d / "images" / label / f"{index}.png")
    return _train(d, XO_SPEC, "--dataset", "folder", "--data", str(d / "images"))


def checkpoint(change: Callable[[dict], None] | None = None, damage: Callable[[bytes], bytes] | None = None):
    """A real cnnc checkpoint of the xo model (initial weights), then changed or damaged."""
    def build(d: Path) -> list[str]:
        from cnnc.compiler.backends.pytorch import build_module
        from cnnc.compiler.check import check_file
        from cnnc.training.checkpoint import save_checkpoint

        (d / "spec.cnn").write_text(XO_SPEC)
        program = check_file(d / "spec.cnn").program
        assert program is not None
        contents = {"model": dict(build_module(program.graph).state_dict()), "model_name": "m",
                    "spec_path": str(d / "spec.cnn"), "sources": dict(program.sources), "classes": ["x", "o"],
                    "input_shape": [1, 28, 28], "preprocess": {"scale": 1 / 255, "mean": [0.0], "std": [1.0]},
                    "dataset": "xo", "settings": {}, "epoch": 1, "step_in_epoch": 0, "finished": True,
                    "test_accuracy": 0.5, "test_loss": 1.0, "training": None}
        if change is not None:
            change(contents)
        save_checkpoint(contents, d / "last.pt")
        if damage is not None:
            (d / "last.pt").write_bytes(damage((d / "last.pt").read_bytes()))
        return ["export", str(d / "last.pt"), "-o", str(d / "m.onnx")]
    return build


def flip_in_tensor(data: bytes) -> bytes:
    at = data.index(b"data/0") + 200  # inside the first tensor's record
    return data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1:]


TORCH_CASES: dict[str, Callable[[Path], list[str]]] = {
    "gzip-bomb-idx": gzip_bomb,
    "npz-label-1e9": npz_with({"x": np.zeros((4, 28, 28), np.uint8), "y": np.array([0, 1, 2, 10**9])}),
    "npz-header-713-tib": npz_declaring((713 * 2**40,)),
    "npz-header-overflowing-shape": npz_declaring((2**62, 2**62, 2**62)),
    "npz-zip-bomb": npz_zip_bomb,
    "npz-object-array": npz_with({"x": np.array([{"a": 1}], dtype=object), "y": np.zeros(1, np.int64)}),
    "folder-image-9000x9000": folder_of(9000, 9000),
    "folder-image-100000x100000": folder_of(100_000, 100_000),
    "folder-float-images": folder_of_floats,
    "checkpoint-bit-flip": checkpoint(damage=flip_in_tensor),
    "checkpoint-truncated": checkpoint(damage=lambda data: data[: len(data) // 2]),
    "checkpoint-wrong-types": checkpoint(change=lambda c: c.update(classes="xo", model=[1, 2])),
    "checkpoint-spec-path-elsewhere": checkpoint(change=lambda c: c.update(spec_path="/etc/passwd")),
    "checkpoint-not-a-zip": checkpoint(damage=lambda data: b"\x80\x02}q\x00." + data[:100]),
}


def _onnx_model(path: Path, output_rank: int | None, input_shape: list) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    if output_rank == 4:
        nodes, initializers = [helper.make_node("Identity", ["x"], ["y"])], []
    elif output_rank == 1:
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
        initializers = [helper.make_tensor("shape", TensorProto.INT64, [1], [-1])]
    else:
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
        initializers = [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "foreign", [x], [y], initializers),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    save(model, path)


def foreign_model(output_rank: int, command: str) -> Callable[[Path], list[str]]:
    """A model that takes the images given (xo's 28x28 for eval) but whose output is not (N, classes)."""
    def build(d: Path) -> list[str]:
        from PIL import Image

        if command == "eval":
            _onnx_model(d / "m.onnx", output_rank, ["N", 1, 28, 28])
            return ["eval", str(d / "m.onnx"), "--dataset", "xo", "--limit", "8"]
        _onnx_model(d / "m.onnx", output_rank, ["N", 1, 8, 8])
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "a.png")
        return ["predict", str(d / "m.onnx"), str(d / "a.png")]
    return build


def bench_of_huge_input(d: Path) -> list[str]:
    _onnx_model(d / "m.onnx", None, ["N", 3, 100_000, 100_000])
    return ["bench", str(d / "m.onnx"), "--batch-sizes", "1"]


def predict_images(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        _onnx_model(d / "m.onnx", None, ["N", 1, 8, 8])
        make(d)
        return ["predict", str(d / "m.onnx"), str(d / "images")]
    return build


def garbage_model(d: Path) -> list[str]:
    (d / "m.onnx").write_bytes(bytes(range(256)) * 40)
    png_header_only(d / "a.png", 8, 8)
    return ["predict", str(d / "m.onnx"), str(d / "a.png")]


def _float_tiff(d: Path) -> None:
    from PIL import Image

    (d / "images").mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(d / "images" / "float.tif")


RUNTIME_CASES: dict[str, Callable[[Path], list[str]]] = {
    "predict-1d-output": foreign_model(1, "predict"),
    "predict-4d-output": foreign_model(4, "predict"),
    "eval-1d-output": foreign_model(1, "eval"),
    "eval-4d-output": foreign_model(4, "eval"),
    "bench-3x100000x100000-input": bench_of_huge_input,
    "predict-garbage-model": garbage_model,
    "predict-image-9000x9000": predict_images(lambda d: png_header_only(d / "images" / "big.png", 9000, 9000)),
    "predict-image-100000x100000": predict_images(lambda d: png_header_only(d / "images" / "b.png", 100_000, 100_000)),
    "predict-float-tiff": predict_images(_float_tiff),
}


# What each case's message must say: the reason it fails, not some earlier problem with its input.
EXPECTED = {
    "repeat-1024-cubed": "error[E025]", "blocks-doubling-40-times": "error[E025]", "power-tower": "256 bits",
    "float-overflow": "overflows", "parentheses-100000-deep": "nest more than 100 levels",
    "braces-3000-deep": "nest more than 100 levels", "include-etc-passwd": "only .cnn files",
    "include-proc-environ": "only .cnn files", "include-name-too-long": "more than a file name can be",
    "gzip-bomb-idx": "decompression stopped", "npz-label-1e9": "cnnc allows up to 100,000",
    "npz-header-713-tib": "(713 TiB), but holds", "npz-zip-bomb": "refusing a decompression bomb",
    "folder-image-9000x9000": "nothing was decoded", "folder-float-images": "floating-point pixels",
    "checkpoint-bit-flip": "fails its CRC-32 check", "checkpoint-wrong-types": "damaged cnnc checkpoint",
    "checkpoint-spec-path-elsewhere": "stored sources do not hold", "predict-1d-output": "1-dimensional tensor",
    "predict-4d-output": "4-dimensional tensor", "eval-1d-output": "1-dimensional tensor",
    "eval-4d-output": "4-dimensional tensor", "bench-3x100000x100000-input": "needs 139.7 GiB of input",
    "predict-image-9000x9000": "nothing was decoded", "predict-image-100000x100000": "Image size",
    "predict-float-tiff": "floating-point pixels",
}


# --- running the groups ---------------------------------------------------------------------------

def start_group(directory: Path, cases: dict[str, Callable[[Path], list[str]]], warm: list[str],
                address_space: int) -> subprocess.Popen:
    entries = []
    for name, build in cases.items():
        case_dir = directory / name
        case_dir.mkdir()
        entries.append({"id": name, "argv": build(case_dir), "warm": warm})
    (directory / "cases.json").write_text(json.dumps(entries))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.Popen([sys.executable, str(HARNESS), str(directory / "cases.json"), str(directory / "out.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit, cwd=directory)


def finish_group(process: subprocess.Popen, directory: Path) -> dict:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads((directory / "out.json").read_text())


def assert_clean(results: dict, case: str) -> None:
    result = results["cases"][case]
    assert result["traceback"] is None, result["traceback"]
    assert result["code"] == 1, result
    said = result["stderr"] + result["stdout"]  # check prints its diagnostics on stdout
    assert "error" in said and "Traceback" not in said, said
    assert EXPECTED.get(case, "") in said, said
    grown = result["peak_mib"] - results["baseline_mib"]
    assert grown < CASE_MIB, f"{case}: peak memory grew by {grown:.0f} MiB"
    assert result["cpu_seconds"] < CASE_CPU_SECONDS, f"{case}: took {result['cpu_seconds']:.1f}s of CPU"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The groups at once: the specs (no torch), the data files and checkpoints (torch), the ONNX files
    and images (onnxruntime)."""
    specs, heavy = tmp_path_factory.mktemp("hostile-specs"), tmp_path_factory.mktemp("hostile-torch")
    runtime = tmp_path_factory.mktemp("hostile-runtime")
    running = {
        "specs": (start_group(specs, SPEC_CASES, ["cnnc.compiler.cli", "cnnc.compiler.check"], 2 * GIB), specs),
        "torch": (start_group(heavy, TORCH_CASES, ["torch", "cnnc.training.run", "cnnc.export.exporter",
                                                   "PIL.Image"], 6 * GIB), heavy),
        "runtime": (start_group(runtime, RUNTIME_CASES, ["onnxruntime", "cnnc.runtime.cli", "cnnc.runtime.model",
                                                         "PIL.Image"], 4 * GIB), runtime),
    }
    return {group: finish_group(process, directory) for group, (process, directory) in running.items()}


@pytest.fixture(scope="module")
def spec_results(results: dict[str, dict]) -> dict:
    return results["specs"]


@pytest.fixture(scope="module")
def torch_results(results: dict[str, dict]) -> dict:
    return results["torch"]


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_hostile_spec(case: str, spec_results: dict) -> None:
    assert_clean(spec_results, case)


@pytest.fixture(scope="module")
def runtime_results(results: dict[str, dict]) -> dict:
    return results["runtime"]


@pytest.mark.parametrize("case", list(RUNTIME_CASES))
def test_hostile_onnx_and_image(case: str, runtime_results: dict) -> None:
    assert_clean(runtime_results, case)


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_hostile_data_and_checkpoint(case: str, torch_results: dict) -> None:
    assert_clean(torch_results, case)


def test_no_hostile_message_echoes_a_secret(spec_results: dict, torch_results: dict) -> None:
    passwd_first_line = Path("/etc/passwd").read_text().splitlines()[0]
    for results in (spec_results, torch_results):
        for case, result in results["cases"].items():
            said = result["stderr"] + result["stdout"]
            assert passwd_first_line not in said and "PATH=" not in said, case
    assert "only .cnn files can be included" in spec_results["cases"]["include-etc-passwd"]["stdout"]
    assert "fails its CRC-32 check" in torch_results["cases"]["checkpoint-bit-flip"]["stderr"]


def test_the_gzip_bomb_stopped_at_the_expected_size(torch_results: dict) -> None:
    message = torch_results["cases"]["gzip-bomb-idx"]["stderr"]
    assert "decompresses to more than the 47,105,552 bytes" in message
