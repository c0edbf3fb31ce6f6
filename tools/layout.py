"""A layered, top-to-bottom layout of a checked graph (Sugiyama's method, without Graphviz).

Layers come from the longest path from the input; an edge that spans several layers gets a chain
of invisible waypoints, so that it is routed between boxes rather than through them. The order
within a layer is refined by barycentre sweeps that keep the members of a block instance next to
each other; x positions are the closest to each box's neighbours that keep boxes apart (isotonic
regression). Block instances become labelled groups, or single boxes with `collapse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from cnnc.compiler.ir import Graph, Node
from cnnc.compiler.ops import OPS
from cnnc.compiler.passes import dead_nodes

FONT_SIZE = 11.0
CHAR_WIDTH = 0.6 * FONT_SIZE      # the advance of every monospace font the drawing names
LINE_HEIGHT = 14.0
BOX_PAD_X, BOX_PAD_Y = 8.0, 5.0
H_GAP = 22.0                      # between neighbouring boxes of one layer
V_GAP = 30.0                      # between layers
GROUP_PAD = 9.0                   # between a group's frame and what it holds
GROUP_LABEL = 15.0                # the height of a group's label strip
WAYPOINT_WIDTH = 6.0
MARGIN = 16.0
TITLE_HEIGHT = 26.0
SWEEPS = 6
FRAME_ROUNDS = 50


@dataclass(frozen=True)
class Box:
    key: str                 # the layer's (or collapsed block's) full name
    title: str               # its name within its group
    op: str                  # op and its main attributes, or the block's name
    detail: str              # output shape and parameters
    family: str              # colour class: an op family, "input" or "block"
    dead: bool
    merge: bool
    groups: tuple[str, ...]  # enclosing block instances, outermost first
    x: float                 # top-left corner
    y: float
    width: float
    height: float

    @property
    def lines(self) -> tuple[str, str]:
        return f"{self.title}  {self.op}".rstrip(), self.detail


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    points: tuple[tuple[float, float], ...]  # from the source's bottom to the target's top
    dead: bool


@dataclass(frozen=True)
class Group:
    key: str                 # the instance's full name, e.g. "layer2.block1"
    label: str
    depth: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Drawing:
    title: str
    width: float
    height: float
    boxes: tuple[Box, ...]
    edges: tuple[Edge, ...]
    groups: tuple[Group, ...]


@dataclass
class _Item:
    """A box or a waypoint while the layout is being computed."""

    key: str
    width: float
    height: float
    groups: tuple[str, ...]
    layer: int = 0
    x: float = 0.0
    is_waypoint: bool = False


INNERMOST = 0


def layout(graph: Graph, block_names: dict[str, str] | None = None, collapse: int | None = None) -> Drawing:
    """`block_names` maps a block instance (a node-name prefix such as "residual1") to the block it
    instantiates, for the group labels. `collapse` draws block instances as single boxes: None none,
    INNERMOST those that hold no other instance, N those nested N deep (1: the outermost)."""
    block_names = block_names or {}
    dead = {node.name for node in dead_nodes(graph)}
    boxes, inputs = _boxes(graph, dead, block_names, collapse)
    items = {key: _Item(key, box.width, box.height, box.groups) for key, box in boxes.items()}
    order = list(boxes)
    _assign_layers(items, order, inputs)
    layers, chains = _add_waypoints(items, order, inputs)
    _order_layers(layers, items, chains)
    _place_x(layers, items, chains, block_names)
    tops = _layer_tops(layers, items)
    placed = {key: _place_box(box, items[key], tops) for key, box in boxes.items()}
    edges = tuple(_edge(source, target, placed, items, chains, tops, inputs)
                  for target in order for source in inputs[target])
    waypoints = [(item.x, item.groups) for item in items.values() if item.is_waypoint and item.groups]
    groups = _groups(placed, block_names, waypoints)
    return _normalised(graph, tuple(placed.values()), edges, groups)


# --- boxes -------------------------------------------------------------------------------------------

def _boxes(graph: Graph, dead: set[str], block_names: dict[str, str],
           collapse: int | None) -> tuple[dict[str, Box], dict[str, list[str]]]:
    """One box per node, or per collapsed block instance (the frames of the instances around it
    stay); and each box's inputs."""
    instances = {group for node in graph.nodes for group in _groups_of(node.name)}
    leaves = instances - {group.rsplit(".", 1)[0] for group in instances if "." in group}
    owner = {}
    for node in graph.nodes:
        groups = _groups_of(node.name)
        if collapse == INNERMOST:
            owner[node.name] = groups[-1] if groups and groups[-1] in leaves else node.name
        elif collapse is not None and len(groups) >= collapse:
            owner[node.name] = groups[collapse - 1]
        else:
            owner[node.name] = node.name
    members: dict[str, list[Node]] = {}
    for node in graph.nodes:
        members.setdefault(owner[node.name], []).append(node)
    boxes: dict[str, Box] = {}
    inputs: dict[str, list[str]] = {}
    for key, nodes in members.items():
        inputs[key] = list(dict.fromkeys(owner[i] for n in nodes for i in n.inputs if owner[i] != key))
        is_instance = key != nodes[0].name   # an instance's key is a prefix of its layers' names
        boxes[key] = _collapsed_box(key, nodes, graph, dead, block_names) if is_instance else _node_box(nodes[0], dead)
    return boxes, inputs


def _node_box(node: Node, dead: set[str]) -> Box:
    groups = _groups_of(node.name)
    title = node.name.rsplit(".", 1)[-1]
    if node.op == "input":
        op, family, merge = f"input {node.attrs['dtype']}", "input", False
    else:
        op, family, merge = describe_node(node), OPS[node.op].family, OPS[node.op].is_merge
        if title.startswith(node.op) and title[len(node.op):].isdigit():
            op = op[len(node.op):].strip()  # an automatic name already says the op
    detail = _shape(node.shape) + (f"  {_count(node.params + node.non_trainable)} params" if node.params
                                   or node.non_trainable else "")
    return _sized(Box(node.name, title, op, detail, family, node.name in dead, merge, groups, 0, 0, 0, 0))


def _collapsed_box(key: str, nodes: list[Node], graph: Graph, dead: set[str], block_names: dict[str, str]) -> Box:
    produced = {n.name for n in nodes}
    read_outside = {i for n in graph.nodes if n.name not in produced for i in n.inputs} | {graph.output}
    last = next((n for n in reversed(nodes) if n.name in read_outside), nodes[-1])
    params = sum(n.params + n.non_trainable for n in nodes)
    detail = _shape(last.shape) + (f"  {_count(params)} params" if params else "")
    block = block_names.get(key, "block")
    return _sized(Box(key, key.rsplit(".", 1)[-1], f"{block} ({len(nodes)} layers)", detail, "block",
                      all(n.name in dead for n in nodes), False, _groups_of(key), 0, 0, 0, 0))


def _sized(box: Box) -> Box:
    width = max(len(line) for line in box.lines) * CHAR_WIDTH + 2 * BOX_PAD_X
    height = 2 * LINE_HEIGHT + 2 * BOX_PAD_Y
    return replace(box, width=width, height=height)


def _groups_of(name: str) -> tuple[str, ...]:
    parts = name.split(".")[:-1]
    return tuple(".".join(parts[:i + 1]) for i in range(len(parts)))


def describe_node(node: Node) -> str:
    text = node.op
    kernel = node.attrs.get("kernel")
    if kernel is not None:
        text += f" {kernel[0]}x{kernel[1]}"
    stride = node.attrs.get("stride")
    if stride is not None and tuple(stride) != (1, 1):
        text += f" /{stride[0]}" if stride[0] == stride[1] else f" /{stride[0]}x{stride[1]}"
    groups = node.attrs.get("groups")
    if groups not in (None, 1) and node.op != "depthwise_conv":   # a depthwise conv's groups are its channels
        text += f" g{groups}"
    activation = node.attrs.get("activation")
    if activation is not None:
        text += f" +{activation.name}"
    return text


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _count(count: int) -> str:
    for unit, size in (("G", 1_000_000_000), ("M", 1_000_000), ("k", 1_000)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


# --- layers ------------------------------------------------------------------------------------------

def _assign_layers(items: dict[str, _Item], order: list[str], inputs: dict[str, list[str]]) -> None:
    """The longest path from a source: every edge points down at least one layer."""
    for key in order:
        items[key].layer = 1 + max((items[i].layer for i in inputs[key]), default=-1)


def _add_waypoints(items: dict[str, _Item], order: list[str],
                   inputs: dict[str, list[str]]) -> tuple[list[list[str]], dict[tuple[str, str], list[str]]]:
    """Layers of keys (boxes and waypoints), and the waypoints of every edge that skips layers."""
    spans: dict[str, tuple[int, int]] = {}
    for key in order:
        for group in items[key].groups:
            first, last = spans.get(group, (items[key].layer, items[key].layer))
            spans[group] = (min(first, items[key].layer), max(last, items[key].layer))
    chains: dict[tuple[str, str], list[str]] = {}
    for target in order:
        for source in inputs[target]:
            chain = []
            for layer in range(items[source].layer + 1, items[target].layer):
                key = f"\0{source}\0{target}\0{layer}"
                groups = _waypoint_groups(items[source].groups, items[target].groups, layer, spans)
                items[key] = _Item(key, WAYPOINT_WIDTH, 0.0, groups, layer, is_waypoint=True)
                chain.append(key)
            chains[(source, target)] = chain
    layers: list[list[str]] = [[] for _ in range(1 + max(item.layer for item in items.values()))]
    for key in [*order, *(k for chain in chains.values() for k in chain)]:
        layers[items[key].layer].append(key)
    return layers, chains


def _waypoint_groups(source: tuple[str, ...], target: tuple[str, ...], layer: int,
                     spans: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    """An edge runs inside the deepest group of either end whose layers it passes through, so that an
    edge entering a group is drawn within its frame rather than along it."""
    best: tuple[str, ...] = ()
    for groups in (source, target):
        for depth in range(len(groups), len(best), -1):
            first, last = spans[groups[depth - 1]]
            if first <= layer <= last:
                best = groups[:depth]
                break
    return best


def _common(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    return a[:shared]


def _neighbours(chains: dict[tuple[str, str], list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each key's neighbours one layer up and one layer down, waypoints included."""
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for (source, target), chain in chains.items():
        path = [source, *chain, target]
        for upper, lower in zip(path, path[1:]):
            down.setdefault(upper, []).append(lower)
            up.setdefault(lower, []).append(upper)
    return up, down


def _order_layers(layers: list[list[str]], items: dict[str, _Item],
                  chains: dict[tuple[str, str], list[str]]) -> None:
    """Barycentre sweeps, down then up; members of one block instance stay side by side."""
    up, down = _neighbours(chains)
    for sweep in range(SWEEPS):
        downward = sweep % 2 == 0
        sequence = range(1, len(layers)) if downward else range(len(layers) - 2, -1, -1)
        for index in sequence:
            reference = layers[index - 1] if downward else layers[index + 1]
            position = {key: i for i, key in enumerate(reference)}
            links = up if downward else down
            current = {key: i for i, key in enumerate(layers[index])}
            centre = {}
            for key in layers[index]:
                linked = [position[k] for k in links.get(key, []) if k in position]
                centre[key] = sum(linked) / len(linked) if linked else float(current[key])
            layers[index] = _clustered(layers[index], centre, items)


def _clustered(keys: list[str], centre: dict[str, float], items: dict[str, _Item], depth: int = 0) -> list[str]:
    """Keys sorted by barycentre, with the members of each group at `depth` kept together."""
    clusters: dict[str, list[str]] = {}
    for key in keys:
        groups = items[key].groups
        clusters.setdefault(groups[depth] if len(groups) > depth else f"\0{key}", []).append(key)
    ordered = sorted(clusters.values(), key=lambda members: sum(centre[k] for k in members) / len(members))
    result: list[str] = []
    for members in ordered:
        if len(members) > 1:
            result += _clustered(members, centre, items, depth + 1)
        else:
            result += members
    return result


# --- x positions -------------------------------------------------------------------------------------

def _place_x(layers: list[list[str]], items: dict[str, _Item], chains: dict[tuple[str, str], list[str]],
             block_names: dict[str, str]) -> None:
    """Positions from barycentre sweeps; then, while a group's frame (as wide as its widest row)
    covers a box of another row, the rows the frame spans are pulled apart at that point."""
    _sweep_x(layers, items, chains)
    for _ in range(FRAME_ROUNDS):
        conflict = _frame_conflict(layers, items, block_names)
        if conflict is None:
            return
        rows, threshold, shift = conflict
        for index in rows:
            for key in layers[index]:
                if items[key].x >= threshold:
                    items[key].x += shift


def _frame_conflict(layers: list[list[str]], items: dict[str, _Item],
                    block_names: dict[str, str]) -> tuple[range, float, float] | None:
    """A frame that covers a box of another group: the rows it spans, the x from which everything moves
    right, and by how much; None when there is none."""
    members: dict[str, list[_Item]] = {}
    rows: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        for key in layer:
            item = items[key]
            if item.is_waypoint:
                continue
            for group in item.groups:
                members.setdefault(group, []).append(item)
                rows.setdefault(group, []).append(index)
    for group, inside in members.items():
        left, right = _frame_x(group, _label(group, block_names),
                               [(i.x - i.width / 2, i.x + i.width / 2, i.groups) for i in inside])
        span = range(min(rows[group]), max(rows[group]) + 1)
        for index in span:
            for key in layers[index]:
                item = items[key]
                box_left, box_right = item.x - item.width / 2, item.x + item.width / 2
                if item.is_waypoint or group in item.groups or box_right <= left or right <= box_left:
                    continue
                if item.x < (left + right) / 2:   # the box is left of the frame's middle: move the group right
                    return span, min(i.x for i in inside), box_right - left + H_GAP / 2
                return span, item.x, right - box_left + H_GAP / 2
    return None


def _sweep_x(layers: list[list[str]], items: dict[str, _Item], chains: dict[tuple[str, str], list[str]]) -> None:
    up, down = _neighbours(chains)
    for layer in layers:
        _fit(layer, items, [0.0] * len(layer))
    for sweep in range(SWEEPS + 1):
        downward = sweep % 2 == 0
        sequence = range(1, len(layers)) if downward else range(len(layers) - 2, -1, -1)
        links = up if downward else down
        for index in sequence:
            _fit(layers[index], items, [_desired(key, links, items) for key in layers[index]])


def _desired(key: str, links: dict[str, list[str]], items: dict[str, _Item]) -> float:
    """Under (or above) the mean of the boxes it is linked to, else of the edges: a chain stays straight
    and the skip connections that join it run beside it."""
    linked = links.get(key, [])
    boxes = [items[k].x for k in linked if not items[k].is_waypoint]
    chosen = boxes or [items[k].x for k in linked]
    return sum(chosen) / len(chosen) if chosen else items[key].x


def _separation(a: _Item, b: _Item) -> float:
    """The distance between the centres of neighbours: half of each, a gap, and room for the frames of
    the groups that one is in and the other is not."""
    shared = len(_common(a.groups, b.groups))
    frames = (len(a.groups) - shared) + (len(b.groups) - shared)
    gap = H_GAP / 2 if a.is_waypoint or b.is_waypoint else H_GAP
    return (a.width + b.width) / 2 + gap + frames * GROUP_PAD


def _fit(keys: list[str], items: dict[str, _Item], desired: Sequence[float]) -> None:
    """The x positions closest (least squares) to `desired` that keep the order and the separations:
    isotonic regression on the positions less their cumulative separations (pool adjacent violators)."""
    offsets = [0.0]
    for left, right in zip(keys, keys[1:]):
        offsets.append(offsets[-1] + _separation(items[left], items[right]))
    weights = [1.0 if items[k].is_waypoint else 100.0 for k in keys]  # boxes hold their place; edges give way
    blocks: list[list[float]] = []  # [weighted mean, total weight, count]
    for target, offset, weight in zip(desired, offsets, weights):
        blocks.append([target - offset, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, total, count = blocks.pop()
            previous = blocks[-1]
            combined = previous[1] + total
            blocks[-1] = [(previous[0] * previous[1] + mean * total) / combined, combined, previous[2] + count]
    position = 0
    for mean, _, count in blocks:
        for _ in range(int(count)):
            items[keys[position]].x = mean + offsets[position]
            position += 1


# --- y positions, edges, groups ----------------------------------------------------------------------

def _layer_tops(layers: list[list[str]], items: dict[str, _Item]) -> list[float]:
    """Each layer's top; the gap above a layer grows with the group frames that close above it and
    the labelled frames that open in it."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for index, layer in enumerate(layers):
        for key in layer:
            if items[key].is_waypoint:
                continue
            for group in items[key].groups:
                first.setdefault(group, index)
                last[group] = index
    tops = []
    y = TITLE_HEIGHT
    for index, layer in enumerate(layers):
        opened = _max_nesting(first, index)
        closed = _max_nesting(last, index - 1)
        y += (V_GAP if index else 0) + opened * (GROUP_LABEL + GROUP_PAD) + closed * GROUP_PAD
        tops.append(y)
        y += max((items[k].height for k in layer), default=0.0)
    return tops


def _max_nesting(boundary: dict[str, int], index: int) -> int:
    """How many nested frames open (or close) at layer `index`: the deepest chain of such groups."""
    groups = [g for g, at in boundary.items() if at == index]
    return max((sum(1 for other in groups if g == other or g.startswith(other + ".")) for g in groups), default=0)


def _place_box(box: Box, item: _Item, tops: list[float]) -> Box:
    return replace(box, x=item.x - box.width / 2, y=tops[item.layer])


def _edge(source: str, target: str, boxes: dict[str, Box], items: dict[str, _Item],
          chains: dict[tuple[str, str], list[str]], tops: list[float], inputs: dict[str, list[str]]) -> Edge:
    upper, lower = boxes[source], boxes[target]
    start = (upper.x + upper.width / 2, upper.y + upper.height)
    entries = sorted(inputs[target], key=lambda key: _entry_x(key, target, items, chains))
    slot = (entries.index(source) + 1) / (len(entries) + 1)
    end = (lower.x + lower.width * slot if len(entries) > 1 else lower.x + lower.width / 2, lower.y)
    # through each layer it skips, straight down the gap its waypoint keeps between that layer's boxes
    row_height = max(b.height for b in boxes.values())
    middle = tuple(point for k in chains[(source, target)]
                   for point in ((items[k].x, tops[items[k].layer]), (items[k].x, tops[items[k].layer] + row_height)))
    return Edge(source, target, (start, *middle, end), upper.dead or lower.dead)


def _entry_x(source: str, target: str, items: dict[str, _Item], chains: dict[tuple[str, str], list[str]]) -> float:
    chain = chains[(source, target)]
    return items[chain[-1]].x if chain else items[source].x


def _groups(boxes: dict[str, Box], block_names: dict[str, str],
            waypoints: list[tuple[float, tuple[str, ...]]]) -> tuple[Group, ...]:
    """Frames around each group's boxes, the edges routed inside it and the frames nested in it."""
    members: dict[str, list[Box]] = {}
    for box in boxes.values():
        for group in box.groups:
            members.setdefault(group, []).append(box)
    groups: dict[str, Group] = {}
    for key in sorted(members, key=lambda k: -k.count(".")):   # inner frames first: outer ones hold them
        inside = members[key]
        depth = key.count(".")
        label = _label(key, block_names)
        left, right = _frame_x(key, label, [(b.x, b.x + b.width, b.groups) for b in inside])
        pad = _frame_pad(key, [b.groups for b in inside])
        top = min(b.y for b in inside) - pad - GROUP_LABEL * (1 + _nested_label_rows(key, inside))
        bottom = max(b.y + b.height for b in inside) + pad
        routed = [x for x, groups in waypoints if key in groups]
        left, right = min([left, *(x - GROUP_PAD for x in routed)]), max([right, *(x + GROUP_PAD for x in routed)])
        for inner in (g for g in groups.values() if g.key.startswith(key + ".") and g.depth == depth + 1):
            left, right = min(left, inner.x - GROUP_PAD), max(right, inner.x + inner.width + GROUP_PAD)
            bottom = max(bottom, inner.y + inner.height + GROUP_PAD)
        groups[key] = Group(key, label, depth, left, top, right - left, bottom - top)
    return tuple(sorted(groups.values(), key=lambda g: g.depth))


def _label(key: str, block_names: dict[str, str]) -> str:
    name = key.rsplit(".", 1)[-1]
    block = block_names.get(key)
    return f"{name}: {block}" if block and block != name else name


def _frame_pad(key: str, member_groups: list[tuple[str, ...]]) -> float:
    """Room between a frame and its boxes: one pad, and one more for each frame nested inside it."""
    return GROUP_PAD * (max(len(groups) for groups in member_groups) - key.count("."))


def _frame_x(key: str, label: str, members: list[tuple[float, float, tuple[str, ...]]]) -> tuple[float, float]:
    """The left and right of a group's frame around its members' (left, right, groups); wide enough
    for its label."""
    pad = _frame_pad(key, [groups for _, _, groups in members])
    left = min(x for x, _, _ in members) - pad
    right = max(max(x for _, x, _ in members) + pad, left + len(label) * CHAR_WIDTH + 2 * GROUP_PAD)
    return left, right


def _nested_label_rows(key: str, inside: list[Box]) -> int:
    """Frames inside this one whose label strip starts on this group's first row of boxes."""
    top = min(b.y for b in inside)
    depth = key.count(".") + 1
    first_row = [b for b in inside if b.y == top]
    return max((len(b.groups) - depth for b in first_row), default=0)


def _normalised(graph: Graph, boxes: tuple[Box, ...], edges: tuple[Edge, ...], groups: tuple[Group, ...]) -> Drawing:
    """Shifted so that everything lies MARGIN inside the picture."""
    lefts = [b.x for b in boxes] + [g.x for g in groups] + [x for e in edges for x, _ in e.points]
    rights = [b.x + b.width for b in boxes] + [g.x + g.width for g in groups]
    shift = MARGIN - min(lefts)
    title = (f"model {graph.name}   input {_shape(graph.input.shape)}   "
             f"{_count(graph.trainable_params + graph.non_trainable_params)} params   "
             f"{_count(graph.total_macs)} MACs")
    width = max(max(rights) + shift + MARGIN, len(title) * CHAR_WIDTH * 1.2 + 2 * MARGIN)
    height = max(b.y + b.height for b in boxes) + MARGIN

    def moved(x: float) -> float:
        return x + shift

    return Drawing(
        title, width, height,
        tuple(replace(b, x=moved(b.x)) for b in boxes),
        tuple(replace(e, points=tuple((moved(x), y) for x, y in e.points)) for e in edges),
        tuple(replace(g, x=moved(g.x)) for g in groups),
    )
