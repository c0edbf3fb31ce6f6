"""Embed a cnnc model in your own program: classify image files with onnxruntime, without torch.

    python examples/embed_classifier.py mnist.onnx digit7.png digit3.png

The runtime needs only numpy, onnxruntime and (for image files) Pillow: `pip install cnnc[runtime]`.
"""

from __future__ import annotations

import sys

from cnnc.errors import CnncError
from cnnc.runtime import Model


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: embed_classifier.py MODEL.onnx IMAGE...", file=sys.stderr)
        return 2
    model_path, image_paths = argv[0], argv[1:]
    try:
        # Load once and reuse: a Model is immutable and safe to share between threads.
        model = Model.load(model_path)
        predictions = model.classify(image_paths, top_k=3)
    except CnncError as error:  # a bad model or image file: the message says what is wrong
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{model.metadata.get('cnnc.model', model_path)} on {model.provider}, classes: {', '.join(model.labels)}")
    for prediction in predictions:
        runners_up = "".join(f", then {label} ({score:.1%})" for label, score in prediction.top_k[1:])
        print(f"{prediction.input}: {prediction.label} ({prediction.score:.1%}){runners_up}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
