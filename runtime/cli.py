"""`cnnc predict`, `cnnc eval` and `cnnc bench`: run an exported model under onnxruntime.

Only the standard library is imported here; numpy, onnxruntime and the dataset loaders load
inside the handlers, so that every other `cnnc` command starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cnnc.errors import CnncError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from cnnc.runtime.model import Model, Prediction
    from cnnc.runtime.providers import ProviderChoice

PROVIDER_CHOICES = ("auto", "cpu", "cuda")  # as cnnc.runtime.providers, which imports onnxruntime


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="classify image files with an exported model",
        description="Classify image files with an exported .onnx model, one line (or JSON object) per image.",
    )
    predict.add_argument("model", metavar="MODEL.onnx", type=Path)
    predict.add_argument("images", metavar="IMAGE", nargs="+", type=Path,
                         help="image files, or directories of them (searched recursively), as big as the model's input")
    predict.add_argument("--resize", action="store_true",
                         help="resize each image to the model's input size (bilinear) instead of refusing other sizes")
    predict.add_argument("--top-k", type=_positive_int, default=1, metavar="K",
                         help="also show the K most likely labels")
    predict.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    _add_provider_option(predict)
    predict.set_defaults(handler=_predict)

    evaluate = subparsers.add_parser(
        "eval",
        help="test accuracy of an exported model under onnxruntime",
        description="Measure an exported model's accuracy on a dataset's test split, running it with onnxruntime.",
    )
    evaluate.add_argument("model", metavar="MODEL.onnx", type=Path)
    evaluate.add_argument(
        "--data", type=Path, metavar="DIR", help="the dataset's directory, or .npz file (default: cnnc's data root)"
    )
    evaluate.add_argument(
        "--dataset",
        metavar="NAME",
        help="mnist, fashion_mnist, cifar10, xo, folder or npz (default: the dataset the model was trained on)",
    )
    evaluate.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate the first N test images only")
    evaluate.add_argument("--no-download", dest="download", action="store_false",
                          help="never download: fail when a standard dataset's files are missing (by default they are "
                               "fetched on first use into the data root and checksummed)")
    evaluate.add_argument("--download", action="store_true", help=argparse.SUPPRESS)  # the default now
    evaluate.add_argument("--json", action="store_true", help='print {"accuracy": ..., "n": ...}')
    _add_provider_option(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    bench = subparsers.add_parser(
        "bench",
        help="latency and throughput of an exported model under onnxruntime",
        description="Time an exported model under onnxruntime: latency percentiles and images/s per batch size.",
    )
    bench.add_argument("model", metavar="MODEL.onnx", type=Path)
    bench.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 8, 64), metavar="B,B,...",
                       help="default: 1,8,64")
    bench.add_argument("--iterations", type=_positive_int, default=100, metavar="N",
                       help="timed runs per batch size (default: 100)")
    bench.add_argument("--warmup", type=_non_negative_int, default=10, metavar="N",
                       help="untimed runs first (default: 10)")
    bench.add_argument("--json", action="store_true", help="print the results as a JSON object")
    _add_provider_option(bench)
    bench.set_defaults(handler=_bench)


def _predict(args: argparse.Namespace) -> int:
    """Label every readable image; an unreadable one is reported and the others still labelled (exit 1)."""
    _require_files("model file", [args.model])
    files = _image_files(args.images)
    model = _load(args.model, args.provider)
    channels, height, width = model.input_shape
    if channels is None:
        raise CnncError(f"{model.path} does not say how many channels its input takes, so it cannot label images")
    if args.resize and (height is None or width is None):
        raise UsageError(f"--resize needs a model with a fixed input size; {model.path} takes any size")
    named, failed = [], 0
    for path in files:
        try:
            named.append((str(path), _read_for(model, path, args.resize)))
        except CnncError as error:
            print(f"cnnc predict: error: {error}", file=sys.stderr)
            failed += 1
    predictions = model.classify([pixels for _, pixels in named], top_k=args.top_k) if named else []
    predictions = [replace(prediction, input=name) for prediction, (name, _) in zip(predictions, named)]
    if args.json:
        print(json.dumps([_prediction_json(prediction) for prediction in predictions], indent=2))
    elif predictions:
        width_of_names = max(len(prediction.input) for prediction in predictions)
        for prediction in predictions:
            print(_prediction_line(prediction, width_of_names))
    if failed:
        print(f"cnnc predict: {failed} of {len(files)} images could not be labelled (see above)", file=sys.stderr)
    return 1 if failed else 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _image_files(paths: Sequence[Path]) -> list[Path]:
    """The files named, with each directory replaced by the image files below it (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"the directory {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            _require_files("image file", [path])
            files.append(path)
    return files


def _read_for(model: Model, path: Path, resize: bool) -> np.ndarray:
    """The image's uint8 H x W x C pixels for `model`, saying what was converted or resized."""
    from cnnc.runtime.images import original_size, read_image_file

    channels, height, width = model.input_shape
    assert channels is not None
    original = original_size(str(path))
    size = (width, height) if resize and width and height and (width, height) != original else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = read_image_file(str(path), channels, size)
    for warning in caught:
        print(f"cnnc predict: note: {warning.message}", file=sys.stderr)
    if size is not None:
        print(f"cnnc predict: note: {path}: resized from {original[0]}x{original[1]} to {width}x{height}",
              file=sys.stderr)
    elif (height is not None and pixels.shape[1] != height) or (width is not None and pixels.shape[2] != width):
        raise CnncError(f"image {path} is {pixels.shape[1]}x{pixels.shape[2]} (height x width) but the model takes "
                        f"{height}x{width} images; resize it first, or pass --resize")
    return pixels.transpose(1, 2, 0)


def _evaluate(args: argparse.Namespace) -> int:
    _require_files("model file", [args.model])
    if args.data is not None and not args.data.exists():
        raise UsageError(f"--data {args.data} does not exist")
    from cnnc.datasets import load_dataset
    from cnnc.runtime.measure import accuracy
    from cnnc.runtime.metadata import DATASET_KEY

    model = _load(args.model, args.provider)
    name = args.dataset or model.metadata.get(DATASET_KEY)
    if not name:
        raise UsageError(f"{args.model} does not name the dataset it was trained on; pass --dataset")
    dataset = load_dataset(name, "test", args.data, download=args.download,
                           download_hint="run cnnc eval without --no-download").subset(args.limit)
    _check_compatible(model, name, dataset.image_shape, len(dataset.classes))
    score = accuracy(model, dataset.images, dataset.labels)
    if args.json:
        print(json.dumps({"accuracy": score, "n": len(dataset)}))
    else:
        print(f"accuracy {score:.4f} on {len(dataset)} {name} test images "
              f"({model.path}, onnxruntime on {model.provider})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    _require_files("model file", [args.model])
    import onnxruntime

    from cnnc.runtime.measure import latency

    # One onnxruntime call per timed batch: no batch is split.
    model = _load(args.model, args.provider, batch_size=max(args.batch_sizes))
    results = [latency(model, size, args.iterations, args.warmup) for size in args.batch_sizes]
    if args.json:
        report = {
            "model": model.path,
            "provider": model.provider,
            "onnxruntime": onnxruntime.__version__,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "results": [asdict(result) for result in results],
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{model.path} on {model.provider} (onnxruntime {onnxruntime.__version__}): "
        f"{args.iterations} timed runs per batch size after {args.warmup} warm-up runs"
    )
    print(f"{'batch':>6}  {'p50 ms':>9}  {'p90 ms':>9}  {'p99 ms':>9}  {'images/s':>10}")
    for result in results:
        print(
            f"{result.batch_size:>6}  {result.p50_ms:>9.3f}  {result.p90_ms:>9.3f}  {result.p99_ms:>9.3f}  "
            f"{result.images_per_s:>10.1f}"
        )
    return 0


def _load(path: Path, provider: ProviderChoice, batch_size: int = 256) -> Model:
    from cnnc.runtime.model import Model

    return Model.load(path, provider=provider, batch_size=batch_size)


def _check_compatible(model: Model, dataset: str, image_shape: tuple[int, int, int], classes: int) -> None:
    """Catch evaluating on the wrong dataset with a message, rather than a shape error or a nonsense score."""
    if any(want not in (None, size) for want, size in zip(model.input_shape, image_shape)):
        raise CnncError(
            f"{dataset} has {'x'.join(map(str, image_shape))} images (C x H x W) but {model.path} takes "
            f"{'x'.join('?' if size is None else str(size) for size in model.input_shape)}"
        )
    if model.labels and len(model.labels) != classes:
        raise CnncError(f"{dataset} has {classes} classes but {model.path} has {len(model.labels)}")


def _prediction_line(prediction: Prediction, width: int) -> str:
    line = f"{prediction.input:<{width}}  {prediction.label}  ({prediction.score:.3f})"
    if len(prediction.top_k) > 1:
        ranked = ", ".join(f"{label} {score:.3f}" for label, score in prediction.top_k)
        line += f"  top {len(prediction.top_k)}: {ranked}"
    return line


def _prediction_json(prediction: Prediction) -> dict[str, object]:
    return {
        "input": prediction.input,
        "label": prediction.label,
        "score": prediction.score,
        "top_k": [{"label": label, "score": score} for label, score in prediction.top_k],
    }


def _require_files(kind: str, paths: Sequence[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{kind} {path} {'is not a file' if path.exists() else 'does not exist'}")


def _add_provider_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        choices=PROVIDER_CHOICES,
        default="auto",
        help="where to run: cuda fails if CUDA is not usable; auto uses it when it is (default: auto)",
    )


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def _batch_sizes(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part.strip()) for part in text.split(","))
