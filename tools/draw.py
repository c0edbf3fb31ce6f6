"""`cnnc draw`: a checked network as an SVG picture (or PNG, rasterised by resvg), no Graphviz.

The layout is tools/layout.py; this module turns it into SVG. Text is monospace so that the box
sizes computed there hold in any renderer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

from cnnc.compiler.ir import Graph
from cnnc.compiler.loader import load
from cnnc.errors import CnncError, UsageError
from cnnc.tools.analysis import instance_blocks
from cnnc.tools.layout import (
    BOX_PAD_X,
    BOX_PAD_Y,
    CHAR_WIDTH,
    FONT_SIZE,
    LINE_HEIGHT,
    MARGIN,
    Box,
    Drawing,
    Edge,
    Group,
    layout,
)

FONT = "DejaVu Sans Mono, Menlo, Consolas, Liberation Mono, monospace"
# Fill and border per op family; unknown families (ops added later) get the neutral default.
COLOURS = {
    "input": ("#e8eef7", "#5b7db1"),
    "conv": ("#dcebfa", "#3b78c2"),
    "pool": ("#e2f2e2", "#3f9142"),
    "linear": ("#ece3f6", "#7a4fb0"),
    "norm": ("#fdf3d8", "#b8901c"),
    "activation": ("#fde9dc", "#c8692e"),
    "merge": ("#fadddd", "#bf3b3b"),
    "shape": ("#eeeeee", "#777777"),
    "regularize": ("#eef5f7", "#5d8a96"),
    "block": ("#f4f0e6", "#8a7446"),
}
DEFAULT_COLOURS = ("#f2f2f2", "#666666")
DEAD_COLOURS = ("#f5f5f5", "#b5b5b5")
DEAD_TEXT = "#9a9a9a"
TEXT = "#1d1d1d"
EDGE = "#555555"


def draw_file(spec: str, output: str, collapse_blocks: int | None = None, image_format: str | None = None) -> None:
    from cnnc.compiler.check import load_program
    from cnnc.files import replacing

    kind = image_format or Path(output).suffix.lower().lstrip(".")
    if kind not in ("svg", "png"):
        raise UsageError(f"cannot tell the picture's format from '{output}': name it .svg or .png, or pass --format")
    graph = load_program(spec).graph
    svg = to_svg(layout(graph, block_names(spec, graph), collapse_blocks))
    data = svg.encode("utf-8") if kind == "svg" else to_png(svg)
    with replacing(output) as temporary:
        temporary.write_bytes(data)


def block_names(spec: str, graph: Graph) -> dict[str, str]:
    loaded = load(spec)
    trees = [tree for tree in (*loaded.included, loaded.main) if tree is not None]
    return instance_blocks([block for tree in trees for block in tree.blocks], graph.nodes)


def to_png(svg: str) -> bytes:
    try:
        import resvg_py
    except ImportError:
        raise CnncError("PNG output needs resvg-py: pip install 'cnnc[tools]' (or write .svg)") from None
    return bytes(resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", monospace_family="DejaVu Sans Mono"))


def to_svg(drawing: Drawing) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{drawing.width:.0f}" height="{drawing.height:.0f}" '
        f'viewBox="0 0 {drawing.width:.0f} {drawing.height:.0f}" font-family="{FONT}" font-size="{FONT_SIZE}">',
        "<defs>"
        f'<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE}"/></marker>'
        f'<marker id="arrow-dead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{DEAD_COLOURS[1]}"/></marker>'
        "</defs>",
        f'<rect class="background" x="0" y="0" width="{drawing.width:.0f}" height="{drawing.height:.0f}" '
        'fill="#ffffff"/>',
        f'<text class="title" x="{MARGIN}" y="{MARGIN + 4}" font-weight="bold" fill="{TEXT}">'
        f"{escape(drawing.title)}</text>",
    ]
    parts += _frames(drawing.groups)
    parts += _edges(drawing.edges)
    parts += _branch_points(drawing.edges)
    parts += _group_labels(drawing.groups)   # over the edges that enter a frame, on a patch of its shade
    parts += _boxes(drawing.boxes)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _shade(group: Group) -> str:
    return "#faf8f2" if group.depth % 2 == 0 else "#f3efe4"


def _frames(groups: Iterable[Group]) -> list[str]:
    return [f'<rect class="group" data-key="{escape(group.key)}" x="{group.x:.1f}" y="{group.y:.1f}" '
            f'width="{group.width:.1f}" height="{group.height:.1f}" rx="8" fill="{_shade(group)}" '
            'stroke="#b4a680" stroke-dasharray="5 3"/>' for group in groups]


def _group_labels(groups: Iterable[Group]) -> list[str]:
    return [f'<g class="group-label"><rect x="{group.x + 5:.1f}" y="{group.y + 2:.1f}" '
            f'width="{len(group.label) * CHAR_WIDTH + 6:.1f}" height="{LINE_HEIGHT:.1f}" fill="{_shade(group)}"/>'
            f'<text x="{group.x + 8:.1f}" y="{group.y + 12:.1f}" font-style="italic" fill="#6b5a2e">'
            f"{escape(group.label)}</text></g>" for group in groups]


def _edges(edges: Iterable[Edge]) -> list[str]:
    out = []
    for edge in edges:
        colour, marker = (DEAD_COLOURS[1], "arrow-dead") if edge.dead else (EDGE, "arrow")
        out.append(f'<path class="edge" d="{_curve(edge.points)}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.3" marker-end="url(#{marker})"/>')
    return out


def _curve(points: tuple[tuple[float, float], ...]) -> str:
    """A smooth path through the points that leaves and enters each one vertically."""
    (x, y), *rest = points
    path = [f"M{x:.1f},{y:.1f}"]
    for next_x, next_y in rest:
        bend = (next_y - y) / 2
        path.append(f"C{x:.1f},{y + bend:.1f} {next_x:.1f},{next_y - bend:.1f} {next_x:.1f},{next_y:.1f}")
        x, y = next_x, next_y
    return " ".join(path)


def _branch_points(edges: Iterable[Edge]) -> list[str]:
    """A dot where one output feeds several layers, so that a branch reads as one."""
    starts: dict[tuple[float, float], int] = {}
    for edge in edges:
        starts[edge.points[0]] = starts.get(edge.points[0], 0) + 1
    return [f'<circle class="branch" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{EDGE}"/>'
            for (x, y), count in starts.items() if count > 1]


def _boxes(boxes: Iterable[Box]) -> list[str]:
    out = []
    for box in boxes:
        fill, stroke = DEAD_COLOURS if box.dead else COLOURS.get(box.family, DEFAULT_COLOURS)
        text = DEAD_TEXT if box.dead else TEXT
        radius = box.height / 2 if box.merge else 4
        dash = ' stroke-dasharray="4 3"' if box.dead else ""
        title, detail = box.lines
        name, _, op = title.partition("  ")
        baseline = box.y + BOX_PAD_Y + LINE_HEIGHT - 3
        classes = "box dead" if box.dead else "box"
        out.append(
            f'<g class="{classes}" data-key="{escape(box.key)}" data-family="{box.family}">'
            f"<title>{escape(box.key)}</title>"
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" '
            f'rx="{radius:.1f}" fill="{fill}" stroke="{stroke}" stroke-width="1.2"{dash}/>'
            f'<text x="{box.x + BOX_PAD_X:.1f}" y="{baseline:.1f}" fill="{text}" xml:space="preserve">'
            f'<tspan font-weight="bold">{escape(name)}</tspan>  {escape(op)}</text>'
            f'<text x="{box.x + BOX_PAD_X:.1f}" y="{baseline + LINE_HEIGHT:.1f}" fill="{text}">{escape(detail)}</text>'
            "</g>"
        )
    return out
