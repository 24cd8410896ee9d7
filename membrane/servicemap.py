"""A service map of flows as a standalone SVG (pure, deterministic, no graphviz).

Nodes are pods (grouped in one column per namespace) and, in an "outside" column, whatever is
not a pod (world, host, remote nodes, bare addresses). Edges go from the side that opened the
connection to the side that answered (reply flows are turned around), one edge per pair and
verdict: grey with an arrow for forwarded traffic, red and dashed for drops, labelled with the
ports (or the drop reasons) and what a reader would count by hand:

- forwarded: connections, not events. One connection yields several flows (the egress and
  ingress policy verdicts, trace:new, trace:end, replies); only the connection start
  (trace:new) is counted, or, when the flows read hold none, the distinct connections.
- dropped: packets. A denied packet yields a policy-verdict flow and a drop flow; only drop
  flows are counted (with their aggregation count), else the policy verdicts.
- a connection denied on the way in also has an "egress allowed" verdict at its source: it is
  drawn as dropped only, never as a forwarded edge as well (unless it was established).

Layout: a longest-path layering (clients left, servers right, cycles broken deterministically)
ranks the nodes; namespaces are ordered by the rank of their first member, nodes inside a
namespace by rank then name. Same input, same bytes out.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from membrane.flows import Endpoint, Flow, FlowType, Verdict

OUTSIDE = ""  # group of everything that is not a pod
OUTSIDE_TITLE = "outside the cluster"

CHAR_W = 7.0  # estimated width of a 12px sans-serif character
NODE_H, NODE_GAP, HEADER_H = 34, 22, 30
COL_GAP, GROUP_GAP, MARGIN = 250, 26, 30
LOOP_ROOM = 260
MAX_LABEL = 30  # characters of a node label before it is shortened
LABEL_H = 31  # edge label: "a -> b" line above the counts line


@dataclass(frozen=True, order=True)
class MapNode:
    group: str  # namespace, or OUTSIDE
    id: str  # "ns/pod", "world", "10.0.0.9"
    label: str


@dataclass
class MapEdge:
    source: str
    target: str
    dropped: bool
    count: int = 0  # forwarded: connections; dropped: packets
    ports: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    flows: int = 0  # flows read for this edge (several per connection)


@dataclass
class ServiceMap:
    nodes: dict[str, MapNode]
    edges: list[MapEdge]


def _node(ep: Endpoint, ip: str) -> MapNode:
    if ep.pod:
        return MapNode(ep.namespace, f"{ep.namespace}/{ep.pod}", ep.pod)
    if ep.identity_name:
        return MapNode(OUTSIDE, ep.identity_name, ep.identity_name)
    return MapNode(OUTSIDE, ip, ip)


def _is_start(flow: Flow) -> bool:
    return flow.type is FlowType.TRACE and flow.trace_event in ("", "new") and not flow.is_reply


def build_service_map(flows: Iterable[Flow]) -> ServiceMap:
    nodes: dict[str, MapNode] = {}
    # Pass 1: flows by connection (initiator -> responder, ports, protocol).
    conns: dict[tuple[str, str, int, int, str], list[Flow]] = defaultdict(list)
    for flow in flows:
        src, dst = _node(flow.source, flow.source_ip), _node(flow.destination, flow.destination_ip)
        sport, dport = flow.source_port, flow.destination_port
        if flow.is_reply:  # attribute replies to the connection, initiator -> responder
            src, dst, sport, dport = dst, src, dport, sport
        nodes.setdefault(src.id, src)
        nodes.setdefault(dst.id, dst)
        conns[(src.id, dst.id, sport, dport, flow.protocol)].append(flow)
    # Pass 2: one edge per pair and verdict.
    edges: dict[tuple[str, str, bool], MapEdge] = {}
    for (src_id, dst_id, _sport, dport, proto), group in conns.items():
        denied = any(f.verdict is Verdict.DROPPED for f in group)
        established = any(_is_start(f) and f.verdict is Verdict.FORWARDED for f in group)
        port = f"{proto}/{dport}" if dport and proto in ("TCP", "UDP", "SCTP") else proto
        for dropped in (False, True):
            part = [f for f in group if (f.verdict is Verdict.DROPPED) == dropped]
            if not part or (not dropped and denied and not established):
                continue  # the "egress allowed" verdict of a connection denied further on
            edge = edges.setdefault((src_id, dst_id, dropped), MapEdge(src_id, dst_id, dropped))
            edge.flows += len(part)
            edge.ports[port] += len(part)
            if dropped:
                counted = [f for f in part if f.type is FlowType.DROP] or \
                    [f for f in part if f.type is FlowType.POLICY_VERDICT] or part
                for f in counted:
                    edge.count += max(f.count, 1)
                    edge.reasons[f.drop_reason or "unknown"] += max(f.count, 1)
            else:
                n = sum(max(f.count, 1) for f in part if _is_start(f))
                edge.count += n if n else 1  # no start among the flows read: count the connection
    return ServiceMap(nodes, [edges[k] for k in sorted(edges)])


def _ranks(nodes: Iterable[str], pairs: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Longest path from a source, over a DAG made by dropping back edges of a sorted DFS."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(set(pairs)):
        if a != b:
            succ[a].append(b)
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    dag: dict[str, list[str]] = defaultdict(list)

    def visit(n: str) -> None:  # iterative DFS: maps can be deep enough to hit recursion limits
        stack = [(n, iter(succ[n]))]
        state[n] = 1
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if state.get(nxt) == 1:
                    continue  # back edge: ignore it to break the cycle
                dag[node].append(nxt)
                if nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(succ[nxt])))
                    break
            else:
                state[node] = 2
                order.append(node)
                stack.pop()

    names = sorted(set(nodes))
    targets = {t for ts in succ.values() for t in ts}
    for n in sorted(names, key=lambda n: (n in targets, n)):  # true sources first
        if n not in state:
            visit(n)
    rank = dict.fromkeys(names, 0)
    for n in reversed(order):  # reverse post-order is a topological order of the DAG
        for m in dag[n]:
            rank[m] = max(rank[m], rank[n] + 1)
    return rank


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    w: float
    h: float


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _edge_label(edge: MapEdge) -> str:
    what = edge.reasons if edge.dropped else edge.ports
    items = [k.removeprefix("DROP_") for k, _ in sorted(what.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown = ", ".join(items[:2]) + (f" +{len(items) - 2}" if len(items) > 2 else "")
    noun = "dropped" if edge.dropped else ("connection" if edge.count == 1 else "connections")
    return f"{edge.count} {noun} \u00b7 {shown}"


def render_svg(flows: Iterable[Flow] | ServiceMap, title: str = "membrane service map") -> str:
    smap = flows if isinstance(flows, ServiceMap) else build_service_map(flows)
    boxes, column_of, group_boxes, width, body_h = _layout(smap)
    edges_svg, labels_svg, placed = _draw_edges(smap, boxes, column_of, body_h)
    low = max((p.y + p.h for p in placed), default=0.0)
    low = max([low] + [float(m) for m in re.findall(r'data-low="([0-9.]+)"', "".join(edges_svg))])
    height = max(body_h, low) + 60
    forwarded = sum(e.count for e in smap.edges if not e.dropped)
    dropped = sum(e.count for e in smap.edges if e.dropped)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           "<defs>" + _marker("arrow-ok", "#6b7b8c") + _marker("arrow-drop", "#d62728") + "</defs>",
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="{MARGIN}" y="{MARGIN + 8}" font-size="16" font-weight="bold" fill="#1f2d3d">{escape(title)}</text>',
           f'<text x="{MARGIN}" y="{MARGIN + 26}" font-size="11" fill="#5a6a7a">{len(smap.nodes)} endpoints, '
           f'{forwarded} connections forwarded, {dropped} packets dropped '
           f'({sum(e.flows for e in smap.edges)} flows read)</text>']
    for group, gb in group_boxes.items():
        outside = group == OUTSIDE
        svg.append(f'<g class="namespace" data-namespace={quoteattr(group)}><rect x="{gb.x:.1f}" y="{gb.y:.1f}" '
                   f'width="{gb.w:.1f}" height="{gb.h:.1f}" rx="8" fill="{"#f4f4f4" if outside else "#eef4fb"}" '
                   f'stroke="{"#b0b0b0" if outside else "#9db7d5"}" stroke-dasharray="{"4 3" if outside else "none"}"/>'
                   f'<text x="{gb.x + 12:.1f}" y="{gb.y + 20:.1f}" font-size="13" font-weight="bold" '
                   f'fill="#2b4a6b">{escape(_short(OUTSIDE_TITLE if outside else group))}</text></g>')
    svg.extend(edges_svg)  # edges under the node boxes: a curve skipping a column passes behind it
    for node_id in sorted(boxes):
        node, b = smap.nodes[node_id], boxes[node_id]
        outside = node.group == OUTSIDE
        svg.append(f'<g class="node" data-id={quoteattr(node.id)} data-namespace={quoteattr(node.group)}>'
                   f'<title>{escape(node.id)}</title><rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" '
                   f'height="{b.h}" rx="6" fill="{"#ffffff" if outside else "#dbe9f8"}" '
                   f'stroke="{"#8a8a8a" if outside else "#4a78a8"}" stroke-width="1.2"/>'
                   f'<text x="{b.x + b.w / 2:.1f}" y="{b.y + b.h / 2 + 4.5:.1f}" text-anchor="middle" font-size="12" '
                   f'fill="#1f2d3d">{escape(_short(node.label))}</text></g>')
    svg.extend(labels_svg)
    ly = height - 22
    svg.append(f'<g class="legend" font-size="11" fill="#33414f">'
               f'<line x1="{MARGIN}" y1="{ly}" x2="{MARGIN + 36}" y2="{ly}" stroke="#6b7b8c" stroke-width="2" '
               f'marker-end="url(#arrow-ok)"/><text x="{MARGIN + 44}" y="{ly + 4}">forwarded (connections, ports)</text>'
               f'<line x1="{MARGIN + 250}" y1="{ly}" x2="{MARGIN + 286}" y2="{ly}" stroke="#d62728" '
               f'stroke-width="2" stroke-dasharray="7 4" marker-end="url(#arrow-drop)"/>'
               f'<text x="{MARGIN + 294}" y="{ly + 4}">dropped (packets, reason)</text></g>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def _marker(name: str, colour: str) -> str:
    # userSpaceOnUse: arrowheads keep one size whatever the edge's stroke width
    return (f'<marker id="{name}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" '
            f'markerWidth="11" markerHeight="11" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>')


def _layout(smap: ServiceMap) -> tuple[dict[str, _Box], dict[str, int], dict[str, _Box], float, float]:
    """Node boxes, node columns, namespace boxes, width, height of the body.

    Namespaces are ranked on the namespace graph (clients left, servers right); a column holds
    the namespaces of one rank stacked, so most edges only cross one gap."""
    groups: dict[str, list[MapNode]] = defaultdict(list)
    for node in smap.nodes.values():
        groups[node.group].append(node)
    node_rank = _ranks(smap.nodes, ((e.source, e.target) for e in smap.edges))
    inside = [g for g in groups if g != OUTSIDE]
    group_rank = _ranks(inside, ((smap.nodes[e.source].group, smap.nodes[e.target].group) for e in smap.edges
                                 if OUTSIDE not in (smap.nodes[e.source].group, smap.nodes[e.target].group)))
    if OUTSIDE in groups:
        # The outside world is mostly a client (ingress) or mostly a server (egress): put it
        # at the left or right end rather than letting cycles through it decide.
        sent = sum(e.count for e in smap.edges if smap.nodes[e.source].group == OUTSIDE)
        received = sum(e.count for e in smap.edges if smap.nodes[e.target].group == OUTSIDE)
        group_rank[OUTSIDE] = -1 if sent >= received else max(group_rank.values(), default=0) + 1
    for members in groups.values():
        members.sort(key=lambda n: (node_rank[n.id], n.id))
    columns: dict[int, list[str]] = defaultdict(list)
    for group in sorted(groups, key=lambda g: (g == OUTSIDE, g)):
        columns[group_rank[group]].append(group)

    longest = max([len(_short(n.label)) for n in smap.nodes.values()] +
                  [len(_short(g or OUTSIDE_TITLE)) + 2 for g in groups] + [10])
    node_w = max(150.0, longest * CHAR_W + 28)
    col_w = node_w + 30
    top = MARGIN + 40  # below the title
    boxes: dict[str, _Box] = {}
    column_of: dict[str, int] = {}
    group_boxes: dict[str, _Box] = {}
    bottom = top
    for col, rank in enumerate(sorted(columns)):
        gx, gy = MARGIN + col * (col_w + COL_GAP), top
        for group in columns[rank]:
            members = groups[group]
            gh = HEADER_H + len(members) * (NODE_H + NODE_GAP) + 4
            group_boxes[group] = _Box(gx, gy, col_w, gh)
            for i, node in enumerate(members):
                boxes[node.id] = _Box(gx + 15, gy + HEADER_H + i * (NODE_H + NODE_GAP) + 8, node_w, NODE_H)
                column_of[node.id] = col
            gy += gh + GROUP_GAP
            bottom = max(bottom, gy)
    width = MARGIN * 2 + max(1, len(columns)) * (col_w + COL_GAP) - COL_GAP
    last_x = MARGIN + (len(columns) - 1) * (col_w + COL_GAP)
    if any(abs(boxes[e.source].x - boxes[e.target].x) < 1 and boxes[e.source].x > last_x for e in smap.edges):
        width += LOOP_ROOM  # loops of the last column and their labels stick out to the right
    return boxes, column_of, group_boxes, max(width, 560.0), bottom


def _draw_edges(smap: ServiceMap, boxes: dict[str, _Box], column_of: dict[str, int],
                bottom: float) -> tuple[list[str], list[str], list[_Box]]:
    """SVG of the edges and of their labels; labels sit in the gap next to the target column
    and are nudged until they overlap no other label or box. Edges that skip columns are routed
    below every namespace box, so they never seem to touch an unrelated pod."""
    lanes = 0
    edges_svg: list[str] = []
    labels_svg: list[str] = []
    placed: list[_Box] = list(boxes.values())
    pair_count = Counter((min(e.source, e.target), max(e.source, e.target)) for e in smap.edges)
    pair_seen: Counter[tuple[str, str]] = Counter()
    for edge in smap.edges:
        pair = (min(edge.source, edge.target), max(edge.source, edge.target))
        offset = 0.0
        if pair_count[pair] > 1:  # both verdicts or both directions: fan the curves out
            offset = (pair_seen[pair] - (pair_count[pair] - 1) / 2) * 28
        pair_seen[pair] += 1
        s, t = boxes[edge.source], boxes[edge.target]
        if abs(column_of[edge.source] - column_of[edge.target]) > 1:
            curve = _low_curve(s, t, bottom + 70 + lanes * 16)
            lanes += 1
        else:
            curve = _edge_curve(s, t, offset)
        cls = "dropped" if edge.dropped else "forwarded"
        style = ('stroke="#d62728" stroke-width="2" stroke-dasharray="7 4" marker-end="url(#arrow-drop)"'
                 if edge.dropped else
                 f'stroke="#6b7b8c" stroke-width="{min(1.4 + edge.count ** 0.5 / 4, 3.5):.1f}" '
                 'marker-end="url(#arrow-ok)"')
        text = _edge_label(edge)
        edges_svg.append(
            f'<g class="edge {cls}" data-source={quoteattr(edge.source)} data-target={quoteattr(edge.target)} '
            f'data-count="{edge.count}" data-reasons={quoteattr(",".join(sorted(edge.reasons)))} '
            f'data-low="{max(y for _, y in _sample(curve, 16)):.0f}">'
            f'<title>{escape(f"{edge.source} -> {edge.target}: {text}")}</title>'
            f'<path d="{_path_d(curve)}" fill="none" {style}/></g>')
        if abs(s.x - t.x) < 1:  # loop beside the column: label at its far end
            anchor_x = max(x for x, _ in curve) + 8
        elif t.x > s.x:
            anchor_x = t.x - COL_GAP / 2 - 15
        else:
            anchor_x = t.x + t.w + COL_GAP / 2 + 15
        # Which edge a label belongs to is not always plain where several edges meet, so
        # the label names both ends above its counts.
        peers = f"{_short(smap.nodes[edge.source].label, 18)} \u2192 {_short(smap.nodes[edge.target].label, 18)}"
        tw = max(len(text) * 6.3, len(peers) * 5.6) + 12
        loop = abs(s.x - t.x) < 1

        def box_at(px: float, py: float, loop: bool = loop, tw: float = tw) -> _Box:
            return _Box(px if loop else px - tw / 2, py - 15, tw, LABEL_H)

        # On the edge itself, as near the preferred spot as it can be without covering another
        # label or a box: a label moved off its curve reads as belonging to a neighbour.
        points = sorted(_sample(curve, 96)[8:-8], key=lambda p: abs(p[0] - anchor_x) + abs(p[1] - anchor_y(curve, anchor_x)) * 0.2)
        ax, ay = points[0] if points else min(_sample(curve), key=lambda p: abs(p[0] - anchor_x))
        lb = next((box_at(px, py) for px, py in points if not any(_overlap(box_at(px, py), p) for p in placed)), None)
        if lb is None:
            lb = box_at(ax, ay)
            for step in range(1, 40):  # nudge alternately down and up until it overlaps nothing
                if not any(_overlap(lb, p) for p in placed):
                    break
                dy = (step + 1) // 2 * 34 * (1 if step % 2 else -1)
                lb = _Box(lb.x, ay - 15 + dy, lb.w, lb.h)
        placed.append(lb)
        colour = "#d62728" if edge.dropped else "#33414f"
        labels_svg.append(
            f'<g class="edge-label {cls}"><rect x="{lb.x:.1f}" y="{lb.y:.1f}" width="{lb.w:.1f}" height="{lb.h}" '
            f'rx="3" fill="#ffffff" fill-opacity="0.95" stroke="{colour}" stroke-width="0.7"/>'
            f'<text x="{lb.x + lb.w / 2:.1f}" y="{lb.y + 26:.1f}" text-anchor="middle" font-size="11" '
            f'fill="{colour}">{escape(text)}<tspan class="peers" x="{lb.x + lb.w / 2:.1f}" y="{lb.y + 12:.1f}" '
            f'font-size="9.5" fill="#5a6a7a">{escape(peers)}</tspan></text></g>')
    return edges_svg, labels_svg, placed[len(boxes):]


def anchor_y(curve: Curve, x: float) -> float:
    """y of the curve point nearest to x (the preferred label spot's height)."""
    return min(_sample(curve, 32), key=lambda p: abs(p[0] - x))[1]


def _overlap(a: _Box, b: _Box) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


Point = tuple[float, float]
Curve = tuple[Point, Point, Point, Point]


def _edge_curve(s: _Box, t: _Box, offset: float) -> Curve:
    """Cubic curve from the source box to the target box."""
    sy, ty = s.y + s.h / 2 + offset / 3, t.y + t.h / 2 + offset / 3
    if abs(s.x - t.x) < 1:  # same column: loop out to the right of the column
        x0, x1 = s.x + s.w, t.x + t.w
        bulge = 40 + abs(sy - ty) * 0.2 + abs(offset)
        return (x0, sy), (x0 + bulge, sy), (x1 + bulge, ty), (x1 + 2, ty)
    if t.x > s.x:  # left to right
        p0, p3 = (s.x + s.w, sy), (t.x - 2, ty)
        dx = (p3[0] - p0[0]) * 0.45
        return p0, (p0[0] + dx, sy + offset), (p3[0] - dx, ty + offset), p3
    p0, p3 = (s.x, sy), (t.x + t.w + 2, ty)  # right to left: leave left, arrive on the right side
    dx = (p0[0] - p3[0]) * 0.45
    return p0, (p0[0] - dx, sy + offset), (p3[0] + dx, ty + offset), p3


def _low_curve(s: _Box, t: _Box, low: float) -> Curve:
    """Around the bottom: down in the source's gap, along under the boxes, up in the target's."""
    right = t.x > s.x
    p0 = (s.x + s.w, s.y + s.h / 2) if right else (s.x, s.y + s.h / 2)
    p3 = (t.x - 2, t.y + t.h / 2) if right else (t.x + t.w + 2, t.y + t.h / 2)
    step = 90 if right else -90
    return p0, (p0[0] + step, low), (p3[0] - step, low), p3


def _sample(c: Curve, n: int = 64) -> list[Point]:
    pts = []
    for i in range(n + 1):
        u = i / n
        a, b, cc, d = (1 - u) ** 3, 3 * u * (1 - u) ** 2, 3 * u * u * (1 - u), u ** 3
        pts.append((a * c[0][0] + b * c[1][0] + cc * c[2][0] + d * c[3][0],
                    a * c[0][1] + b * c[1][1] + cc * c[2][1] + d * c[3][1]))
    return pts


def _path_d(c: Curve) -> str:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = c
    return f"M{x0:.1f},{y0:.1f} C{x1:.1f},{y1:.1f} {x2:.1f},{y2:.1f} {x3:.1f},{y3:.1f}"
