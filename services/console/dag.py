"""The overview graph: repos and pipelines laid out left to right by provenance, as SVG.

Pure: nodes and edges in, markup out. A pipeline stands for itself and its output repo
(as in Pachyderm's console); source repos are the other nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.console.markup import Markup, e, join, url

COLUMN_W = 220
ROW_H = 70
NODE_W = 170
NODE_H = 40
MARGIN = 20


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "repo" or "pipeline"
    state: str = ""
    last_job: str = ""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    flowing: bool = False


def input_repos(spec_input: Any) -> list[str]:
    """Every repo a pipeline's input reads (pfs inputs nested in cross/union/join/group)."""
    found: list[str] = []
    if isinstance(spec_input, Mapping):
        pfs = spec_input.get("pfs")
        if isinstance(pfs, Mapping) and isinstance(pfs.get("repo"), str):
            found.append(pfs["repo"])
        for key, value in spec_input.items():
            if key != "pfs":
                found.extend(input_repos(value))
    elif isinstance(spec_input, list):
        for item in spec_input:
            found.extend(input_repos(item))
    return list(dict.fromkeys(found))


def columns(nodes: Iterable[Node], edges: Iterable[Edge]) -> dict[str, int]:
    """Each node's column: the length of the longest provenance path reaching it."""
    names = [n.name for n in nodes]
    parents: dict[str, list[str]] = {n: [] for n in names}
    for edge in edges:
        if edge.target in parents and edge.source in parents:
            parents[edge.target].append(edge.source)
    depth: dict[str, int] = {}

    def walk(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        ups = [p for p in parents[name] if p not in seen]  # a cycle must not loop forever
        depth[name] = 1 + max((walk(p, seen | {name}) for p in ups), default=-1)
        return depth[name]

    for name in names:
        walk(name, frozenset())
    return depth


STATE_CLASS = {
    "PIPELINE_RUNNING": "ok",
    "PIPELINE_STANDBY": "ok",
    "PIPELINE_PAUSED": "paused",
    "PIPELINE_FAILURE": "bad",
    "PIPELINE_CRASHING": "bad",
}


def render(nodes: list[Node], edges: list[Edge]) -> Markup:
    if not nodes:
        return Markup(
            '<p class="empty">No repos yet. Create one with <code>tusk create repo</code>.</p>'
        )
    column = columns(nodes, edges)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    for node in sorted(nodes, key=lambda n: (column[n.name], n.name)):
        c = column[node.name]
        r = rows.get(c, 0)
        rows[c] = r + 1
        place[node.name] = (MARGIN + c * COLUMN_W, MARGIN + r * ROW_H)
    width = MARGIN * 2 + (max(column.values()) + 1) * COLUMN_W - (COLUMN_W - NODE_W)
    height = MARGIN * 2 + max(rows.values()) * ROW_H - (ROW_H - NODE_H)
    lines = []
    for edge in edges:
        if edge.source not in place or edge.target not in place:
            continue
        x1, y1 = place[edge.source]
        x2, y2 = place[edge.target]
        x1, y1, y2 = x1 + NODE_W, y1 + NODE_H // 2, y2 + NODE_H // 2
        mid = (x1 + x2) // 2
        cls = "edge flowing" if edge.flowing else "edge"
        lines.append(
            Markup(
                f'<path class="{cls}" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}">'
                f"<title>{e(edge.source)} → {e(edge.target)}</title></path>"
            )
        )
    boxes = []
    for node in nodes:
        x, y = place[node.name]
        if node.kind == "pipeline":
            href = url("pipelines", node.name)
            # A running pipeline whose last job failed is shown failing: that is what to look at.
            state = (
                "bad" if node.last_job == "JOB_FAILURE" else STATE_CLASS.get(node.state, "unknown")
            )
            cls = "node pipeline " + state
            label = f"pipeline {node.name}, {node.state or 'unknown state'}"
            if node.last_job:
                label += f", last job {node.last_job}"
        else:
            href = url("repos", node.name)
            cls = "node repo"
            label = f"repo {node.name}"
        short = node.name if len(node.name) <= 20 else node.name[:19] + "…"
        boxes.append(
            Markup(
                f'<a href="{e(href)}" aria-label="{e(label)}" class="{cls}">'
                f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
                f'<text x="{x + 10}" y="{y + 17}" class="kind">{e(node.kind)}</text>'
                f'<text x="{x + 10}" y="{y + 33}" class="name">{e(short)}</text>'
                f"<title>{e(label)}</title></a>"
            )
        )
    return Markup(
        f'<svg class="dag" role="img" aria-label="Pipeline graph" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f"{join(lines)}{join(boxes)}</svg>"
    )
