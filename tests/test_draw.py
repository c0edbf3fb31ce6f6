"""`cnnc draw`: the layout's geometry for every spec, and the rendered picture's contents (resvg
rasterises the SVG): every box is there in its colour, no box covers another, all text lies inside
the boxes."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from cnnc.cli import main
from cnnc.compiler.check import load_program
from cnnc.compiler.ir import Graph
from cnnc.compiler.passes import dead_nodes
from cnnc.tools.draw import COLOURS, DEAD_COLOURS, block_names, to_svg
from cnnc.tools.layout import CHAR_WIDTH, INNERMOST, Drawing, layout

Image = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parent.parent
MODEL_SPECS = sorted(p for p in [*(ROOT / "specs").rglob("*.cnn"), *(ROOT / "tests" / "specs").glob("*.cnn")]
                     if re.search(r"^model ", p.read_text(), re.MULTILINE))
RENDERED = ["specs/resnet_cifar.cnn", "specs/inception_mnist.cnn", "specs/se_cifar.cnn", "tests/specs/dead_layers.cnn"]


def _drawing(spec: str | Path, collapse: int | None = None) -> tuple[Graph, Drawing]:
    graph = load_program(str(spec)).graph
    return graph, layout(graph, block_names(str(spec), graph), collapse)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _rect(box) -> tuple[float, float, float, float]:
    return box.x, box.y, box.width, box.height


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.parametrize("collapse", [None, INNERMOST, 1], ids=["groups", "innermost", "outermost"])
def test_layout_geometry(spec: Path, collapse: int | None) -> None:
    _check_geometry(*_drawing(spec, collapse), collapse)


def _check_geometry(graph: Graph, drawing: Drawing, collapse: int | None) -> None:
    """Boxes inside the picture and apart, text inside boxes, edges downwards from box to box, frames
    around their members (and nested frames), and no other box inside a frame."""
    boxes = drawing.boxes
    if collapse is None:
        assert sorted(b.key for b in boxes) == sorted(n.name for n in graph.nodes)
    for box in boxes:
        assert box.x >= 0 and box.x + box.width <= drawing.width and box.y >= 0
        assert box.y + box.height <= drawing.height
        assert max(len(line) for line in box.lines) * CHAR_WIDTH < box.width
    ordered = sorted(boxes, key=lambda b: b.y)
    for i, box in enumerate(ordered):
        for other in ordered[i + 1:]:
            if other.y >= box.y + box.height:
                break
            assert not _overlap(_rect(box), _rect(other)), (box.key, other.key)
    # every edge goes down the page, from its source's bottom to its target's top
    by_key = {b.key: b for b in boxes}
    for edge in drawing.edges:
        ys = [y for _, y in edge.points]
        assert ys == sorted(ys)
        assert ys[0] == by_key[edge.source].y + by_key[edge.source].height and ys[-1] == by_key[edge.target].y
        for (x0, y0), (x1, y1) in zip(edge.points, edge.points[1:]):
            # edges bend only between rows of boxes, and pass a row straight down a gap between its boxes
            if x0 != x1:
                assert not any(y0 < b.y + b.height and b.y < y1 for b in boxes), (edge.source, edge.target)
            else:
                assert not any(b.x < x0 < b.x + b.width and y0 < b.y + b.height and b.y < y1 for b in boxes)
    for group in drawing.groups:
        frame = (group.x, group.y, group.width, group.height)
        assert len(group.label) * CHAR_WIDTH + 12 < group.width     # the label fits its frame
        for inner in drawing.groups:
            if inner.key.startswith(group.key + "."):   # a nested frame lies within its parent
                assert group.x < inner.x and inner.x + inner.width < group.x + group.width
                assert group.y < inner.y and inner.y + inner.height < group.y + group.height
        for box in boxes:
            if group.key in box.groups:
                assert group.x < box.x and box.x + box.width < group.x + group.width
                assert group.y < box.y and box.y + box.height < group.y + group.height
            else:
                assert not _overlap(frame, _rect(box)), (group.key, box.key)


# DenseNet-121 and ResNet-50 (torchvision's layer structure), for the size of the pictures.
DENSENET121 = """
block dense_layer() {
    new = in -> batchnorm -> relu -> conv(128, 1, bias=false) -> batchnorm -> relu -> conv(32, 3, padding=1, bias=false)
    concat(in, new)
}
block transition(channels) { batchnorm -> relu -> conv(channels // 2, 1, bias=false) -> avgpool(2) }
model densenet121 {
    input image(3, 224, 224)
    conv(64, 7, stride=2, padding=3, bias=false) -> batchnorm -> relu -> maxpool(3, stride=2, padding=1)
    repeat 6 { dense_layer }
    transition(256)
    repeat 12 { dense_layer }
    transition(512)
    repeat 24 { dense_layer }
    transition(1024)
    repeat 16 { dense_layer }
    batchnorm -> relu -> global_avgpool -> dense(1000)
}
"""
RESNET50 = """
block bottleneck(width) {
    main = conv(width, 1, bias=false) -> batchnorm -> relu -> conv(width, 3, padding=1, bias=false) -> batchnorm
        -> relu -> conv(width * 4, 1, bias=false) -> batchnorm
    add(main, in) -> relu
}
block bottleneck_down(width, stride) {
    main = conv(width, 1, bias=false) -> batchnorm -> relu -> conv(width, 3, stride=stride, padding=1, bias=false)
        -> batchnorm -> relu -> conv(width * 4, 1, bias=false) -> batchnorm
    shortcut = in -> conv(width * 4, 1, stride=stride, bias=false) -> batchnorm
    add(main, shortcut) -> relu
}
model resnet50 {
    input image(3, 224, 224)
    conv(64, 7, stride=2, padding=3, bias=false) -> batchnorm -> relu -> maxpool(3, stride=2, padding=1)
    bottleneck_down(64, 1); repeat 2 { bottleneck(64) }
    bottleneck_down(128, 2); repeat 3 { bottleneck(128) }
    bottleneck_down(256, 2); repeat 5 { bottleneck(256) }
    bottleneck_down(512, 2); repeat 2 { bottleneck(512) }
    global_avgpool -> dense(1000)
}
"""


@pytest.mark.parametrize("text,params,instances", [(DENSENET121, 7_978_856, 61), (RESNET50, 25_557_032, 16)],
                         ids=["densenet121", "resnet50"])
def test_large_networks_stay_readable(text: str, params: int, instances: int, tmp_path: Path) -> None:
    spec = tmp_path / "net.cnn"
    spec.write_text(text)
    graph, drawing = _drawing(spec)
    assert graph.trainable_params == params   # torchvision's count: the spec is the real network
    _check_geometry(graph, drawing, collapse=None)
    widest = max(b.width for b in drawing.boxes)
    assert drawing.width < 3 * widest + 200    # the main line stays straight: no drift across the page
    assert len([g for g in drawing.groups if g.depth == 0]) == instances
    _, collapsed = _drawing(spec, collapse=INNERMOST)
    assert len(collapsed.boxes) == instances + len([n for n in graph.nodes if "." not in n.name])
    assert collapsed.height < drawing.height / 4


def test_blocks_are_labelled_groups_or_single_boxes() -> None:
    graph, drawing = _drawing("specs/resnet_cifar.cnn")
    labels = {g.key: g.label for g in drawing.groups}
    assert labels["residual1"] == "residual1: residual"
    assert labels["residual_down1"] == "residual_down1: residual_down"
    assert {b.key for b in drawing.boxes if "residual1" in b.groups} == \
        {n.name for n in graph.nodes if n.name.startswith("residual1.")}
    _, collapsed = _drawing("specs/resnet_cifar.cnn", collapse=INNERMOST)
    keys = [b.key for b in collapsed.boxes]
    assert not collapsed.groups
    assert "residual1" in keys and not any("." in k for k in keys)
    instance = next(b for b in collapsed.boxes if b.key == "residual_down1")
    assert instance.op.startswith("residual_down (") and instance.detail.startswith("32x16x16")
    assert len(collapsed.boxes) == len({n.name.split(".")[0] for n in graph.nodes})


def test_collapsing_keeps_the_frames_of_enclosing_blocks() -> None:
    graph, drawing = _drawing("specs/se_cifar.cnn", collapse=INNERMOST)
    stages = {n.name.split(".")[0] for n in graph.nodes if "." in n.name}
    assert {g.key for g in drawing.groups} == stages
    gates = [b for b in drawing.boxes if b.family == "block"]
    assert {b.key.split(".")[0] for b in gates} == stages
    for box in gates:
        assert box.groups == (box.key.split(".")[0],) and box.op.startswith("squeeze_excite (")
        layers = [n for n in graph.nodes if n.name.startswith(box.key + ".")]
        assert box.detail.startswith("x".join(map(str, layers[-1].shape)))
    assert any(b.key.endswith(".conv1") for b in drawing.boxes)   # a stage's own layers stay boxes


def test_collapsing_at_a_depth(tmp_path: Path, capsys) -> None:
    graph, outer = _drawing("specs/se_cifar.cnn", collapse=1)
    assert not outer.groups and {b.key for b in outer.boxes if b.family == "block"} == \
        {n.name.split(".")[0] for n in graph.nodes if "." in n.name}
    _, deep = _drawing("specs/se_cifar.cnn", collapse=2)
    _, innermost = _drawing("specs/se_cifar.cnn", collapse=INNERMOST)
    assert deep == innermost    # squeeze_excite, two deep, holds no other block
    spec = str(ROOT / "specs/se_cifar.cnn")
    assert main(["draw", spec, "-o", str(tmp_path / "a.svg"), "--collapse-blocks", "1"]) == 0
    assert (tmp_path / "a.svg").read_text() == to_svg(outer)
    assert main(["draw", spec, "-o", str(tmp_path / "b.svg"), "--collapse-blocks", "-1"]) == 2
    assert "a depth of 1 or more" in capsys.readouterr().err


def test_branches_and_merges() -> None:
    _, drawing = _drawing("specs/inception_mnist.cnn")
    svg = to_svg(drawing)
    concat = [b for b in drawing.boxes if b.key.endswith("concat1")]
    assert concat and all(b.merge for b in concat)
    into = [e for e in drawing.edges if e.target == concat[0].key]
    assert len(into) == 4
    assert len({e.points[-1] for e in into}) == 4    # four distinct entry points along the top of the box
    assert svg.count('class="branch"') >= 2          # the inputs of both inception blocks fan out


def test_dead_layers_are_grey() -> None:
    graph, drawing = _drawing("tests/specs/dead_layers.cnn")
    dead = {n.name for n in dead_nodes(graph)}
    assert dead and {b.key for b in drawing.boxes if b.dead} == dead
    svg = to_svg(drawing)
    assert svg.count('class="box dead"') == len(dead)


def _render(svg: str, style: str | None = None) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, style_sheet=style, monospace_family="DejaVu Sans Mono")
    return Image.open(io.BytesIO(bytes(png))).convert("RGB")


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


@pytest.mark.parametrize("spec", RENDERED)
@pytest.mark.parametrize("collapse", [None, INNERMOST], ids=["groups", "collapsed"])
def test_rendered_picture(spec: str, collapse: int | None) -> None:
    _, drawing = _drawing(ROOT / spec, collapse)
    svg = to_svg(drawing)
    full = _render(svg, ".title, .group-label { display: none }")
    plain = _render(svg, "text, .group-label { display: none }")
    assert full.size == plain.size == (round(drawing.width), round(drawing.height))
    # boxes exist: each box's fill shows inside it, along its bottom edge where no text is
    for box in drawing.boxes:
        fill = _hex((DEAD_COLOURS if box.dead else COLOURS.get(box.family, COLOURS["block"]))[0])
        x, y = int(box.x + box.width / 2), int(box.y + box.height - 3)
        assert plain.getpixel((x, y)) == fill, box.key
    # text inside boxes: every pixel the text changes lies within a box, and every box holds text
    rects = [_rect(b) for b in drawing.boxes]
    text_pixels = _changed(full, plain)
    assert text_pixels, "no text was rendered: is a monospace font (DejaVu Sans Mono) installed?"
    outside = [p for p in text_pixels if not any(x <= p[0] <= x + w and y <= p[1] <= y + h for x, y, w, h in rects)]
    assert not outside, outside[:5]
    for x, y, w, h in rects:
        assert any(x <= px <= x + w and y <= py <= y + h for px, py in text_pixels)
    # no box covers another: drawn in distinct colours, each shows its whole area
    coloured = _distinct_fills(svg, len(drawing.boxes))
    counts = _render(coloured, "text, path, circle, .group, .group-label { display: none }").getcolors(1 << 16)
    seen = {colour: count for count, colour in counts}
    for index, box in enumerate(drawing.boxes):
        corner = box.height / 2 if box.merge else 4   # merges are pills; the corners' cut-off area
        expected = (box.width - 2) * (box.height - 2) - (4 - math.pi) * corner**2
        assert seen.get(_index_colour(index), 0) >= expected, box.key


def _changed(a: Image.Image, b: Image.Image) -> list[tuple[int, int]]:
    from PIL import ImageChops

    difference = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 40 else 0)
    width = difference.width
    return [(i % width, i // width) for i, v in enumerate(difference.get_flattened_data()) if v]


def _index_colour(index: int) -> tuple[int, int, int]:
    value = index + 1
    return (value * 37) % 256, (value * 91) % 256, 255 - value % 256


def _distinct_fills(svg: str, count: int) -> str:
    boxes = iter(range(count))

    def recolour(match: re.Match) -> str:
        r, g, b = _index_colour(next(boxes))
        return f'{match.group(1)}fill="#{r:02x}{g:02x}{b:02x}" stroke="none" data-stroke='

    return re.sub(r'(<g class="box[^"]*"[^>]*><title>[^<]*</title><rect [^>]*?)fill="[^"]*" stroke=', recolour, svg)


def test_svg_is_wellformed_and_png_is_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["draw", "specs/resnet_cifar.cnn", "-o", str(tmp_path / "net.svg")]) == 0
    root = ElementTree.parse(tmp_path / "net.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert main(["draw", "specs/resnet_cifar.cnn", "-o", str(tmp_path / "net.png"), "--collapse-blocks"]) == 0
    picture = Image.open(tmp_path / "net.png")
    _, collapsed = _drawing(ROOT / "specs/resnet_cifar.cnn", collapse=INNERMOST)
    assert picture.format == "PNG" and picture.size == (round(collapsed.width), round(collapsed.height))
    assert main(["draw", "specs/xo.cnn", "-o", str(tmp_path / "pic"), "--format", "png"]) == 0
    assert Image.open(tmp_path / "pic").format == "PNG"


def test_draw_errors(tmp_path: Path, capsys) -> None:
    assert main(["draw", str(ROOT / "specs/xo.cnn"), "-o", str(tmp_path / "net.pdf")]) == 2
    assert "name it .svg or .png" in capsys.readouterr().err
    bad = tmp_path / "bad.cnn"
    bad.write_text("model m {\n    input image(1, 8, 8)\n    conv(4, 9)\n}\n")
    assert main(["draw", str(bad), "-o", str(tmp_path / "net.svg")]) == 1
    assert "error[E010]" in capsys.readouterr().err and not (tmp_path / "net.svg").exists()
    assert main(["draw", str(tmp_path / "missing.cnn"), "-o", str(tmp_path / "net.svg")]) == 2


def test_checking_loads_none_of_the_tools() -> None:
    code = (
        "import sys\n"
        "from cnnc.cli import main\n"
        "code = main(['check', 'specs/resnet_cifar.cnn'])\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('pygls', 'lsprotocol', 'pygments', 'resvg_py')\n"
        "          or m.startswith('cnnc.tools.') and m != 'cnnc.tools.cli']\n"
        "assert not loaded, loaded\n"
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

