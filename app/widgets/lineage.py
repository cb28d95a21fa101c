"""The lineage of a version as a graph: dataset -> run -> version -> bundle -> deployments
-> captures -> child versions (and the parent a version was fine-tuned from).

:func:`build_graph` turns :meth:`Hub.lineage` records into columns of nodes and edges
(pure, tested without a screen); :class:`LineageGraph` draws them with QPainter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QWidget

__all__ = ["COLUMNS", "Graph", "LineageGraph", "Node", "build_graph"]

# the kinds of node, left to right
COLUMNS = ["parent", "capture in", "dataset", "run", "version", "bundle", "deployment", "capture", "child"]
_COLORS = {"parent": "#c5b0d5", "capture in": "#f7b6d2", "dataset": "#aec7e8", "run": "#ffbb78",
           "version": "#98df8a", "bundle": "#dbdb8d", "deployment": "#9edae5", "capture": "#f7b6d2",
           "child": "#c5b0d5"}


@dataclass(frozen=True)
class Node:
    key: str
    kind: str
    label: str
    detail: str = ""


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, node: Node) -> None:
        if all(n.key != node.key for n in self.nodes):
            self.nodes.append(node)

    def link(self, a: str, b: str) -> None:
        if (a, b) not in self.edges:
            self.edges.append((a, b))

    def kinds(self) -> list[str]:
        return [n.kind for n in self.nodes]

    def columns(self) -> list[list[Node]]:
        """The non-empty columns, in :data:`COLUMNS` order."""
        cols = [[n for n in self.nodes if n.kind == kind] for kind in COLUMNS]
        return [c for c in cols if c]


def build_graph(lineage: Mapping[str, Any],
                child_captures: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Graph:
    """Nodes and edges from a :meth:`Hub.lineage` record of a version (or any ref), plus the
    captured batches each child version was trained on (``child id -> captures``)."""
    child_captures = child_captures or {}
    g = Graph()
    ds = lineage.get("dataset") or {}
    if ds:
        g.add(Node(f"ds:{ds['id']}", "dataset", str(ds.get("name") or ds["id"]),
                   f"{ds['id']} · {ds.get('rows', '?')} rows · {str(ds.get('sha256', ''))[:12]}"))
    for c in lineage.get("captures") or []:
        key = f"cap:{c['batch_id']}"
        g.add(Node(key, "capture in", str(c["batch_id"])[:14], f"{c.get('agent_id')} · {c.get('rows')} rows"))
        if ds:
            g.link(key, f"ds:{ds['id']}")
    for run in lineage.get("runs") or []:
        g.add(Node(f"run:{run['id']}", "run", str(run["id"]), str(run.get("status") or "")))
        if ds:
            g.link(f"ds:{ds['id']}", f"run:{run['id']}")
    for v in lineage.get("versions") or []:
        vkey = f"v:{v['id']}"
        g.add(Node(vkey, "version", str(v["id"]), f"ships {v.get('chosen', '?')}"))
        g.link(f"run:{v['run_id']}", vkey)
        if v.get("ancestors"):
            parent = v["ancestors"][0]
            g.add(Node(f"v:{parent['id']}", "parent", str(parent["id"]), "fine-tuned from"))
            g.link(f"v:{parent['id']}", vkey)
        agents: dict[str, str] = {}
        for b in v.get("bundles") or []:
            bkey = f"b:{b['sha256']}"
            g.add(Node(bkey, "bundle", str(b["sha256"])[:12], "signed bundle"))
            g.link(vkey, bkey)
            for d in b.get("deployments") or []:
                dkey = f"dep:{d['id']}"
                g.add(Node(dkey, "deployment", f"{d['id']} → {d.get('agent_id')}", str(d.get("status") or "")))
                g.link(bkey, dkey)
                agents.setdefault(str(d.get("agent_id")), dkey)
        for child in v.get("descendants") or []:
            ckey = f"v:{child['id']}"
            g.add(Node(ckey, "child", str(child["id"]), f"on {child.get('dataset_id')}"))
            caps = child_captures.get(str(child["id"])) or []
            for c in caps:
                key = f"cap:{c['batch_id']}"
                g.add(Node(key, "capture", str(c["batch_id"])[:14], f"{c.get('agent_id')} · {c.get('rows')} rows"))
                g.link(agents.get(str(c.get("agent_id")), vkey), key)
                g.link(key, ckey)
            if not caps:
                g.link(f"v:{child['parent_version']}" if child.get("parent_version") else vkey, ckey)
    return g


class LineageGraph(QWidget):
    """Draws a :class:`Graph`: one column per kind of node, edges as curves left to right."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graph = Graph()
        self.setMinimumSize(400, 180)

    def sizeHint(self) -> QSize:
        return QSize(760, 260)

    def set_graph(self, graph: Graph) -> None:
        self.graph = graph
        self.update()

    def positions(self) -> dict[str, QRectF]:
        cols = self.graph.columns()
        out: dict[str, QRectF] = {}
        if not cols:
            return out
        col_w = self.width() / len(cols)
        box_w = min(150.0, col_w - 16)
        top = 24.0
        for ci, col in enumerate(cols):
            box_h = min(40.0, (self.height() - top - 8) / len(col) - 6)
            span = len(col) * (box_h + 6)
            y = top + max(0.0, (self.height() - top - span) / 2)
            for node in col:
                out[node.key] = QRectF(ci * col_w + (col_w - box_w) / 2, y, box_w, box_h)
                y += box_h + 6
        return out

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("white"))
        cols = self.graph.columns()
        if not cols:
            p.setPen(QColor("#888"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "select a version to see its lineage")
            p.end()
            return
        pos = self.positions()
        col_w = self.width() / len(cols)
        p.setPen(QColor("#555"))
        for ci, col in enumerate(cols):
            p.drawText(QRectF(ci * col_w, 2, col_w, 18), Qt.AlignmentFlag.AlignHCenter, col[0].kind)
        p.setPen(QPen(QColor("#888"), 1.4))
        for a, b in self.graph.edges:
            if a not in pos or b not in pos:
                continue
            ra, rb = pos[a], pos[b]
            start, end = QPointF(ra.right(), ra.center().y()), QPointF(rb.left(), rb.center().y())
            mid = (start.x() + end.x()) / 2
            path = QPainterPath(start)
            path.cubicTo(QPointF(mid, start.y()), QPointF(mid, end.y()), end)
            p.drawPath(path)
        fm = p.fontMetrics()
        for node in self.graph.nodes:
            r = pos[node.key]
            p.setPen(QPen(QColor("#666"), 1))
            p.setBrush(QColor(_COLORS.get(node.kind, "#ddd")))
            p.drawRoundedRect(r, 5, 5)
            p.setPen(QColor("#111"))
            label = fm.elidedText(node.label, Qt.TextElideMode.ElideRight, int(r.width() - 6))
            if r.height() >= fm.height() * 2 + 2 and node.detail:
                detail = fm.elidedText(node.detail, Qt.TextElideMode.ElideRight, int(r.width() - 6))
                p.drawText(r.adjusted(3, 2, -3, -r.height() / 2), Qt.AlignmentFlag.AlignCenter, label)
                p.setPen(QColor("#444"))
                p.drawText(r.adjusted(3, r.height() / 2, -3, -2), Qt.AlignmentFlag.AlignCenter, detail)
            else:
                p.drawText(r, Qt.AlignmentFlag.AlignCenter, label)
        p.end()
