"""Reading the `cnnc.*` entries that the ONNX backend writes into a model's metadata_props.

Every entry is optional: a model exported by another tool has none, and then the runtime uses
the defaults documented on each reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cnnc.errors import CnncError

LABELS_KEY = "cnnc.labels"
INPUT_SHAPE_KEY = "cnnc.input_shape"
PREPROCESS_KEY = "cnnc.preprocess"
OUTPUT_KEY = "cnnc.output"
DATASET_KEY = "cnnc.dataset"
INPUT_FORM_KEY = "cnnc.input"          # "uint8": pixels in, preprocessing in the graph; absent: "float32"
INPUT_LAYOUT_KEY = "cnnc.input_layout"
TOP_K_KEY = "cnnc.top_k"               # the graph also outputs the k best scores and their indices
QUANTIZATION_KEY = "cnnc.quantization"

OUTPUT_KINDS = ("logits", "probabilities")
FLOAT_INPUT, UINT8_INPUT = "float32", "uint8"
INPUT_FORMS = (FLOAT_INPUT, UINT8_INPUT)


def read_json(metadata: Mapping[str, str], key: str) -> Any:
    """The entry's JSON value, or None when the model has no such entry."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise CnncError(f"model metadata '{key}' is not valid JSON ({error}): {metadata[key]!r}") from None


def read_labels(metadata: Mapping[str, str]) -> tuple[str, ...] | None:
    labels = read_json(metadata, LABELS_KEY)
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise CnncError(f"model metadata '{LABELS_KEY}' must be a JSON list of strings, not {labels!r}")
    return tuple(labels)


def read_input_shape(metadata: Mapping[str, str]) -> tuple[int, int, int] | None:
    shape = read_json(metadata, INPUT_SHAPE_KEY)
    if shape is None:
        return None
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape)
    ):
        raise CnncError(f"model metadata '{INPUT_SHAPE_KEY}' must be a JSON list [C, H, W] of positive ints, "
                        f"not {shape!r}")
    channels, height, width = shape
    return channels, height, width


def read_output_kind(metadata: Mapping[str, str]) -> str:
    """'logits' unless the model says otherwise: that is what cnnc's models output by default."""
    kind = metadata.get(OUTPUT_KEY, "logits")
    if kind not in OUTPUT_KINDS:
        raise CnncError(f"model metadata '{OUTPUT_KEY}' must be one of {', '.join(OUTPUT_KINDS)}, not {kind!r}")
    return kind


def read_input_form(metadata: Mapping[str, str]) -> str:
    """'float32' (a normalised float32 N x C x H x W batch) unless the model says 'uint8' (raw
    N x H x W x C pixels, preprocessed inside the graph)."""
    form = metadata.get(INPUT_FORM_KEY, FLOAT_INPUT)
    if form not in INPUT_FORMS:
        raise CnncError(f"model metadata '{INPUT_FORM_KEY}' must be one of {', '.join(INPUT_FORMS)}, not {form!r}")
    return form
