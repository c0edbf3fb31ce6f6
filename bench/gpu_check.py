"""The GPU path's check (issue 10), in one run of under 5 minutes on the GPU machine. Run it through
bench/gpu_check.sh; bench/GPU.md says how to prepare the machine and what was measured.

Parts, in order, each within its share of --budget seconds:
  env         Python, torch, the device, onnxruntime (what the figures were measured with)
  cuda_tests  pytest -m cuda tests/test_cuda.py: exact resume, no per-step synchronisation, bf16,
              channels-last, torch.compile and CUDA graphs on the device (CNNC_REQUIRE_CUDA=1: a
              missing device fails them)
  ort         every spec in specs/ compiled to ONNX (its initial weights) and run by onnxruntime's
              CUDA provider and its CPU provider (bench/ort_providers.py): parity and milliseconds
  airbench    cnnc train SPEC (default specs/cifar10_airbench.cnn) on CIFAR-10 with --bf16, eager
              and with --cuda-graphs: test accuracy, training seconds, and whether --target was met

Without CUDA (or with --cpu) every part runs in its CPU form with tiny limits, so that a machine
without a GPU (CI: tests/test_gpu_check.py) proves the script itself right: the CUDA tests are
collected and skipped, onnxruntime compares its CPU provider with and without graph optimisations,
and the training run is one short epoch on the CPU.

Writes to --out (default $OUT, the device tool's output folder): summary.json (every figure),
summary.md (a table), and one log per part. Exit status 0 when every part passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("dsl", "compiler", "datasets", "training", "export", "runtime", "tools")  # as the Makefile's lint tree
AIRBENCH_SPEC = ROOT / "specs" / "cifar10_airbench.cnn"
CIFAR_FILES = tuple(f"data_batch_{n}.bin" for n in range(1, 6)) + ("test_batch.bin",)
# Seconds each part may take at most on the GPU machine, and in CPU mode; airbench gets what is left.
CAPS = {"gpu": {"cuda_tests": 120, "ort": 45}, "cpu": {"cuda_tests": 60, "ort": 40}}
PASS, FAIL, UNAVAILABLE = "pass", "fail", "unavailable"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU form of every part, even where CUDA exists")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                        help="where the figures go (default: $OUT)")
    parser.add_argument("--spec", type=Path, default=AIRBENCH_SPEC, help="the spec to time (default: %(default)s)")
    parser.add_argument("--data", type=Path, help="the data root holding cifar-10/ (default: $CNNC_DATA, else "
                                                  ".gpudata/ in the repository when it exists)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl",
                        help="wheels to install for missing packages (lark; onnxruntime-gpu) (default: %(default)s)")
    parser.add_argument("--budget", type=float, help="seconds for everything (default: 285 on CUDA, 150 on CPU)")
    parser.add_argument("--target", type=float, default=0.94, help="the test accuracy to reach (default: 0.94)")
    parser.add_argument("--ort-specs", nargs="*", help="spec names for the onnxruntime part (default: all in "
                                                       "specs/ on CUDA, xo and mnist_fast on CPU)")
    args = parser.parse_args()
    if args.out is None:
        parser.error("give --out DIR (or set OUT)")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        check = Check(args, work, started)
        return check.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Check:
    def __init__(self, args: argparse.Namespace, work: Path, started: float) -> None:
        self.args = args
        self.work = work
        self.started = started
        self.notes: list[str] = []
        self.python = _python()
        self.env, self.ort_env = self._environment()
        self.cuda = not args.cpu and self._cuda_available()
        self.mode = "gpu" if self.cuda else "cpu"
        if not self.cuda and not args.cpu:
            self.note("no CUDA device is visible to torch: running the CPU form of every part")
        if not self.cuda:  # the CPU form hides a device that may be there, so that nothing uses it
            for env in (self.env, self.ort_env):
                env["CUDA_VISIBLE_DEVICES"] = ""
        self.deadline = started + (args.budget or (285 if self.cuda else 150))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"gpu_check: {text}", flush=True)

    # --- preparing the Python environment ------------------------------------------------------------

    def _environment(self) -> tuple[dict[str, str], dict[str, str]]:
        """The environment of the parts' processes: cnnc importable (installed here, or a tree of links
        to this checkout), missing pure-Python dependencies from wheels; and the onnxruntime part's,
        with onnxruntime-gpu first on the path when it came as a wheel."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        paths: list[str] = []
        if not self._imports("lark", env):
            paths.append(self._install_wheels("lark-*.whl", "site", required="lark (a dependency of cnnc)"))
        if not self._cnnc_is_this_checkout({**env, "PYTHONPATH": _joined(paths, env)}):
            paths.append(str(self._link_tree()))
            env["PYTHONSAFEPATH"] = "1"  # the checkout's own cnnc/ folder must not shadow the tree
        if paths:
            env["PYTHONPATH"] = _joined(paths, env)
        ort_env = dict(env)
        gpu_wheel = self._gpu_wheel()
        if gpu_wheel is not None:
            target = self._pip_install([gpu_wheel], "onnxruntime-gpu")
            ort_env["PYTHONPATH"] = _joined([target], env)
        return env, ort_env

    def _imports(self, module: str, env: dict[str, str]) -> bool:
        probe = subprocess.run([self.python, "-c", f"import {module}"], env=env, cwd=self.work, capture_output=True)
        return probe.returncode == 0

    def _cnnc_is_this_checkout(self, env: dict[str, str]) -> bool:
        probe = subprocess.run([self.python, "-c", "import cnnc.training, cnnc.dsl; print(cnnc.dsl.__file__)"],
                               env=env, cwd=self.work, capture_output=True, text=True)
        return probe.returncode == 0 and Path(probe.stdout.strip()).resolve().is_relative_to(ROOT)

    def _link_tree(self) -> Path:
        """cnnc's installed layout (cnnc.dsl is dsl/, ...) as links into this checkout."""
        tree = self.work / "pkg"
        package = tree / "cnnc"
        package.mkdir(parents=True)
        for stage in STAGES:
            (package / stage).symlink_to(ROOT / stage)
        for module in (ROOT / "cnnc").glob("*.py"):
            (package / module.name).symlink_to(module)
        self.note(f"cnnc is not installed for {self.python}: using links to {ROOT}")
        return tree

    def _install_wheels(self, pattern: str, name: str, required: str) -> str:
        wheels = sorted(self.args.wheels.glob(pattern))
        if not wheels:
            raise SystemExit(f"gpu_check: {required} is not installed for {self.python}, and {self.args.wheels} "
                             f"has no {pattern}; bench/GPU.md says how to carry it")
        return self._pip_install(wheels, name)

    def _pip_install(self, wheels: list[Path], name: str) -> str:
        target = self.work / name
        done = subprocess.run([self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--target", str(target), *map(str, wheels)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"gpu_check: could not install {', '.join(w.name for w in wheels)}: {done.stderr}")
        self.note(f"installed {', '.join(w.name for w in wheels)} into a private folder")
        return str(target)

    def _gpu_wheel(self) -> Path | None:
        """onnxruntime-gpu's wheel, put together from its parts when it came in several (it is larger
        than what one call to the GPU machine carries)."""
        if self.args.cpu:
            return None
        wheels = sorted(self.args.wheels.glob("onnxruntime_gpu-*.whl"))
        if wheels:
            return wheels[-1]
        parts = sorted(self.args.wheels.glob("onnxruntime_gpu-*.whl.part-*"))
        if not parts:
            return None
        whole = self.work / parts[0].name.split(".part-")[0]
        with whole.open("wb") as output:
            for part in parts:
                output.write(part.read_bytes())
        return whole

    def _cuda_available(self) -> bool:
        probe = subprocess.run([self.python, "-c", "import torch; print(torch.cuda.is_available())"],
                               env=self.env, cwd=self.work, capture_output=True, text=True)
        return probe.stdout.strip() == "True"

    # --- running --------------------------------------------------------------------------------------

    def run(self) -> int:
        parts: dict[str, Callable[[], dict[str, Any]]] = {
            "env": self.environment_part, "cuda_tests": self.cuda_tests, "ort": self.ort, "airbench": self.airbench,
        }
        results = {}
        for name, part in parts.items():
            begun = time.monotonic()
            try:
                result = part()
            except subprocess.TimeoutExpired as timeout:
                result = {"status": FAIL, "reason": f"ran out of its {timeout.timeout:.0f} s"}
            result["seconds"] = round(time.monotonic() - begun, 1)
            results[name] = result
            print(f"gpu_check: {name}: {result['status']}" + (f" ({result['reason']})" if "reason" in result else ""),
                  flush=True)
        summary = {"mode": self.mode, "seconds": round(time.monotonic() - self.started, 1), "notes": self.notes,
                   "parts": results}
        (self.args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (self.args.out / "summary.md").write_text(markdown(summary))
        print(markdown(summary), flush=True)
        return 0 if all(result["status"] == PASS for result in results.values()) else 1

    def remaining(self, cap: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        return max(1.0, min(left, cap) if cap is not None else left)

    def execute(self, command: list[str], log: str | None, timeout: float, env: dict[str, str] | None = None,
                cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """Run `command` (its output into OUT/log), killing it and its children when `timeout` passes."""
        process = subprocess.Popen(command, cwd=cwd, env=env or self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            if log is not None:
                (self.args.out / log).write_text(output)
            raise
        if log is not None:
            (self.args.out / log).write_text(output)
        return subprocess.CompletedProcess(command, process.returncode, output, "")

    # --- the parts ------------------------------------------------------------------------------------

    def environment_part(self) -> dict[str, Any]:
        probe = ("import json, platform, torch, numpy, onnxruntime\n"
                 "cuda = torch.cuda.is_available()\n"
                 "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,\n"
                 "  'torch_cuda': torch.version.cuda, 'numpy': numpy.__version__,\n"
                 "  'onnxruntime': onnxruntime.__version__, 'ort_providers': onnxruntime.get_available_providers(),\n"
                 "  'device': torch.cuda.get_device_name(0) if cuda else None,\n"
                 "  'capability': list(torch.cuda.get_device_capability(0)) if cuda else None}))")
        found = self.execute([self.python, "-c", probe], None, self.remaining(60), env=self.ort_env, cwd=self.work)
        if found.returncode != 0:
            return {"status": FAIL, "reason": found.stdout.strip()[-500:]}
        figures = json.loads(found.stdout.strip().splitlines()[-1])
        figures.update(host=platform.node(), cpus=os.cpu_count(), load_average=_load(), commit=_commit(),
                       python_executable=self.python)
        return {"status": PASS, **figures}

    def cuda_tests(self) -> dict[str, Any]:
        report = self.work / "cuda_tests.xml"
        env = {**self.env, "CNNC_REQUIRE_CUDA": "1" if self.cuda else "0"}
        done = self.execute([self.python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                             f"--junitxml={report}", "tests/test_cuda.py"], "cuda_tests.log",
                            self.remaining(CAPS[self.mode]["cuda_tests"]), env=env)
        counts = _junit_counts(report)
        figures: dict[str, Any] = {"returncode": done.returncode, **counts}
        if done.returncode != 0 or counts["tests"] == 0:
            return {"status": FAIL, "reason": f"pytest exited {done.returncode} (cuda_tests.log)", **figures}
        if self.cuda and counts["skipped"]:
            return {"status": FAIL, "reason": f"{counts['skipped']} skipped on the GPU machine", **figures}
        return {"status": PASS, **figures}

    def ort(self) -> dict[str, Any]:
        timeout = self.remaining(CAPS[self.mode]["ort"])
        if self.cuda and not self._ort_has_cuda():
            return {"status": UNAVAILABLE, "reason": "this onnxruntime has no CUDAExecutionProvider and no "
                                                     "onnxruntime-gpu wheel was carried (bench/GPU.md)"}
        names = self.args.ort_specs or ([] if self.cuda else ["xo", "mnist_fast"])
        specs = sorted(path for path in (ROOT / "specs").glob("*.cnn") if not names or path.stem in names)
        models = []
        for spec in specs:
            model = self.work / f"{spec.stem}.onnx"
            done = self.execute([self.python, "-m", "cnnc", "compile", str(spec), "-o", str(model)], None, timeout)
            if done.returncode != 0:
                return {"status": FAIL, "reason": f"cnnc compile {spec.name}: {done.stdout.strip()[-300:]}"}
            models.append(str(model))
        results = self.work / "ort.json"
        command = [self.python, str(ROOT / "bench" / "ort_providers.py"), *models, "--json", str(results)]
        if not self.cuda:
            command += ["--cpu-only", "--batches", "1", "8", "--seconds", "0.05"]
        done = self.execute(command, "ort.log", self.remaining(timeout), env=self.ort_env)
        if done.returncode != 0:
            return {"status": FAIL, "reason": f"ort_providers.py exited {done.returncode} (ort.log)"}
        figures = json.loads(results.read_text())
        status = PASS if figures["agree"] and figures["models"] else FAIL
        reason = {} if status == PASS else {"reason": "outputs differ beyond the tolerance (summary.json)"}
        return {"status": status, **reason, **figures}

    def _ort_has_cuda(self) -> bool:
        probe = subprocess.run([self.python, "-c", "import onnxruntime as o; print(o.get_available_providers())"],
                               env=self.ort_env, cwd=self.work, capture_output=True, text=True)
        return "CUDAExecutionProvider" in probe.stdout

    def airbench(self) -> dict[str, Any]:
        spec = self.args.spec.resolve()
        if not spec.exists():
            return {"status": UNAVAILABLE, "reason": f"{spec} does not exist"}
        env = dict(self.env)
        data = self.args.data or (Path(os.environ["CNNC_DATA"]) if os.environ.get("CNNC_DATA") else None)
        if data is None and (ROOT / ".gpudata").is_dir():
            data = ROOT / ".gpudata"
        if data is None and self.cuda:  # the GPU machine has no CIFAR-10 of its own, nor a network
            return {"status": UNAVAILABLE, "reason": "no CIFAR-10: give --data, set CNNC_DATA or carry .gpudata/ "
                                                     "(bench/GPU.md)"}
        if data is not None:
            env["CNNC_DATA"] = str(data.resolve())
            missing = _missing_cifar(data) if self.cuda else []
            if missing:
                return {"status": UNAVAILABLE, "reason": f"CIFAR-10 files missing in {data}: {', '.join(missing)} "
                                                         "(bench/GPU.md says how to carry them)"}
        if self.cuda:
            configs = {"eager": ["--device", "cuda", "--bf16"],
                       "cuda-graphs": ["--device", "cuda", "--bf16", "--cuda-graphs"]}
        else:
            configs = {"eager": ["--device", "cpu", "--epochs", "1", "--limit-train", "512", "--limit-test", "256"]}
        runs = {}
        for name, flags in configs.items():
            out = self.work / "runs" / name
            command = [self.python, "-m", "cnnc", "train", str(spec), *flags, "--no-download", "--json",
                       "--out", str(out)]
            begun = time.monotonic()
            try:
                done = self.execute(command, f"airbench-{name}.log", self.remaining(), env=env)
            except subprocess.TimeoutExpired:
                runs[name] = {"status": FAIL, "reason": "ran out of the budget", "flags": flags}
                break
            runs[name] = {"flags": flags, "wall_seconds": round(time.monotonic() - begun, 2), "returncode":
                          done.returncode, **(_run_figures(out, self.args.target) if done.returncode == 0 else {})}
        ok = all(run.get("returncode") == 0 for run in runs.values()) and len(runs) == len(configs)
        reason = {} if ok else {"reason": "a training run failed (airbench-*.log)"}
        return {"status": PASS if ok else FAIL, **reason, "spec": str(spec.relative_to(ROOT) if
                                                                    spec.is_relative_to(ROOT) else spec),
                "target": self.args.target, "runs": runs}


# --- reading results ----------------------------------------------------------------------------------

def _run_figures(run_dir: Path, target: float) -> dict[str, Any]:
    """A finished run's accuracy and times: `step_seconds` counts the training steps only (an epoch's
    images over its images per second), `epoch_seconds` adds validation; the first epoch holds
    torch.compile's and cuDNN's warm-up, so `warm_estimate` is the median later epoch times the epochs."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    settings = json.loads((run_dir / "settings.json").read_text())
    epochs = [record for record in records if "epoch" in record and "test_accuracy" not in record]
    test = records[-1]
    images = settings["data"]["train_examples"]
    step_seconds = [images / record["images_per_second"] for record in epochs]
    later = step_seconds[1:] or step_seconds
    return {
        "test_accuracy": test["test_accuracy"],
        "reached_target": test["test_accuracy"] >= target,
        "epochs": len(epochs),
        "step_seconds": round(sum(step_seconds), 3),
        "epoch_seconds": round(sum(record["seconds"] for record in epochs), 3),
        "first_epoch_step_seconds": round(step_seconds[0], 3),
        "warm_estimate_seconds": round(statistics.median(later) * len(epochs), 3),
        "per_epoch": [{key: record.get(key) for key in ("epoch", "train_loss", "train_accuracy", "val_accuracy",
                                                        "seconds", "images_per_second")} for record in epochs],
    }


def _junit_counts(report: Path) -> dict[str, int]:
    if not report.exists():
        return {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ElementTree.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def _missing_cifar(data: Path) -> list[str]:
    folder = data / "cifar-10" if (data / "cifar-10").is_dir() else data
    return [name for name in CIFAR_FILES if not (folder / name).exists() and not (folder / f"{name}.gz").exists()]


def markdown(summary: dict[str, Any]) -> str:
    parts = summary["parts"]
    lines = [f"# gpu_check ({summary['mode']} mode, {summary['seconds']} s)", ""]
    env = parts["env"]
    if env["status"] == PASS:
        lines.append(f"{env.get('device') or 'no CUDA device'}; python {env['python']}, torch {env['torch']} "
                     f"(CUDA {env['torch_cuda']}), onnxruntime {env['onnxruntime']}, commit {env['commit']}")
        lines.append("")
    lines += [f"- {note}" for note in summary["notes"]]
    lines += ["", "| part | status | seconds | figures |", "| --- | --- | --- | --- |"]
    for name, result in parts.items():
        lines.append(f"| {name} | {result['status']} | {result['seconds']} | {_figures(name, result)} |")
    return "\n".join(lines) + "\n"


def _figures(name: str, result: dict[str, Any]) -> str:
    if "reason" in result:
        return str(result["reason"])
    if name == "cuda_tests":
        return f"{result['tests']} tests, {result['failures']} failed, {result['skipped']} skipped"
    if name == "ort":
        worst = max(result["models"], key=lambda model: model["max_abs_difference"])
        timings = "; ".join(f"{model['model']} {' / '.join(f'{ms:.2f}' for ms in _largest_batch(model))} ms"
                            for model in result["models"])
        return (f"{result['reference']} vs {result['candidate']}: {len(result['models'])} models agree, worst "
                f"{worst['max_abs_difference']:.2e} ({worst['model']}); ms per call at the largest batch: {timings}")
    if name == "airbench":
        return "; ".join(f"{name}: {run.get('test_accuracy', float('nan')):.2%} in {run.get('step_seconds')} s of "
                         f"steps (warm estimate {run.get('warm_estimate_seconds')} s, wall {run.get('wall_seconds')} s)"
                         for name, run in result["runs"].items())
    return ""


def _largest_batch(model: dict[str, Any]) -> list[float]:
    return model["milliseconds"][max(model["milliseconds"], key=int)]


# --- small helpers ------------------------------------------------------------------------------------

def _python() -> str:
    """The checkout's .venv when it has one (this machine), else the PATH's python3 (the GPU machine's
    holds its CUDA build of torch)."""
    if os.environ.get("PYTHON"):
        return os.environ["PYTHON"]
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else shutil.which("python3") or sys.executable


def _joined(paths: list[str], env: dict[str, str]) -> str:
    return os.pathsep.join([*paths, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])


def _load() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown (no git here)"


if __name__ == "__main__":
    sys.exit(main())
