"""`cnnc lsp` end to end: a subprocess speaking JSON-RPC over stdio, driven by LSP messages only."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from cnnc.compiler import summary
from cnnc.compiler.check import check_file
from cnnc.compiler.ops import ACTIVATIONS, OPS

pytest.importorskip("pygls")
from fuzzing import mutate  # noqa: E402
from lsp_client import LspClient  # noqa: E402 - after the skip: it starts `cnnc lsp`

ROOT = Path(__file__).resolve().parent.parent

SPEC = """include "lib/blocks.cnn"

const WIDTH = 16

model net {
    input image(3, 32, 32)
    stem = conv(WIDTH, kernel=3, padding=same) -> relu
    r = residual(WIDTH)
    skip = stem -> conv(WIDTH, kernel=1)
    add(r, skip) -> conv(4, kernel=40)
    global_avgpool
    dense(10)
}
"""
FIXED = SPEC.replace("kernel=40", "kernel=3")


def _position(text: str, needle: str, offset: int = 0) -> dict[str, int]:
    """The LSP position of `needle`'s first occurrence (plus `offset` characters)."""
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return {"line": line, "character": index - (text.rfind("\n", 0, index) + 1)}


@pytest.fixture
def session(tmp_path: Path):
    (tmp_path / "lib").mkdir()
    shutil.copy(ROOT / "specs" / "lib" / "blocks.cnn", tmp_path / "lib" / "blocks.cnn")
    spec = tmp_path / "net.cnn"
    spec.write_text(SPEC)
    client = LspClient(str(tmp_path))
    result = client.request("initialize", {"processId": None, "rootUri": tmp_path.as_uri(), "capabilities": {}})
    client.notify("initialized", {})
    yield client, spec, result["capabilities"]
    assert client.close() == 0


def test_a_session(session) -> None:
    client, spec, capabilities = session
    uri = spec.as_uri()
    assert capabilities["hoverProvider"] and capabilities["definitionProvider"]
    assert "(" in capabilities["completionProvider"]["triggerCharacters"]
    assert capabilities["documentFormattingProvider"]

    # diagnostics: those of `cnnc check`, with the notes as related information
    client.notify("textDocument/didOpen",
                  {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1, "text": SPEC}})
    published = client.wait_for("textDocument/publishDiagnostics", uri)["diagnostics"]
    expected = check_file(spec, text=SPEC).diagnostics
    assert [d["code"] for d in published] == [d.code for d in expected] and "E010" in [d.code for d in expected]
    for sent, diagnostic in zip(published, expected):
        span = diagnostic.span
        assert sent["message"] == diagnostic.message and sent["source"] == "cnnc"
        assert sent["range"] == {"start": {"line": span.line - 1, "character": span.column - 1},
                                 "end": {"line": span.end_line - 1, "character": span.end_column - 1}}
        assert [r["message"] for r in sent.get("relatedInformation", [])] == list(diagnostic.notes)
        assert sent["severity"] == (1 if diagnostic.is_error else 2)

    # hover still works on the layers that checked, while the file has an error
    hovered = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                    "position": _position(SPEC, "conv(WIDTH, kernel=1)", 1)})
    assert "16x32x32" in hovered["contents"]["value"] and "parameters: 272" in hovered["contents"]["value"]

    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                             "contentChanges": [{"text": FIXED}]})
    assert client.wait_for("textDocument/publishDiagnostics", uri)["diagnostics"] == []

    # hover over a layer: the numbers of `cnnc summary`
    layers = {layer["name"]: layer for layer in summary.to_json(check_file(spec, text=FIXED).program.graph)["layers"]}
    text = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                 "position": _position(FIXED, "conv(4", 2)})["contents"]["value"]
    line = _position(FIXED, "conv(4")["line"] + 1
    conv = next(layer for layer in layers.values() if layer["line"] == line and layer["op"] == "conv")
    assert f"**{conv['name']}**" in text and f"output: {'x'.join(map(str, conv['output_shape']))}" in text
    assert f"parameters: {conv['params']:,}" in text and f"MACs: {conv['macs']:,}" in text
    assert f"receptive field: {'x'.join(map(str, conv['receptive_field']))}" in text
    assert OPS["conv"].doc in text

    # hover over a block call: its signature and the comment above it
    text = client.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                 "position": _position(FIXED, "residual(", 3)})["contents"]["value"]
    assert "block residual(filters)" in text and "A ResNet basic block" in text
    instance = [layer for name, layer in layers.items() if name.startswith("r.")]
    assert f"- r: output {'x'.join(map(str, instance[-1]['output_shape']))}, " \
           f"{sum(layer['params'] + layer['non_trainable_params'] for layer in instance):,} parameters" in text

    # go to definition: a block in the included file, a tensor, a constant, the included file itself
    blocks_file = spec.parent / "lib" / "blocks.cnn"
    blocks_text = blocks_file.read_text()
    location = client.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                          "position": _position(FIXED, "residual(", 2)})
    assert location["uri"] == blocks_file.resolve().as_uri()
    assert location["range"]["start"] == _position(blocks_text, "residual(filters)")
    location = client.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                          "position": _position(FIXED, "add(r, skip)", 8)})
    assert location["uri"] == uri and location["range"]["start"] == _position(FIXED, "skip =")
    location = client.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                          "position": _position(FIXED, "residual(WIDTH)", 10)})
    assert location["range"]["start"] == _position(FIXED, "WIDTH = 16")
    location = client.request("textDocument/definition", {"textDocument": {"uri": uri},
                                                          "position": _position(FIXED, "lib/blocks", 2)})
    assert location["uri"] == blocks_file.resolve().as_uri()

    # completion: every op of the registry (with its docs), blocks and tensors after '->'
    items = client.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                       "position": _position(FIXED, "-> relu", 3)})["items"]
    labels = {item["label"] for item in items}
    assert set(OPS) <= labels and {"residual", "residual_down", "squeeze_excite", "stem"} <= labels
    conv_item = next(item for item in items if item["label"] == "conv")
    assert OPS["conv"].doc in conv_item["detail"] and "`filters`" in conv_item["documentation"]["value"]
    # inside an op's parentheses: its arguments, documented from the registry
    items = client.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                       "position": _position(FIXED, "conv(WIDTH, kernel=3", 5)})
    arguments = {item["label"]: item for item in items["items"]}
    assert {f"{spec.name}=" for spec in OPS["conv"].args} <= set(arguments) and "WIDTH" in arguments
    init = next(spec for spec in OPS["conv"].args if spec.name == "init")
    assert init.doc in arguments["init="]["documentation"]
    # a merge's parentheses: tensor names; an activation's value: the activations
    items = client.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                       "position": _position(FIXED, "add(r", 4)})["items"]
    assert {"r", "skip", "stem", "image"} <= {item["label"] for item in items}
    edited = FIXED.replace("kernel=1)", "kernel=1, activation=)")
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 3},
                                             "contentChanges": [{"text": edited}]})
    client.wait_for("textDocument/publishDiagnostics", uri)
    items = client.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                       "position": _position(edited, "activation=)", 11)})["items"]
    assert set(ACTIVATIONS) <= {item["label"] for item in items}


def test_errors_in_an_included_file_go_to_that_file(session) -> None:
    client, spec, _ = session
    blocks_file = spec.parent / "lib" / "blocks.cnn"
    blocks_file.write_text(blocks_file.read_text().replace("block residual(filters)", "block residual(filters"))
    uri = spec.as_uri()
    client.notify("textDocument/didOpen",
                  {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1, "text": FIXED}})
    by_uri = {}
    for _ in range(2):
        message = client.messages.get(timeout=30)
        assert message["method"] == "textDocument/publishDiagnostics"
        by_uri[message["params"]["uri"]] = message["params"]["diagnostics"]
    assert "E001" not in [d["code"] for d in by_uri[uri]]
    [syntax] = by_uri[blocks_file.resolve().as_uri()]
    expected = check_file(spec, text=FIXED).diagnostics
    span = next(d.span for d in expected if d.code == "E001")
    assert syntax["code"] == "E001" and syntax["range"]["start"]["line"] == span.line - 1
    assert span.path.endswith("lib/blocks.cnn")


def test_formatting(session) -> None:
    client, spec, _ = session
    uri = spec.as_uri()
    messy = FIXED.replace("    stem = conv(WIDTH, kernel=3, padding=same) -> relu",
                          "  stem=conv( WIDTH,kernel = 3,padding=same )->relu   # the stem")
    client.notify("textDocument/didOpen",
                  {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1, "text": messy}})
    client.wait_for("textDocument/publishDiagnostics", uri)
    [edit] = client.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                        "options": {"tabSize": 4, "insertSpaces": True}})
    lines = messy.split("\n")
    assert edit["range"] == {"start": {"line": 0, "character": 0},
                             "end": {"line": len(lines) - 1, "character": len(lines[-1])}}
    assert edit["newText"] == FIXED.replace("-> relu\n", "-> relu  # the stem\n", 1)
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                             "contentChanges": [{"text": FIXED}]})
    client.wait_for("textDocument/publishDiagnostics", uri)
    assert client.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                      "options": {"tabSize": 4, "insertSpaces": True}}) == []


LANGUAGE = """block pair(c) {
    left = conv(c, 1)
    right = in -> conv(c, 3, padding=1)
    output left, right
}

model loops {
    input image(3, 16, 16)
    for width in [8, 16] {
        conv(width, 3, padding=1) -> relu
    }
    a, b = pair(8)
    x1, x2 = a -> split(2)
    y = concat(x1, b)
    flatten -> dense(10)
}
"""


def test_the_language_features(session) -> None:
    client, spec, _ = session
    uri = spec.as_uri()
    client.notify("textDocument/didOpen",
                  {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1, "text": LANGUAGE}})
    published = client.wait_for("textDocument/publishDiagnostics", uri)["diagnostics"]
    assert [d["code"] for d in published] == [d.code for d in check_file(spec, text=LANGUAGE).diagnostics]

    def at(needle: str, offset: int) -> dict:
        return {"textDocument": {"uri": uri}, "position": _position(LANGUAGE, needle, offset)}

    # several results and loop variables: definitions, hover
    assert client.request("textDocument/definition", at("concat(x1, b)", 11))["range"]["start"] == \
        _position(LANGUAGE, "b = pair")
    assert client.request("textDocument/definition", at("concat(x1", 8))["range"]["start"] == \
        _position(LANGUAGE, "x1, x2")
    assert client.request("textDocument/definition", at("conv(width", 6))["range"]["start"] == \
        _position(LANGUAGE, "width in")
    text = client.request("textDocument/hover", at("conv(width", 6))["contents"]["value"]
    assert text == "loop variable `for width in [8, 16]`"
    text = client.request("textDocument/hover", at("concat(x1", 8))["contents"]["value"]
    assert "**x1**" in text and "output: 4x16x16" in text
    # split and the helpers are offered with the layers' docs and arguments
    labels = {item["label"] for item in client.request("textDocument/completion", at("-> split", 3))["items"]}
    assert {"split", *OPS} <= labels
    arguments = {item["label"] for item in client.request("textDocument/completion", at("split(2)", 6))["items"]}
    assert {"parts=", "sizes=", "max", "channels", "range"} <= arguments


def test_every_request_survives_broken_text() -> None:
    """Hover, definition and completion on fuzz mutations of the specs, at random places: an answer or
    none, never an exception (which would reach the editor as an error)."""
    from cnnc.tools import analysis
    from cnnc.tools.lsp import _completions, _hover_text, _text_before

    rng = random.Random(5)
    texts = [p.read_text() for p in sorted((ROOT / "specs").glob("*.cnn"))] + [SPEC, LANGUAGE]
    for _ in range(60):
        text = mutate(rng.choice(texts), rng)
        result = analysis.analyse(str(ROOT / "specs" / "fuzz.cnn"), text)
        lines = text.split("\n")
        for _ in range(5):
            line = rng.randrange(1, len(lines) + 1)
            column = rng.randrange(1, len(lines[line - 1]) + 2)
            _hover_text(result, line, column)
            analysis.definitions(result, line, column)
            _completions(result, _text_before(text, line, column), line, column)
