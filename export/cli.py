"""`cnnc export RUN_DIR|CHECKPOINT -o model.onnx`: a trained model to ONNX, behind a parity gate.

Only argparse is imported here; torch, onnx and onnxruntime load inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OPSET = 17      # compiler.backends.onnx.DEFAULT_OPSET, repeated to keep onnx out of `cnnc --help`
DEFAULT_TOLERANCE = 1e-4


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="export a trained model to ONNX, checked against PyTorch",
        description="Export a trained checkpoint to ONNX. The spec is rebuilt from the sources stored in the "
                    "checkpoint; onnxruntime and PyTorch then run the same inputs (batches of 1, 7 and 16) and "
                    "the file is written only if every output agrees within the tolerance "
                    "(|onnx - torch| <= tolerance * max(1, |torch|)); otherwise the first diverging layer is named.",
    )
    export.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT",
                        help="a training run directory (its last.pt) or a checkpoint file")
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="the ONNX file to write")
    export.add_argument("--outputs", choices=("logits", "probabilities"), default=None,
                        help="end the graph with logits or softmax probabilities (default: as the spec ends)")
    export.add_argument("--input", dest="input_form", choices=("float32", "uint8"), default="float32",
                        help="what the model takes: float32, a normalised N x C x H x W batch (default), or uint8, "
                             "N x H x W x C pixels as decoded from image files, cast, scaled, normalised and "
                             "transposed inside the graph")
    export.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="also output the K best scores and their class indices (outputs 'top_k_scores', "
                             "'top_k_indices'), best first")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, 13 or newer (default: {DEFAULT_OPSET})")
    export.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"the parity gate's tolerance (default: {DEFAULT_TOLERANCE:g})")
    export.add_argument("--best", action="store_true",
                        help="export the run directory's best.pt (best validation epoch) instead of last.pt")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from cnnc.cli import UsageError

    source = Path(args.checkpoint)
    if not source.exists():
        raise UsageError(f"no such run directory or checkpoint: {args.checkpoint}")
    if args.best and not source.is_dir():
        raise UsageError("--best needs a run directory, not a checkpoint file")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"the output's directory does not exist: {output.parent}")
    if output.is_dir():
        raise UsageError(f"-o names a directory: {output}")
    if args.opset < 13:
        raise UsageError(f"--opset must be 13 or newer, got {args.opset}")
    if not args.tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {args.tolerance:g}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be a positive integer, got {args.top_k}")

    from cnnc.export.exporter import export_checkpoint
    from cnnc.training.checkpoint import BEST, LAST, load_checkpoint

    checkpoint = load_checkpoint(source, BEST if args.best else LAST)
    result = export_checkpoint(checkpoint, output, opset=args.opset, outputs=args.outputs, tolerance=args.tolerance,
                               input_form=args.input_form, top_k=args.top_k)
    print(result.report.summary(), file=sys.stderr)
    top_k = f", top {result.top_k} outputs" if result.top_k else ""
    print(f"wrote {result.path} ({result.size_bytes:,} bytes, opset {result.opset}, input {result.input_form}, "
          f"outputs {result.outputs}{top_k})", file=sys.stderr)
    return 0
