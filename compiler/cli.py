"""`cnnc check`, `cnnc summary` and `cnnc compile`: the front end's commands (no torch here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnc.constants import DEFAULT_OPSET, MIN_OPSET

EMIT_CHOICES = ("onnx", "ir")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("check", help="check specs and print their diagnostics")
    check.add_argument("specs", nargs="+", metavar="SPEC", help=".cnn files")
    check.add_argument("--json", action="store_true", help="print the diagnostics as JSON")
    _add_max_params(check)
    check.set_defaults(handler=run_check)

    summary = subparsers.add_parser("summary", help="print each layer's shape, parameters, MACs and receptive field")
    summary.add_argument("spec", metavar="SPEC")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_max_params(summary)
    summary.set_defaults(handler=run_summary)

    compile_ = subparsers.add_parser("compile", help="compile a spec to ONNX (default) or print its checked IR")
    compile_.add_argument("spec", metavar="SPEC")
    compile_.add_argument("--emit", choices=EMIT_CHOICES, default="onnx", help="what to produce (default: onnx)")
    compile_.add_argument("-o", "--output", metavar="FILE", help="where to write (default: stdout for ir)")
    compile_.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                          help=f"ONNX opset, {MIN_OPSET} or newer (default: {DEFAULT_OPSET})")
    compile_.add_argument("--outputs", choices=("logits", "probabilities"), default=None,
                          help="end the ONNX graph with logits or softmax probabilities (default: as the spec ends)")
    compile_.add_argument("--seed", type=int, default=0, help="seed of the documented weight initialisation")
    _add_max_params(compile_)
    compile_.set_defaults(handler=run_compile)


def _add_max_params(parser: argparse.ArgumentParser) -> None:
    from cnnc.compiler.check import DEFAULT_MAX_PARAMS

    parser.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS, metavar="N",
                        help=f"refuse models with more parameters than this (default: {DEFAULT_MAX_PARAMS:,})")


def run_check(args: argparse.Namespace) -> int:
    from cnnc.compiler.check import check_file, spec_path
    from cnnc.dsl.diagnostics import render_all

    paths = [spec_path(p) for p in args.specs]
    results = [check_file(p, max_params=args.max_params) for p in paths]
    diagnostics = [d for r in results for d in r.diagnostics]
    if args.json:
        print(json.dumps([_diagnostic_json(d) for d in diagnostics], indent=2))
    else:
        sources = {k: v for r in results for k, v in r.sources.items()}
        if diagnostics:
            print(render_all(diagnostics, sources), end="")
        else:
            print(f"checked {len(paths)} file{'s' if len(paths) > 1 else ''}: no problems", file=sys.stderr)
    return 1 if any(r.has_errors for r in results) else 0


def _diagnostic_json(diagnostic) -> dict:
    span = diagnostic.span
    return {
        "severity": diagnostic.severity.value,
        "code": diagnostic.code,
        "message": diagnostic.message,
        "file": span.path if span else None,
        "line": span.line if span else None,
        "column": span.column if span else None,
        "end_line": span.end_line if span else None,
        "end_column": span.end_column if span else None,
        "notes": list(diagnostic.notes),
    }


def run_summary(args: argparse.Namespace) -> int:
    from cnnc.compiler import summary
    from cnnc.compiler.check import load_program

    graph = load_program(args.spec, args.max_params).graph
    if args.json:
        print(json.dumps(summary.to_json(graph), indent=2))
    else:
        print(summary.to_text(graph), end="")
    return 0


def run_compile(args: argparse.Namespace) -> int:
    from cnnc.compiler.check import load_program
    from cnnc.errors import UsageError

    program = load_program(args.spec, args.max_params)
    if args.emit == "ir":
        from cnnc.compiler import ir_text

        text = ir_text.to_text(program.graph)
        if args.output:
            Path(args.output).write_text(text)
        else:
            print(text, end="")
        return 0
    if not args.output:
        raise UsageError("compiling to ONNX needs -o FILE")
    if args.opset < MIN_OPSET:
        raise UsageError(f"--opset must be {MIN_OPSET} or newer, got {args.opset}")
    from cnnc.compiler.backends.onnx import compile_to_file

    compile_to_file(program, args.output, opset=args.opset, outputs=args.outputs, seed=args.seed)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
