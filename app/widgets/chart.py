"""Charts drawn with QPainter for the drift and rollout views (no QtCharts in PySide6-Essentials).

* :class:`ThresholdChart` -- named line series over windows with horizontal threshold lines;
  points flagged by the caller (a drifted window) are drawn as red dots, so a shifted agent shows
  as a line crossing its threshold with red marks from the window it drifted on.
* :class:`HistogramChart` -- two count vectors over the same bins side by side (reference vs
  current), each scaled to shares so windows of any size compare.

The data is kept as plain lists (:attr:`ThresholdChart.data`, :attr:`HistogramChart.shares`) so
tests check what is drawn without reading pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from edgeloop.app.widgets.curve import PALETTE, nice_range

__all__ = ["HistogramChart", "Series", "ThresholdChart", "shares"]

FLAG = QColor("#d62728")


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    flagged: list[bool] = field(default_factory=list)


def shares(counts: Sequence[float]) -> list[float]:
    """Counts as fractions of their sum (all zero when the sum is zero)."""
    total = float(sum(counts))
    return [float(c) / total if total > 0 else 0.0 for c in counts]


class _Plot(QWidget):
    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.setMinimumSize(220, 140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 220)

    def _frame(self, p: QPainter, y0: float, y1: float) -> QRectF:
        """White background, title, the plot box with a y grid and labels; returns the box."""
        p.fillRect(self.rect(), QColor("white"))
        fm = p.fontMetrics()
        left, top = fm.horizontalAdvance("-0.0000") + 8, fm.height() + 8
        box = QRectF(left, top, max(10, self.width() - left - 10), max(10, self.height() - top - fm.height() - 8))
        p.setPen(QColor("#222"))
        if self.title:
            p.drawText(QRectF(0, 2, self.width(), fm.height() + 4), Qt.AlignmentFlag.AlignHCenter, self.title)
        p.setPen(QPen(QColor("#999"), 1))
        p.drawRect(box)
        for i in range(5):
            y = box.bottom() - i / 4 * box.height()
            p.setPen(QPen(QColor("#eee"), 1))
            p.drawLine(QPointF(box.left() + 1, y), QPointF(box.right() - 1, y))
            p.setPen(QColor("#555"))
            p.drawText(QRectF(0, y - fm.height() / 2, left - 4, fm.height()), Qt.AlignmentFlag.AlignRight,
                       f"{y0 + i / 4 * (y1 - y0):.3g}")
        return box

    def _legend(self, p: QPainter, box: QRectF, items: list[tuple[str, QColor]]) -> None:
        fm = p.fontMetrics()
        y = box.top() + 4
        width = max((fm.horizontalAdvance(name) for name, _ in items), default=0) + 8
        left = box.right() - width - 22
        for name, color in items:
            p.fillRect(QRectF(left, y + 3, 14, fm.height() - 6), color)
            p.setPen(QColor("#222"))
            p.drawText(QRectF(left + 18, y, width, fm.height()), Qt.AlignmentFlag.AlignLeft, name)
            y += fm.height()


class ThresholdChart(_Plot):
    """Line series over x (window numbers) with dashed threshold lines and flagged points in red."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.data: list[Series] = []
        self.thresholds: dict[str, float] = {}

    def set_data(self, series: Sequence[Series], thresholds: dict[str, float] | None = None) -> None:
        self.data = list(series)
        self.thresholds = dict(thresholds or {})
        self.update()

    def flagged_points(self, name: str) -> list[float]:
        """The x of the points of series ``name`` drawn as flagged."""
        s = next((s for s in self.data if s.name == name), None)
        return [] if s is None else [x for x, f in zip(s.xs, s.flagged, strict=False) if f]

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        xs = [x for s in self.data for x in s.xs]
        x0, x1 = nice_range(xs)
        y0, y1 = nice_range([y for s in self.data for y in s.ys] + list(self.thresholds.values()) + [0.0])
        box = self._frame(p, y0, y1)

        def at(x: float, y: float) -> QPointF:
            return QPointF(box.left() + (x - x0) / (x1 - x0) * box.width(),
                           box.bottom() - (y - y0) / (y1 - y0) * box.height())

        legend = []
        for i, (name, value) in enumerate(self.thresholds.items()):
            color = QColor(PALETTE[(i + 3) % len(PALETTE)])
            p.setPen(QPen(color, 1, Qt.PenStyle.DashLine))
            p.drawLine(at(x0, value), at(x1, value))
            legend.append((f"{name} {value:g}", color))
        for i, s in enumerate(self.data):
            color = QColor(PALETTE[i % len(PALETTE)])
            p.setPen(QPen(color, 2))
            pts = [at(x, y) for x, y in zip(s.xs, s.ys, strict=True)]
            if len(pts) > 1:
                path = QPainterPath(pts[0])
                for pt in pts[1:]:
                    path.lineTo(pt)
                p.drawPath(path)
            for pt, flagged in zip(pts, s.flagged or [False] * len(pts), strict=False):
                p.setPen(QPen(FLAG if flagged else color, 1))
                p.setBrush(FLAG if flagged else color)
                p.drawEllipse(pt, 4 if flagged else 2, 4 if flagged else 2)
            p.setBrush(Qt.BrushStyle.NoBrush)
            legend.append((s.name, color))
        if any(any(s.flagged) for s in self.data):
            legend.append(("flagged window", FLAG))
        self._legend(p, box, legend)
        if not xs:
            p.setPen(QColor("#888"))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, "no data yet")
        p.end()


class HistogramChart(_Plot):
    """Two count vectors over the same bins, as shares, side by side per bin."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.shares: dict[str, list[float]] = {}

    def set_counts(self, named: Mapping[str, Sequence[float]]) -> None:
        self.shares = {name: shares(c) for name, c in named.items()}
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        bins = max((len(v) for v in self.shares.values()), default=0)
        top = max((max(v, default=0.0) for v in self.shares.values()), default=0.0)
        box = self._frame(p, 0.0, max(top * 1.1, 0.01))
        legend = []
        if bins:
            width = box.width() / bins
            k = max(len(self.shares), 1)
            for j, (name, values) in enumerate(self.shares.items()):
                color = QColor(PALETTE[j % len(PALETTE)])
                color.setAlpha(200)
                for b, v in enumerate(values):
                    h = v / max(top * 1.1, 0.01) * box.height()
                    p.fillRect(QRectF(box.left() + b * width + j * width / k + 1, box.bottom() - h,
                                      max(1.0, width / k - 2), h), color)
                legend.append((name, color))
            self._legend(p, box, legend)
        else:
            p.setPen(QColor("#888"))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, "no data yet")
        p.end()
