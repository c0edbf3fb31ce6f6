"""Every diagnostic code, once: its short name and what it means.

Stages import the constants below instead of writing codes as strings; `docs/language.md`'s table
and the golden coverage test are generated from `CODES`, so a code added here is documented and
must get a golden case.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    code: str
    name: str
    meaning: str

    @property
    def is_error(self) -> bool:
        return self.code.startswith("E")


CODES: dict[str, Code] = {}


def _code(code: str, name: str, meaning: str) -> str:
    assert code not in CODES, f"diagnostic code {code} is defined twice"
    CODES[code] = Code(code, name, meaning)
    return code


SYNTAX_ERROR = _code("E001", "syntax", "syntax error")
UNKNOWN_LAYER = _code("E002", "unknown-layer", "unknown layer")
UNKNOWN_ARGUMENT = _code("E003", "unknown-argument", "unknown argument")
WRONG_TYPE = _code("E004", "wrong-type", "wrong argument type")
OUT_OF_RANGE = _code("E005", "out-of-range", "argument out of range")
MISSING_ARGUMENT = _code("E006", "missing-argument", "missing argument, or a merge with too few inputs")
BAD_CALL = _code("E007", "bad-call", "too many positional arguments, or one given twice")
BAD_ARITHMETIC = _code("E008", "arithmetic", "arithmetic that cannot be done: division by zero, overflow, "
                                             "an exponent out of range, a number too large, a non-number operand")
BAD_WEIGHTS = _code("E009", "weights", "a weight setting that does not fit its layer: `dirac` with an even kernel or "
                                       "not on conv or depthwise_conv; `whiten` not on a conv that reads the model's "
                                       "input, or with other than C x kh x kw filters or twice that; either as the "
                                       "model's `init` or a `bias_init`; `trainable` where nothing is trained; "
                                       "`scale=false` without affine")
SHAPE_ERROR = _code("E010", "shape", "a spatial size collapses to zero or below")
INCOMPATIBLE_SHAPES = _code("E011", "incompatible-shapes", "merged tensors of incompatible shapes")
WRONG_RANK = _code("E013", "wrong-rank", "wrong rank: a feature-map layer on a flat vector, or the reverse")
UNDEFINED_NAME = _code("E020", "undefined-name", "undefined name")
DUPLICATE_NAME = _code("E021", "duplicate-name", "duplicate name (tensor, constant, block, model, train section)")
RECURSIVE_BLOCK = _code("E022", "recursive-block", "a block that calls itself")
INCLUDE_CYCLE = _code("E023", "include-cycle", "include cycle")
INCLUDE_ERROR = _code("E024", "include", "include problem (missing file, a model in an included file)")
MODEL_TOO_LARGE = _code("E025", "too-large", "a model over the parameter limit (`--max-params`, "
                                             "default 1,000,000,000) or over 20,000 layers and statements once "
                                             "repeats and blocks are expanded")
BAD_INPUT = _code("E026", "input", "input problems: none, two, one inside a block, or the input as the output")
BAD_REPEAT = _code("E027", "repeat", "a repeat count out of range")
RESERVED_NAME = _code("E028", "reserved-name", "a layer name a backend reserves (`training`, names starting with `_`)")
TRAIN_ERROR = _code("E030", "train", "train section problems")
DATASET_INPUT = _code("E031", "dataset-input", "the model's input does not take the train section's dataset's images")
DATASET_CLASSES = _code("E032", "dataset-classes", "the model's output does not have one score per class of the "
                                                   "train section's dataset")
BAD_CONDITION = _code("E040", "condition", "a condition, comparison, `and`/`or`/`not` or conditional value of the "
                                           "wrong type")
BAD_INDEX = _code("E041", "index", "indexing what is not a list, with what is not an integer, or out of range")
BAD_LOOP = _code("E042", "loop", "a for loop over what is not a list, or an item that does not unpack into its names")
RESULT_COUNT = _code("E043", "result-count", "names assigned that do not match the tensors a layer, block or split "
                                             "gives; several outputs for a model")
NOT_A_LAYER = _code("E044", "not-a-layer", "a constant or parameter used as a layer that holds no layer")
UNUSED_OUTPUT = _code("W001", "unused", "a layer whose output is never used")
UNREAD_INPUT = _code("W002", "unread-input", "padding that leaves input rows or columns unread")
DOUBLE_SOFTMAX = _code("W003", "double-softmax", "softmax followed by a loss that applies softmax again")


def docs_table() -> str:
    """The Markdown table of codes, as docs/language.md holds it."""
    rows = ["| code | name | meaning |", "| --- | --- | --- |"]
    rows += [f"| {c.code} | {c.name} | {c.meaning} |" for c in CODES.values()]
    return "\n".join(rows) + "\n"
