"""The `cnnc` command line: each pipeline stage registers its own subcommands.

Stage modules named here import only argparse at module level and load their heavy
dependencies (torch, onnx, onnxruntime) inside the handlers, so that `cnnc check` stays fast.
Exit codes: 0 success, 1 the user's input is wrong, 2 usage error, 3 a bug in cnnc (InternalError).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cnnc import __version__
from cnnc.errors import CnncError, InternalError, UsageError

EXIT_OK, EXIT_INPUT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

# Modules with an `add_commands(subparsers)` function, in pipeline order.
STAGE_CLIS = (
    "cnnc.compiler.cli",
    "cnnc.training.cli",
    "cnnc.export.cli",
    "cnnc.runtime.cli",
    "cnnc.tools.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnc",
        description="A compiler for convolutional networks: check, summarise, train, export and run .cnn specs.",
    )
    parser.add_argument("--version", action="version", version=f"cnnc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in STAGE_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if missing.name != module_name:
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def program() -> NoReturn:
    """The `cnnc` program (the console script, `python -m cnnc`): run the command, exit with its code.

    A command that sets `exit_at_once` (cnnc train) skips the interpreter's teardown, which after torch
    is imported takes a second or more of one core (freeing its modules one by one): everything such a
    command writes is closed by the time it returns, and its output is flushed here. The exit handlers
    still run (milliseconds: torch's compile workers are told to end, say)."""
    args = build_parser().parse_args()
    code = run(args)
    if getattr(args, "exit_at_once", False):
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader that has gone (cnnc train | head) reads no more
                stream.flush()
        os._exit(code)
    sys.exit(code)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code (errors reported on stderr)."""
    try:
        return int(args.handler(args) or EXIT_OK)
    except UsageError as error:
        print(f"cnnc {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CnncError as error:
        print(f"cnnc {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except InternalError as error:
        print(f"cnnc {args.command}: internal error (a bug in cnnc, not in your input; please report it): {error}",
              file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print(f"cnnc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    program()
