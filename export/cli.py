"""`cnnc export RUN_DIR|CHECKPOINT -o model.onnx`: a trained model to ONNX, behind a parity gate.
`cnnc quantize RUN_DIR|CHECKPOINT -o model.int8.onnx`: the same, quantised to int8, behind an accuracy gate.

Only argparse is imported here; torch, onnx and onnxruntime load inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnc.constants import DEFAULT_OPSET, MIN_OPSET

DEFAULT_TOLERANCE = 1e-4
DEFAULT_CALIBRATION = 256   # export.quantize's defaults, repeated to keep onnxruntime out of `cnnc --help`
DEFAULT_MAX_DROP = 1.0


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
                        help=f"ONNX opset, {MIN_OPSET} or newer (default: {DEFAULT_OPSET})")
    export.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"the parity gate's tolerance (default: {DEFAULT_TOLERANCE:g})")
    export.add_argument("--best", action="store_true",
                        help="export the run directory's best.pt (best validation epoch) instead of last.pt")
    export.set_defaults(handler=run_export)

    quantize = subparsers.add_parser(
        "quantize", help="quantise a trained model to int8 ONNX, gated on its test accuracy",
        description="Export a trained checkpoint to ONNX (behind the parity gate), then quantise it with "
                    "onnxruntime: its pre-processing (batch norms folded into convolutions), then static QDQ "
                    "quantisation with per-channel int8 weights and uint8 activations calibrated on a seeded "
                    "sample of the training split. fp32 and int8 are evaluated on the test split and timed side "
                    "by side at batch 1 and 64; the file is written only if int8 loses at most --max-drop "
                    "accuracy points. The results go into the model's metadata (cnnc.quantization).",
    )
    quantize.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT",
                          help="a training run directory (its last.pt) or a checkpoint file")
    quantize.add_argument("-o", "--output", metavar="FILE", required=True, help="the int8 ONNX file to write")
    quantize.add_argument("--best", action="store_true", help="quantise the run directory's best.pt instead of last.pt")
    quantize.add_argument("--data", type=Path, metavar="DIR",
                          help="the dataset's directory, or .npz file (default: cnnc's data root)")
    quantize.add_argument("--dataset", metavar="NAME", help="default: the dataset the model was trained on")
    quantize.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION, metavar="N",
                          help="training images to calibrate on, a seeded random sample "
                               f"(default: {DEFAULT_CALIBRATION})")
    quantize.add_argument("--limit", type=int, metavar="N", help="evaluate on the first N test images only")
    quantize.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="POINTS",
                          help="the most test accuracy, in percentage points, that int8 may lose; a negative value "
                               f"demands that it gain (default: {DEFAULT_MAX_DROP:g})")
    quantize.add_argument("--reduce-range", action="store_true",
                          help="7-bit weights: avoids the int16 saturation of AVX2/AVX-512 CPUs without VNNI "
                               "when int8 accuracy suffers there")
    quantize.add_argument("--seed", type=int, default=0, help="the calibration sample's seed (default: 0)")
    quantize.add_argument("--input", dest="input_form", choices=("float32", "uint8"), default="float32",
                          help="as for cnnc export")
    quantize.add_argument("--top-k", type=int, default=None, metavar="K", help="as for cnnc export")
    quantize.set_defaults(handler=run_quantize)


def run_export(args: argparse.Namespace) -> int:
    from cnnc.compiler.cli import check_opset
    from cnnc.errors import UsageError
    from cnnc.imports import collector_paused

    check_opset(args.opset)  # a usage error below MIN_OPSET and above what onnx knows, as in compile
    source, output = _check_paths(args)
    if not args.tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {args.tolerance:g}")
    _check_top_k(args)

    with collector_paused("torch"):
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


def run_quantize(args: argparse.Namespace) -> int:
    from cnnc.errors import UsageError
    from cnnc.imports import collector_paused

    source, output = _check_paths(args)
    _check_top_k(args)
    if args.calibration < 1:
        raise UsageError(f"--calibration must be a positive integer, got {args.calibration}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {args.limit}")
    if args.data is not None and not args.data.exists():
        raise UsageError(f"--data {args.data} does not exist")

    with collector_paused("torch"):
        from cnnc.datasets import load_dataset
        from cnnc.export.quantize import quantize_checkpoint
        from cnnc.training.checkpoint import BEST, LAST, load_checkpoint

    checkpoint = load_checkpoint(source, BEST if args.best else LAST)
    name = args.dataset or checkpoint.dataset
    if not name:
        raise UsageError(f"{source} does not name the dataset it was trained on; pass --dataset")
    train = load_dataset(name, "train", args.data, progress=False)
    test = load_dataset(name, "test", args.data, progress=False).subset(args.limit)
    report = quantize_checkpoint(
        checkpoint, output, train=train, test=test, calibration=args.calibration, seed=args.seed,
        max_drop=args.max_drop, reduce_range=args.reduce_range, input_form=args.input_form, top_k=args.top_k,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(report.summary())
    print(f"wrote {output} ({output.stat().st_size:,} bytes, input {args.input_form})", file=sys.stderr)
    return 0


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    from cnnc.errors import UsageError

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
    from cnnc.files import check_writable

    check_writable(output, binary=True)  # before the parity gate's (or calibration's) work
    return source, output


def _check_top_k(args: argparse.Namespace) -> None:
    from cnnc.errors import UsageError

    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be a positive integer, got {args.top_k}")
